"""Real programs through a portal: ssh (key auth, a remote command) and curl (100 MiB over
HTTP, sha256 at both ends, and many in parallel), through a secure channel between two
embedded nodes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meshkey import Node
from meshkey.portal import Inlet, Outlet
from meshkey.routing.address import parse_route

from .programs import http_server, ssh_command, throwaway_sshd

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@contextlib.asynccontextmanager
async def portal_to(port: int) -> AsyncIterator[int]:
    """An outlet to 127.0.0.1:PORT and an inlet to it through a secure channel; yields the
    inlet's port."""
    async with Node(name="outlet") as outlet_node, Node(tcp=None, name="inlet") as inlet_node:
        outlet = Outlet(outlet_node.router, "127.0.0.1", port)
        api = f"{outlet_node.addresses[0]}/service/api"
        channel = await inlet_node.create_secure_channel(api)
        inlet = Inlet(inlet_node.router, parse_route(f"{channel}/service/outlet"))
        _, inlet_port = await inlet.listen()
        try:
            yield inlet_port
        finally:
            await inlet.close()
            await outlet.close()


async def run(*command: str, timeout: float = 60) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out, err


@pytest.mark.skipif(not shutil.which("ssh"), reason="no ssh client")
async def test_ssh_runs_a_remote_command_through_a_portal() -> None:
    with throwaway_sshd() as sshd:
        if sshd is None:
            pytest.skip("could not start a throwaway sshd")
        async with portal_to(sshd.port) as port:
            code, out, err = await run(*ssh_command(sshd, port), "echo", "through", "meshkey")
            assert code == 0, err
            assert out == b"through meshkey\n"


@pytest.mark.skipif(not shutil.which("curl"), reason="no curl")
async def test_curl_downloads_100_MiB_intact_and_many_in_parallel(tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    big = served / "big.bin"
    with big.open("wb") as file:
        for _ in range(100):
            file.write(os.urandom(MiB))
    small = served / "small.bin"
    small.write_bytes(os.urandom(300_000))
    with http_server(served) as http_port:
        async with portal_to(http_port) as port:
            target = tmp_path / "downloaded.bin"
            code, _, err = await run(
                "curl", "-sSf", "-o", str(target), f"http://127.0.0.1:{port}/big.bin", timeout=120
            )
            assert code == 0, err
            assert (
                hashlib.sha256(target.read_bytes()).digest()
                == hashlib.sha256(big.read_bytes()).digest()
            )
            results = await asyncio.gather(
                *(
                    run("curl", "-sSf", f"http://127.0.0.1:{port}/small.bin", timeout=60)
                    for _ in range(20)
                )
            )
            expected = small.read_bytes()
            assert all(code == 0 and out == expected for code, out, _ in results)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextlib.contextmanager
def postgres() -> Iterator[int | None]:
    """A throwaway PostgreSQL server (run as the postgres user: it refuses root) on a free
    loopback port, trusting local connections; None if it cannot run here."""
    import pwd
    import socket
    import subprocess
    import tempfile

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        yield None
        return
    if not (PG_BIN / "initdb").exists() or not shutil.which("runuser"):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="meshkey-pg-") as directory:
        os.chown(directory, user.pw_uid, user.pw_gid)
        data = Path(directory) / "data"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        as_postgres = ["runuser", "-u", "postgres", "--"]
        quiet = subprocess.DEVNULL
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "meshkey"]
        if subprocess.run(
            [*as_postgres, *initdb], check=False, stdout=quiet, stderr=quiet
        ).returncode:
            yield None
            return
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
        pg_ctl = str(PG_BIN / "pg_ctl")
        started = subprocess.run(
            [*as_postgres, pg_ctl, "-D", str(data), "-o", options, "-w", "-t", "30", "start"],
            check=False,
            stdout=quiet,
            stderr=quiet,
        )
        if started.returncode:
            yield None
            return
        try:
            yield port
        finally:
            subprocess.run(
                [*as_postgres, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
                check=False,
                stdout=quiet,
                stderr=quiet,
            )


@pytest.mark.skipif(not shutil.which("psql"), reason="no psql")
async def test_psql_through_an_inlet_a_relay_and_an_outlet_across_a_secure_channel() -> None:
    with postgres() as pg_port:
        if pg_port is None:
            pytest.skip("could not start a throwaway PostgreSQL")
        async with (
            Node(name="green") as green,
            Node(tcp=None, name="blue") as blue,
            Node(tcp=None, name="yellow") as yellow,
        ):
            g = str(green.addresses[0])
            await blue.create_relay("blue", g)
            outlet = Outlet(blue.router, "127.0.0.1", pg_port)
            channel = await yellow.create_secure_channel(f"{g}/service/forward_to_blue/service/api")
            inlet = Inlet(yellow.router, parse_route(f"{channel}/service/outlet"))
            _, port = await inlet.listen()
            psql = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "meshkey", "-d", "postgres"]
            sql = (
                "CREATE TABLE animals (name text); "
                "INSERT INTO animals VALUES ('heron'), ('otter'); "
                "SELECT name FROM animals ORDER BY name;"
            )
            code, out, err = await run(*psql, "-X", "-q", "-A", "-t", "-c", sql)
            assert code == 0, err
            assert out.decode().split() == ["heron", "otter"]
            assert outlet.describe()["sessions_total"] >= 1
            await inlet.close()
            await outlet.close()
