"""Transports: hops between two directly connected nodes, authenticated by NodeId both ways.

- :mod:`meshkey.transport.hop`        the hop protocol core (sans-IO): framing, two-step
                                      authentication, liveness; its transition table
- :mod:`meshkey.transport.link`       what every transport does with a hop: the asyncio glue
                                      around the core (:class:`~meshkey.transport.link.HopLink`)
                                      and the pool of links
- :mod:`meshkey.transport.tcp`        hops over TLS 1.3 on TCP (:mod:`meshkey.transport.tls`)
- :mod:`meshkey.transport.udp`        the node's one UDP socket: QUIC hops beside meshkey's
                                      control packets, demultiplexed by
                                      :func:`meshkey.wire.udp.classify`
- :mod:`meshkey.transport.quic`       one QUIC connection (qh3, sans-IO) carrying one hop
- :mod:`meshkey.transport.udp_socket` the socket itself, batched with GSO and GRO
- :mod:`meshkey.transport.blocking`   one hop over a blocking socket, for the one-shot CLI
"""
