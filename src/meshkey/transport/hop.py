"""The hop protocol core, sans-IO: framing, two-step hop authentication, keepalive.

It takes the bytes the encrypted transport (TLS or a QUIC stream) delivered and returns
events; bytes to write are collected in :meth:`HopConnection.data_to_send`. It never touches a
socket or a clock, so every path through it is tested without either.

Authentication (DESIGN.md decision 4): the client first learns the server's NodeId from the
key in its TLS certificate (:meth:`certificate_verified`), which must match the NodeId the route
named, if any, and the one in SERVER_HELLO. It then signs a proof bound to the transport, the
server's NodeId and the server's fresh nonce. The hop is open when the server has verified the
proof and said AUTH_OK; only then does either side report :class:`PeerAuthenticated`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass

from meshkey.identity.keys import Identity, verify_signature
from meshkey.identity.node_id import NodeId
from meshkey.wire.errors import WireError
from meshkey.wire.frames import FrameDecoder, encode_frame, frame_header
from meshkey.wire.hop import (
    NONCE_SIZE,
    AuthOk,
    ClientProof,
    Close,
    CloseCode,
    HopFrame,
    HopFrameType,
    MessageFrame,
    Ping,
    Pong,
    ServerHello,
    decode_hop_frame,
    encode_hop_frame,
    proof_payload,
)

_MESSAGE = bytes([HopFrameType.MESSAGE])


class HopError(Exception):
    """The hop must be closed; a CLOSE frame with ``code`` has been queued for the peer."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PeerAuthenticated:
    node_id: NodeId


@dataclass(frozen=True, slots=True)
class MessageReceived:
    body: bytes | memoryview  # a view into the frame: parsed without another copy


@dataclass(frozen=True, slots=True)
class PongReceived:
    token: int


@dataclass(frozen=True, slots=True)
class PeerClosed:
    code: int
    reason: str


HopEvent = PeerAuthenticated | MessageReceived | PongReceived | PeerClosed


class HopConnection:
    def __init__(
        self,
        role: Role,
        identity: Identity,
        transport: str,
        *,
        expected_peer: NodeId | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.role = role
        self.state = State.AUTHENTICATING
        self.peer: NodeId | None = None
        self._identity = identity
        self._transport = transport
        self._expected = expected_peer
        self._decoder = FrameDecoder()
        self._outgoing: list[bytes] = []
        self._nonce = b""
        self._certificate_peer: NodeId | None = None
        self._proof_sent = False
        if role is Role.SERVER:
            self._nonce = random_bytes(NONCE_SIZE)
            self._queue(ServerHello(identity.node_id.raw, self._nonce))

    @property
    def is_open(self) -> bool:
        return self.state is State.OPEN

    def chunks_to_send(self) -> list[bytes]:
        """The bytes to write, as chunks (message bodies are never copied into one buffer)."""
        chunks, self._outgoing = self._outgoing, []
        return chunks

    def data_to_send(self) -> bytes:
        return b"".join(self.chunks_to_send())

    # -- inputs -----------------------------------------------------------------------

    def certificate_verified(self, node_id: NodeId) -> None:
        """Client: the NodeId whose key the server's certificate holds (proven by TLS)."""
        if self._expected is not None and node_id != self._expected:
            self._fail(
                CloseCode.AUTH_FAILED,
                f"peer presented NodeId {node_id}, expected {self._expected}",
            )
        self._certificate_peer = node_id

    def receive_data(self, data: bytes) -> list[HopEvent]:
        if self.state is State.CLOSED:
            return []
        try:
            bodies = self._decoder.feed(data)
        except WireError as exc:
            self._fail(CloseCode.PROTOCOL_ERROR, str(exc))
        events: list[HopEvent] = []
        for body in bodies:
            if body[:1] == _MESSAGE and self.state is State.OPEN:  # the hot path: no copy
                events.append(MessageReceived(memoryview(body)[1:]))
                continue
            try:
                frame = decode_hop_frame(body)
            except WireError as exc:
                self._fail(CloseCode.PROTOCOL_ERROR, str(exc))
            event = self._handle(frame)
            if event is not None:
                events.append(event)
            if not self._accepting():
                break
        return events

    def send_message(self, *parts: bytes) -> None:
        """Queues a MESSAGE frame whose body is the concatenation of ``parts`` (not copied)."""
        if self.state is not State.OPEN:
            raise RuntimeError(f"cannot send on a hop that is {self.state.value}")
        self._outgoing.append(frame_header(sum(map(len, parts)) + 1) + _MESSAGE)
        self._outgoing.extend(part for part in parts if part)

    def ping(self, token: int) -> None:
        if self.state is State.OPEN:
            self._queue(Ping(token))

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        if self.state is not State.CLOSED:
            self._queue(Close(code, reason))
            self.state = State.CLOSED

    # -- internals --------------------------------------------------------------------

    def _accepting(self) -> bool:
        return self.state is not State.CLOSED

    def _queue(self, frame: HopFrame) -> None:
        self._outgoing.append(encode_frame(encode_hop_frame(frame)))

    def _fail(self, code: CloseCode, reason: str) -> None:
        self.close(code, reason)
        raise HopError(code, reason)

    def _handle(self, frame: HopFrame) -> HopEvent | None:
        if isinstance(frame, Close):
            self.state = State.CLOSED
            return PeerClosed(frame.code, frame.reason)
        if self.state is State.AUTHENTICATING:
            return self._authenticate(frame)
        if isinstance(frame, MessageFrame):
            return MessageReceived(frame.body)
        if isinstance(frame, Ping):
            self._queue(Pong(frame.token))
            return None
        if isinstance(frame, Pong):
            return PongReceived(frame.token)
        self._fail(CloseCode.PROTOCOL_ERROR, f"unexpected {type(frame).__name__} on an open hop")
        return None  # pragma: no cover - _fail raises

    def _authenticate(self, frame: HopFrame) -> HopEvent | None:
        if self.role is Role.SERVER:
            if not isinstance(frame, ClientProof):
                self._fail(CloseCode.PROTOCOL_ERROR, f"expected a client proof, got {frame!r:.60}")
            assert isinstance(frame, ClientProof)
            client = NodeId(frame.node_id)
            payload = proof_payload(
                self._transport, self._identity.node_id.raw, client.raw, self._nonce
            )
            if not verify_signature(client, payload, frame.signature):
                self._fail(CloseCode.AUTH_FAILED, f"proof of NodeId {client} does not verify")
            self._queue(AuthOk())
            return self._open(client)
        if isinstance(frame, ServerHello) and not self._proof_sent:
            server = NodeId(frame.node_id)
            if self._certificate_peer is None:
                self._fail(CloseCode.AUTH_FAILED, "server hello before the certificate check")
            if server != self._certificate_peer:
                self._fail(
                    CloseCode.AUTH_FAILED,
                    f"server hello names {server}, its certificate {self._certificate_peer}",
                )
            payload = proof_payload(
                self._transport, server.raw, self._identity.node_id.raw, frame.nonce
            )
            self._queue(ClientProof(self._identity.node_id.raw, self._identity.sign(payload)))
            self._proof_sent = True
            return None
        if isinstance(frame, AuthOk) and self._proof_sent:
            assert self._certificate_peer is not None
            return self._open(self._certificate_peer)
        self._fail(CloseCode.PROTOCOL_ERROR, f"unexpected {type(frame).__name__} during auth")
        return None  # pragma: no cover - _fail raises

    def _open(self, peer: NodeId) -> PeerAuthenticated:
        self.peer = peer
        self.state = State.OPEN
        return PeerAuthenticated(peer)
