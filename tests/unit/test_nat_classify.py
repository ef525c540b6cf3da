"""NAT classification: the verdict from what observers saw, one round of asking (retransmits,
matching, timeout) on a fake clock, and when to ask again."""

from __future__ import annotations

import random

import pytest

from meshkey.nat.classify import (
    Classification,
    ClassificationRound,
    NatClass,
    Observation,
    RecheckPolicy,
    classify,
)
from meshkey.wire.udp import WhoamiRequest, WhoamiResponse, decode_control_packet

LOCAL = [("10.1.0.2", 5000)]
OBSERVERS = [("203.0.113.10", 3478), ("203.0.113.11", 3478), ("203.0.113.12", 3478),
             ("203.0.113.13", 3478)]  # fmt: skip


def seen(*reflexive: tuple[str, int] | None) -> list[Observation]:
    return [Observation(OBSERVERS[i], r) for i, r in enumerate(reflexive)]


def verdict(observations: list[Observation], *, tcp_works: bool | None = True) -> Classification:
    return classify(observations, LOCAL, tcp_works=tcp_works, at=1.0)


def test_one_mapping_for_every_observer_is_endpoint_independent() -> None:
    result = verdict(seen(*[("198.51.100.1", 5000)] * 4))
    assert result.nat_class is NatClass.ENDPOINT_INDEPENDENT
    assert result.confidence == 1.0
    assert result.public_address == ("198.51.100.1", 5000)
    assert result.port_preserved is True
    assert "4 of 4" in result.reason
    assert [o.reflexive for o in result.observations] == [("198.51.100.1", 5000)] * 4


def test_three_of_four_is_still_consistent_but_less_sure() -> None:
    # HyperDHT's rule: one odd observer (a clash on its flow) does not make the NAT hard.
    result = verdict(seen(*[("198.51.100.1", 5000)] * 3, ("198.51.100.1", 7002)))
    assert result.nat_class is NatClass.ENDPOINT_INDEPENDENT
    assert result.confidence == 0.75
    assert result.mappings == (("198.51.100.1", 5000), ("198.51.100.1", 7002))


def test_every_port_different_is_endpoint_dependent() -> None:
    result = verdict(seen(*[("198.51.100.1", port) for port in (17665, 40211, 2301, 60001)]))
    assert result.nat_class is NatClass.ENDPOINT_DEPENDENT
    assert result.confidence == 1.0
    assert result.public_address is None
    assert result.public_ip == "198.51.100.1"  # birthday probes go there
    assert result.port_preserved is False


def test_a_varying_public_ip_is_endpoint_dependent() -> None:
    result = verdict(seen(("198.51.100.1", 5000), ("198.51.100.2", 5000)))
    assert result.nat_class is NatClass.ENDPOINT_DEPENDENT
    assert "public IP varies" in result.reason


def test_partial_agreement_is_unknown() -> None:
    result = verdict(
        seen(
            ("198.51.100.1", 5000),
            ("198.51.100.1", 5000),
            ("198.51.100.1", 9),
            ("198.51.100.1", 10),
        )
    )
    assert result.nat_class is NatClass.UNKNOWN
    assert "inconsistent" in result.reason


def test_a_local_address_everywhere_is_public() -> None:
    result = verdict(seen(*[LOCAL[0]] * 3))
    assert result.nat_class is NatClass.PUBLIC
    assert result.public_address == LOCAL[0]
    assert result.confidence == 0.75  # three observers: never full confidence


def test_an_observer_on_the_lan_is_left_out() -> None:
    result = verdict(seen(LOCAL[0], ("198.51.100.1", 5000), ("198.51.100.1", 5000)))
    assert result.nat_class is NatClass.ENDPOINT_INDEPENDENT


def test_no_udp_answer_is_blocked_only_when_tcp_works() -> None:
    assert verdict(seen(None, None)).nat_class is NatClass.UDP_BLOCKED
    offline = verdict(seen(None, None), tcp_works=False)
    assert offline.nat_class is NatClass.UNKNOWN
    assert verdict([], tcp_works=True).nat_class is NatClass.UNKNOWN


def test_fewer_than_two_observers_is_unknown() -> None:
    one = verdict(seen(("198.51.100.1", 5000), None))
    assert one.nat_class is NatClass.UNKNOWN
    assert one.confidence == 0.0


def test_one_rendezvous_with_an_alternate_port_classifies() -> None:
    """DESIGN.md decision 16: two ports of one observer IP are two observers."""
    same_mapping = [
        Observation(("203.0.113.10", 7000), ("198.51.100.1", 5000)),
        Observation(("203.0.113.10", 7001), ("198.51.100.1", 5000)),
    ]
    assert verdict(same_mapping).nat_class is NatClass.ENDPOINT_INDEPENDENT
    two_mappings = [
        Observation(("203.0.113.10", 7000), ("198.51.100.1", 41001)),
        Observation(("203.0.113.10", 7001), ("198.51.100.1", 52002)),
    ]
    assert verdict(two_mappings).nat_class is NatClass.ENDPOINT_DEPENDENT


def test_one_operator_with_many_ports_counts_at_most_twice() -> None:
    """An observer IP answering on many ports cannot outvote the others: two count."""
    many = [Observation(("203.0.113.10", 7000 + i), ("198.51.100.1", 5000)) for i in range(6)]
    others = [
        Observation(("198.51.100.20", 7000), ("198.51.100.1", 41001)),
        Observation(("192.0.2.30", 7000), ("198.51.100.1", 52002)),
    ]
    result = verdict(many + others)
    assert len({o.observer for o in result.observations}) == 8  # all are reported...
    assert "2 of 4" in result.reason  # ...but four are counted: two of its ports, two others


