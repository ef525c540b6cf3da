"""The one in-process simulator: a fake clock, a seeded rng, a WAN with NAT boxes, loss,
latency, jitter and duplication, and the daemon's own sans-IO cores on it.

- :mod:`tests.natsim.net`: the clock and event queue (:class:`~tests.natsim.net.SimNet`, with
  the daemon's :class:`~meshkey.timing.DeadlineTimer` on it), the WAN, NAT boxes, sockets.
- :mod:`tests.natsim.node`: a node's paths (:class:`~meshkey.paths.engine.PathEngine`) over
  simulated sockets; :mod:`tests.natsim.scenario`: NATLAB.md's matrix with them;
  :mod:`tests.natsim.wiring`: two bare punchers, for the punch scheduler's unit tests.
- :mod:`tests.natsim.dht`: the node graph (:class:`~meshkey.dht.engine.DhtEngine` per node),
  for its unit tests and ``python -m bench dht``.
- :mod:`tests.natsim.portal`: two portal multiplexers on the WAN, with simulated local sockets.

Each scenario builder takes ``net=`` to join a simulation that already runs others, so path,
graph and portal scenarios can share one clock (``tests/unit/test_natsim.py``).
``python -m tests.natsim`` prints the NAT matrix for meshkey's strategy and the reference ones.
"""
