"""The transport's glue, without sockets: HopLink over an in-memory pipe (with the real hop
core), QuicLink with a scripted qh3 connection, and two QuicTransports joined by an in-memory
network (real qh3, real demultiplexing, no socket)."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any

import pytest

from meshkey.identity import Identity
from meshkey.routing.address import ServiceAddress, TransportAddress
from meshkey.routing.message import Message
from meshkey.routing.router import Router
from meshkey.transport.events import HopAuthenticated, HopClosed, HopRefused, TransportEvent
from meshkey.transport.hop import HopConnection, Liveness, Phase, Role
from meshkey.transport.link import HopLink, LinkTransport
from meshkey.transport.quic import QuicLink
from meshkey.transport.udp import QuicTransport
from meshkey.transport.udp_socket import UdpEndpoint
from meshkey.wire.frames import FrameDecoder, encode_frame
from meshkey.wire.hop import Close, CloseCode, Ping, decode_hop_frame
from meshkey.wire.message import ErrorCode
from meshkey.wire.net import Endpoint
from meshkey.wire.udp import ControlKind, Stale, decode_nudge_packet

#: Every wait in this file is bounded by this (a failure says what did not happen, instead of
#: hanging until the suite's timeout); none of them measures time.
WAIT = 5.0

# -- HopLink over an in-memory pipe ---------------------------------------------------------


class PipeTransport(LinkTransport):
    protocol = "tcp"
    hop_tag = "tcp"

    def __init__(self, identity: Identity, **kwargs: Any) -> None:
        self.events: list[TransportEvent] = []
        super().__init__(identity, Router(identity.node_id), on_event=self.events.append, **kwargs)


class PipeLink(HopLink):
    """A HopLink whose pipe is two lists: what the link wrote, and what the test feeds it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written = bytearray()
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.pipe_closed = False
        self.broken = False  # writes fail, as on a connection reset

    def _write(self, chunks: list[bytes]) -> None:
        if self.broken:
            raise OSError("connection reset by peer")
        for chunk in chunks:
            self.written += chunk

    async def _drain(self) -> None:
        return None

    async def _read(self) -> bytes:
        return await self.incoming.get()

    def _close_pipe(self) -> None:
        self.pipe_closed = True
        self.incoming.put_nowait(b"")

    def take_written(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data


SERVER = Identity.generate()
CLIENT = Identity.generate()


def inbound_link(**kwargs: Any) -> tuple[PipeTransport, PipeLink]:
    transport = PipeTransport(SERVER, **kwargs)
    return transport, PipeLink(transport, "inbound", ("192.0.2.7", 40000))


async def opened(link: PipeLink) -> HopConnection:
    """Runs the link and authenticates a client core to it over the pipe."""
    client = HopConnection(Role.CLIENT, CLIENT, "tcp", expected_peer=SERVER.node_id)
    client.certificate_verified(SERVER.node_id)
    link.spawn(link.run(), "run")
    await asyncio.sleep(0)
    client.receive_data(link.take_written())  # SERVER_HELLO
    link.incoming.put_nowait(client.data_to_send())  # CLIENT_PROOF
    await asyncio.wait_for(link.settled.wait(), WAIT)
    assert client.receive_data(link.take_written())  # AUTH_OK: the client is open too
    assert link.core.is_open and client.is_open
    return client


@pytest.mark.parametrize("broken", [False, True], ids=["pipe ok", "pipe broken"])
async def test_the_timer_fires_the_core_at_its_deadline_even_when_woken_early(
    broken: bool,
) -> None:
    """An inbound hop that never authenticates: the link's one timer follows the core's
    authentication deadline, and a wake-up before it still hands the core its deadline, so the
    core gives up (uvloop wakes early; the core would otherwise see a time not yet due). The
    core's events are handled even when writing its CLOSE fails."""
    transport, link = inbound_link(handshake_timeout=30.0)
    link.broken = broken
    deadline = link.core.next_deadline()
    assert deadline is not None and link._timer.at == deadline
    link._timer._expired()  # as if the loop woke it long before the deadline
    await asyncio.wait_for(link.settled.wait(), WAIT)
    assert link.closed and link.pipe_closed
    [refused] = transport.events
    assert isinstance(refused, HopRefused) and refused.reason == "authentication timed out"
    assert link._timer.at is None  # a closed link keeps no timer


async def test_the_timer_is_moved_only_when_the_cores_deadline_changes() -> None:
    _, link = inbound_link()
    client = await opened(link)
    first = link._timer._handle
    assert link._timer.at == link.core.next_deadline()
    link._rearm()
    assert link._timer._handle is first  # unchanged deadline: the same handle
    link.set_keepalive(True)  # the core now pings: its deadline moves earlier
    assert link._timer.at == link.core.next_deadline() and link._timer._handle is not first
    assert client.is_open
    await link.close(CloseCode.NORMAL, "done")


async def test_a_real_timer_fires_and_the_core_acts_on_it() -> None:
    """Keepalive with a short interval: the loop's own timer fires, the core's PING goes out
    on the pipe, and the timer follows the next deadline."""
    transport = PipeTransport(SERVER)
    # A short ping interval, and a peer declared dead only after a minute: a slow machine
    # delays the ping, never turns it into a close.
    transport.liveness = lambda direction: Liveness(  # type: ignore[method-assign]
        keepalive_interval=0.02, dead_after=60.0
    )
    link = PipeLink(transport, "inbound", ("192.0.2.7", 40000))
    client = await opened(link)
    link.set_keepalive(True)
    await asyncio.wait_for(_until(lambda: link.written), WAIT)
    [ping] = [decode_hop_frame(body) for body in FrameDecoder().feed(link.take_written())]
    assert isinstance(ping, Ping)
    assert link._timer.at == link.core.next_deadline() and not link.closed
    assert client.is_open
    await link.close(CloseCode.NORMAL, "done")


async def test_messages_read_before_a_protocol_error_are_still_delivered() -> None:
    """One read holds a message and then a malformed frame: the message reaches its worker,
    then the link closes with PROTOCOL_ERROR and tells the peer why."""
    transport, link = inbound_link()
    got: list[bytes] = []

    async def inbox(message: Message) -> None:
        got.append(message.payload)

    transport.router.register("inbox", inbox, inline=True)
    client = await opened(link)
    client.send_message(*Message((ServiceAddress("inbox"),), (), b"first").to_wire_parts())
    link.incoming.put_nowait(client.data_to_send() + encode_frame(b"\x99junk"))
    await asyncio.wait_for(_until(lambda: link.closed), WAIT)
    assert got == [b"first"]
    closing = [decode_hop_frame(body) for body in FrameDecoder().feed(link.take_written())]
    assert isinstance(closing[-1], Close) and closing[-1].code == CloseCode.PROTOCOL_ERROR
    assert isinstance(transport.events[-1], HopClosed)
    assert link.core.phase is Phase.CLOSED


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.001)


