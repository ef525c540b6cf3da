"""A network of embedded nodes on loopback: everyone finds everyone, also after a third
of them stopped without a word; NodeIds that do not exist end in "not found"."""

from __future__ import annotations

import random

import pytest

from meshkey.identity.keys import Identity
from tests.integration.networks import loopback_network

pytestmark = pytest.mark.integration


async def test_fifteen_nodes_find_each_other_and_survive_losing_a_third() -> None:
    nodes, graphs = await loopback_network(15)
    rng = random.Random(1)
    stopped: set[int] = set()
    try:
        for source in range(15):
            target = (source + 1 + rng.randrange(14)) % 15
            result = await graphs[source].find(nodes[target].node_id, timeout=20)
            assert result.found, (source, target)
            address = nodes[target].udp.address
            assert address is not None and (address.host, address.port) in result.addresses
        missing = await graphs[3].find(Identity.generate().node_id, timeout=20)
        assert not missing.found and missing.stats.messages >= 1
        stopped = set(rng.sample(range(2, 15), 5))
        for index in stopped:
            await graphs[index].close()
            await nodes[index].stop()
        living = [i for i in range(15) if i not in stopped]
        for source in living:
            target = rng.choice([i for i in living if i != source])
            result = await graphs[source].find(nodes[target].node_id, timeout=20)
            assert result.found, (source, target)
        # Every entry of every living graph is a real node at its real address.
        real = {}
        for node in nodes:
            address = node.udp.address
            assert address is not None
            real[node.node_id] = (address.host, address.port)
        for index in living:
            for entry in graphs[index].engine.table.entries():
                assert set(entry.addresses) == {real[entry.node_id]}
    finally:
        for index in range(15):
            if index not in stopped:
                await graphs[index].close()
                await nodes[index].stop()
