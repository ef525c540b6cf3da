"""The router: delivers each message to a local worker or hands it to a transport.

The decision is the pure function :func:`next_hop`; :class:`Router` adds worker mailboxes
(one task per worker, messages handled in order) and error replies: a message that cannot be
delivered is answered along its return route with an ERROR message saying why, unless it is
itself an error (so errors never loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
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
#: (worker name, authenticated identity or None) -> None to admit, or why it is refused.
Admission = Callable[[str, NodeId | None], str | None]

__all__ = [
    "FORWARD_RESOURCE",
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
            await self.route(replace(message, onward=(*prefix, *message.onward[1:])))
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