# -- QuicLink with a scripted qh3 connection -------------------------------------------------


class ScriptedQuic:
    """What QuicLink uses of qh3's QuicConnection: a timer, datagrams, no events."""

    def __init__(self, deadline: float) -> None:
        self.deadline: float | None = deadline
        self.timer_calls: list[float] = []
        self.outgoing: list[tuple[bytes, Endpoint]] = []

    def get_timer(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.timer_calls.append(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Endpoint]]:
        out, self.outgoing = self.outgoing, []
        return out

    def next_event(self) -> None:
        return None

    def get_send_buffer_size(self, stream_id: int) -> int:
        return 0

    def close(self, reason_phrase: str = "") -> None:
        self.deadline = None


class RecordingSocket:
    """A UdpEndpoint stand-in that keeps what was sent (and can deliver it elsewhere)."""

    def __init__(self, address: Endpoint, network: Network | None = None) -> None:
        self.address = address
        self.network = network
        self.sock: object | None = object()  # "bound"
        self.dual_stack = False
        self.family = socket.AF_INET
        self.gro = False
        self.stats: Counter[str] = Counter()
        self.sent: list[tuple[bytes, Endpoint]] = []

    def send(self, datagrams: list[bytes], address: Endpoint) -> None:
        for datagram in datagrams:
            self.send_one(datagram, address)

    def send_one(self, data: bytes, address: Endpoint, ttl: int | None = None) -> None:
        self.sent.append((data, address))
        if self.network is not None:
            self.network.carry(data, self.address, address)

    def local_host(self) -> str:
        return self.address[0]

    def close(self) -> None:
        self.sock = None


def quic_link(quic: ScriptedQuic) -> tuple[QuicLink, RecordingSocket]:
    transport = QuicTransport(SERVER, Router(SERVER.node_id))
    sock = RecordingSocket(("192.0.2.1", 4433))
    link = QuicLink(
        transport,
        "inbound",
        ("192.0.2.9", 5000),
        quic=quic,  # type: ignore[arg-type]
        endpoint=sock,  # type: ignore[arg-type]
    )
    return link, sock


