"""What the node graph's engine reports (:meth:`DhtEngine.events
<meshkey.dht.engine.DhtEngine.events>`) and asks for (its commands), in one place, as h11
keeps its events apart from its state machine: the engine, its glue, the upkeep
(:mod:`meshkey.dht.maintenance`) and the simulator all speak these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshkey.dht.lookup import LookupDone
from meshkey.dht.records import PersistSequence
from meshkey.dht.transactions import SendRequest
from meshkey.identity.node_id import NodeId


class Purpose(enum.Enum):
    """What a lookup is for: a caller's (USER), or the engine's own."""

    USER = "user"
    JOIN = "join"
    REFRESH = "refresh"
    PUBLISH = "publish"


@dataclass(frozen=True, slots=True)
class LookupFinished:
    """A lookup ended (a USER one: its caller waits for this)."""

    lookup_id: int
    purpose: Purpose
    result: LookupDone


@dataclass(frozen=True, slots=True)
class Joined:
    """The join is over (seeds pinged, own id and far buckets looked up): READY."""

    neighbours: int


@dataclass(frozen=True, slots=True)
class Published:
    """A record of this node (``sequence``) went to ``asked`` servers, ``stored_at`` took it."""

    sequence: int
    stored_at: int
    asked: int


@dataclass(frozen=True, slots=True)
class PingRoundSettled:
    """A full bucket's oldest were pinged: who answered, who was evicted, who came in."""

    bucket: int
    alive: tuple[NodeId, ...]
    evicted: tuple[NodeId, ...]
    added: tuple[NodeId, ...]


#: (A :class:`~meshkey.dht.responder.DialBackJob` is no command: it is the answer
#: ``on_request`` returns, for the glue to carry out.)
EngineCommand = SendRequest | PersistSequence
EngineEvent = LookupFinished | Joined | Published | PingRoundSettled


__all__ = [
    "EngineCommand",
    "EngineEvent",
    "Joined",
    "LookupFinished",
    "PingRoundSettled",
    "Published",
    "Purpose",
]
