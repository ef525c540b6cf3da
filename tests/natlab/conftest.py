"""Pytest wiring of the NAT lab: the ``natlab`` marker, skipping where the machine cannot run
it (with the reason), one lab per test module, and the lab's state in every failure report."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from .lab import (
    SEED_ADDRESS,
    Host,
    Lab,
    MeshkeyNode,
    live_labs,
    one_public_node_hosts,
    standard_lab_hosts,
)
from .switch import open_tap

MARKER = "natlab: runs real meshkey daemons behind real kernel NATs in network namespaces (root)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


@functools.cache
def unavailable() -> str | None:
    """Why the lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, TAP devices, iptables)"
    missing = [
        tool for tool in ("ip", "iptables", "conntrack", "unshare") if not shutil.which(tool)
    ]
    if missing:
        return (
            f"the NAT lab needs {', '.join(missing)} "
            "(apt-get install iproute2 iptables conntrack util-linux)"
        )
    try:
        os.close(open_tap(f"nlprobe{os.getpid() % 100000}"))  # not persistent: gone on close
    except OSError as exc:
        return f"cannot create a TAP device (/dev/net/tun): {exc}"
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", "iptables -w -t nat -L -n && iptables -w -t raw -L -n"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()
        return f"cannot use iptables in a new network namespace: {reason[-1] if reason else ''}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lab_items = [item for item in items if item.get_closest_marker("natlab")]
    if lab_items and (reason := unavailable()):
        for item in lab_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed lab test: every router's ``conntrack -L``, the WAN counters, daemon logs."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and item.get_closest_marker("natlab"):
        for lab in live_labs():
            report.sections.append((f"NAT lab {lab.run_id}", lab.diagnostics()))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A lab shared by the tests of one module (built once: namespaces are cheap, daemons are
    not)."""
    if reason := unavailable():
        pytest.skip(reason)
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def hosts(lab: Lab) -> dict[str, Host]:
    """The shared topology: relay (203.0.113.10) and observer (198.51.100.10) on the WAN, and
    one host of each kind: ``public``, ``eim``, ``edm``, ``udp-blocked``."""
    return standard_lab_hosts(lab)


@pytest.fixture(scope="module")
def seed(lab: Lab) -> MeshkeyNode:
    """The one public node of the one-public-node lab: the seed at 203.0.113.10, UDP and TCP
    on port 7000, which is also the only relay and observer the other nodes meet (the module
    adds sides as it needs them; nodes join with ``host.join(NAME, seed)``)."""
    host = lab.hosts.get("seed") or lab.add_public_host("seed", SEED_ADDRESS)
    return host.create_seed_node()


@pytest.fixture(scope="module")
def reach_hosts(lab: Lab) -> dict[str, Host]:
    """The one-public-node lab (``one_public_node_hosts``): ``seed`` and, for prefixes ``a``
    and ``b``, one side of each kind (``a-eim``, ``b-udp-blocked``...)."""
    return one_public_node_hosts(lab)
