"""What a portal session takes and gives: roles, states, outcomes, errors, limits, counters,
and the commands and events it hands out (see :mod:`meshkey.portal.session` for the protocol)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from meshkey.portal.budget import INITIAL_CREDIT
from meshkey.wire.portal import MAX_CHUNK, MAX_WINDOW, Frame, ResetReason


class Role(enum.Enum):
    OPENER = "opener"
    ACCEPTOR = "acceptor"


class State(enum.Enum):
    OPENING = "opening"
    ACCEPTING = "accepting"
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


class Outcome(enum.Enum):
    """How a session ended."""

    CLOSED = "closed"  # both directions finished, everything acknowledged
    REFUSED = "refused"  # the outlet refused the session (OPEN_REFUSED)
    RESET_LOCALLY = "reset locally"  # the local application reset or aborted
    RESET_BY_PEER = "reset by peer"  # the peer sent RST
    TIMEOUT = "timeout"  # the peer stopped answering
    ROUTE_BROKEN = "route broken"  # the route failed and the peer stayed silent
    PROTOCOL_ERROR = "protocol error"  # the peer broke the protocol
    SHUT_DOWN = "shut down"  # the local owner closed it (node or portal going away)


class PortalLocalError(Exception):
    """The local caller used the session wrongly (e.g. data after app_eof)."""


class PortalPeerError(Exception):
    """The peer did something the protocol forbids, or reset the session. ``code`` is what
    goes (or came) on the wire in the RST."""

    def __init__(self, code: ResetReason, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def violation(reason: str) -> PortalPeerError:
    """The peer broke the protocol: the session answers with RST (PROTOCOL_ERROR)."""
    return PortalPeerError(ResetReason.PROTOCOL_ERROR, reason)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Every bound and timer of a session; the defaults are what a node uses.

    ``receive_window`` (1 MiB): the most the session may hold for a slow local reader, and the
    most a peer may have in flight to it; 1 MiB over a 5 ms path still allows 200 MB/s.
    ``send_buffer`` (1 MiB): the most it reads from the local socket ahead of the peer's
    acknowledgements; reading pauses when the buffer is full and resumes at half.
    Both start at ``initial_window`` and ``initial_send_buffer`` (64 KiB,
    :data:`~meshkey.portal.budget.INITIAL_CREDIT`: one DATA frame) and double while the
    reader keeps up, each growth drawn from the node's
    :class:`~meshkey.portal.budget.PortalBudget`, so a session whose far side never reads
    costs 128 KiB, not 2 MiB. ``min_rto`` is RFC 6298's 1 s: hops are
    reliable, so a resend only helps after a path loss, and a shorter floor would resend
    what is merely queued; ``max_rto`` (10 s) keeps a backed-off sender probing often enough
    to notice a path that came back. ``peer_timeout`` (15 s): how long a session waiting for
    an answer tolerates silence; longer than the outlet's 10 s TCP connect timeout, so a slow
    connect is not mistaken for a dead peer, and short enough that a client never hangs.
    ``keepalive_interval`` (20 s): below the ~25-30 s after which NAT mappings expire and far
    below the hops' idle timeouts (QUIC 60 s). ``idle_timeout`` (60 s, three keepalives): an
    acceptor that hears nothing for that long has lost its opener. ``route_grace`` (3 s): a
    path switch repairs itself well within it, a dead relay does not. ``linger`` (10 s):
    enough for the peer to resend a FIN whose ACK was lost (a few RTOs). ``open_retries``
    (4, backed off 0.25 s to 2 s): how often a route error during opening is retried before
    the client is told the outlet is unreachable (about 4 s in all). Timers are in seconds.
    """

    receive_window: int = MAX_WINDOW
    send_buffer: int = MAX_WINDOW
    initial_window: int = INITIAL_CREDIT
    initial_send_buffer: int = INITIAL_CREDIT
    initial_rto: float = 1.0
    min_rto: float = 1.0
    max_rto: float = 10.0
    peer_timeout: float = 15.0
    keepalive_interval: float = 20.0
    idle_timeout: float = 60.0
    route_grace: float = 3.0
    linger: float = 10.0
    open_retries: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.receive_window <= MAX_WINDOW:
            raise ValueError(f"receive_window must be in 1..{MAX_WINDOW}")
        if self.send_buffer < MAX_CHUNK:
            raise ValueError(f"send_buffer must be at least {MAX_CHUNK}")
        if self.initial_window < 1 or self.initial_send_buffer < 1:
            raise ValueError("initial_window and initial_send_buffer must be at least 1")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("session timers need 0 < min_rto <= initial_rto <= max_rto")

    @property
    def first_window(self) -> int:
        """The receive window a session grants first (never above ``receive_window``)."""
        return min(self.initial_window, self.receive_window)

    @property
    def first_send_buffer(self) -> int:
        """The send buffer a session starts with (never above ``send_buffer``)."""
        return min(self.initial_send_buffer, self.send_buffer)


DEFAULT_LIMITS = SessionLimits()


@dataclass
class SessionStats:
    bytes_sent: int = 0  # application bytes sent for the first time
    bytes_received: int = 0  # application bytes delivered in order
    bytes_resent: int = 0
    duplicate_bytes: int = 0
    retransmit_timeouts: int = 0
    rtt_samples: list[float] = field(default_factory=list, repr=False)  # the newest 16


# -- outputs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFrames:
    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class WriteToApp:
    data: bytes


@dataclass(frozen=True, slots=True)
class ShutdownAppWrite:
    """The peer's direction ended: half-close the local socket's write side."""


@dataclass(frozen=True, slots=True)
class CloseApp:
    """Close the local socket: gracefully (flush, then FIN) or, with ``abort``, with a reset.
    ``outcome`` and ``reason`` say how the session ended (as :class:`Closed` does)."""

    outcome: Outcome
    reason: str
    abort: bool


@dataclass(frozen=True, slots=True)
class PauseReading:
    pass


@dataclass(frozen=True, slots=True)
class ResumeReading:
    pass


AppCommand = WriteToApp | ShutdownAppWrite | CloseApp | PauseReading | ResumeReading
Command = SendFrames | AppCommand


@dataclass(frozen=True, slots=True)
class Opened:
    pass


@dataclass(frozen=True, slots=True)
class Closed:
    """The session ended. ``peer_reset``: the code of the peer's RST, when that ended it
    (RESET_BY_PEER), so a peer that went away on purpose (SHUTTING_DOWN) can be told from
    one that failed."""

    outcome: Outcome
    reason: str
    peer_reset: ResetReason | None = None


Event = Opened | Closed
