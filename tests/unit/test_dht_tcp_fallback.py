"""The node graph over TCP where UDP is blocked (issue 18): which transports a request dials
(:func:`meshkey.dht.hops.dial_plan`), and the glue on the in-memory transports of
test_dht_glue, where a node's TCP listener is at its UDP address (as a node's TCP listener
takes its UDP port number)."""

from __future__ import annotations

import pytest

from meshkey.dht.hops import dial_plan
from meshkey.routing.errors import RemoteError
from meshkey.wire.dht import Mode, Ping, Pong
from meshkey.wire.message import ErrorCode

from .test_dht_glue import endpoint_of, network, seed_of

# -- which transports a request dials --------------------------------------------------------


def plan(**given: bool) -> tuple[str, ...]:
    facts = {"fresh": False, "say_so": False, "has_tcp": True, "udp_up": False, "tcp_up": False}
    return dial_plan(**{**facts, **given})


def test_a_new_node_dials_udp_first_then_tcp_at_the_same_address() -> None:
    assert plan() == ("udp", "tcp")
    assert plan(udp_up=True, tcp_up=True) == ("udp", "tcp")


def test_a_node_whose_only_hops_are_tcp_ones_dials_tcp_at_once() -> None:
    assert plan(tcp_up=True) == ("tcp",)
    assert plan(tcp_up=True, say_so=True) == ("tcp",)  # UDP is blocked: TCP or nothing


def test_reachability_checks_and_dials_on_someones_say_so_stay_on_udp() -> None:
    assert plan(fresh=True) == ("udp",)
    assert plan(fresh=True, tcp_up=True) == ("udp",)  # a check of UDP reachability is one
    assert plan(say_so=True) == ("udp",)
    assert plan(say_so=True, udp_up=True) == ("udp",)


def test_without_a_tcp_transport_it_is_udp_only() -> None:
    assert plan(has_tcp=False) == ("udp",)
    assert plan(has_tcp=False, tcp_up=True) == ("udp",)


# -- the glue --------------------------------------------------------------------------------


async def test_a_node_whose_udp_is_blocked_joins_over_tcp_at_its_seeds_address() -> None:
    async with network() as net:
        seed = await net.node(tcp=True)
        newcomer = await net.node(tcp=True, udp_blocked=True, mode=Mode.CLIENT)
        peers = await newcomer.join([seed_of(seed)], timeout=10)
        assert peers == 1 and newcomer.knows(seed.node_id)
        # The seed entered the graph at its one address (the TCP hop the graph dialled there).
        assert newcomer.reached_at(seed.node_id) == endpoint_of(seed)
        assert not seed.knows(newcomer.node_id)  # a TCP hop's source port is no contact
        assert newcomer.observed == endpoint_of(newcomer)  # where the seed saw it (its PONG)
        link = newcomer.live_link(seed.node_id)
        assert link is not None and link.name.startswith("_tcp.")
        assert net.tcp[newcomer.node_id].dials == 1
        # Later requests ride the TCP hop; a new one goes over TCP at once (no UDP try).
        answer = await newcomer.request(seed.node_id, None, Ping(b"ping0002", Mode.CLIENT))
        assert isinstance(answer, Pong)
        other = await net.node(tcp=True)
        answer = await newcomer.request(
            other.node_id, endpoint_of(other), Ping(b"ping0003", Mode.CLIENT)
        )
        assert isinstance(answer, Pong) and net.tcp[newcomer.node_id].dials == 2


async def test_a_node_whose_udp_works_never_dials_tcp_when_udp_answers() -> None:
    async with network() as net:
        seed = await net.node(tcp=True)
        newcomer = await net.node(tcp=True)
        await newcomer.join([seed_of(seed)], timeout=10)
        assert newcomer.knows(seed.node_id)
        link = newcomer.live_link(seed.node_id)
        assert link is not None and link.name.startswith("_udp.")
        assert net.tcp[newcomer.node_id].dials == 0


async def test_a_request_fails_only_once_udp_and_tcp_both_failed() -> None:
    async with network() as net:
        a = await net.node(tcp=True)
        nobody = await net.node(tcp=True, dialable=False)  # neither answers: unreachable
        with pytest.raises(RemoteError) as caught:
            await a.request(nobody.node_id, endpoint_of(nobody), Ping(b"ping0001", Mode.SERVER))
        assert caught.value.code == ErrorCode.UNREACHABLE
        assert net.udp[a.node_id].sends == 1 and net.tcp[a.node_id].sends == 1


async def test_tcp_answers_when_the_udp_dial_fails_at_once() -> None:
    async with network() as net:
        a = await net.node(tcp=True)
        b = await net.node(tcp=True)
        net.udp[b.node_id].dialable = False  # UDP refused at once: TCP goes without the delay
        answer = await a.request(b.node_id, endpoint_of(b), Ping(b"ping0001", Mode.SERVER))
        assert isinstance(answer, Pong)
        assert net.tcp[a.node_id].dials == 1 and a.knows(b.node_id)


async def test_a_reachability_check_never_goes_over_tcp() -> None:
    async with network() as net:
        a = await net.node(tcp=True, udp_blocked=True)
        b = await net.node(tcp=True)
        with pytest.raises(RemoteError):
            await a.request(
                b.node_id, endpoint_of(b), Ping(b"ping0001", Mode.SERVER), fresh=True, timeout=0.3
            )
        assert net.tcp[a.node_id].dials == 0 and not a.knows(b.node_id)


async def test_only_tcp_hops_the_graph_dialled_itself_enter_it() -> None:
    async with network() as net:
        a, b, c = await net.node(tcp=True), await net.node(tcp=True), await net.node(tcp=True)
        await a.request(b.node_id, endpoint_of(b), Ping(b"ping0001", Mode.SERVER))
        assert b.knows(a.node_id)
        before = [p["addresses"] for p in b.peers() if p["node_id"] == str(a.node_id)]
        # a and c dial b over TCP from a source port (not an address they can be dialled at),
        # outside the graph (a relay's hop, say): in neither direction does that count.
        for dialler in (a, c):
            net.tcp[dialler.node_id].endpoint = ("198.51.100.7", 50123)
            net.tcp[dialler.node_id]._dial(net.tcp[b.node_id])
        after = [p["addresses"] for p in b.peers() if p["node_id"] == str(a.node_id)]
        assert after == before  # a known peer's address stays
        assert not b.knows(c.node_id) and not c.knows(b.node_id)
