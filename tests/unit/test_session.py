"""The secure-channel core: identities, authorization, and what a hostile route can't do."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkey.channel.keys import REKEY_INTERVAL, REPLAY_WINDOW, ChannelError, ReplayedMessage
from meshkey.channel.session import ChannelUseError, SecureSession, State, StaticKey
from meshkey.identity import Identity
from meshkey.wire.channel import (
    ChannelKind,
    Handshake,
    Refuse,
    Sealed,
    decode_channel,
    encode_channel,
)

ALICE, BOB, MALLORY = Identity.generate(), Identity.generate(), Identity.generate()


def open_pair(initiator_allows=None, responder_allows=None) -> tuple[SecureSession, SecureSession]:
    alice = SecureSession(True, StaticKey(ALICE), authorized=initiator_allows)
    bob = SecureSession(False, StaticKey(BOB), authorized=responder_allows)
    hello_reply = bob.receive(alice.start()).reply
    assert hello_reply is not None
    finish = alice.receive(hello_reply).reply
    assert finish is not None
    confirmed = bob.receive(finish)
    assert confirmed.opened and confirmed.reply is not None
    assert alice.receive(confirmed.reply).opened
    return alice, bob


def test_open_channel_knows_both_identities_and_carries_data() -> None:
    alice, bob = open_pair(frozenset({BOB.node_id}), frozenset({ALICE.node_id}))
    assert alice.peer == BOB.node_id and bob.peer == ALICE.node_id
    assert alice.state is bob.state is State.OPEN
    for index in range(3 * REKEY_INTERVAL + 5):  # across several rekeys, both ways
        assert bob.receive(alice.seal(b"m%d" % index)).plaintext == b"m%d" % index
        assert alice.receive(bob.seal(b"r%d" % index)).plaintext == b"r%d" % index


def test_the_responders_data_may_overtake_its_confirm() -> None:
    """XX: the responder opens at FINISH and may send at once; its DATA can take a direct
    path while its CONFIRM crosses the relay. Sealed under the session's keys, it confirms."""
    alice = SecureSession(True, StaticKey(ALICE))
    bob = SecureSession(False, StaticKey(BOB))
    hello_reply = bob.receive(alice.start()).reply
    assert hello_reply is not None
    finish = alice.receive(hello_reply).reply
    assert finish is not None
    confirmed = bob.receive(finish)
    assert confirmed.opened and confirmed.reply is not None
    early = alice.receive(bob.seal(b"first"))  # before the CONFIRM
    assert early.opened and early.plaintext == b"first" and alice.state is State.OPEN
    assert not alice.receive(confirmed.reply).opened  # the late CONFIRM changes nothing
    assert bob.receive(alice.seal(b"back")).plaintext == b"back"


def test_the_initiator_refuses_an_unauthorized_responder() -> None:
    alice = SecureSession(True, StaticKey(ALICE), authorized=frozenset({MALLORY.node_id}))
    bob = SecureSession(False, StaticKey(BOB))
    reply = bob.receive(alice.start()).reply
    assert reply is not None
    with pytest.raises(ChannelError, match="not among the authorized") as info:
        alice.receive(reply)
    assert not info.value.refuse  # nothing is sent to a responder we do not want


def test_the_responder_refuses_an_unauthorized_initiator() -> None:
    alice = SecureSession(True, StaticKey(ALICE))
    bob = SecureSession(False, StaticKey(BOB), authorized=frozenset({MALLORY.node_id}))
    reply = bob.receive(alice.start()).reply
    assert reply is not None
    finish = alice.receive(reply).reply
    assert finish is not None
    with pytest.raises(ChannelError, match=r"initiator .* not among") as info:
        bob.receive(finish)
    assert info.value.refuse
    with pytest.raises(ChannelError, match="refused by the listener"):
        alice.receive(encode_channel(Refuse(info.value.reason)))


def test_a_proof_for_another_static_key_is_refused() -> None:
    # Mallory replays Bob's identity proof with her own Noise static key.
    alice = SecureSession(True, StaticKey(ALICE))
    mallory_key = StaticKey(MALLORY)
    mallory_key.proof = StaticKey(BOB).proof
    mallory = SecureSession(False, mallory_key)
    reply = mallory.receive(alice.start()).reply
    assert reply is not None
    with pytest.raises(ChannelError, match="did not attest"):
        alice.receive(reply)


