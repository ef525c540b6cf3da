from __future__ import annotations

from meshkey.channel.order import InOrder


def test_messages_in_order_pass_at_once() -> None:
    order: InOrder[str] = InOrder()
    assert [order.accept(n, f"m{n}", 0.0) for n in range(3)] == [["m0"], ["m1"], ["m2"]]
    assert order.next_deadline() is None


def test_a_message_overtaken_after_a_switch_is_waited_for() -> None:
    order: InOrder[str] = InOrder(hold=0.3)
    assert order.accept(0, "m0", 0.0) == ["m0"]
    assert order.accept(2, "m2", 1.0) == []  # came the fast way, m1 is still on the relay
    assert order.next_deadline() == 1.3
    assert order.accept(1, "m1", 1.1) == ["m1", "m2"]
    assert order.next_deadline() is None


def test_pings_close_gaps_and_a_lost_message_is_given_up_after_the_hold() -> None:
    order: InOrder[str] = InOrder(hold=0.3)
    assert order.accept(1, None, 0.0) == []  # a pong, ahead of m0
    assert order.accept(0, "m0", 0.01) == ["m0"]
    assert order.accept(3, "m3", 0.1) == []  # m2 was lost with the direct path
    assert order.on_timer(0.2) == []
    assert order.on_timer(0.4) == ["m3"]
    assert order.accept(2, "m2", 0.5) == ["m2"]  # resent after all: late, still delivered once
    assert order.accept(4, "m4", 0.6) == ["m4"]


def test_holding_is_bounded_and_a_new_session_starts_again() -> None:
    order: InOrder[int] = InOrder(max_held=3)
    for nonce in range(1, 4):
        assert order.accept(nonce, nonce, 0.0) == []
    assert order.accept(4, 4, 0.0) == [1, 2, 3, 4]
    assert order.accept(9, 9, 0.0) == []
    assert order.reset() == [9]
    assert order.accept(0, 0, 1.0) == [0]
