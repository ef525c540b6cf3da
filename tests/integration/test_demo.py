"""``meshkey demo`` (what ``make demo`` runs, the README's front door) works end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_runs_its_network_and_cleans_up(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshkey", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "reply 'HELLO THROUGH GREEN'" in out  # two hops
    assert "reply 'three hops out, three back'" in out
    assert "sent 'stressed' reply 'desserts'" in out  # a daemon to the embedded node
    assert "'relayed' -> 'RELAYED'" in out
    assert "'secret' -> 'SECRET'" in out  # the secure channel through the relay
    assert "'by node id' -> 'BY NODE ID'" in out  # /peer/NODEID through the node graph
    state = re.search(r"state in (\S+)", out)
    assert state is not None and not Path(state.group(1)).exists()
    assert "Demo nodes stopped and deleted." in out
