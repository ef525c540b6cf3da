"""TCP transport: the hop protocol over TLS 1.3 (see :mod:`meshkey.transport.link`).

Every link is a worker at a local address (``/service/_tcp.<hex>``) that a message's return
route names when it arrived over that link, so replies go back over the very connection the
request came in on (which is what lets a node behind a NAT be answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl

from meshkey.identity.certificate import node_id_from_certificate
from meshkey.identity.node_id import NodeId
from meshkey.log import EventLogger
from meshkey.routing.address import TransportAddress
from meshkey.transport.errors import describe_error
from meshkey.transport.link import HopLink, LinkError, LinkTransport
from meshkey.transport.tls import SERVER_NAME, client_context, server_context

log = EventLogger("transport.tcp")

_READ_SIZE = 256 * 1024


class TcpTransport(LinkTransport):
    protocol = "tcp"
    hop_tag = "tcp"

    _server: asyncio.Server | None = None
    _server_ssl: ssl.SSLContext | None = None

    @functools.cached_property
    def client_ssl(self) -> ssl.SSLContext:
        return client_context()

    async def listen(self, host: str, port: int) -> TransportAddress:
        if self._server_ssl is None:
            self._server_ssl = server_context(self.identity)
        self._server = await asyncio.start_server(
            self._accept,
            host,
            port,
            ssl=self._server_ssl,
            ssl_handshake_timeout=self.handshake_timeout,
            reuse_address=True,
        )
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self.address = TransportAddress.from_socket(
            "tcp", bound_host, bound_port, self.identity.node_id
        )
        log.info("listening", address=self.address)
        return self.address

    def _new_outbound(self, address: TransportAddress) -> HopLink:
        return TcpLink(self, "outbound", address.endpoint, address.node_id, address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.close_links()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        link = TcpLink(self, "inbound", (str(peername[0]), int(peername[1])))
        link.attach(reader, writer)
        await link.run()


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
        if self._writer is not None:
            self._writer.close()

    async def _wait_closed(self) -> None:
        if self._writer is not None:
            await self._writer.wait_closed()