async def test_qh3s_timer_is_clamped_to_its_deadline_and_rearmed_only_when_it_moves() -> None:
    """qh3 ignores a handle_timer before its deadline: the link hands it the deadline itself
    even when the loop wakes early, and re-arms only when get_timer() changes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60.0
    quic = ScriptedQuic(deadline)
    link, sock = quic_link(quic)
    link.transmit()
    armed = link._quic_timer._handle
    assert link._quic_timer.at == deadline
    link.transmit()  # a flush with the same deadline leaves the timer alone
    assert link._quic_timer._handle is armed
    quic.outgoing = [(b"\x41" + b"d" * 30, link.remote)]
    link._quic_timer._expired()  # woken long before the deadline
    assert quic.timer_calls == [deadline]
    assert sock.sent == [(b"\x41" + b"d" * 30, link.remote)]  # what the timer produced left
    assert link._quic_timer.at == deadline  # qh3 still says so: armed again
    quic.deadline = deadline + 1.0
    link.transmit()
    assert link._quic_timer.at == deadline + 1.0
    link._close_pipe()
    assert link._quic_timer.at is None


async def test_datagrams_to_one_address_leave_as_one_batch() -> None:
    quic = ScriptedQuic(asyncio.get_running_loop().time() + 60.0)
    link, sock = quic_link(quic)
    batches: list[tuple[list[bytes], Endpoint]] = []
    sock.send = lambda datagrams, address: batches.append((datagrams, address))  # type: ignore[method-assign]
    quic.outgoing = [(b"a", ("192.0.2.9", 5000)), (b"b", ("192.0.2.9", 5000))]
    link.transmit()
    assert batches == [([b"a", b"b"], ("192.0.2.9", 5000))]
    quic.outgoing = [(b"c", ("192.0.2.9", 5000)), (b"d", ("192.0.2.10", 5000))]
    link.transmit()  # a path probe elsewhere: one by one
    assert sock.sent == [(b"c", ("192.0.2.9", 5000)), (b"d", ("192.0.2.10", 5000))]
    link._close_pipe()


# -- two QuicTransports on an in-memory network ----------------------------------------------


class Network:
    """Carries datagrams between fake sockets, one loop turn later (as a network would)."""

    def __init__(self) -> None:
        self.nodes: dict[Endpoint, QuicTransport] = {}

    def attach(self, transport: QuicTransport, address: Endpoint) -> RecordingSocket:
        sock = RecordingSocket(address, self)
        transport.endpoint = sock  # type: ignore[assignment]
        transport.sockets = {0: sock}  # type: ignore[dict-item]
        transport.address = TransportAddress.from_socket(
            "udp", *address, transport.identity.node_id
        )
        self.nodes[address] = transport
        return sock

    def carry(self, data: bytes, source: Endpoint, destination: Endpoint) -> None:
        node = self.nodes.get(destination)
        if node is not None:
            loop = asyncio.get_running_loop()
            loop.call_soon(node._on_datagrams, data, len(data), source, 0)


def quic_node(network: Network, address: Endpoint) -> tuple[QuicTransport, list[TransportEvent]]:
    events: list[TransportEvent] = []
    identity = Identity.generate()
    transport = QuicTransport(identity, Router(identity.node_id), on_event=events.append)
    network.attach(transport, address)
    return transport, events


async def test_two_quic_transports_authenticate_and_carry_a_message_without_sockets() -> None:
    network = Network()
    a, a_events = quic_node(network, ("10.0.0.1", 4433))
    b, b_events = quic_node(network, ("10.0.0.2", 4433))
    got: list[bytes] = []

    async def inbox(message: Message) -> None:
        got.append(message.payload)

    b.router.register("inbox", inbox, inline=True)
    assert b.address is not None
    await a.send(b.address, Message((ServiceAddress("inbox"),), (), b"over quic"))
    await asyncio.wait_for(_until(lambda: got), WAIT)
    assert got == [b"over quic"]
    [outbound] = [e for e in a_events if isinstance(e, HopAuthenticated)]
    [inbound] = [e for e in b_events if isinstance(e, HopAuthenticated)]
    assert outbound.node_id == b.identity.node_id and outbound.direction == "outbound"
    assert inbound.node_id == a.identity.node_id and inbound.remote == ("10.0.0.1", 4433)
    await a.close()
    await asyncio.wait_for(_until(lambda: not b.links), WAIT)  # b heard the close
    await b.close()


async def test_demultiplexing_control_packets_and_strangers_short_headers() -> None:
    network = Network()
    b, _ = quic_node(network, ("10.0.0.2", 4433))
    stranger = RecordingSocket(("10.0.0.9", 777))
    heard: list[tuple[bytes, Endpoint, int]] = []
    b.register_control(0x30, lambda data, source, socket_id: heard.append((data, source, 0)))
    b._on_datagrams(b"\x30hello", 6, stranger.address, 0)
    assert heard == [(b"\x30hello", stranger.address, 0)]
    b._on_datagrams(b"\x31nobody", 7, stranger.address, 0)  # no handler: dropped
    # A short-header packet for a connection b does not have: answered with a STALE.
    packet = b"\x41" + b"c" * 8 + bytes(30)
    b._on_datagrams(packet, len(packet), stranger.address, 0)
    [(answer, to)] = b.endpoint.sent  # type: ignore[attr-defined]
    assert to == stranger.address and answer[0] == ControlKind.STALE
    assert decode_nudge_packet(answer) == Stale(b"c" * 8)
    # Too short to answer (the STALE would be larger), and an Initial that is not full size.
    b._on_datagrams(packet[:20], 20, stranger.address, 0)
    b._on_datagrams(b"\xc3\x00\x00\x00\x01\x08" + bytes(100), 106, stranger.address, 0)
    assert len(b.endpoint.sent) == 1  # type: ignore[attr-defined]
    assert not b.links


@pytest.fixture(autouse=True)
def _no_real_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may bind a real socket (the fakes must have replaced every use)."""

    def refuse(self: UdpEndpoint, host: str, port: int) -> Endpoint:
        raise AssertionError("a unit test tried to bind a real UDP socket")

    monkeypatch.setattr(UdpEndpoint, "bind", refuse)


