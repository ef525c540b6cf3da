"""The glue of automatic relays: :class:`~meshkey.relay.keeper.RelayKeeper` fed with what the
node knows (is it reachable, which reachable nodes it knows, how its relays fare) and its
commands carried out with the node's :class:`~meshkey.relay.client.RelayClient`.

It looks twice a second (the inputs change slowly and come from several places: the node
graph's mode, the NAT classification, each relay's status); everything it decides is the
keeper's. An automatic relay is named after both nodes (``a.<own id>.<relay node id>``, a
prefix of each), registered over the one UDP socket (over TCP when UDP is blocked, at the
relay node's TCP listener, which takes its UDP port number), and shows in the node's signed
peer record like any relay, since the record lists every active relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from meshkey.dht.service import DhtService
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.nat.classify import Classification
from meshkey.relay.client import RelayClient, RelayStatus
from meshkey.relay.keeper import (
    AutoRelayState,
    CreateAutoRelay,
    DeleteAutoRelay,
    RelayCandidate,
    RelayKeeper,
)
from meshkey.routing.address import TransportAddress
from meshkey.routing.errors import RemoteError
from meshkey.wire.dht import Mode
from meshkey.wire.net import Endpoint, NatClass

log = EventLogger("relay.auto")

SYNC_INTERVAL = 0.5
MAX_CANDIDATES = 16

_STATES = {
    RelayStatus.REGISTERING: AutoRelayState.PENDING,
    RelayStatus.ACTIVE: AutoRelayState.ACTIVE,
    RelayStatus.RETRYING: AutoRelayState.DOWN,
    RelayStatus.FAILED: AutoRelayState.REFUSED,
}


def reachable_from(
    mode: Mode,
    classification: Classification | None,
    local: list[Endpoint],
    *,
    tcp_only: bool = False,
) -> bool | None:
    """What the node knows of being reachable: yes as a server (dial-backs said so); no
    behind a NAT (a class says so, or an observer saw another address than the socket's
    own), nor when a client's only hops are TCP ones (``tcp_only``: UDP is blocked here,
    seconds before a classification round says so); unknown before either."""
    if mode is Mode.SERVER:
        return True
    if tcp_only and mode is Mode.CLIENT and udp_blocked(classification, tcp_only=True):
        return False
    if classification is None:
        return None
    if classification.nat_class is NatClass.PUBLIC:
        return None  # no NAT, but nobody dialled in yet: the dial-back decides
    if classification.nat_class is not NatClass.UNKNOWN:
        return False
    seen = [o.reflexive for o in classification.observations if o.reflexive is not None]
    return False if any(address not in local for address in seen) else None


def udp_blocked(classification: Classification | None, *, tcp_only: bool) -> bool:
    """Whether UDP is blocked here: the classification says so or, while it knows nothing,
    the node's only hops are TCP ones (``tcp_only``)."""
    if classification is not None and classification.nat_class is not NatClass.UNKNOWN:
        return classification.nat_class is NatClass.UDP_BLOCKED
    return tcp_only


class AutoRelays:
    def __init__(
        self,
        node_id: NodeId,
        relays: RelayClient,
        graph: DhtService,
        *,
        seeds: list[tuple[NodeId, Endpoint]],
        classification: Callable[[], Classification | None],
        local: Callable[[], list[Endpoint]],
        tcp_only: Callable[[], bool] = lambda: False,
        enabled: bool = True,
    ) -> None:
        self.node_id = node_id
        self.relays = relays
        self.graph = graph
        self.seeds = seeds
        self._classification = classification
        self._local = local
        self._tcp_only = tcp_only
        self.keeper = RelayKeeper(enabled=enabled)
        self._names: dict[NodeId, str] = {}  # relay node -> the relay's name here
        self._listed: set[tuple[str, RelayStatus, str | None]] = set()
        self._task: asyncio.Task[None] | None = None

    # -- what others ask ----------------------------------------------------------------

    def is_automatic(self, name: str) -> bool:
        return name in self._names.values()

    def describe(self) -> dict[str, object]:
        return {
            "enabled": self.keeper.enabled,
            "status": self.keeper.status,
            "relays": sorted(self._names.values()),
        }

    def name_for(self, at: NodeId) -> str:
        return f"a.{str(self.node_id)[2:28]}.{str(at)[2:10]}"

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="auto-relays")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.sync(loop.time())
            except Exception as exc:
                log.warning("relay.auto_failed", reason=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(SYNC_INTERVAL)

    async def sync(self, now: float) -> None:
        """One turn: inputs to the keeper, its commands to the relay client."""
        keeper = self.keeper
        classification = self._classification()
        reachable = reachable_from(
            self.graph.mode, classification, self._local(), tcp_only=self._tcp_only()
        )
        keeper.set_reachable(reachable, now)
        keeper.set_candidates(self._candidates(), now)
        manual = [
            r
            for r in self.relays.relays()
            if not self.is_automatic(r.name) and r.status is RelayStatus.ACTIVE
        ]
        keeper.set_manual_active(len(manual), now)
        for at, name in list(self._names.items()):
            relay = self.relays.get(name)
            if relay is not None:
                keeper.on_relay_state(at, _STATES[relay.status], now)
        keeper.on_timer(now)
        for command in keeper.commands():
            if isinstance(command, CreateAutoRelay):
                await self._create(command)
            elif isinstance(command, DeleteAutoRelay):
                await self._delete(command)
        listed = {(r.name, r.status, r.address) for r in self.relays.relays()}
        if listed != self._listed:
            # The record names relays by their state (node/record.py): publish a change now,
            # not at the next tick (a failover's new relay, or the dead one deleted).
            self._listed = listed
            self.graph.record_changed()

    def _candidates(self) -> list[RelayCandidate]:
        found: dict[NodeId, RelayCandidate] = {}
        for node_id, endpoint in self.seeds:
            found[node_id] = RelayCandidate(node_id, endpoint, seed=True)
        for server in self.graph.servers(MAX_CANDIDATES):
            if server.node_id not in found and server.node_id != self.node_id:
                found[server.node_id] = RelayCandidate(
                    server.node_id, server.address, rtt=self.graph.srtt(server.node_id)
                )
        return list(found.values())[:MAX_CANDIDATES]

    def _transport(self) -> str:
        blocked = udp_blocked(self._classification(), tcp_only=self._tcp_only())
        return "tcp" if blocked else "udp"

    async def _create(self, command: CreateAutoRelay) -> None:
        name = self.name_for(command.at)
        host, port = command.endpoint
        at = str(TransportAddress.from_socket(self._transport(), host, port, command.at))
        try:
            await self.relays.create(name, at, wait=False)
        except (ValueError, RemoteError) as exc:
            log.warning("relay.auto_refused", at=at, reason=str(exc))
            self.keeper.on_relay_state(command.at, AutoRelayState.REFUSED, self._now())
            return
        self._names[command.at] = name
        log.info("relay.auto_created", name=name, at=at)

    async def _delete(self, command: DeleteAutoRelay) -> None:
        name = self._names.pop(command.at, None)
        if name is None:
            return
        with contextlib.suppress(KeyError):
            await self.relays.delete(name)
        log.info("relay.auto_deleted", name=name, reason=command.reason)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()
