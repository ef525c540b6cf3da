"""The router: delivers each message to a local worker or hands it to a transport.

The decision is the pure function :func:`next_hop`; :class:`Router` adds worker mailboxes
(one task per worker, messages handled in order) and error replies: a message that cannot be
delivered is answered along its return route with an ERROR message saying why, unless it is
itself an error (so errors never loop).

Forwarding for others (Ockam's ``forward`` resource; DESIGN.md decision 20). A message from
another node whose route goes on to another node is passed on when the ``forward`` policy
admits its sender (open to every authenticated node until a policy names who may). Passing
it over a hop that is already open costs nothing new. *Opening* a connection for someone
else is another matter: a stranger naming an address made a node send a TLS ClientHello or
eleven 1,200-byte QUIC Initials there, to any address, for one small message. So a node
opens new connections only

- for itself (messages it originates),
- for identities a ``forward`` policy names (``policy create --resource forward --allow``),
- for programs on its own host (the hop the message came by is from a loopback address:
  the CLI, local nodes),
- to destinations the node itself knows (:attr:`Router.known_destination`, the node's hook:
  a node of its own, one in its graph) and to the paths its ``/peer/`` resolver chose,

and even then at most :data:`DIALS_PER_SENDER` a second per sender (burst
:data:`DIAL_BURST_PER_SENDER`) and :data:`DIALS_FOR_OTHERS` a second in all. Anyone else's
message is forwarded over an open hop or refused (REFUSED, saying so) before any packet
leaves: a refusal says the same for every address, open or closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.ratelimit import TokenBucket
from meshkey.routing.address import (
    NodeNameAddress,
    PeerAddress,
    Route,
    SecureAddress,
    ServiceAddress,
    TransportAddress,
)
from meshkey.routing.errors import RoutingError
from meshkey.routing.mailbox import FairMailbox
from meshkey.routing.message import Message, error_message
from meshkey.wire.frames import MAX_PAYLOAD
from meshkey.wire.message import ErrorCode, MessageKind, no_such_service_text

log = EventLogger("routing")

Handler = Callable[[Message], Awaitable[None]]
#: The policy resource that decides who may use this node as a hop to other nodes.
FORWARD_RESOURCE = "forward"
#: What the router asks its admission hook before it opens a new connection for someone
#: else: None only when a ``forward`` policy names that identity (no policy: refused).
FORWARD_DIAL = "forward.dial"
#: (worker name, authenticated identity or None) -> None to admit, or why it is refused.
Admission = Callable[[str, NodeId | None], str | None]
#: New connections opened for one sender (when it may at all), and for everyone together.
DIALS_PER_SENDER = 1.0
DIAL_BURST_PER_SENDER = 8.0
DIALS_FOR_OTHERS = 20.0
DIAL_BURST_FOR_OTHERS = 40.0
MAX_DIAL_SENDERS = 1024  # senders whose dial rate is remembered (least recent go first)

__all__ = [
    "FORWARD_DIAL",
    "FORWARD_RESOURCE",
    "OpenHopSender",
    "sends_must_not_block",
    "Admission",
    "Deliver",
    "Fail",
    "Forward",
    "Handler",
    "Router",
    "RoutingError",
    "next_hop",
]


#: True in the task of a worker that serves many peers: it must never wait for one of them.
_MUST_NOT_BLOCK: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "meshkey_sends_must_not_block", default=False
)


#: Workers whose names start with this are the node's own plumbing, never a user's service.
INTERNAL_PREFIX = "_"


def is_internal_worker(name: str) -> bool:
    return name.startswith(INTERNAL_PREFIX)


def sends_must_not_block() -> bool:
    """Whether the current sender is a shared worker, which a transport must refuse (BUSY)
    rather than make wait for a peer that does not read."""
    return _MUST_NOT_BLOCK.get()


class Transport(Protocol):
    protocol: str

    async def send(self, address: TransportAddress, message: Message) -> None:
        """Queues ``message`` (onward route already past ``address``) for the peer there.

        Raises RoutingError when it cannot even be queued; failures after queueing are
        answered by the transport itself through :meth:`Router.fail`.
        """
        ...


@runtime_checkable
class OpenHopSender(Protocol):
    """A transport that can tell an open hop from a new connection."""

    async def send_if_open(self, address: TransportAddress, message: Message) -> bool:
        """Sends over a hop already there; False (nothing sent) if it would need a new one."""
        ...


@dataclass(frozen=True, slots=True)
class Deliver:
    name: str


@dataclass(frozen=True, slots=True)
class Forward:
    address: TransportAddress
    message: Message


@dataclass(frozen=True, slots=True)
class Fail:
    code: ErrorCode
    text: str


@dataclass(frozen=True, slots=True)
class Resolve:
    """A ``/peer/NODEID`` hop: the node's peer resolver names the path."""

    node_id: NodeId


