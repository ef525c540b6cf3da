"""Progress for waits over a second (joining, looking up, punching), on a terminal only.

``with progress("looking up NODEID", poll=...):`` around a blocking call: if the call is still
running after :data:`DELAY` seconds and standard error is a terminal, one line there shows
what is being waited for, for how long, and what ``poll`` says now (the node's own view:
looking up, punching, via relay); the line is wiped when the call returns. Piped or
redirected, nothing is written, so scripts and logs see only results and errors.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

DELAY = 1.0
FRAME = 0.1
POLL_EVERY = 0.5
_SPINNER = "|/-\\"


class _Line:
    def __init__(self, what: str, poll: Callable[[], str | None] | None, stream: TextIO) -> None:
        self.what = what
        self.poll = poll
        self.stream = stream
        self.done = threading.Event()
        self.shown = False
        self.detail: str | None = None

    def run(self) -> None:
        started = time.monotonic()
        if self.done.wait(DELAY):
            return
        polled_at = 0.0
        frame = 0
        while not self.done.is_set():
            now = time.monotonic()
            if self.poll is not None and now - polled_at >= POLL_EVERY:
                polled_at = now
                with contextlib.suppress(Exception):  # a view, never a failure of its own
                    self.detail = self.poll()
            detail = f": {self.detail}" if self.detail else ""
            text = f"{_SPINNER[frame % len(_SPINNER)]} {self.what}{detail} ({now - started:.1f}s)"
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()
            self.shown = True
            frame += 1
            self.done.wait(FRAME)

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


@contextlib.contextmanager
def progress(
    what: str, poll: Callable[[], str | None] | None = None, stream: TextIO | None = None
) -> Iterator[None]:
    """Shows ``what`` (and ``poll()``'s answer) while the body runs longer than a second,
    if ``stream`` (standard error) is a terminal."""
    out = stream or sys.stderr
    if not out.isatty():
        yield
        return
    line = _Line(what, poll, out)
    thread = threading.Thread(target=line.run, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        line.done.set()
        thread.join(1.0)
        line.clear()


def peer_stage(answer: dict[str, object]) -> str | None:
    """What the node is doing to reach a peer, from its ``peer.progress`` answer."""
    path = answer.get("path")
    if isinstance(path, dict):
        now = str(path.get("now") or "")
        if path.get("punching"):
            return f"punching ({now})" if now and now != "no path" else "punching"
        if now and now != "no path":
            return now
    if answer.get("live"):
        return "connected, opening a secure channel"
    if answer.get("in_graph"):
        return "in the node graph, reaching it"
    return "looking it up in the node graph"