def test_flipped_bits_close_the_channel() -> None:
    alice, bob = open_pair()
    sealed = decode_channel(alice.seal(b"hello"))
    assert isinstance(sealed, Sealed)
    for position in (0, len(sealed.ciphertext) // 2, len(sealed.ciphertext) - 1):
        tampered = bytearray(sealed.ciphertext)
        tampered[position] ^= 0x01
        with pytest.raises(ChannelError, match="failed authentication"):
            bob.receive(encode_channel(Sealed(sealed.kind, sealed.nonce, bytes(tampered))))
    # Changing the nonce or the kind is tampering too.
    with pytest.raises(ChannelError):
        bob.receive(encode_channel(Sealed(sealed.kind, sealed.nonce + 1, sealed.ciphertext)))
    with pytest.raises(ChannelError):
        bob.receive(encode_channel(Sealed(ChannelKind.CLOSE, sealed.nonce, sealed.ciphertext)))
    # Nothing tampered was accepted: the genuine message still opens.
    assert bob.receive(encode_channel(sealed)).plaintext == b"hello"


def test_replays_and_reordering_beyond_the_window_are_dropped() -> None:
    alice, bob = open_pair()
    messages = [alice.seal(b"%d" % i) for i in range(REPLAY_WINDOW + 10)]
    assert bob.receive(messages[0]).plaintext == b"0"
    with pytest.raises(ReplayedMessage):
        bob.receive(messages[0])
    assert bob.receive(messages[-1]).plaintext == b"%d" % (REPLAY_WINDOW + 9)
    # Late but inside the window: accepted once.
    late = messages[-5]
    assert bob.receive(late).plaintext is not None
    with pytest.raises(ReplayedMessage):
        bob.receive(late)
    # Further back than the window: dropped, even though it was never delivered.
    with pytest.raises(ReplayedMessage):
        bob.receive(messages[5])
    assert bob.state is State.OPEN


def test_dropped_messages_across_rekeys_do_not_break_the_channel() -> None:
    alice, bob = open_pair()
    for index in range(10 * REKEY_INTERVAL):
        sealed = alice.seal(b"%d" % index)
        if index % 7 == 0 or (index > 5 * REKEY_INTERVAL and index < 8 * REKEY_INTERVAL):
            continue  # the route drops it
        assert bob.receive(sealed).plaintext == b"%d" % index


def test_forged_nonces_ahead_move_neither_keys_nor_window() -> None:
    alice, bob = open_pair()
    within_reach = encode_channel(Sealed(ChannelKind.DATA, 100 * REKEY_INTERVAL, b"\x00" * 40))
    with pytest.raises(ChannelError, match="failed authentication"):
        bob.receive(within_reach)
    with pytest.raises(ChannelError, match="keys ahead"):
        bob.receive(encode_channel(Sealed(ChannelKind.DATA, 2**60, b"\x00" * 40)))
    # Had either forgery moved the key schedule or the window, nonce 0 would now fail.
    assert bob.receive(alice.seal(b"fine")).plaintext == b"fine"


def test_close_is_authenticated_and_final() -> None:
    alice, bob = open_pair()
    close = alice.close("bye")
    assert close is not None
    assert bob.receive(close).closed == "bye"
    assert bob.state is State.CLOSED
    with pytest.raises(ChannelError, match="closed"):
        bob.receive(b"\x01\x05")
    with pytest.raises(ChannelUseError, match="cannot send"):  # local misuse, not the peer
        alice.seal(b"after close")


def test_out_of_order_handshake_and_data_before_open_are_errors() -> None:
    alice = SecureSession(True, StaticKey(ALICE))
    bob = SecureSession(False, StaticKey(BOB))
    with pytest.raises(ChannelError, match="unexpected FINISH"):
        bob.receive(encode_channel(Handshake(ChannelKind.FINISH, b"x" * 64)))
    with pytest.raises(ChannelError, match="before the handshake"):
        SecureSession(False, StaticKey(BOB)).receive(
            encode_channel(Sealed(ChannelKind.DATA, 0, b"x" * 20))
        )
    with pytest.raises(ChannelUseError, match="cannot send"):
        alice.seal(b"early")


def test_a_failed_handshake_is_terminal_and_says_why() -> None:
    alice = SecureSession(True, StaticKey(ALICE))
    bob = SecureSession(False, StaticKey(BOB))
    reply = bob.receive(alice.start()).reply
    assert reply is not None
    tampered = reply[:-1] + bytes([reply[-1] ^ 1])
    with pytest.raises(ChannelError, match="failed authentication"):
        alice.receive(tampered)
    assert alice.state is State.CLOSED
    # The genuine reply cannot revive it: the failure is remembered and repeated.
    with pytest.raises(ChannelError, match=r"the handshake failed: .*failed authentication"):
        alice.receive(reply)


def test_sealed_ping_is_answered_with_a_sealed_pong() -> None:
    alice, bob = open_pair()
    answer = bob.receive(alice.ping())
    assert answer.reply is not None and answer.plaintext is None
    assert alice.receive(answer.reply).pong
    with pytest.raises(ReplayedMessage):  # replay protection covers liveness too
        alice.receive(answer.reply)


@given(st.binary(max_size=300))
def test_garbage_raises_only_channel_errors(data: bytes) -> None:
    session = SecureSession(False, StaticKey(BOB))
    with contextlib.suppress(ChannelError):
        session.receive(data)
