"""The node graph: Kademlia over 256-bit NodeIds with authenticated-only additions.

Sans-IO cores (DESIGN.md decision 9; STYLE.md patterns 1, 2, 5, 7, 8):

- :mod:`meshkey.dht.table`   k-buckets, XOR metric, replacement caches, refresh deadlines
- :mod:`meshkey.dht.diversity` how many places of a bucket, the table and an answer one
  network (/24, /48) may take
- :mod:`meshkey.dht.lookup`  the iterative lookup (alpha in flight, RTT-derived timeouts)
- :mod:`meshkey.dht.records` signed peer records, the holder's store, rate limits, publisher
- :mod:`meshkey.dht.rtt`     per-peer round-trip estimates
- :mod:`meshkey.dht.transactions` our requests in flight (ids, deadlines, what each is for)
- :mod:`meshkey.dht.lookups` the lookups running and their requests
- :mod:`meshkey.dht.responder` answers to others' requests (the table of what is answered
  in which mode), rate limits, dial-back jobs
- :mod:`meshkey.dht.rounds` bucket-full ping rounds and the store rounds of a publish
- :mod:`meshkey.dht.budget`  what a dial on another node's say-so costs, each peer's credit
  for them (3x what it sent) and the addresses found dead (DESIGN.md decision 20)
- :mod:`meshkey.dht.engine`  one node's cores together: join, refresh, publishing — what the
  daemon and the simulator (``tests/natsim/dht.py``) both run; :mod:`meshkey.dht.events` is
  what it emits
- :mod:`meshkey.dht.maintenance` the upkeep around the engine: the join retried with
  backoff, the reachability checks that decide the mode, publishing the record on change

Glue: :mod:`meshkey.dht.service` (asyncio, ``/service/dht``, timers), :mod:`meshkey.dht.hops`
(RPCs over the UDP transport's hops, dial-backs), :mod:`meshkey.dht.persistence` (what is
written when), :mod:`meshkey.dht.store` (the SQLite schema and store),
:mod:`meshkey.dht.peers` (the Python API behind ``node.peers`` and the ``peer`` commands).
Wire formats: :mod:`meshkey.wire.dht`.
"""
