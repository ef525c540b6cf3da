"""An in-process simulated network with Linux-like NAT boxes, and meshkey nodes on it.

Tests and benchmarks import it: :mod:`tests.natsim.net` (clock, WAN, NAT boxes, sockets),
:mod:`tests.natsim.node` (the sans-IO cores behind a small glue), and
:mod:`tests.natsim.scenario` (NATLAB.md's matrix). ``python -m tests.natsim`` prints the
matrix for meshkey's strategy and the reference ones.
"""