async def _no_peer_resolver(node_id: NodeId) -> Route | None:
    return None


def is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def next_hop(message: Message) -> Deliver | Forward | Fail | Resolve:
    if not message.onward:
        return Fail(ErrorCode.MALFORMED, "message has an empty onward route")
    first = message.onward[0]
    if isinstance(first, ServiceAddress):
        return Deliver(first.name)
    if isinstance(first, TransportAddress):
        return Forward(first, message.step())
    if isinstance(first, PeerAddress):
        return Resolve(first.node_id)
    # /node/NAME and /secure/LISTENER are resolved by the node that originates the message.
    assert isinstance(first, NodeNameAddress | SecureAddress)
    return Fail(ErrorCode.UNSUPPORTED, f"{first} was not resolved before sending")


class _Worker:
    __slots__ = ("admit", "handler", "inline", "name", "per_peer", "queue", "task")

    def __init__(
        self,
        name: str,
        handler: Handler,
        inline: bool,
        admit: bool,
        per_peer: bool,
        mailbox_size: int,
    ) -> None:
        self.name = name
        self.handler = handler
        self.inline = inline
        self.admit = admit
        self.per_peer = per_peer
        self.queue: FairMailbox[Message] | None = None
        self.task: asyncio.Task[None] | None = None
        if not inline:
            # A worker for one peer keeps plain order; a shared one is fair between senders.
            per_sender = mailbox_size if per_peer else max(1, mailbox_size // 4)
            self.queue = FairMailbox(per_sender, mailbox_size)


class Router:
    def __init__(
        self, node_id: NodeId, *, mailbox_size: int = 256, label: str | None = None
    ) -> None:
        self.node_id = node_id
        self._label = label or node_id.short()
        self._workers: dict[str, _Worker] = {}
        self._transports: dict[str, Transport] = {}
        self._mailbox_size = mailbox_size
        #: Decides, per message, whether a worker may receive it (policies plug in here).
        self.admission: Admission | None = None
        #: Sees every message this node routes (a debugging capture; see node.daemon).
        self.capture: Callable[[Message], None] | None = None
        #: ``/peer/NODEID`` -> the route prefix to that peer now, or None (no path known). The
        #: node injects the path manager's choice here (routing never imports it).
        self.peer_resolver: Callable[[NodeId], Awaitable[Route | None]] = _no_peer_resolver
        #: Whether this node knows ``address`` as a node's (one of its own, one in its
        #: graph): it may then open a connection there for others. The node injects it.
        self.known_destination: Callable[[TransportAddress], bool] | None = None
        self._dials_for_others = TokenBucket(DIALS_FOR_OTHERS, DIAL_BURST_FOR_OTHERS)
        self._dials_by_sender: OrderedDict[NodeId, TokenBucket] = OrderedDict()
        self._open_hop_senders: set[str] = set()  # protocols whose transport can tell

    # -- registration -----------------------------------------------------------------

    def register(
        self,
        name: str,
        handler: Handler,
        *,
        inline: bool = False,
        admit: bool = True,
        per_peer: bool = False,
    ) -> ServiceAddress:
        """Registers a worker at ``/service/NAME``.

        A mailbox worker (the default) handles its messages one at a time, in order, in its
        own task. An ``inline`` handler runs in the sender's task and must not block.
        Admission sees the identity at the far end of the secure channel a message came
        through; a worker registered with ``admit=False`` decides on its own (the relay
        registry, whose requests prove their owner by signature).

        A mailbox worker serves many peers unless ``per_peer``: its sends are then never
        allowed to wait for one peer that does not read (the transport refuses them with
        BUSY), so one slow reader cannot stop the service for everyone. A per-peer worker
        (one end of a secure channel, a portal session) waits instead: backpressure.
        """
        if name in self._workers:
            raise ValueError(f"a worker is already registered at /service/{name}")
        worker = _Worker(name, handler, inline, admit, per_peer, self._mailbox_size)
        if worker.queue is not None:
            worker.task = asyncio.get_running_loop().create_task(
                self._run_worker(worker), name=f"worker:{name}"
            )
        self._workers[name] = worker
        return ServiceAddress(name)

    def unregister(self, name: str) -> None:
        worker = self._workers.pop(name, None)
        if worker is not None and worker.task is not None:
            worker.task.cancel()

    def has_worker(self, name: str) -> bool:
        return name in self._workers

    def worker_names(self, *, internal: bool = True) -> list[str]:
        """Every worker's name; ``internal=False`` leaves out the node's own plumbing (reply
        slots, path signals, relay endpoints: names that start with ``_``, which no user
        service may take)."""
        return sorted(n for n in self._workers if internal or not is_internal_worker(n))

    def add_transport(self, transport: Transport) -> None:
        self._transports[transport.protocol] = transport
        if isinstance(transport, OpenHopSender):
            self._open_hop_senders.add(transport.protocol)

    async def close(self) -> None:
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        self._workers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- routing ----------------------------------------------------------------------

    async def route(self, message: Message) -> None:
        """Delivers or forwards ``message``; never raises for a routing failure."""
        await self._route(message)

    async def _route(self, message: Message, *, resolved: bool = False) -> None:
        """``resolved``: the route's first hop is the peer resolver's choice, not the
        sender's."""
        if self.capture is not None:
            self.capture(message)
        decision = next_hop(message)
        if isinstance(decision, Deliver):
            worker = self._workers.get(decision.name)
            if worker is None:
                await self.fail(
                    message,
                    ErrorCode.NO_SUCH_SERVICE,
                    no_such_service_text(self._label, decision.name),
                )
                return
            refusal = self._admit(worker, message)
            if refusal is not None:
                log.warning("message.refused", service=worker.name, reason=refusal)
                await self.fail(message, ErrorCode.REFUSED, f"node {self._label}: {refusal}")
            elif worker.queue is not None:
                sender = message.local.channel_peer or message.local.hop_peer
                if message.is_error:
                    # Errors never wait: the worker may be the one whose send caused this
                    # error, in its own task, and waiting on its own full mailbox would be
                    # a deadlock. An error that finds no room is dropped (none is answered).
                    if not worker.queue.try_put(sender, message):
                        log.debug("error.dropped", service=worker.name, reason="mailbox full")
                else:
                    await worker.queue.put(sender, message)
            else:
                await self._call(worker, message)
        elif isinstance(decision, Forward):
            refusal = self._admit_forward(message)
            if refusal is not None:
                await self.fail(message, ErrorCode.REFUSED, f"node {self._label}: {refusal}")
                return
            transport = self._transports.get(decision.address.protocol)
            if transport is None:
                await self.fail(
                    message,
                    ErrorCode.UNSUPPORTED,
                    f"node {self._label} has no {decision.address.protocol} transport",
                )
                return
            try:
                if await self._forward_for_others(transport, decision, message, resolved):
                    return
                await transport.send(decision.address, decision.message)
            except RoutingError as exc:
                await self.fail(message, exc.code, exc.text)
        elif isinstance(decision, Resolve):
            prefix = await self.peer_resolver(decision.node_id)
            if prefix is None or any(isinstance(a, PeerAddress) for a in prefix):
                await self.fail(
                    message,
                    ErrorCode.UNREACHABLE,
                    f"node {self._label} knows no path to {decision.node_id.short()}",
                )
                return
            await self._route(
                replace(message, onward=(*prefix, *message.onward[1:])), resolved=True
            )
        else:
            await self.fail(message, decision.code, f"node {self._label}: {decision.text}")

    def _admit_forward(self, message: Message) -> str | None:
        """Whether this node may pass ``message`` on to another node for whoever sent it.

        Messages this node originates are always sent; for anyone else, forwarding is the
        policy resource :data:`FORWARD_RESOURCE` (open unless a policy names who may).
        """
        identity = message.local.channel_peer or message.local.hop_peer
        if identity is None or self.admission is None:
            return None
        refusal = self.admission(FORWARD_RESOURCE, identity)
        if refusal is not None:
            log.warning("forward.refused", peer=identity, reason=refusal)
            return f"does not forward messages for {identity.short()}"
        return None

    async def _forward_for_others(
        self, transport: Transport, decision: Forward, message: Message, resolved: bool
    ) -> bool:
        """For a message from another node: True once it went over a hop that is already
        open; False when a new connection may be opened for it (the caller sends); raises
        RoutingError (REFUSED, BUSY) when none may (see the module docstring)."""
        sender = message.local.channel_peer or message.local.hop_peer
        if sender is None or transport.protocol not in self._open_hop_senders:
            return False  # this node's own message (or a transport that cannot tell)
        assert isinstance(transport, OpenHopSender)
        if await transport.send_if_open(decision.address, decision.message):
            return True
        address = decision.address
        if not (resolved or self._may_dial_for(sender, message, address)):
            log.warning("forward.dial_refused", peer=sender, address=str(address))
            raise RoutingError(
                ErrorCode.REFUSED,
                f"node {self._label} opens no new connection for {sender.short()} "
                f"(to {address}): it forwards only over connections it has, unless a "
                "'forward' policy allows that node",
            )
        now = asyncio.get_running_loop().time()
        if not self._dial_allowed(sender, now):
            log.warning("forward.dial_rate", peer=sender)
            raise RoutingError(
                ErrorCode.BUSY,
                f"node {self._label}: too many new connections for {sender.short()}; "
                "try again later",
            )
        return False

    def _may_dial_for(self, sender: NodeId, message: Message, address: TransportAddress) -> bool:
        """Whether this node opens a new connection to ``address`` for ``sender``."""
        if self.admission is not None and self.admission(FORWARD_DIAL, sender) is None:
            return True  # a forward policy names it
        remote = message.local.hop_remote
        if (
            message.local.channel_peer is None
            and remote is not None
            and is_loopback_host(remote[0])
        ):
            return True  # a program on this host
        return self.known_destination is not None and self.known_destination(address)

    def _dial_allowed(self, sender: NodeId, now: float) -> bool:
        bucket = self._dials_by_sender.get(sender)
        if bucket is None:
            bucket = TokenBucket(DIALS_PER_SENDER, DIAL_BURST_PER_SENDER)
            self._dials_by_sender[sender] = bucket
            while len(self._dials_by_sender) > MAX_DIAL_SENDERS:
                self._dials_by_sender.popitem(last=False)
        else:
            self._dials_by_sender.move_to_end(sender)
        if bucket.available(now) < 1:
            return False
        return self._dials_for_others.allow(now) and bucket.allow(now)

    def _admit(self, worker: _Worker, message: Message) -> str | None:
        if self.admission is None or not worker.admit:
            return None
        return self.admission(worker.name, message.local.channel_peer)

    async def fail(self, message: Message, code: ErrorCode, text: str) -> None:
        """Answers an undeliverable message with an error along its return route."""
        log.debug("message.failed", code=code.name, reason=text)
        if message.kind == MessageKind.ERROR or not message.return_route:
            return
        await self.route(error_message(message.return_route, code, text))

    async def reply(self, message: Message, payload: bytes) -> None:
        """Sends ``payload`` back along ``message``'s return route, from its worker.

        An error is never answered: a service that replied to one would answer the error its
        own undeliverable reply caused, and the two would bounce forever.
        """
        if message.is_error:
            log.debug("reply.to_error_dropped", service=str(message.onward[:1]))
            return
        if len(payload) > MAX_PAYLOAD:  # one limit for requests and replies
            await self.fail(
                message,
                ErrorCode.TOO_LARGE,
                f"node {self._label}: the reply of {len(payload)} bytes is over the "
                f"{MAX_PAYLOAD}-byte limit",
            )
            return
        sender = message.onward[:1]
        await self.route(Message(message.return_route, sender, payload))

    async def _call(self, worker: _Worker, message: Message) -> None:
        try:
            await worker.handler(message)
        except RoutingError as exc:
            await self.fail(message, exc.code, exc.text)
        except Exception:
            log.exception("worker.crashed", worker=worker.name)
            await self.fail(
                message, ErrorCode.INTERNAL, f"node {self._label}: service {worker.name} failed"
            )

    async def _run_worker(self, worker: _Worker) -> None:
        assert worker.queue is not None
        _MUST_NOT_BLOCK.set(not worker.per_peer)  # this task's own context
        while True:
            message = await worker.queue.get()
            await self._call(worker, message)
            # A queue that is neither full nor empty never suspends its getters or putters:
            # without this, two workers feeding each other would never let the loop run.
            await asyncio.sleep(0)
