"""Every example in README.md, run as written, against real daemons in a private
MESHKEY_HOME.

The fenced blocks are read from the README itself (so an example that changes is tested as
it now reads). Blocks under one heading run in order in one state directory, and the
forwarder session (relays, TCP portals, routes) continues from heading to heading, as the
README tells it. A line is a command (``$ `` before it where the block shows output); what
follows it, up to the next command, is its output, of which the first line must match (node
ids, ports and times may differ); a trailing comment that names an output (``# HELLO``,
``# prints /service/outlet``, ``# Pong from ... 0.412 ms``) must match too. Placeholders
(``NODEID``, ``GREEN_NODE_ID``, ``TICKET``) are filled in from the session. Left out, and
said why: commands that need a program the test machine may not have (``psql``), and Python
that is a fragment rather than a program. The TOML example runs through the command the
prose gives for it (``node create --configuration node.toml``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import Cli

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"

#: Headings whose blocks continue one session (the README's forwarder session).
SESSIONS = {
    "Relays and secure channels: Ockam's forwarder session": "forwarder",
    "TCP portals: psql, ssh, curl through meshkey": "forwarder",
    "Routes": "forwarder",
}
#: Commands the test does not run, and why.
SKIPPED = {
    "psql": "needs PostgreSQL's psql (an external program); portals carry psql in "
    "tests/integration/test_portal_cli.py where it is installed",
}
#: Ports the examples listen on, literally.
LITERAL_PORTS = {"127.0.0.1:4000": "udp", "127.0.0.1:15432": "tcp"}


@dataclass
class Command:
    text: str
    comment: str = ""
    shown: list[str] = field(default_factory=list)  # the output the README shows


@dataclass
class Block:
    heading: str
    language: str
    lines: list[str]
    line_number: int

    def commands(self) -> list[Command]:
        prompts = any(line.startswith("$ ") for line in self.lines)
        commands: list[Command] = []
        pending = ""
        for line in self.lines:
            if prompts and not line.startswith("$ ") and not pending:
                if commands:
                    commands[-1].shown.append(line)
                continue
            text = line[2:] if prompts and line.startswith("$ ") and not pending else line
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
                continue
            whole = pending + text
            pending = ""
            code, comment = _split_comment(whole)
            if code.strip():
                commands.append(Command(code.strip(), comment))
        return commands


def _split_comment(line: str) -> tuple[str, str]:
    """``command   # comment`` -> both (a ``#`` after two spaces, outside quotes)."""
    match = re.search(r"\s{2,}#\s?(.*)$", line)
    if match is None or line[: match.start()].count("'") % 2:
        return line, ""
    return line[: match.start()], match.group(1).strip()


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    heading = ""
    current: Block | None = None
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if current is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            if current is None:
                current = Block(heading, line[3:].strip(), [], number)
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.lines.append(line)
    return blocks


def sessions() -> dict[str, list[Block]]:
    grouped: dict[str, list[Block]] = {}
    for block in readme_blocks():
        if block.language == "text":  # output shown, nothing to run
            continue
        name = SESSIONS.get(block.heading, block.heading)
        if block.language == "toml":  # its own nodes: it declares a blue of its own
            name = "configuration example"
        grouped.setdefault(name, []).append(block)
    return grouped


def _pattern(shown: str) -> re.Pattern[str]:
    """A shown line as a pattern: NodeIds, numbers and '...' stand for what differs."""
    parts = re.split(r"(mk[a-z2-7]{52}|\.\.\.|\d+(?:\.\d+)?)", shown.strip())
    regex = ""
    for index, part in enumerate(parts):
        if index % 2 == 0:
            regex += re.escape(part)
        elif part.startswith("mk"):
            regex += r"mk[a-z2-7]{52}"
        elif part == "...":
            regex += r".*"
        else:
            regex += r"\d+(?:\.\d+)?"
    return re.compile(regex)


def _port_taken(address: str, protocol: str, wait: float = 5.0) -> bool:
    """Whether ``address`` stays taken for ``wait`` seconds (the daemons of the session
    before may still be dying)."""
    host, port = address.split(":")
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    deadline = time.monotonic() + wait
    while True:
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(port)))
            except OSError:
                if time.monotonic() > deadline:
                    return True
            else:
                return False
        time.sleep(0.1)


