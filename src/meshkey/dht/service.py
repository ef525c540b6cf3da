"""The node graph's asyncio glue: the engine and its upkeep on real hops, timers, persistence.

(Over 600 lines on purpose: the one asyncio glue of the node graph, for its engine, its
upkeep and persistence; its hops over UDP and TCP are :mod:`~meshkey.dht.hops`.)

:class:`DhtService` owns one :class:`~meshkey.dht.engine.DhtEngine` and does its I/O:

- **In.** The node subscribes :meth:`DhtService.on_transport_event` to its event bus; each
  ``HopAuthenticated`` over UDP becomes ``engine.on_authenticated`` with the address the hop
  was observed at (with one UDP socket, the address a peer's packets come from is where it
  can be reached, if its NAT lets us). That is the only way into the table. Over TCP (a node
  whose UDP is blocked: :mod:`meshkey.dht.hops`' fallback) only a hop the graph dialled
  itself at a contact's address counts (a node's TCP listener takes its UDP port number, so
  that address is the contact's either way); a TCP hop dialled in comes from a source port,
  where nobody can dial its peer, so it is no contact. Requests arrive at the worker
  ``/service/dht`` over authenticated hops (``message.local.hop_peer``), UDP or TCP; the
  address is the remote address of the hop they came over. Only requests the hop's peer
  sent itself count (:func:`~meshkey.dht.hops.sent_by_hop_peer`); one routed through it is
  dropped unanswered. RPCs that came over no hop (a secure channel) are answered
  UNSUPPORTED.
- **Out.** Each :class:`~meshkey.dht.transactions.SendRequest` is one request over a hop
  pinned to the peer's NodeId (:class:`~meshkey.dht.hops.DhtHops`, which says how; a dial on
  someone's say-so is closed after its patience); its answer, with its size (what the peer
  sent is what it may have this node dial, :mod:`meshkey.dht.budget`), or its failure goes
  back to the engine (a refused hop: another NodeId is at that address). The engine asks
  whether a hop to a peer is up (:meth:`DhtHops.live_link`) before it counts a dial.
- **Time.** One :class:`~meshkey.timing.DeadlineTimer` follows the engine's next deadline
  (re-armed only when it changes, fired no earlier than it) — STYLE pattern 1.
- **Upkeep.** The join (retried with backoff), the reachability checks that decide the
  mode, and publishing the record when it changes are decided by the sans-IO
  :class:`~meshkey.dht.maintenance.Maintenance` (:meth:`DhtService.maintain` starts it,
  :meth:`DhtService.join` runs one attempt); the glue sends its requests, writes down the
  mode it found, forwards it the engine's events and the nonces of incoming pings, and logs
  what it reports. Its own :class:`~meshkey.timing.DeadlineTimer` follows its deadline.
- **Persistence.** At start the table, the records held (:mod:`meshkey.dht.persistence`),
  the sequence number and the mode come back from the
  :class:`~meshkey.dht.store.GraphStore`; what changed is written every
  :data:`FLUSH_INTERVAL` seconds and at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshkey.dht.diversity import DEFAULT as DEFAULT_DIVERSITY
from meshkey.dht.diversity import Diversity
from meshkey.dht.engine import (
    DhtEngine,
    DialBackJob,
    EngineEvent,
    LookupFinished,
    LookupLimitError,
    Published,
    Purpose,
    SendRequest,
)
from meshkey.dht.hops import (
    DHT_SERVICE,
    REQUEST_TIMEOUT,
    DhtHops,
    Hop,
    UdpHops,
    sent_by_hop_peer,
)
from meshkey.dht.lookup import LookupDone, LookupKind, LookupStats
from meshkey.dht.maintenance import (
    Announce,
    AskPeer,
    FirstNode,
    GraphJoined,
    JoinAttempted,
    JoinRetry,
    JoinSlow,
    Maintenance,
    MaintenanceEvent,
    ModeFound,
    PublishFailed,
    SaveMode,
)
from meshkey.dht.persistence import GraphPersistence
from meshkey.dht.records import (
    PeerRecord,
    PersistSequence,
    RecordContent,
)
from meshkey.dht.store import GraphStore, MemoryGraphStore
from meshkey.dht.table import Entry
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.errors import RemoteError, RoutingError
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.timing import DeadlineTimer
from meshkey.transport.events import HopAuthenticated
from meshkey.wire.dht import (
    Answer,
    DhtError,
    DhtErrorCode,
    Mode,
    Ping,
    Pong,
    Request,
    decode_rpc,
    encode_rpc,
    is_request,
)
from meshkey.wire.errors import WireError
from meshkey.wire.message import ErrorCode
from meshkey.wire.net import Endpoint

log = EventLogger("dht")

FLUSH_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class FindResult:
    node_id: NodeId
    found: bool
    addresses: tuple[Endpoint, ...]
    record: PeerRecord | None
    stats: LookupStats
    in_graph: bool

    def describe(self) -> dict[str, Any]:
        return {
            "node_id": str(self.node_id),
            "found": self.found,
            "addresses": [f"{h}:{p}" for h, p in self.addresses],
            "record": self.record.describe() if self.record else None,
            "in_graph": self.in_graph,
            "lookup": self.stats.as_dict(),
        }


class DhtService:
    """The node graph of one node. ``mode`` None finds out (DIAL_BACK) after joining."""

    def __init__(
        self,
        router: Router,
        identity: Identity,
        udp: UdpHops,
        *,
        tcp: UdpHops | None = None,
        store: GraphStore | None = None,
        mode: Mode | None = None,
        rng: random.Random | None = None,
        k: int = 20,
        alpha: int = 3,
        request_timeout: float = REQUEST_TIMEOUT,
        behind_nat: Callable[[], bool | None] | None = None,
        diversity: Diversity = DEFAULT_DIVERSITY,
    ) -> None:
        self.router = router
        self.identity = identity
        self.udp = udp
        self.store = store or MemoryGraphStore()
        self.fixed_mode = mode
        self._saved_mode = self.store.load_mode()  # what _save_mode last wrote
        self.hops = DhtHops(router, udp, tcp=tcp, request_timeout=request_timeout)
        self._loop = asyncio.get_running_loop()
        self.wall_offset = time.time() - self._loop.time()
        self.engine = DhtEngine(
            identity,
            self._loop.time(),
            rng=rng or random.Random(),
            k=k,
            alpha=alpha,
            mode=mode if mode is not None else self._restored_mode(),
            wall_offset=self.wall_offset,
            sequence=self.store.load_sequence(),
            diversity=diversity,
            connected=lambda peer: self.hops.live_link(peer) is not None,
        )
        self._timer = DeadlineTimer(self._on_timer, self._loop)
        # ``behind_nat``: True behind a NAT, False public, None unknown (the node's NAT
        # classification); a node that does not say is taken as unknown.
        self.maintenance = Maintenance(
            self.engine,
            fixed_mode=mode,
            behind_nat=behind_nat or (lambda: None),
            local_address=self._local_address,
            rng=random.Random(self.engine.rng.getrandbits(64)),
        )
        self._upkeep_timer = DeadlineTimer(self._on_upkeep_timer, self._loop)
        self._attempts: list[asyncio.Future[int]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lookups: dict[int, asyncio.Future[LookupDone]] = {}
        self._published: dict[int, asyncio.Future[Published]] = {}
        self.persistence = GraphPersistence(self.engine, self.store, self.wall_offset)
        self._flush_handle: asyncio.TimerHandle | None = None
        #: Where the last PONG said this node's request came from (over any hop): its public
        #: address where no UDP observer can say (UDP blocked: a TCP hop's source).
        self.observed: Endpoint | None = None
        self._started = False
        self._closed = False

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    @property
    def mode(self) -> Mode:
        return self.engine.mode

    @property
    def size(self) -> int:
        """How many peers the graph holds."""
        return len(self.engine.table)

    def knows(self, peer: NodeId) -> bool:
        """Whether ``peer`` is in the graph."""
        return peer in self.engine.table

    def reached_at(self, peer: NodeId) -> Endpoint | None:
        """Where this node reached ``peer`` by dialling it (an outbound hop authenticated
        there), if it has: an address others can dial too, unlike one it was only seen at."""
        entry = self.engine.table.get(peer)
        return None if entry is None else entry.reachable_at

    def _save_mode(self, mode: Mode) -> None:
        """Keeps the mode found out, so a restarted server answers from its first second (and
        is checked again after it re-joined)."""
        if self.fixed_mode is None and self._saved_mode != int(mode):
            self.store.save_mode(int(mode))
            self._saved_mode = int(mode)

    def _local_address(self) -> Endpoint | None:
        address = self.udp.address
        return None if address is None else address.endpoint

    def _restored_mode(self) -> Mode:
        saved = self._saved_mode
        return (
            Mode(saved) if saved is not None and saved in Mode._value2member_map_ else Mode.CLIENT
        )

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> DhtService:
        self.persistence.restore(self._loop.time())
        # admit=False: the DHT decides on the authenticated hop peer itself; a policy on a
        # service admits only secure-channel peers, and DHT RPCs travel over hops.
        self.router.register(DHT_SERVICE, self._handle, admit=False)
        self._started = True
        self._flush_handle = self._loop.call_later(FLUSH_INTERVAL, self._flush_tick)
        self._pump()
        log.info("dht.started", node_id=self.node_id.short(), peers=len(self.engine.table))
        return self

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        self._upkeep_timer.cancel()
        self.maintenance.close()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self._started:
            self.router.unregister(DHT_SERVICE)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            self.persistence.flush()
        futures: list[asyncio.Future[Any]] = [
            *self._lookups.values(),
            *self._published.values(),
            *self._attempts,
        ]
        for future in futures:
            if not future.done():
                future.cancel()

    # -- the way in -------------------------------------------------------------------

    def on_transport_event(self, event: object) -> None:
        """Subscribe this to the node's event bus: authenticated hops enter the graph (UDP
        ones; TCP ones as the module's docstring says)."""
        if self._closed or not isinstance(event, HopAuthenticated):
            return
        if event.transport != "udp" and not self._tcp_counts(event):
            return
        # A hop dialled over a punched address reached the peer only through the hole its own
        # NAT opened for this node: it is seen there, as if it had dialled in, never proven
        # reachable there (issue 18: a client must not become a "server" at its NAT address).
        direction = "inbound" if event.punched else event.direction
        self.engine.on_authenticated(event.node_id, event.remote, direction, self._loop.time())
        self._pump()

    def _tcp_counts(self, event: HopAuthenticated) -> bool:
        outbound = event.direction == "outbound"
        return outbound and self.hops.dialled_over_tcp(event.node_id, event.remote)

    async def _handle(self, message: Message) -> None:
        peer = message.local.hop_peer
        if peer is None or message.is_error:
            return  # local senders have no NodeId to answer; errors are never answered
        if not sent_by_hop_peer(message):
            # Passed on by the hop's peer, not sent by it: whoever sent it may not speak in
            # its name (a mode, a dial-back), and is not answered through it either.
            log.debug("dht.routed_request", via=peer.short())
            return
        try:
            rpc = decode_rpc(message.payload)
        except WireError as exc:
            answer: Answer = DhtError(b"\0" * 8, self.mode, DhtErrorCode.MALFORMED, str(exc))
            await self._reply(message, answer)
            return
        if not is_request(rpc) or not sent_by_hop_peer(message, rpc.txid):
            return  # answers come to the per-request reply addresses, not here
        link = self.hops.link_of(message)
        if link is None:
            await self._reply(
                message,
                DhtError(rpc.txid, self.mode, DhtErrorCode.UNSUPPORTED, "DHT RPCs run over hops"),
            )
            return
        if isinstance(rpc, Ping) and rpc.nonce is not None:
            self.maintenance.on_ping_nonce(rpc.nonce, inbound=link.direction == "inbound")
        now = self._loop.time()
        size = len(message.payload)
        result = self.engine.on_request(peer, link.remote, rpc, now, size=size)  # type: ignore[arg-type]
        self._pump()
        if isinstance(result, DialBackJob):
            # Dialling takes seconds: never hold the worker's mailbox for it.
            self._spawn(self._answer_dial_back(message, result))
        else:
            await self._reply(message, result)

    async def _answer_dial_back(self, message: Message, job: DialBackJob) -> None:
        answer = await self.hops.dial_back(job, self.mode, self.engine.rng)
        await self._reply(message, answer)

    async def _reply(self, message: Message, answer: Answer) -> None:
        with contextlib.suppress(RoutingError, WireError, ValueError):
            await self.router.reply(message, encode_rpc(answer))

    # -- requests ---------------------------------------------------------------------

    def live_link(self, peer: NodeId) -> Hop | None:
        """An open UDP hop to ``peer`` that is not under suspicion (see :mod:`.hops`)."""
        return self.hops.live_link(peer)

    async def request(
        self,
        peer: NodeId,
        address: Endpoint | None,
        request: Request,
        *,
        timeout: float | None = None,
        fresh: bool = False,
    ) -> Answer:
        """Sends one DHT request to ``peer`` and returns its answer. Over a live hop to
        ``peer`` if there is one (and not ``fresh``), else over a new hop to ``address``
        pinned to ``peer``. RemoteError when it cannot be delivered or answered."""
        return await self.hops.request(peer, address, request, timeout=timeout, fresh=fresh)

    async def _execute(self, command: SendRequest) -> None:
        try:
            answer, size = await self.hops.exchange(
                command.peer,
                command.address,
                command.request,
                fresh=command.fresh,
                dial_timeout=command.dial_timeout,
            )
        except RemoteError as exc:
            log.debug("dht.request_failed", peer=command.peer.short(), reason=exc.text)
            refused = exc.code == ErrorCode.AUTH_FAILED
            self.engine.on_failure(command.txid, self._loop.time(), refused=refused)
        else:
            now = self._loop.time()
            self._note_observed(answer)
            self.engine.on_answer(command.txid, command.peer, answer, now, size=size)
        self._pump()

    def _note_observed(self, answer: Answer | None) -> None:
        if isinstance(answer, Pong) and answer.observed is not None:
            self.observed = answer.observed

    async def _quiet_ping(self, node_id: NodeId) -> None:
        with contextlib.suppress(RemoteError):
            await self.ping(node_id)

    # -- the engine's output --------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pump(self) -> None:
        """Drains both cores (the engine, and the upkeep that drives it and hears its
        events) until neither has output, then re-arms their timers (pattern 1)."""
        if self._closed:
            return
        engine, upkeep = self.engine, self.maintenance
        while True:
            engine_commands, engine_events = engine.commands(), engine.events()
            for command in engine_commands:
                if isinstance(command, SendRequest):
                    self._spawn(self._execute(command))
                elif isinstance(command, PersistSequence):
                    self.store.save_sequence(command.sequence)
            for event in engine_events:
                self._engine_event(event)
                upkeep.on_engine_event(event, self._loop.time())
            upkeep_commands, upkeep_events = upkeep.commands(), upkeep.events()
            for upkeep_command in upkeep_commands:
                if isinstance(upkeep_command, AskPeer):
                    self._spawn(self._ask(upkeep_command))
                elif isinstance(upkeep_command, SaveMode):
                    self._save_mode(upkeep_command.mode)
                elif isinstance(upkeep_command, Announce):
                    for peer in upkeep_command.peers:
                        self._spawn(self._quiet_ping(peer))
            for upkeep_event in upkeep_events:
                self._upkeep_event(upkeep_event)
            if not (engine_commands or engine_events or upkeep_commands or upkeep_events):
                break
        self._timer.follow(engine.next_deadline())
        self._upkeep_timer.follow(upkeep.next_deadline())

    def _engine_event(self, event: EngineEvent) -> None:
        if isinstance(event, LookupFinished):
            future = self._lookups.pop(event.lookup_id, None)
            if future is not None and not future.done():
                future.set_result(event.result)
            if event.purpose == Purpose.USER:
                log.debug("dht.lookup", target=event.result.target.short())
        elif isinstance(event, Published):
            log.info(
                "dht.published",
                sequence=event.sequence,
                stored_at=event.stored_at,
                asked=event.asked,
            )
            future_published = self._published.pop(event.sequence, None)
            if future_published is not None and not future_published.done():
                future_published.set_result(event)

    def _upkeep_event(self, event: MaintenanceEvent) -> None:
        if isinstance(event, JoinAttempted):
            attempts, self._attempts = self._attempts, []
            for future in attempts:
                if not future.done():
                    future.set_result(event.peers)
        elif isinstance(event, FirstNode):
            log.info("dht.first_node", mode=event.mode.name.lower())
        elif isinstance(event, JoinSlow):
            log.warning("dht.join_slow", peers=event.peers)
        elif isinstance(event, GraphJoined):
            log.info("dht.joined", peers=event.peers, mode=event.mode.name.lower())
        elif isinstance(event, JoinRetry):
            reason = "no seed or saved peer answered"
            log.info("dht.join_retry", reason=reason, delay=round(event.delay, 1))
        elif isinstance(event, ModeFound):
            mode = event.mode.name.lower()
            if event.reason is not None:
                log.info("dht.mode", mode=mode, reason=event.reason)
            else:
                log.info("dht.mode", mode=mode, answers=event.answers)
        elif isinstance(event, PublishFailed):
            log.info("dht.publish_failed", reason=event.reason)

    async def _ask(self, command: AskPeer) -> None:
        answer: Answer | None
        try:
            answer = await self.request(
                command.peer, command.address, command.request, timeout=command.timeout
            )
        except RemoteError:
            answer = None
        self._note_observed(answer)
        self.maintenance.on_answer(command.txid, answer, self._loop.time())
        self._pump()

    def _on_timer(self, now: float) -> None:
        self.engine.on_timer(now)
        self._pump()

    def _on_upkeep_timer(self, now: float) -> None:
        self.maintenance.on_timer(now)
        self._pump()

    # -- operations ---------------------------------------------------------------------

    def maintain(
        self, seeds: Iterable[tuple[NodeId, Endpoint]], *, record: Callable[[], RecordContent]
    ) -> None:
        """Starts the node graph's upkeep in the background (once; later calls do nothing):
        join through ``seeds`` or the graph restored, retried with backoff until someone
        answered (a node with neither is the first of its network: a server at once), then
        keep the mode found and the record (``record``: what it would say now) up to date."""
        self.maintenance.maintain(list(seeds), self._loop.time(), record=record)
        self._pump()

    def record_changed(self) -> None:
        """The node's record may say something new: publish now if so (not at the next
        5 s tick)."""
        self.maintenance.record_changed(self._loop.time())
        self._pump()

    def join_status(self) -> str:
        """``joined``, ``first node of its network``, or ``joining (seed ...: no answer for
        N s)``."""
        return self.maintenance.status(self._loop.time())

    async def join(
        self, seeds: Iterable[tuple[NodeId, Endpoint]] = (), *, timeout: float = 30.0
    ) -> int:
        """One join through ``seeds`` (or from the graph); returns the graph's size. With no
        fixed mode, asks for a dial-back afterwards. MaintenanceBusyError while a join or the
        node's own upkeep (:meth:`maintain`) is under way."""
        attempt: asyncio.Future[int] = self._loop.create_future()
        self.maintenance.join(list(seeds), self._loop.time(), timeout=timeout)
        self._attempts.append(attempt)
        self._pump()
        return await attempt

    async def lookup(
        self,
        target: NodeId,
        *,
        kind: LookupKind = LookupKind.FIND_NODE,
        stop_at_target: bool = False,
        timeout: float = 30.0,
    ) -> LookupDone:
        future: asyncio.Future[LookupDone] = self._loop.create_future()
        try:
            lookup_id = self.engine.start_lookup(
                target, self._loop.time(), kind=kind, stop_at_target=stop_at_target
            )
        except LookupLimitError as exc:
            raise RemoteError(ErrorCode.BUSY, str(exc)) from None
        self._lookups[lookup_id] = future
        self._pump()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._lookups.pop(lookup_id, None)
            raise RemoteError(
                ErrorCode.TIMEOUT, f"the lookup of {target.short()} timed out"
            ) from None

    async def find(self, node_id: NodeId, *, timeout: float = 30.0) -> FindResult:
        """Where ``node_id`` is: a FIND_VALUE lookup for its record that stops as soon as the
        node itself answers or a valid record is found."""
        done = await self.lookup(
            node_id, kind=LookupKind.FIND_VALUE, stop_at_target=True, timeout=timeout
        )
        entry = self.engine.table.get(node_id)
        record = done.record if isinstance(done.record, PeerRecord) else None
        addresses: list[Endpoint] = []
        for contact in done.closest:
            if contact.node_id == node_id:
                addresses.extend(contact.addresses)
        if entry is not None:
            addresses.extend(a for a in entry.addresses if a not in addresses)
        if record is not None:
            addresses.extend(a for a in record.direct if a not in addresses)
        # Found: it answered this lookup, or its signed record was found. A graph entry alone
        # (perhaps of a node long gone) only adds addresses to try.
        answered = any(contact.node_id == node_id for contact in done.closest)
        found = answered or record is not None
        return FindResult(node_id, found, tuple(addresses), record, done.stats, entry is not None)

    async def publish(
        self, content: RecordContent | None = None, *, timeout: float = 30.0
    ) -> Published:
        """Publishes this node's signed record (by default: its UDP address) at the k
        closest servers; it is republished before it expires."""
        if content is None:
            address = self.udp.address
            direct = ((address.host, address.port),) if address is not None else ()
            content = RecordContent(direct=direct)
        future: asyncio.Future[Published] = self._loop.create_future()
        self.engine.publish(content, self._loop.time())
        self._published[self.engine.publisher.sequence] = future
        self._pump()
        return await asyncio.wait_for(future, timeout)

    async def ping(self, node_id: NodeId, address: Endpoint | None = None) -> float:
        """An authenticated round trip to ``node_id``; seconds. RemoteError if none."""
        if address is None:
            entry = self.engine.table.get(node_id)
            address = entry.address if entry is not None else None
        started = self._loop.time()
        answer = await self.request(node_id, address, Ping(self.engine.rng.randbytes(8), self.mode))
        if not isinstance(answer, Pong):
            raise RemoteError(ErrorCode.REFUSED, f"{node_id.short()} answered {answer}")
        rtt = self._loop.time() - started
        self.engine.rtt.sample(node_id, rtt)
        return rtt

    async def add(
        self, node_id: NodeId, address: Endpoint, *, force: bool = False, ping: bool = True
    ) -> Entry | None:
        """``peer add``: contacts the peer, which enters the graph once it proved its NodeId
        (evicting the bucket's oldest if ``force``). Without ``ping`` it is only a hint for
        lookups until some hop to it authenticates."""
        if not ping:
            self.engine.add_hint(node_id, address)
            return None
        # A fresh hop to the address given, even with a live hop to the peer elsewhere: what
        # enters the graph is the address proven. The hop authenticates (inserting the peer)
        # before the ping's answer arrives.
        self.engine.expect_manual(node_id, force=force)
        started = self._loop.time()
        try:
            answer = await self.request(
                node_id, address, Ping(self.engine.rng.randbytes(8), self.mode), fresh=True
            )
            if self.engine.manual_pending(node_id):
                # The hop to that address was up already (one outbound hop per address), so
                # no new authentication came: its authenticated answer is the same proof.
                self.engine.on_authenticated(node_id, address, "outbound", self._loop.time())
        finally:
            self.engine.forget_manual(node_id)
            self._pump()
        if not isinstance(answer, Pong):
            raise RemoteError(ErrorCode.REFUSED, f"{node_id.short()} answered {answer}")
        self.engine.rtt.sample(node_id, self._loop.time() - started)
        return self.engine.table.get(node_id)

    def remove(self, node_id: NodeId) -> bool:
        removed = self.engine.remove(node_id)
        self._pump()
        return removed

    def peers(self) -> list[dict[str, Any]]:
        now = self._loop.time()
        return [self._describe(e, now) for e in self.engine.table.entries()]

    def _describe(self, entry: Entry, now: float) -> dict[str, Any]:
        return {
            "node_id": str(entry.node_id),
            "addresses": [f"{h}:{p}" for h, p in entry.addresses],
            "bucket": self.engine.table.bucket_of(entry.node_id),
            "last_seen": round(entry.last_seen + self.wall_offset, 3),
            "last_seen_ago": round(now - entry.last_seen, 3),
            "mode": entry.mode.name.lower(),
            "learned": entry.learned.value,
        }

    # -- persistence --------------------------------------------------------------------

    def _flush_tick(self) -> None:
        if self._closed:
            return
        try:
            self.persistence.flush()
        except Exception:
            log.exception("dht.flush_failed")
        self._flush_handle = self._loop.call_later(FLUSH_INTERVAL, self._flush_tick)

    # -- what other layers read (nothing outside dht/ touches the table) -------------------

    def servers(self, count: int) -> list[Entry]:
        """Up to ``count`` reachable nodes of the graph, closest to this node first."""
        return self.engine.table.closest(self.node_id, count, exclude=self.node_id)

    def srtt(self, node_id: NodeId) -> float | None:
        """The smoothed round trip measured to ``node_id``, if any."""
        return self.engine.rtt.srtt(node_id)


__all__ = ["DHT_SERVICE", "DhtService", "FindResult"]
