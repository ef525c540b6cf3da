"""What a lab run owns, written down before it is made, so that a killed run can be swept.

Every run has a short random run id; its namespaces (``nl-RUNID-NAME``), TAP devices
(``nlRUNIDwN``) and work directory carry it, so two runs never collide. Its state file
(``STATE_DIR/RUNID.json``) records the owner process (pid and kernel start time, so a reused
pid does not look alive), the switch process, and every namespace and TAP device the run
*is about to* create: things are recorded first and made second, so a run killed half-way
leaves nothing the sweep does not know about.

The sweep removes a run's things only when its owner is gone, and only the things its own
state file names: it never matches other people's namespaces or processes by name. Inside a
lab namespace every process was started by the lab (that namespace exists only for it), so
the sweep may end the processes ``ip netns pids`` lists there, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_DIR = Path(os.environ.get("NATLAB_STATE_DIR", "/run/meshkey-natlab"))
WORKDIR_PREFIX = "meshkey-natlab-"
NETNS_PREFIX = "nl-"


def new_run_id() -> str:
    """Six hex digits, not used by a state file or a namespace already there."""
    while True:
        run_id = secrets.token_hex(3)
        taken = (STATE_DIR / f"{run_id}.json").exists() or any(
            name.startswith(f"{NETNS_PREFIX}{run_id}-") for name in list_netns()
        )
        if not taken:
            return run_id


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def alive(pid: int | None, start_time: int | None) -> bool:
    """The same process (not a reused pid) still runs (a zombie has ended)."""
    return (
        pid is not None
        and start_time is not None
        and process_start_time(pid) == start_time
        and not zombie(pid)
    )


@dataclass
class RunState:
    run_id: str
    owner_pid: int
    owner_start: int
    workdir: str
    created: float = field(default_factory=time.time)
    switch_pid: int | None = None
    switch_start: int | None = None
    namespaces: list[str] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # for `status` and `exec`
    ready: bool = False
    purpose: str = "test"  # "manual" for `python -m tests.natlab up`: only those `down` stops

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.run_id}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.path
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=1))
        temporary.replace(target)  # never a half-written state file

    def owner_alive(self) -> bool:
        return alive(self.owner_pid, self.owner_start)

    @classmethod
    def load(cls, path: Path) -> RunState:
        data = json.loads(path.read_text())
        return cls(**data)


def load_all() -> list[RunState]:
    states = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.exists() else []:
        with contextlib.suppress(OSError, ValueError, TypeError):
            states.append(RunState.load(path))
    return states


def end_processes_in(netns: str, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL, every process in lab namespace ``netns`` (all started by the lab)."""
    pids = netns_pids(netns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not zombie(pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def netns_pids(netns: str) -> list[int]:
    if netns not in list_netns():
        return []
    result = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    )
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def end_process(pid: int | None, start_time: int | None, grace: float = 2.0) -> None:
    """Ends one process we started, if it is still the same process."""
    if pid is None or not alive(pid, start_time):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid, start_time) and time.monotonic() < deadline:
        time.sleep(0.02)
    if alive(pid, start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove(state: RunState, *, keep_workdir: bool = False) -> list[str]:
    """Removes everything ``state`` names; returns what it removed (for the sweep's report)."""
    removed = []
    existing = set(list_netns())
    for netns in state.namespaces:
        if netns in existing:
            end_processes_in(netns)
    for netns in state.namespaces:
        if netns in existing:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
            removed.append(f"netns {netns}")
    end_process(state.switch_pid, state.switch_start)
    for tap in state.taps:  # gone with the switch unless it was killed half-way
        if Path(f"/sys/class/net/{tap}").exists():
            subprocess.run(["ip", "link", "del", tap], capture_output=True, check=False)
            removed.append(f"tap {tap}")
    workdir = Path(state.workdir)
    if not keep_workdir and workdir.name.startswith(WORKDIR_PREFIX) and workdir.is_dir():
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(f"dir {workdir}")
    with contextlib.suppress(FileNotFoundError):
        state.path.unlink()
    return removed


def sweep() -> dict[str, list[str]]:
    """Removes what runs whose owner has died left behind; live runs are left alone."""
    swept = {}
    for state in load_all():
        if not state.owner_alive():
            swept[state.run_id] = remove(state)
    return swept
