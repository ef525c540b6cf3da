"""Dialling a known key (issue 20) between real nodes over UDP on loopback, through a relay:
Noise IK opens after one relayed round trip, a stale key falls back to XX and connects, a
replayed IK_HELLO opens nothing, an impostor is refused, and early data crosses both ways.
A worker on the relay node watches (and may replay) what crosses it, as the relay could."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshkey import Node, RemoteError
from meshkey.channel.manager import Channel, ChannelState, PathHooks
from meshkey.channel.session import StaticKey
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import Route, ServiceAddress, parse_route
from meshkey.routing.message import Message
from meshkey.wire.channel import ChannelKind, peek_kind
from meshkey.wire.message import ErrorCode

pytestmark = pytest.mark.integration


@dataclass
class Watch:
    """On green, on the route between yellow and blue's relay: passes everything on (both
    ways), noting each channel payload's kind; replays IK_HELLOs when told to."""

    node: Node
    kinds: list[ChannelKind | None] = field(default_factory=list)
    replay_ik_hello: bool = False

    async def handle(self, message: Message) -> None:
        onward = message.step().with_return(ServiceAddress("watch"))
        kind = peek_kind(onward.payload)
        self.kinds.append(kind)
        await self.node.router.route(onward)
        if self.replay_ik_hello and kind is ChannelKind.IK_HELLO:
            await self.node.router.route(onward)


@dataclass
class Lab:
    green: Node
    blue: Node
    yellow: Node
    watch: Watch
    listener: Route  # blue's api, from yellow, through green's watch and blue's relay
    echoed: list[bytes]

    async def dial(self, **options: Any) -> Channel:
        options.setdefault("no_direct", True)
        return await self.yellow.channels.create(self.listener, **options)

    async def echo(self, channel: Channel, payload: bytes) -> bytes:
        return await self.yellow.send(f"/service/{channel.address}/service/shout", payload)


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async with (
        Node(name="green") as green,
        Node(tcp=None, name="blue") as blue,
        Node(tcp=None, name="yellow") as yellow,
    ):
        watch = Watch(green)
        green.register_worker("watch", watch.handle)
        echoed: list[bytes] = []

        async def echo(message: Message) -> None:
            echoed.append(message.payload)
            await blue.router.reply(message, message.payload.upper())

        blue.register_worker("shout", echo)
        g = str(green.addresses[0])
        await blue.create_relay("blue", g)
        listener = parse_route(f"{g}/service/watch/service/forward_to_blue/service/api")
        yield Lab(green, blue, yellow, watch, listener, echoed)


def handshake_kinds(watch: Watch) -> list[ChannelKind | None]:
    sealed = {ChannelKind.DATA, ChannelKind.PING, ChannelKind.PONG, ChannelKind.CONFIRM}
    return [kind for kind in watch.kinds if kind not in sealed]


async def test_ik_through_a_relay_opens_after_one_relayed_round_trip(lab: Lab) -> None:
    blue_id = lab.blue.identity.node_id
    channel = await lab.dial(
        authorized=frozenset({blue_id}), responder_key=lab.blue.channels.static.public
    )
    # When create() returned, one answer had crossed the relay (XX waits for two).
    assert lab.watch.kinds[:2] == [ChannelKind.IK_HELLO, ChannelKind.IK_REPLY]
    assert ChannelKind.HELLO_REPLY not in lab.watch.kinds
    assert channel.handshake == "IK" and channel.peer == blue_id
    assert await lab.echo(channel, b"one round trip") == b"ONE ROUND TRIP"
    [blue_end] = [c for c in lab.blue.channels.channels() if c.listener == "api"]
    assert blue_end.state is ChannelState.OPEN and blue_end.peer == lab.yellow.identity.node_id
    assert handshake_kinds(lab.watch) == [ChannelKind.IK_HELLO, ChannelKind.IK_REPLY]


async def test_a_stale_key_falls_back_to_xx_through_the_relay_and_connects(lab: Lab) -> None:
    stale = StaticKey(lab.blue.identity).public  # what an old record of blue's would say
    channel = await lab.dial(responder_key=stale, timeout=10)
    assert handshake_kinds(lab.watch) == [
        ChannelKind.IK_HELLO,
        ChannelKind.USE_XX,
        ChannelKind.HELLO,
        ChannelKind.HELLO_REPLY,
        ChannelKind.FINISH,
    ]
    assert channel.handshake.startswith("XX (fell back from IK")
    assert await lab.echo(channel, b"still there") == b"STILL THERE"


