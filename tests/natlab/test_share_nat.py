"""``meshkey share`` and ``meshkey connect`` across two home routers (issue 22), in the
one-public-node lab: blue and yellow each sit behind an endpoint-independent router and know
only the seed (203.0.113.10:7000, also the only relay and observer).

Blue joins with ``--seed`` and shares an HTTP server next to it; yellow, a fresh host with
no node at all, runs ``meshkey connect TICKET`` and nothing else: the ticket's hints (blue's
NodeId, its relay and its seed) must be all it needs to create its node, join, find blue and
open the inlet. A file fetched with ``curl`` through the inlet arrives byte-exact, and once
the transfer is over the channel under the inlet is on the direct (punched) path.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from .lab import Lab, MeshkeyNode, NatKind

pytestmark = [pytest.mark.natlab, pytest.mark.timeout(300)]

HTTP_PORT = 8000
FILE_SIZE = 4 * 1024 * 1024
RELAY_WAIT = 20.0  # seconds for blue's automatic relay (its ticket names it)
PATH_WAIT = 15.0


def test_share_and_connect_across_two_nats(lab: Lab, seed: MeshkeyNode, tmp_path: Path) -> None:
    blue_host = lab.add_side("share-blue", NatKind.EIM)
    yellow_host = lab.add_side("share-yellow", NatKind.EIM)
    blue = blue_host.join("blue", seed)

    deadline = time.monotonic() + RELAY_WAIT
    while not any(r.get("status") == "active" for r in blue.relays()):
        assert time.monotonic() < deadline, f"blue has no relay after {RELAY_WAIT} s"
        time.sleep(0.5)

    served = tmp_path / "served"
    served.mkdir()
    (served / "file.bin").write_bytes(os.urandom(FILE_SIZE))
    blue_host.serve_http(served, HTTP_PORT)
    shared = blue_host.meshkey_json("share", f"127.0.0.1:{HTTP_PORT}", "--at", "blue")
    ticket = shared["ticket"]
    assert ticket.startswith("mk1")

    inlet = yellow_host.meshkey_json("connect", ticket, "--listen", "127.0.0.1:0")
    assert inlet["to"].startswith(f"/peer/{blue.node_id}/secure/api/service/share-")
    fetched = tmp_path / "fetched.bin"
    result = yellow_host.curl(f"http://{inlet['address']}/file.bin", fetched)
    assert result.returncode == 0, result.stderr
    assert (
        hashlib.sha256(fetched.read_bytes()).digest()
        == hashlib.sha256((served / "file.bin").read_bytes()).digest()
    )

    # connect created yellow's node from the ticket: it joined through the ticket's seed
    nodes = yellow_host.meshkey_json("node", "list")
    assert len(nodes) == 1, nodes
    yellow = MeshkeyNode(yellow_host, nodes[0]["name"], nodes[0]["node_id"], 0, 0)
    paths, _ = yellow.wait_paths(
        blue.node_id, lambda ps: bool(ps) and all(p.get("direct") for p in ps), PATH_WAIT
    )
    assert paths and all(p.get("direct") for p in paths), [p.get("now") for p in paths]
    assert all("(punched)" in str(p.get("now")) for p in paths), [p.get("now") for p in paths]
