"""The punch token: a MAC key that only the two ends of one secure channel hold.

Each side puts 32 random bytes (its *key share*) in its CONNECT, which travels inside the
secure channel that signals the punch, so nobody else (in particular not the relay that
carries the channel) learns them. Both sides derive::

    key = HKDF-SHA256(ikm = initiator share || responder share, salt = punch id,
                      info = "meshkey/punch/v1" || binding)

where ``binding`` is optional channel-binding material the glue may add (e.g. the Noise
handshake hash), tying the key to that channel even if a share leaked. Every PUNCH_PROBE and
PUNCH_ACK carries HMAC-SHA256(key, :func:`~meshkey.wire.udp.punch_mac_input`) truncated to 16
bytes; :meth:`PunchKey.verify` compares in constant time. A fresh key per punch means a probe
recorded during one punch is worthless in the next.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshkey.wire.net import Endpoint
from meshkey.wire.punch import KEY_SHARE_SIZE
from meshkey.wire.udp import (
    PUNCH_ID_SIZE,
    PUNCH_MAC_SIZE,
    PunchAck,
    PunchProbe,
    PunchRole,
    punch_mac_input,
)

_INFO = b"meshkey/punch/v1"
_NO_MAC = bytes(PUNCH_MAC_SIZE)


class PunchKey:
    """The MAC key of one punch; signs and checks its probes and answers."""

    __slots__ = ("_key", "punch_id")

    def __init__(self, key: bytes, punch_id: bytes) -> None:
        if len(key) != 32 or len(punch_id) != PUNCH_ID_SIZE:
            raise ValueError("a punch key is 32 bytes, a punch id 16")
        self._key = key
        self.punch_id = punch_id

    @classmethod
    def derive(
        cls,
        punch_id: bytes,
        initiator_share: bytes,
        responder_share: bytes,
        binding: bytes = b"",
    ) -> PunchKey:
        if len(initiator_share) != KEY_SHARE_SIZE or len(responder_share) != KEY_SHARE_SIZE:
            raise ValueError(f"key shares are {KEY_SHARE_SIZE} bytes")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=punch_id, info=_INFO + binding)
        return cls(hkdf.derive(initiator_share + responder_share), punch_id)

    def _mac(self, packet: PunchProbe | PunchAck) -> bytes:
        digest = hmac.new(self._key, punch_mac_input(packet), hashlib.sha256).digest()
        return digest[:PUNCH_MAC_SIZE]

    def probe(self, role: PunchRole, counter: int) -> PunchProbe:
        unsigned = PunchProbe(self.punch_id, role, counter, _NO_MAC)
        return PunchProbe(self.punch_id, role, counter, self._mac(unsigned))

    def ack(self, role: PunchRole, counter: int, observed: Endpoint) -> PunchAck:
        unsigned = PunchAck(self.punch_id, role, counter, observed, _NO_MAC)
        return PunchAck(self.punch_id, role, counter, observed, self._mac(unsigned))

    def verify(self, packet: PunchProbe | PunchAck) -> bool:
        if packet.punch_id != self.punch_id:
            return False
        try:
            expected = self._mac(packet)
        except ValueError:  # an address the encoder cannot lay out: not one we signed
            return False
        return hmac.compare_digest(expected, packet.mac)
