"""The secure channel's liveness core, with a fake clock."""

from __future__ import annotations

import random

import pytest

from meshkey.channel.liveness import (
    BecameReachable,
    BecameUnreachable,
    ChannelLiveness,
    Expired,
    HandshakeExpired,
    Health,
    LivenessConfig,
    Rehandshake,
    SendPing,
)

CONFIG = LivenessConfig(
    keepalive_interval=20,
    probe_quiet=0.2,
    answer_timeout=3,
    rehandshake_after=2,
    responder_dead_after=90,
    retry_first=1,
    retry_max=8,
)


def health(live: ChannelLiveness) -> Health:
    """Read through a call: mypy would otherwise keep the first narrowing of the attribute."""
    return live.health


def core(initiator: bool = True) -> ChannelLiveness:
    return ChannelLiveness(initiator, 0.0, CONFIG, rng=random.Random(1))


def test_the_initiator_keeps_an_idle_channel_alive_with_one_ping_per_interval() -> None:
    live = core()
    assert live.next_deadline() == 20
    live.on_timer(20)
    assert live.commands() == [SendPing()]
    live.heard(20.05, pong=True)
    assert live.rtt is not None and abs(live.rtt - 0.05) < 1e-9
    assert live.next_deadline() == 40.05
    live.on_timer(30)  # early wake-up: nothing due
    assert live.commands() == [] and live.events() == []


def test_a_send_into_silence_is_probed_and_a_silent_peer_becomes_unreachable() -> None:
    live = core()
    live.sent(5.0)
    assert live.commands() == [SendPing()]
    assert live.next_deadline() == 8.0
    live.sent(5.1)  # one probe at a time
    assert live.commands() == []
    live.on_timer(8.0)
    [event] = live.events()
    assert isinstance(event, BecameUnreachable) and "did not answer" in event.reason
    assert health(live) is Health.UNREACHABLE
    # It keeps trying with backoff, and the first authentic message makes it open again.
    retry_at = live.next_deadline()
    assert retry_at is not None and 8.8 <= retry_at <= 9.2
    live.on_timer(retry_at)
    assert live.commands() == [SendPing()]
    live.heard(retry_at + 0.1, pong=True)
    assert live.events() == [BecameReachable()]
    assert health(live) is Health.OPEN and live.reason is None


def test_busy_traffic_needs_no_probe() -> None:
    live = core()
    live.heard(10.0)
    live.sent(10.1)  # heard 100 ms ago
    assert live.commands() == []


def test_repeated_silence_makes_the_initiator_rehandshake_once() -> None:
    live = core()
    live.sent(1.0)
    live.on_timer(4.0)  # first miss
    live.events()
    live.commands()
    retry_at = live.next_deadline()
    assert retry_at is not None
    live.on_timer(retry_at)
    assert live.commands() == [SendPing()]
    live.on_timer(retry_at + 3)  # second miss
    [command] = live.commands()
    assert isinstance(command, Rehandshake)
    assert live.next_deadline() is None  # waiting for the handshake, not pinging
    live.rehandshake_done(20.0, False, "no handshake answer in time")
    assert health(live) is Health.UNREACHABLE and live.reason == "no handshake answer in time"
    assert live.next_deadline() is not None
    live.rehandshake_done(30.0, True)
    assert health(live) is Health.OPEN


def test_a_far_node_that_forgot_the_channel_triggers_a_rehandshake_at_once() -> None:
    live = core()
    live.session_unknown(5.0, "the peer no longer knows this channel")
    assert [type(e) for e in live.events()] == [BecameUnreachable]
    assert [type(c) for c in live.commands()] == [Rehandshake]
    responder = core(initiator=False)
    responder.session_unknown(5.0, "gone")  # a responder cannot re-handshake
    assert responder.commands() == []


def test_a_route_error_makes_sends_fail_fast_until_the_peer_is_heard() -> None:
    live = core()
    live.route_error(2.0, "relay 'blue' is offline")
    assert health(live) is Health.UNREACHABLE and live.reason == "relay 'blue' is offline"
    assert live.commands() == [SendPing()]  # checked, since anyone on the route can lie
    live.heard(2.1, pong=True)
    assert health(live) is Health.OPEN


def test_a_responder_never_pings_and_expires_when_its_initiator_goes_quiet() -> None:
    live = core(initiator=False)
    assert live.next_deadline() == 90
    live.heard(50)
    assert live.next_deadline() == 140
    live.on_timer(140)
    [expired] = live.events()
    assert isinstance(expired, Expired) and "not heard from for 90s" in expired.reason
    assert live.commands() == []
    assert live.next_deadline() is None
    live.on_timer(500)
    assert live.events() == []  # expires once


def test_a_send_on_a_busy_channel_is_checked_a_little_later() -> None:
    """The peer answered 50 ms ago, then died: the next send must still be noticed."""
    live = core()
    live.heard(10.0)
    live.sent(10.05)
    assert live.commands() == []  # no ping yet: the reply will probably come
    assert live.next_deadline() == 10.25
    live.on_timer(10.25)
    assert live.commands() == [SendPing()]
    assert live.next_deadline() == 13.25
    live.on_timer(13.25)
    assert [type(e) for e in live.events()] == [BecameUnreachable]
    quiet = core()
    quiet.heard(10.0)
    quiet.sent(10.05)
    quiet.heard(10.06)  # the reply came: nothing to do
    assert quiet.next_deadline() == pytest.approx(30.06)  # only the keepalive


def test_a_half_open_handshake_expires_at_its_deadline_unless_it_finished() -> None:
    half_open = ChannelLiveness(False, 0.0, CONFIG, rng=random.Random(1), handshake_by=10.0)
    assert half_open.next_deadline() == 10.0  # before the responder's 90 s expiry
    half_open.on_timer(9.99)
    assert half_open.events() == []
    half_open.on_timer(10.0)
    assert half_open.events() == [HandshakeExpired()]
    assert half_open.next_deadline() is None
    half_open.on_timer(200.0)
    assert half_open.events() == []  # once
    finished = ChannelLiveness(False, 0.0, CONFIG, rng=random.Random(1), handshake_by=10.0)
    finished.heard(3.0)
    finished.handshake_done()
    assert finished.next_deadline() == 93.0  # only the responder's own expiry is left
    finished.on_timer(10.0)
    assert finished.events() == []
