"""Keepalives against NAT mappings that expire as fast as a home router's: every router's
conntrack UDP timeouts are 30 s, then the lab stays silent (no application traffic) for 90 s,
three times the timeout. A relay registration must still forward afterwards, and a secure
channel through it must still carry messages. A control node that sends nothing shows that
the short timeouts really bite: its mapping is gone after the silence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from .lab import Host, Lab, MeshkeyNode, NatKind, Router

pytestmark = [pytest.mark.natlab, pytest.mark.timeout(300)]

UDP_TIMEOUT = 30


def hop_protocol(kind: NatKind) -> str:
    return "tcp" if kind is NatKind.UDP_BLOCKED else "udp"


SILENCE = 90.0
# (blue's side, yellow's side): each NAT kind in each role once.
PAIRS = [
    (NatKind.EIM, NatKind.EDM),
    (NatKind.EDM, NatKind.UDP_BLOCKED),
    (NatKind.UDP_BLOCKED, NatKind.EIM),
]
PAIR_IDS = [f"{a}-to-{b}" for a, b in PAIRS]


# Yellow's hop to the relay is QUIC for some (QUIC idles out after 60 s) and TCP for others:
# the channel's own keepalives must hold both.
CHANNEL_PAIRS = [pytest.param(a, b, id=f"{a}-to-{b}") for a, b in PAIRS]


@dataclass
class Session:
    blue: MeshkeyNode
    yellow: MeshkeyNode
    to_blue: str  # the relay's forwarder for blue, as yellow's side reaches it
    to_blue_public: str  # the same, over UDP, as a public host reaches it
    channel: str
    mapping_before: tuple[str, int] | None  # blue's NAT mapping towards the relay


@dataclass
class Silence:
    relay: MeshkeyNode
    observer: Host
    sessions: dict[tuple[NatKind, NatKind], Session]
    control: MeshkeyNode
    control_mapping: tuple[str, int]


def mapping_to(router: Router | None, node: MeshkeyNode, peer: MeshkeyNode) -> tuple[str, int]:
    assert router is not None
    found = [
        e.public
        for e in router.mappings(node.host, node.udp_port)
        if (e.original.dst, e.original.dport) == (peer.host.address, peer.udp_port)
    ]
    assert len(found) <= 1, found
    return found[0] if found else ("", 0)


@pytest.fixture(scope="module")
def silence(lab: Lab, hosts: dict[str, Host]) -> Silence:
    for router in lab.routers.values():
        router.set_udp_timeouts(UDP_TIMEOUT, UDP_TIMEOUT)
        assert router.udp_timeouts() == (UDP_TIMEOUT, UDP_TIMEOUT)
    relay = hosts["relay"].create_node("relay")
    control = hosts[str(NatKind.EIM)].create_node("control")
    control.host.meshkey("node", "whoami", control.name, "--via", relay.route())
    sessions = {}
    for a, b in PAIRS:
        blue = hosts[str(a)].create_node(f"blue-{b}")
        yellow = hosts[str(b)].create_node(f"yellow-{a}")
        name = f"{a}-{b}"
        address = blue.meshkey(
            "relay", "create", name, "--at", relay.route(hop_protocol(a)), "--to", blue.name
        ).stdout.strip()
        to_blue = relay.route(hop_protocol(b)) + address
        reply = yellow.meshkey(
            "message",
            "send",
            "before",
            "--from",
            yellow.name,
            "--to",
            f"{to_blue}/service/uppercase",
        )
        assert reply.stdout == "BEFORE\n"
        channel = yellow.meshkey(
            "secure-channel", "create", "--from", yellow.name, "--to", f"{to_blue}/service/api"
        ).stdout.strip()
        reply = yellow.meshkey(
            "message", "send", "before", "--from", yellow.name, "--to", f"{channel}/service/echo"
        )
        assert reply.stdout == "before\n"
        before = mapping_to(blue.host.router, blue, relay) if a is not NatKind.UDP_BLOCKED else None
        sessions[(a, b)] = Session(
            blue, yellow, to_blue, relay.route("udp") + address, channel, before
        )
    control_mapping = mapping_to(control.host.router, control, relay)
    assert control_mapping[1] == control.udp_port  # it exists now (EIM keeps the port)
    time.sleep(SILENCE)
    return Silence(relay, hosts["observer"], sessions, control, control_mapping)


def test_a_mapping_without_keepalives_expires(silence: Silence) -> None:
    control = silence.control
    assert mapping_to(control.host.router, control, silence.relay) == ("", 0)


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=PAIR_IDS)
def test_a_relay_registration_still_forwards_after_90s_of_silence(
    silence: Silence, a: NatKind, b: NatKind
) -> None:
    session = silence.sessions[(a, b)]
    # A newcomer from a public host, over a fresh connection: only blue's registration (and its
    # NAT mapping, kept open by the keepalives) can carry this to blue.
    route = f"{session.to_blue_public}/service/uppercase"
    assert silence.observer.meshkey("message", "send", "after", "--to", route).stdout == "AFTER\n"
    if session.mapping_before is not None:  # the keepalives held the very same mapping
        relay = silence.relay
        assert mapping_to(session.blue.host.router, session.blue, relay) == session.mapping_before
    status = session.blue.host.meshkey_json("relay", "show", f"{a}-{b}", "--to", session.blue.name)
    assert status["status"] == "active", status


@pytest.mark.parametrize(("a", "b"), CHANNEL_PAIRS)
def test_a_secure_channel_through_the_relay_still_works_after_90s_of_silence(
    silence: Silence, a: NatKind, b: NatKind
) -> None:
    session = silence.sessions[(a, b)]
    yellow = session.yellow
    reply = yellow.meshkey(
        "message",
        "send",
        "after",
        "--from",
        yellow.name,
        "--to",
        f"{session.channel}/service/uppercase",
        check=False,
    )
    assert (reply.returncode, reply.stdout) == (0, "AFTER\n"), reply.stderr