def test_two_observers_that_agree_are_enough_but_only_half_sure() -> None:
    result = verdict(seen(("198.51.100.1", 5000), ("198.51.100.1", 5000)))
    assert result.nat_class is NatClass.ENDPOINT_INDEPENDENT
    assert result.confidence == 0.5


# -- a round on a fake clock ------------------------------------------------------------


def answer(request: bytes, reflexive: tuple[str, int]) -> WhoamiResponse:
    parsed = decode_control_packet(request)
    assert isinstance(parsed, WhoamiRequest)
    return WhoamiResponse(parsed.txid, *reflexive)


def test_a_round_retransmits_until_answered_and_finishes_when_all_answered() -> None:
    round_ = ClassificationRound(OBSERVERS[:2], LOCAL, tcp_works=True, rng=random.Random(1))
    round_.start(0.0)
    first = round_.commands()
    assert [c.observer for c in first] == OBSERVERS[:2]
    deadline = round_.next_deadline()
    assert deadline is not None and 0.2 <= deadline <= 0.3
    round_.on_response(OBSERVERS[0], answer(first[0].packet, ("198.51.100.1", 5000)), 0.1)
    round_.on_timer(deadline)
    again = round_.commands()
    assert [c.observer for c in again] == [OBSERVERS[1]]  # only the silent one again
    assert again[0].packet == first[1].packet  # same transaction id
    round_.on_response(OBSERVERS[1], answer(first[1].packet, ("198.51.100.1", 5000)), 0.4)
    (event,) = round_.events()
    assert event.classification.nat_class is NatClass.ENDPOINT_INDEPENDENT
    assert round_.next_deadline() is None


def test_a_round_ignores_answers_from_the_wrong_source_or_txid() -> None:
    round_ = ClassificationRound(OBSERVERS[:2], LOCAL, rng=random.Random(2), timeout=1.0)
    round_.start(0.0)
    requests = round_.commands()
    forged = answer(requests[0].packet, ("6.6.6.6", 1))
    round_.on_response(("192.0.2.66", 3478), forged, 0.1)  # the right txid from a stranger
    round_.on_response(OBSERVERS[0], WhoamiResponse(b"x" * 16, "6.6.6.6", 1), 0.1)
    while (deadline := round_.next_deadline()) is not None:
        round_.commands()
        round_.on_timer(deadline)
    assert round_.result is not None
    assert round_.result.nat_class is NatClass.UNKNOWN
    assert all(o.reflexive is None for o in round_.result.observations)


def test_a_round_ends_at_its_timeout_with_what_it_has() -> None:
    round_ = ClassificationRound(OBSERVERS[:3], LOCAL, tcp_works=True, rng=random.Random(3))
    round_.start(0.0)
    requests = round_.commands()
    for request in requests[:2]:
        observer = request.observer
        round_.on_response(observer, answer(request.packet, ("198.51.100.1", 5000)), 0.05)
    sends = 0
    times = []
    while (deadline := round_.next_deadline()) is not None:
        times.append(deadline)
        round_.on_timer(deadline)
        sends += len(round_.commands())
    assert times[-1] == pytest.approx(3.0)
    assert 3 <= sends <= 5  # 250 ms, 500 ms, then 1 s apart
    assert round_.result is not None
    assert round_.result.nat_class is NatClass.ENDPOINT_INDEPENDENT  # two of the three
    with pytest.raises(RuntimeError):
        round_.start(4.0)


# -- when to ask again ------------------------------------------------------------------


def test_recheck_policy() -> None:
    policy = RecheckPolicy(period=600.0, min_spacing=30.0, rng=random.Random(4))
    assert policy.due(0.0)  # never classified
    policy.on_round_started(0.0)
    assert policy.next_deadline() is None
    good = classify(seen(*[("198.51.100.1", 5000)] * 4), LOCAL, tcp_works=True, at=3.0)
    policy.on_classified(good, 3.0)
    # Every period, spread by 10 % with the injected rng (its first draw: nothing else drew).
    assert policy.next_deadline() == pytest.approx(3.0 + 600.0 * random.Random(4).uniform(0.9, 1.1))
    policy.on_contradiction(10.0)  # at most every 30 s
    assert policy.next_deadline() == 30.0
    policy.on_network_change(12.0)
    assert policy.due(12.0)
    policy.on_round_started(12.0)
    unknown = classify([], LOCAL, tcp_works=None, at=15.0)
    policy.on_classified(unknown, 15.0)
    retry = policy.next_deadline()
    assert retry is not None and 19.0 <= retry <= 21.0  # unknown: back off from 5 s


def test_a_round_asks_the_alternate_port_an_answer_names() -> None:
    from meshkey.nat.classify import ClassificationRound, SendWhoami
    from meshkey.wire.udp import WhoamiRequest, WhoamiResponse, decode_control_packet

    seed = ("203.0.113.10", 7000)
    round_ = ClassificationRound([seed], [("10.1.0.2", 5000)], rng=random.Random(3))
    round_.start(0.0)
    (first,) = round_.commands()
    request = decode_control_packet(first.packet)
    assert isinstance(request, WhoamiRequest)
    round_.on_response(seed, WhoamiResponse(request.txid, "198.51.100.1", 41001, 7001), 0.04)
    (second,) = round_.commands()
    assert isinstance(second, SendWhoami) and second.observer == ("203.0.113.10", 7001)
    again = decode_control_packet(second.packet)
    assert isinstance(again, WhoamiRequest)
    round_.on_response(second.observer, WhoamiResponse(again.txid, "198.51.100.1", 52002), 0.08)
    (done,) = round_.events()
    assert done.classification.nat_class is NatClass.ENDPOINT_DEPENDENT