async def test_a_replayed_ik_hello_opens_no_second_channel(lab: Lab) -> None:
    lab.watch.replay_ik_hello = True
    channel = await lab.dial(responder_key=lab.blue.channels.static.public)
    assert await lab.echo(channel, b"once") == b"ONCE"
    await asyncio.sleep(0.2)  # anything the replay set off has arrived by now
    assert ChannelKind.USE_XX in lab.watch.kinds  # the replay was answered, not used
    assert channel.state is ChannelState.OPEN  # and its answer did not hurt the channel
    assert [c.state for c in lab.blue.channels.channels() if c.listener == "api"] == [
        ChannelState.OPEN
    ]
    assert await lab.echo(channel, b"twice") == b"TWICE"
    assert lab.echoed == [b"once", b"twice"]


async def test_a_listener_without_the_key_cannot_pose_as_its_owner(lab: Lab) -> None:
    """Yellow dials green's own listener believing it is blue's: green cannot read the
    IK_HELLO, and over XX it proves green's identity, which yellow refuses."""
    green_api = parse_route(f"{lab.green.addresses[0]}/service/api")
    with pytest.raises(RemoteError, match="not among the authorized") as info:
        await lab.yellow.channels.create(
            green_api,
            authorized=frozenset({lab.blue.identity.node_id}),
            responder_key=lab.blue.channels.static.public,
        )
    assert info.value.code == ErrorCode.REFUSED


@dataclass
class EarlyData:
    """The node's own path manager, with early data hooks added on top."""

    paths: PathHooks
    give: bytes
    got: list[tuple[NodeId, bytes, bool]] = field(default_factory=list)

    def handshake_payload(self, peer: NodeId | None, initiator: bool) -> bytes:
        return self.give

    def on_handshake_payload(self, peer: NodeId, data: bytes, initiator: bool) -> None:
        self.got.append((peer, data, initiator))

    def direct_route(self, peer: NodeId) -> Route | None:
        return self.paths.direct_route(peer)

    def is_direct_link(self, worker: str, peer: NodeId) -> bool:
        return self.paths.is_direct_link(worker, peer)

    def heard_from(self, peer: NodeId, worker: str | None) -> None:
        self.paths.heard_from(peer, worker)

    def channel_opened(self, peer: NodeId, address: str, no_direct: bool) -> None:
        self.paths.channel_opened(peer, address, no_direct)

    def path_info(self, peer: NodeId) -> dict[str, Any] | None:
        return self.paths.path_info(peer)

    def channel_closed(self, peer: NodeId, address: str) -> None:
        return None

    async def peer_key(self, peer: NodeId) -> bytes | None:
        return None


async def test_early_data_crosses_the_relay_both_ways_encrypted(lab: Lab) -> None:
    yellow_paths, blue_paths = lab.yellow.channels.paths, lab.blue.channels.paths
    assert yellow_paths is not None and blue_paths is not None
    yellow_hooks = EarlyData(yellow_paths, b"yellow's candidates " * 20)
    blue_hooks = EarlyData(blue_paths, b"blue's candidates " * 20)
    lab.yellow.channels.paths, lab.blue.channels.paths = yellow_hooks, blue_hooks
    seen: list[bytes] = []
    watch = lab.watch.handle

    async def recording(message: Message) -> None:
        seen.append(message.payload)
        await watch(message)

    lab.green.router.unregister("watch")
    lab.green.register_worker("watch", recording)
    # (A channel kept off direct paths carries no early data: it is the punch's.)
    channel = await lab.dial(responder_key=lab.blue.channels.static.public, no_direct=False)
    yellow_id, blue_id = lab.yellow.identity.node_id, lab.blue.identity.node_id
    assert yellow_hooks.got == [(blue_id, blue_hooks.give, True)]
    assert blue_hooks.got == [(yellow_id, yellow_hooks.give, False)]
    assert not any(b"candidates" in payload for payload in seen)  # the relay saw ciphertext
    assert await lab.echo(channel, b"and data") == b"AND DATA"
