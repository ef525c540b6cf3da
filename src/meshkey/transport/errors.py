"""Readable reasons for socket failures, shared by the transports."""

from __future__ import annotations


def describe_error(exc: BaseException) -> str:
    """``connection refused``, ``timed out``, ``no route to host``... rather than a repr."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