@dataclass
class Session:
    cli: Cli
    directory: Path
    last: str = ""
    ticket: str = ""

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "MESHKEY_HOME": str(self.cli.home),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def fill(self, text: str) -> str:
        """The README's placeholders, from the session."""
        for placeholder in ("GREEN_NODE_ID", "NODEID"):
            if placeholder in text:
                text = text.replace(placeholder, self.cli.ok("identity", "show", "green").strip())
        if "TICKET" in text:
            text = text.replace("TICKET", self.ticket)
        return text

    def run(self, command: Command) -> None:
        program = command.text.split()[0]
        if program in SKIPPED:
            return
        text = self.fill(command.text)
        result = subprocess.run(
            ["bash", "-c", text],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.directory,
            timeout=120,
            check=False,
        )
        shown = [line for line in command.shown if line.strip()]
        where = f"README: {text}\n{result.stdout}{result.stderr}"
        if shown and shown[0].startswith("error:"):
            assert result.returncode != 0, where
            assert _pattern(shown[0]).search(result.stderr.splitlines()[0]), where
            return
        assert result.returncode == 0, where
        self.last = result.stdout
        if " share " in f" {text} ":
            self.ticket = result.stdout.strip()
        if shown:
            first = result.stdout.splitlines()[0] if result.stdout else ""
            assert _pattern(shown[0]).fullmatch(first.strip()), where
        self.check_comment(command.comment, result.stdout, where)

    @staticmethod
    def check_comment(comment: str, stdout: str, where: str) -> None:
        if re.fullmatch(r"[A-Z]{2,}", comment):  # `# HELLO`: the reply
            assert stdout.strip() == comment, where
        elif comment.startswith("prints ") and " " not in comment[len("prints ") :]:
            assert comment[len("prints ") :] in stdout, where
        elif comment.startswith("Pong from"):
            assert _pattern(comment).fullmatch(stdout.strip()), where


@pytest.mark.parametrize("name", list(sessions()))
def test_readme_examples_run_as_written(name: str, cli: Cli, tmp_path: Path) -> None:
    blocks = sessions()[name]
    text = "\n".join("\n".join(block.lines) for block in blocks)
    for address, protocol in LITERAL_PORTS.items():
        if address in text and _port_taken(address, protocol):
            pytest.skip(f"the example listens on {address} ({protocol}), which is taken here")
    session = Session(cli, tmp_path)
    ran = 0
    for block in blocks:
        if block.language == "toml":
            run_configuration_example(session, block)
            ran += 1
        elif block.language == "python":
            ran += run_python_example(block, tmp_path)
        else:
            for command in block.commands():
                session.run(command)
                ran += 1
    assert ran, f"no example ran under {name!r}"


def run_configuration_example(session: Session, block: Block) -> None:
    """The TOML example, through the command the prose gives for it, with the nodes and
    identities it names."""
    cli = session.cli
    (session.directory / "node.toml").write_text("\n".join(block.lines) + "\n")
    cli.ok("node", "create", "green")
    cli.ok("node", "create", "yellow")
    cli.ok("identity", "create", "friend")
    udp = cli.address("green", "udp").split("/")
    seed = f"SEED={cli.node_id('green')}@{udp[2]}:{udp[4]}"
    session.run(
        Command(
            f"meshkey node create --configuration node.toml --variable '{seed}' "
            "--variable FRIEND=friend"
        )
    )
    assert len(cli.json("policy", "show", "uppercase", "--at", "blue")["allow"]) == 2
    assert [r["name"] for r in cli.json("relay", "list", "--to", "blue")] == ["blue"]


def run_python_example(block: Block, directory: Path) -> int:
    source = "\n".join(block.lines)
    if "asyncio.run(" not in source:
        return 0  # a fragment (it awaits outside a coroutine): test_portal.py runs its calls
    script = directory / f"example_{block.line_number}.py"
    script.write_text(source + "\n")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for line in block.lines:
        _, comment = _split_comment(line)
        if comment.startswith("b'"):
            assert comment in result.stdout, result.stdout
    return 1


def test_the_readme_has_the_examples_this_file_runs() -> None:
    """A README rewritten without command blocks would make the test above pass vacuously."""
    found = sessions()
    assert {
        "The command line",
        "forwarder",
        "The node graph: seeds, lookups, `peer` commands",
    } <= set(found)
    commands = [c.text for b in found["forwarder"] for c in b.commands()]
    assert any(c.startswith("psql") for c in commands)  # the one skipped, for its reason
    assert sum(1 for c in commands if c.startswith("meshkey")) >= 8
