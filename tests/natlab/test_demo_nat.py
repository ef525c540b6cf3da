"""``meshkey demo --nat`` as the README shows it: it builds its own lab and must end with the
two NATed nodes on a direct path (it is the front door's NAT story, so it is tested)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import unavailable

pytestmark = pytest.mark.natlab


def test_the_nat_demo_finds_relays_and_goes_direct() -> None:
    if reason := unavailable():
        pytest.skip(reason)
    result = subprocess.run(
        [sys.executable, "-m", "meshkey", "demo", "--nat"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "automatic relay active on the seed" in out
    assert "reply 'HELLO'" in out
    assert "path: direct" in out and "(punched)" in out
    assert "through it: 'DIRECT NOW'" in out


def test_without_root_it_says_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshkey.cli import demo_nat

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert "needs root" in (demo_nat._missing() or "")
    monkeypatch.setattr(demo_nat, "REPOSITORY", demo_nat.REPOSITORY / "nowhere")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    missing = demo_nat._missing() or ""
    assert "checkout" in missing or "needs" in missing
