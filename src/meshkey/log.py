"""Structured logs: one ``key=value`` line per event, quiet (INFO and up) by default.

Imports nothing else from meshkey, so every layer may use it.
"""

from __future__ import annotations

import logging
import logging.handlers
import time
from pathlib import Path
from typing import Any

#: Warnings of one kind (event name) logged per window before the rest are only counted: a
#: peer that sends garbage as fast as it can must not make the log grow faster than its attack.
WARNINGS_PER_WINDOW = 20
WARNING_WINDOW = 10.0

# A library prints nothing unless the program embedding it configures logging.
logging.getLogger("meshkey").addHandler(logging.NullHandler())


def _format_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class _RateLimit:
    """Per event name: at most WARNINGS_PER_WINDOW lines per window, then one summary."""

    __slots__ = ("counts", "suppressed", "window_start")

    def __init__(self) -> None:
        self.window_start = 0.0
        self.counts: dict[str, int] = {}
        self.suppressed: dict[str, int] = {}

    def admit(self, event: str, now: float) -> list[tuple[str, int]] | None:
        """None to drop this line; else the (event, count) summaries to log before it."""
        summaries: list[tuple[str, int]] = []
        if now - self.window_start >= WARNING_WINDOW:
            summaries = sorted(self.suppressed.items())
            self.window_start, self.counts, self.suppressed = now, {}, {}
        seen = self.counts.get(event, 0) + 1
        self.counts[event] = seen
        if seen > WARNINGS_PER_WINDOW:
            self.suppressed[event] = self.suppressed.get(event, 0) + 1
            return None
        return summaries


_RATE_LIMIT = _RateLimit()


class EventLogger:
    """``log.info("peer.authenticated", node=..., address=...)`` -> one logfmt line.

    Warnings and errors are rate-limited per event name (see :data:`WARNINGS_PER_WINDOW`);
    what was dropped is counted in a ``log.suppressed`` line.
    """

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(f"meshkey.{name}")

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if not self._logger.isEnabledFor(level):
            return
        if level >= logging.WARNING:
            summaries = _RATE_LIMIT.admit(event, time.monotonic())
            if summaries is None:
                return
            for name, count in summaries:
                self._logger.warning(f"event=log.suppressed kind={name} count={count}")
        text = " ".join(f"{key}={_format_value(value)}" for key, value in fields.items())
        self._logger.log(level, f"event={event} {text}".rstrip())

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.ERROR):
            text = " ".join(f"{key}={_format_value(value)}" for key, value in fields.items())
            self._logger.exception(f"event={event} {text}".rstrip())


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs):03d}Z"
        name = record.name.removeprefix("meshkey.")
        line = f"{stamp} level={record.levelname.lower()} logger={name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


#: A daemon's log file is rotated at this size, keeping this many old ones (node.log.1...).
LOG_FILE_SIZE = 10 * 1024 * 1024
LOG_FILES_KEPT = 3


def configure_logging(level: str = "info", stream: Any = None, file: Path | None = None) -> None:
    """Logs to ``file`` (rotated by size) if given, else to ``stream`` (default stderr)."""
    handler: logging.Handler
    if file is not None:
        handler = logging.handlers.RotatingFileHandler(
            file, maxBytes=LOG_FILE_SIZE, backupCount=LOG_FILES_KEPT, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(_LogfmtFormatter())
    root = logging.getLogger("meshkey")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
