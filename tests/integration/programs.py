"""Real servers for portal tests: PostgreSQL, a threaded HTTP server, a threaded TCP echo.

PostgreSQL's binaries are found with ``pg_config --bindir`` or under
``/usr/lib/postgresql/*/bin`` (the newest), never at a fixed version; it refuses to run as
root, so it runs as the ``postgres`` user (``runuser``), trusting local connections.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import http.server
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def pg_bindir() -> Path | None:
    """Where PostgreSQL's server programs (initdb, pg_ctl) are, if anywhere."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        candidates.append(Path(found))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    return next((c for c in candidates if (c / "initdb").exists()), None)


@contextlib.contextmanager
def postgres() -> Iterator[tuple[int | None, str]]:
    """A throwaway PostgreSQL on a free loopback port (user ``meshkey``); yields (port, why)
    with port None when it cannot run here and why not."""
    bindir = pg_bindir()
    if bindir is None:
        yield None, "no PostgreSQL server programs (pg_config --bindir, /usr/lib/postgresql)"
        return
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        yield None, "no postgres user to run PostgreSQL as (it refuses root)"
        return
    if os.geteuid() == 0 and not shutil.which("runuser"):
        yield None, "running as root without runuser"
        return
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory(prefix="meshkey-pg-") as directory:
        if os.geteuid() == 0:
            os.chown(directory, user.pw_uid, user.pw_gid)
        data = Path(directory) / "data"
        port = free_port()
        initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "meshkey"]
        done = subprocess.run([*as_postgres, *initdb], check=False, capture_output=True)
        if done.returncode:
            yield None, f"initdb failed: {done.stderr.decode(errors='replace')[-300:]}"
            return
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
        pg_ctl = str(bindir / "pg_ctl")
        log = Path(directory) / "server.log"  # the server keeps its output: not our pipes
        start = [pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "30", "start"]
        started = subprocess.run(
            [*as_postgres, *start],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if started.returncode:
            text = log.read_text(errors="replace")[-300:] if log.exists() else "?"
            yield None, f"pg_ctl start failed: {text}"
            return
        try:
            yield port, ""
        finally:
            subprocess.run(
                [*as_postgres, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[int]:
    """Serves ``directory`` over HTTP on a loopback port (in threads of this process)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP echo server on a loopback port (a thread per connection)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass(frozen=True)
class Sshd:
    port: int
    key: Path  # the user's private key (its public half is authorized)
    user: str


@contextlib.contextmanager
def throwaway_sshd() -> Iterator[Sshd | None]:
    """An sshd on a free loopback port with temporary host and user keys; None if impossible."""
    sshd, keygen = "/usr/sbin/sshd", shutil.which("ssh-keygen")
    if not (os.path.exists(sshd) and keygen and shutil.which("ssh")):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="meshkey-sshd-") as directory:
        base = Path(directory)
        for name in ("host", "user"):
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True
            )
        (base / "authorized_keys").write_text((base / "user.pub").read_text())
        (base / "authorized_keys").chmod(0o600)
        port = free_port()
        config = base / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host'}\n"
            f"AuthorizedKeysFile {base / 'authorized_keys'}\nPidFile {base / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin yes\nAllowTcpForwarding yes\n"
        )
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
        daemon = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
        except TimeoutError:
            daemon.terminate()
            daemon.wait(5)
            yield None
            return
        try:
            yield Sshd(port, base / "user", os.environ.get("USER") or "root")
        finally:
            daemon.terminate()
            daemon.wait(5)


def ssh_command(sshd: Sshd, port: int, *args: str) -> list[str]:
    """``ssh`` to ``sshd``'s user at 127.0.0.1:PORT with its key and no host-key prompts."""
    return [
        "ssh", "-i", str(sshd.key), "-p", str(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        *args, f"{sshd.user}@127.0.0.1",
    ]  # fmt: skip
