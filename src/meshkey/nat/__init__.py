"""NAT traversal (DESIGN.md decisions 10 and 11), sans-IO but for the reflexive-address glue.

``reflexive``: the WHOAMI service every node answers and asks; ``classify``: the NAT class
of the one UDP socket from several observers, and when to ask again; ``strategy``: whether
and how two NAT classes punch, and the probe timings; ``punch``: one punch with a peer, the
composition of ``signalling`` (the CONNECT exchange), ``probes`` (the probe schedule) and
``punch_state`` (its table of transitions), with ``token`` (the probes' MAC key) and
``birthday`` (the birthday strategy's bookkeeping); ``puncher``: a node's punches, and the
pace of attempts while relayed. ``paths/`` drives them.
"""