class DialledPipeLink(PipeLink):
    """An outbound PipeLink whose "TLS" presents SERVER's certificate at once."""

    async def _connect(self) -> Any:
        return SERVER.node_id


class DiallingTransport(PipeTransport):
    def _new_outbound(self, address: TransportAddress) -> HopLink:
        return DialledPipeLink(self, "outbound", address.endpoint, address.node_id, address)


async def test_a_dial_whose_authentication_times_out_is_tried_once_more_with_what_waited() -> None:
    """The server never says SERVER_HELLO (its packets lost): the first dial times out, a
    second one takes over the queued message (nothing left the node, so nothing can arrive
    twice), and when it times out too the message fails with TIMEOUT, not AUTH_FAILED."""
    transport = DiallingTransport(CLIENT)
    answers: list[Message] = []

    async def collect(message: Message) -> None:
        answers.append(message)

    transport.router.register("_reply", collect, inline=True)
    target = TransportAddress.from_socket("tcp", "192.0.2.9", 4000, SERVER.node_id)
    message = Message((target, ServiceAddress("echo")), (ServiceAddress("_reply"),), b"hello")
    await transport.send(target, message.step())
    first = transport.outbound(target)
    await asyncio.sleep(0)
    first._timer._expired()  # the authentication deadline passed with no SERVER_HELLO
    await asyncio.wait_for(first.settled.wait(), WAIT)
    second = transport.outbound(target)
    assert first.closed and second is not first and not answers
    assert list(second._queue) == [message.step()] and second.redials_left == 0
    await asyncio.sleep(0)
    second._timer._expired()
    await asyncio.wait_for(second.settled.wait(), WAIT)
    for _ in range(10):
        if answers:
            break
        await asyncio.sleep(0)
    [answer] = answers
    code, text = answer.error()
    assert code is ErrorCode.TIMEOUT and "authentication timed out" in text


async def test_a_dial_the_peer_closes_before_authenticating_is_tried_once_more() -> None:
    """Over a lossy path the server's own (shorter) deadline can run out first and it closes
    the connection: that dial, too, is tried once more with what waited for it."""
    transport = DiallingTransport(CLIENT)
    target = TransportAddress.from_socket("tcp", "192.0.2.9", 4000, SERVER.node_id)
    message = Message((target, ServiceAddress("echo")), (ServiceAddress("_reply"),), b"hello")
    await transport.send(target, message.step())
    first = transport.outbound(target)
    assert isinstance(first, PipeLink)
    await asyncio.sleep(0)
    first.incoming.put_nowait(b"")  # the peer closed the connection
    await asyncio.wait_for(first.settled.wait(), WAIT)
    second = transport.outbound(target)
    assert first.closed and second is not first
    assert list(second._queue) == [message.step()] and second.redials_left == 0
