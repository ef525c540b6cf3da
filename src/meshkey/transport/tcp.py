"""TCP transport: the hop protocol over TLS 1.3 (see :mod:`meshkey.transport.link`).

Every link is a worker at a local address (``/service/_tcp.<hex>``) that a message's return
route names when it arrived over that link, so replies go back over the very connection the
request came in on (which is what lets a node behind a NAT be answered).

A listener asked for any port (port 0) takes :attr:`TcpTransport.port_hint`'s port when it is
free: the node sets it to its UDP port, so the one ``HOST:PORT`` a seed is known by
(``--seed NODEID@HOST:PORT``) reaches it over TCP too, which is how a node behind a router
that drops UDP gets in (:mod:`meshkey.dht.hops`' fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket
import ssl
from collections.abc import Callable
from typing import Any

from meshkey.identity.certificate import node_id_from_certificate
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.address import TransportAddress
from meshkey.transport.errors import describe_error
from meshkey.transport.link import HopLink, LinkError, LinkTransport
from meshkey.transport.tls import SERVER_NAME, client_context, server_context
from meshkey.wire.hop import CloseCode

log = EventLogger("transport.tcp")

_READ_SIZE = 256 * 1024


class TcpTransport(LinkTransport):
    protocol = "tcp"
    hop_tag = "tcp"

    _server_ssl: ssl.SSLContext | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listeners: dict[TransportAddress, tuple[socket.socket, asyncio.Task[None]]] = {}
        #: The port a listener asked for any port tries first (the node's UDP port).
        self.port_hint: Callable[[], int | None] = lambda: None

    @functools.cached_property
    def client_ssl(self) -> ssl.SSLContext:
        return client_context()

    @property
    def listen_addresses(self) -> list[TransportAddress]:
        return list(self._listeners)

    async def listen(self, host: str, port: int) -> TransportAddress:
        """Listens on ``host:port`` (more than one listener is fine); the first is the
        transport's address. Port 0: :attr:`port_hint`'s port if it is free, else any."""
        if self._server_ssl is None:
            self._server_ssl = server_context(self.identity)
        hinted = self.port_hint() if port == 0 else None
        if hinted:
            try:
                sock = _bound(host, hinted)
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
                log.info("tcp.port_hint_taken", port=hinted)
                sock = _bound(host, port)
        else:
            sock = _bound(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        address = TransportAddress.from_socket("tcp", bound_host, bound_port, self.identity.node_id)
        task = asyncio.get_running_loop().create_task(self._accept_loop(sock), name="tcp:listen")
        self._listeners[address] = (sock, task)
        if self.address is None:
            self.address = address
        log.info("listening", address=address)
        return address

    async def stop_listening(self, address: TransportAddress) -> None:
        sock, task = self._listeners.pop(address)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
        if self.address == address:
            self.address = next(iter(self._listeners), None)

    def _new_outbound(self, address: TransportAddress) -> HopLink:
        return TcpLink(self, "outbound", address.endpoint, address.node_id, address)

    async def close(self) -> None:
        for address in list(self._listeners):
            await self.stop_listening(address)
        await self.close_links()

    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accepts plain sockets and starts TLS on each only after the stranger limits: a
        flood of half-done handshakes cannot hold more than the limits allow. (TLS over an
        accepted socket, not start_tls on a stream: a stream reads at once, and a ClientHello
        read before start_tls stalls the handshake, as seen with uvloop.)"""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peername = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("tcp.accept_failed", reason=describe_error(exc))
                await asyncio.sleep(0.1)
                continue
            remote = (str(peername[0]), int(peername[1]))
            if not self.admits_stranger(remote[0]):
                sock.close()
                continue
            link = TcpLink(self, "inbound", remote)
            link.spawn(self._secure(link, sock), "accept")

    async def _secure(self, link: TcpLink, sock: socket.socket) -> None:
        assert self._server_ssl is not None
        reader = asyncio.StreamReader(limit=_READ_SIZE)
        protocol = asyncio.StreamReaderProtocol(reader)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=self._server_ssl,
                ssl_handshake_timeout=link.core.liveness.auth_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            sock.close()
            await link.close(CloseCode.NORMAL, f"TLS failed: {describe_error(exc)}")
            return
        except asyncio.CancelledError:
            sock.close()  # evicted (or shut down) during the handshake: the socket goes too
            raise
        link.attach(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
        await link.run()


def _bound(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class TcpLink(HopLink):
    transport: TcpTransport
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def _connect(self) -> NodeId:
        host, port = self.remote
        timeout = self.transport.handshake_timeout
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=self.transport.client_ssl,
                    server_hostname=SERVER_NAME,
                    ssl_handshake_timeout=timeout,
                ),
                timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise LinkError(describe_error(exc)) from exc
        self.attach(reader, writer)
        ssl_object = writer.get_extra_info("ssl_object")
        return node_id_from_certificate(
            ssl_object.getpeercert(binary_form=True) if ssl_object else None
        )

    def _write(self, chunks: list[bytes]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.writelines(chunks)

    async def _drain(self) -> None:
        assert self._writer is not None
        try:
            await self._writer.drain()
        except ssl.SSLError as exc:
            raise LinkError(describe_error(exc)) from exc

    async def _read(self) -> bytes:
        assert self._reader is not None
        try:
            return await self._reader.read(_READ_SIZE)
        except ssl.SSLError as exc:
            raise LinkError(describe_error(exc)) from exc

    def _close_pipe(self) -> None:
        if self._writer is None:
            return
        if self.core.peer is None:
            # Never authenticated: drop it at once. A graceful TLS shutdown would keep its
            # buffers (256 KiB and more each) until the stranger answers, or for 30 s.
            self._writer.transport.abort()
        else:
            self._writer.close()

    async def _wait_closed(self) -> None:
        if self._writer is not None:
            await self._writer.wait_closed()
