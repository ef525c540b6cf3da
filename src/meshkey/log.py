"""Structured logs: one ``key=value`` line per event, quiet (INFO and up) by default.

Imports nothing else from meshkey, so every layer may use it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

# A library prints nothing unless the program embedding it configures logging.
logging.getLogger("meshkey").addHandler(logging.NullHandler())


def _format_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class EventLogger:
    """``log.info("peer.authenticated", node=..., address=...)`` -> one logfmt line."""

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(f"meshkey.{name}")

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
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


def configure_logging(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_LogfmtFormatter())
    root = logging.getLogger("meshkey")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
