"""Giving freed portal buffers back to the system (DESIGN.md decision 20: what a peer made a
node hold is given back).

Session buffers are large bytes objects (DATA chunks of 64 KiB, packets up to 1 MiB), which
Python takes from the C allocator. glibc's malloc keeps what is freed in its heaps for reuse,
and after the first large block is freed it raises its mmap threshold, so later blocks of up
to that size come from the heaps too: a node that once buffered hundreds of megabytes for
sessions that have since ended keeps them resident. ``malloc_trim(0)`` hands the free pages
of every heap back (madvise), which is what brings the RSS back near its baseline.

:func:`give_back_soon` is called whenever a session ends; it trims once,
:data:`TRIM_DELAY` later, however many sessions ended meanwhile (a trim walks the heaps:
milliseconds for hundreds of megabytes, so never once per session). Elsewhere than glibc it
does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable

#: Sessions that end within this many seconds share one trim.
TRIM_DELAY = 1.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


_MALLOC_TRIM = _load_malloc_trim()
_pending: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}
trims = 0  # how often the heaps were trimmed (for tests and `node show`)


def give_back() -> bool:
    """Returns the allocator's free pages to the system now; False where it cannot."""
    global trims
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    trims += 1
    return True


def give_back_soon() -> None:
    """Trims within :data:`TRIM_DELAY` (once, whatever the number of calls until then)."""
    if _MALLOC_TRIM is None:
        return
    with contextlib.suppress(RuntimeError):  # no running loop: nothing is waiting to end
        loop = asyncio.get_running_loop()
        if loop not in _pending:
            _pending[loop] = loop.call_later(TRIM_DELAY, _trim, loop)


def _trim(loop: asyncio.AbstractEventLoop) -> None:
    _pending.pop(loop, None)
    give_back()
