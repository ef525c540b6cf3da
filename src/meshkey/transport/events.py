"""Events a transport reports to the node (and, through its event bus, to later layers)."""

from __future__ import annotations

from dataclasses import dataclass

from meshkey.identity.node_id import NodeId


@dataclass(frozen=True, slots=True)
class HopAuthenticated:
    """A peer proved its NodeId on a hop (in either direction): the node graph's cue."""

    node_id: NodeId
    transport: str
    remote: tuple[str, int]
    direction: str  # "inbound" or "outbound"
    #: Dialled over an address a hole punch found: a path to the peer, not proof that
    #: anyone can dial it there (the node graph must not take it for a server).
    punched: bool = False


@dataclass(frozen=True, slots=True)
class HopClosed:
    node_id: NodeId | None
    transport: str
    remote: tuple[str, int]
    direction: str
    reason: str


@dataclass(frozen=True, slots=True)
class HopRefused:
    """A peer failed hop authentication (wrong NodeId, bad proof, protocol error)."""

    transport: str
    remote: tuple[str, int]
    direction: str
    reason: str


TransportEvent = HopAuthenticated | HopClosed | HopRefused
