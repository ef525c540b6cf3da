"""One hop driven over a blocking TLS socket, for short-lived clients without an event loop.

The CLI sends one message and waits for one reply: it needs a single authenticated hop, and
importing asyncio would cost it more than the whole exchange. The protocol is the same sans-IO
core the asyncio transport drives (:mod:`meshkey.transport.hop`).
"""

from __future__ import annotations

import socket
import ssl
import time
from types import TracebackType

from meshkey.identity.certificate import node_id_from_certificate
from meshkey.identity.errors import IdentityError
from meshkey.identity.keys import Identity
from meshkey.identity.node_id import NodeId
from meshkey.routing.address import TransportAddress
from meshkey.routing.errors import RoutingError
from meshkey.transport.errors import describe_error
from meshkey.transport.hop import (
    HopConnection,
    HopError,
    HopFailed,
    MessageReceived,
    PeerClosed,
    Role,
)
from meshkey.transport.tls import SERVER_NAME, client_context
from meshkey.wire.hop import CloseCode
from meshkey.wire.message import ErrorCode


class BlockingHop:
    """An authenticated hop to ``address``; RoutingError (UNREACHABLE, AUTH_FAILED, TIMEOUT)."""

    def __init__(self, identity: Identity, address: TransportAddress, *, timeout: float) -> None:
        self.address = address
        self.core = HopConnection(Role.CLIENT, identity, "tcp", expected_peer=address.node_id)
        self._events: list[MessageReceived] = []
        deadline = time.monotonic() + timeout
        try:
            raw = socket.create_connection(address.endpoint, timeout=timeout)
        except OSError as exc:
            raise RoutingError(
                ErrorCode.UNREACHABLE, f"cannot connect to {address}: {describe_error(exc)}"
            ) from exc
        try:
            self.sock = client_context().wrap_socket(raw, server_hostname=SERVER_NAME)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise RoutingError(
                ErrorCode.UNREACHABLE, f"TLS with {address} failed: {describe_error(exc)}"
            ) from exc
        try:
            der = self.sock.getpeercert(binary_form=True)
            self.core.certificate_verified(node_id_from_certificate(der))
            while not self.core.is_open:
                self._pump(deadline)
        except (IdentityError, HopError) as exc:
            self._flush()
            self.close()
            raise RoutingError(ErrorCode.AUTH_FAILED, str(exc)) from exc
        except RoutingError:
            self.close()
            raise

    @property
    def peer(self) -> NodeId | None:
        return self.core.peer

    def send(self, body: bytes) -> None:
        self.core.send_message(body)
        self._flush()

    def receive(self, timeout: float) -> bytes:
        """The next message body the peer sends."""
        deadline = time.monotonic() + timeout
        while not self._events:
            self._pump(deadline)
        return bytes(self._events.pop(0).body)

    def close(self) -> None:
        if self.core.is_open:
            self.core.close(CloseCode.NORMAL, "done")
            self._flush()
        self.sock.close()

    def __enter__(self) -> BlockingHop:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise RoutingError(
                    ErrorCode.UNREACHABLE, f"connection lost: {describe_error(exc)}"
                ) from exc

    def _pump(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RoutingError(ErrorCode.TIMEOUT, f"no answer from {self.address} in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(256 * 1024)
        except TimeoutError:
            raise RoutingError(
                ErrorCode.TIMEOUT, f"no answer from {self.address} in time"
            ) from None
        except OSError as exc:
            raise RoutingError(
                ErrorCode.UNREACHABLE, f"connection lost: {describe_error(exc)}"
            ) from exc
        if not data:
            raise RoutingError(ErrorCode.UNREACHABLE, f"{self.address} closed the connection")
        for event in self.core.receive_data(data):
            if isinstance(event, MessageReceived):
                self._events.append(event)
            elif isinstance(event, PeerClosed):
                raise RoutingError(
                    ErrorCode.UNREACHABLE, f"{self.address} closed the hop: {event.reason}"
                )
            elif isinstance(event, HopFailed):
                self._flush()  # our CLOSE, saying why
                raise RoutingError(
                    ErrorCode.UNREACHABLE if self.core.peer else ErrorCode.AUTH_FAILED,
                    f"hop to {self.address} failed: {event.reason}",
                )
        self._flush()
