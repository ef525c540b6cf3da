"""One encryption layer on a direct hop (DESIGN decision 19), in the session core: PLAIN
messages share the sealed messages' nonces, replay window and key schedule; the receiver
takes one only when its glue says it came over a hop to the peer itself; a plain message
resealed for a relay opens as DATA once and is a replay after its plain copy."""

from __future__ import annotations

import pytest

from meshkey.channel.keys import (
    REKEY_INTERVAL,
    REPLAY_WINDOW,
    RESEAL_KEYS,
    ChannelError,
    ReplayedMessage,
)
from meshkey.channel.session import ChannelUseError, SecureSession, StaticKey
from meshkey.identity import Identity
from meshkey.wire.channel import ChannelKind, Plain, decode_channel, encode_channel, peek_kind
from meshkey.wire.errors import TruncatedError

ALICE, BOB = Identity.generate(), Identity.generate()


def open_pair() -> tuple[SecureSession, SecureSession]:
    """An XX initiator (alice) and responder (bob), open at both ends: bob's CONFIRM was heard
    (alice's peer_open), alice's first DATA too (bob's)."""
    alice = SecureSession(True, StaticKey(ALICE))
    bob = SecureSession(False, StaticKey(BOB))
    reply = bob.receive(alice.start()).reply
    assert reply is not None
    finish = alice.receive(reply).reply
    assert finish is not None
    confirm = bob.receive(finish).reply
    assert confirm is not None
    alice.receive(confirm)
    assert bob.receive(alice.seal(b"first")).plaintext == b"first"
    assert alice.peer_open and bob.peer_open
    return alice, bob


def test_plain_round_trips_on_the_wire_and_says_its_kind() -> None:
    encoded = encode_channel(Plain(2**33 + 1, b"session!", b"data"))
    assert peek_kind(encoded) is ChannelKind.PLAIN
    decoded = decode_channel(encoded)
    assert isinstance(decoded, Plain) and decoded.nonce == 2**33 + 1
    assert decoded.session == b"session!" and bytes(decoded.data) == b"data"
    with pytest.raises(TruncatedError):
        decode_channel(encoded[:15])  # a tag cut short
    with pytest.raises(ValueError):
        encode_channel(Plain(1, b"short", b"data"))


def test_a_session_sends_plain_only_once_the_peer_was_heard_open() -> None:
    alice = SecureSession(True, StaticKey(ALICE))
    bob = SecureSession(False, StaticKey(BOB))
    reply = bob.receive(alice.start()).reply
    assert reply is not None
    finish = alice.receive(reply).reply
    assert finish is not None
    confirm = bob.receive(finish).reply
    assert confirm is not None
    # bob is open, but alice is not until it reads the CONFIRM: bob must not send PLAIN yet.
    with pytest.raises(ChannelUseError):
        bob.plain(b"too early")
    alice.receive(confirm)
    nonce, payload = alice.plain(b"over the direct hop")  # the CONFIRM proved bob open
    assert nonce == 0
    received = bob.receive(payload, direct=True)
    assert bytes(received.plaintext or b"") == b"over the direct hop"
    assert received.nonce == 0 and bob.peer_open  # a plain message proves alice open too


def test_plain_is_refused_unless_it_came_over_a_hop_to_the_peer() -> None:
    alice, bob = open_pair()
    _, payload = alice.plain(b"secret")
    with pytest.raises(ChannelError, match="not a direct hop"):
        bob.receive(payload)  # e.g. forged or forwarded by a relay


def test_a_plain_message_of_another_session_is_dropped_not_taken() -> None:
    """Late from the session before a re-handshake (both start at nonce 0): its tag differs."""
    old_alice, _ = open_pair()
    _, new_bob = open_pair()
    _, stale = old_alice.plain(b"from the old session")
    with pytest.raises(ReplayedMessage, match="another session"):
        new_bob.receive(stale, direct=True)


def test_plain_and_sealed_share_one_sequence_and_one_replay_window() -> None:
    alice, bob = open_pair()
    first_nonce, plain = alice.plain(b"a")
    sealed = alice.seal(b"b")
    assert decode_channel(sealed).nonce == first_nonce + 1  # type: ignore[union-attr]
    assert bob.receive(sealed).nonce == first_nonce + 1
    assert bob.receive(plain, direct=True).nonce == first_nonce  # late, still in the window
    with pytest.raises(ReplayedMessage):
        bob.receive(plain, direct=True)
    with pytest.raises(ReplayedMessage):
        bob.receive(sealed)


def test_a_plain_message_resealed_for_a_relay_opens_once_and_is_a_replay_after_its_copy() -> None:
    alice, bob = open_pair()
    nonce, plain = alice.plain(b"sent plain, lost with the direct path")
    resealed = alice.reseal(nonce, b"sent plain, lost with the direct path")
    assert resealed is not None and peek_kind(resealed) is ChannelKind.DATA
    assert b"lost with the direct path" not in resealed  # what the relay sees
    assert bob.receive(resealed).plaintext == b"sent plain, lost with the direct path"
    with pytest.raises(ReplayedMessage):
        bob.receive(plain, direct=True)  # the plain copy, arriving late: dropped
    other, plain_other = alice.plain(b"arrived plain first")
    bob.receive(plain_other, direct=True)
    again = alice.reseal(other, b"arrived plain first")
    assert again is not None
    with pytest.raises(ReplayedMessage):
        bob.receive(again)


def test_the_key_schedule_stays_in_step_across_long_plain_runs() -> None:
    alice, bob = open_pair()
    runs = 3 * REKEY_INTERVAL * 40
    for i in range(runs):  # many keys' worth of plain messages: no key is derived twice
        _, payload = alice.plain(b"%d" % i)
        bob.receive(payload, direct=True)
    assert bob.receive(alice.seal(b"sealed after")).plaintext == b"sealed after"


def test_resealing_reaches_back_a_few_keys_and_no_further() -> None:
    alice, bob = open_pair()
    sent = [alice.plain(b"m%d" % i) for i in range((RESEAL_KEYS + 2) * REKEY_INTERVAL)]
    newest_nonce = sent[-1][0]
    oldest_kept = (newest_nonce // REKEY_INTERVAL - RESEAL_KEYS) * REKEY_INTERVAL
    assert alice.reseal(oldest_kept - 1, b"x") is None  # its key is gone
    assert alice.reseal(oldest_kept, b"x") is not None
    # bob saw none of them (the direct path died): the last window's worth opens, resealed.
    for nonce, _ in sent[-REPLAY_WINDOW:]:
        resealed = alice.reseal(nonce, b"m%d" % (nonce - sent[0][0]))
        assert resealed is not None
        assert bob.receive(resealed).plaintext == b"m%d" % (nonce - sent[0][0])


def test_nothing_is_resealed_on_a_session_that_is_not_open() -> None:
    alice, _ = open_pair()
    nonce, _ = alice.plain(b"x")
    alice.close("bye")
    assert alice.reseal(nonce, b"x") is None
    with pytest.raises(ChannelUseError):
        alice.plain(b"y")
