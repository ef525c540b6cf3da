"""What a punch may send on its peer's say-so, and where (DESIGN.md decision 20: no amplifier).

A punch sends UDP packets to addresses a peer *named*: its CONNECT lists candidates, and a
claimed NAT class decides between a few probes and a 2,048-probe birthday spray. Any identity
that may open a secure channel to a node can send a CONNECT, so without limits one 406-byte
CONNECT naming 16 foreign addresses made a node send 760 probes there (120x), and one that
claimed an endpoint-dependent NAT made it spray 2,048 random ports of a named IP (646x).
Three rules hold now, whatever the signal says:

*Where* (:func:`plausible`): only where the peer plausibly is.

- Its public (reflexive, and TCP) candidates: those whose IP was *observed* for it — the glue
  passes what it saw (where the peer's hops or its relay registration came from): then a
  candidate at another IP is never probed. Without that, those at an IP where earlier
  punches saw the peer's valid probes (a hint, which may be stale: a router renumbers),
  else only the first one, and only as a *claim*: at most :data:`CLAIMED_PROBES` scheduled
  probes per punch.
- Its local candidates: only those in one of this node's own networks (the same LAN; a claim
  too). A local address elsewhere is someone else's LAN.
- The birthday spray: only toward an observed IP when one is known, else toward the first
  claimed one; it is paid for (below) like everything else.
- Answers (ACKs, the triggered probes of a hot pair) go only where a probe carrying the
  punch's MAC came from: observed, by definition.

*How much* (:class:`PunchAllowance`): the bytes a punch sends (probes, low-TTL openers, the
spray, ACKs) stay within :data:`AMPLIFICATION` (3) times the bytes the peer sent for it: its
punch messages over the channel (CONNECT, SYNC, RESULT, CREDIT...) and its valid probes and
ACKs. A plain punch pays for itself: a peer's probe earns three, its answer and a probe back
cost two. A birthday punch is paid with CREDIT padding (:mod:`meshkey.wire.punch`) by the
side that asks for it. What is refused is not queued, except the birthday sockets' openers
and the spray, which wait for the credit that is on its way.

*How often* (:class:`PeerLimits`): at most :data:`PEER_DATAGRAMS_PER_MINUTE` datagrams per
peer and :data:`NODE_DATAGRAMS_PER_SECOND` for all punches of the node together, whatever the
credit, so many punches (or many identities) cannot add up to a flood.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from meshkey.identity.node_id import NodeId
from meshkey.ratelimit import TokenBucket
from meshkey.wire.net import Endpoint

#: Bytes sent per byte the peer sent (QUIC's anti-amplification factor, RFC 9000 8.1).
AMPLIFICATION = 3
#: Scheduled probes a punch sends to claimed, unobserved addresses: the tight phase of the
#: schedule (20 rounds in 0.5 s) and a little more. A peer that is really there answers long
#: before (its own probes then make the pair hot, and hot pairs are observed).
CLAIMED_PROBES = 24
PEER_DATAGRAMS_PER_MINUTE = 4096  # a full birthday punch and a plain one
NODE_DATAGRAMS_PER_SECOND = 2000.0
NODE_DATAGRAMS_BURST = 4096.0
MAX_PEERS_LIMITED = 4096  # per-peer buckets kept (the least recently used go first)
#: The networks assumed around a local address when the glue does not say (a /24 or a /64:
#: what home and office LANs use).
DEFAULT_PREFIX = {4: 24, 6: 64}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Plausible:
    """The peer's candidates worth probing, and whether they were observed or only claimed."""

    local: tuple[Endpoint, ...]
    reflexive: tuple[Endpoint, ...]
    tcp: tuple[Endpoint, ...]
    observed: frozenset[str]  # the IPs observed for the peer (empty: none)

    def claimed(self, address: Endpoint) -> bool:
        """Whether probing ``address`` rests on the peer's word alone."""
        return address[0] not in self.observed


def networks_of(local: Iterable[Endpoint], configured: Iterable[str] = ()) -> tuple[Network, ...]:
    """This node's networks: ``configured`` (CIDR text) if any, else a /24 (/64) around each
    local address; loopback addresses belong to the loopback network."""
    found: list[Network] = []
    for text in configured:
        try:
            found.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    if found:
        return tuple(found)
    for host, _ in local:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        prefix = 8 if ip.is_loopback and ip.version == 4 else DEFAULT_PREFIX[ip.version]
        found.append(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
    return tuple(dict.fromkeys(found))


def _in(host: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


def plausible(
    local: tuple[Endpoint, ...],
    reflexive: tuple[Endpoint, ...],
    tcp: tuple[Endpoint, ...],
    *,
    observed: Iterable[Endpoint],
    networks: Iterable[Network],
    seen: Iterable[Endpoint] = (),
) -> Plausible:
    """The candidates of a peer's CONNECT that may be probed (or dialled): see the module
    docstring. ``observed``: the glue's observations (strict); ``seen``: where earlier
    punches saw the peer (a hint)."""
    strict = frozenset(host for host, _ in observed)
    hinted = frozenset(host for host, _ in seen)
    nets = tuple(networks)

    def public(addresses: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        if strict:
            return tuple(a for a in addresses if a[0] in strict)
        return tuple(a for a in addresses if a[0] in hinted) or addresses[:1]

    return Plausible(
        local=tuple(a for a in local if _in(a[0], nets) or a[0] in strict),
        reflexive=public(reflexive),
        tcp=public(tcp),
        observed=strict | hinted,
    )


class PunchAllowance:
    """One punch's account: bytes the peer sent for it, bytes sent on its say-so.

    :meth:`earn` what the peer sent; :meth:`spend` before each datagram (False: not now).
    ``limit`` is the node's and the peer's rate (:class:`PeerLimits`), asked last.
    """

    def __init__(
        self, *, factor: int = AMPLIFICATION, limit: PeerLimits | None = None, peer: NodeId
    ) -> None:
        self.factor = factor
        self.earned = 0
        self.spent = 0
        self.refused = 0
        self.claimed_probes = 0
        self._limit = limit
        self._peer = peer

    def earn(self, size: int) -> None:
        self.earned += max(0, size)

    @property
    def room(self) -> int:
        return self.factor * self.earned - self.spent

    def spend(self, size: int, now: float) -> bool:
        if size > self.room or (self._limit is not None and not self._limit.allow(self._peer, now)):
            self.refused += 1
            return False
        self.spent += size
        return True


class PeerLimits:
    """Datagrams per peer per minute and per node per second, for every punch together."""

    def __init__(
        self,
        *,
        per_peer_per_minute: int = PEER_DATAGRAMS_PER_MINUTE,
        per_second: float = NODE_DATAGRAMS_PER_SECOND,
        burst: float = NODE_DATAGRAMS_BURST,
    ) -> None:
        self.per_peer_per_minute = per_peer_per_minute
        self._node = TokenBucket(per_second, burst)
        self._peers: OrderedDict[NodeId, TokenBucket] = OrderedDict()

    def allow(self, peer: NodeId, now: float) -> bool:
        bucket = self._peers.get(peer)
        if bucket is None:
            bucket = TokenBucket(self.per_peer_per_minute / 60.0, self.per_peer_per_minute)
            self._peers[peer] = bucket
            while len(self._peers) > MAX_PEERS_LIMITED:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        if bucket.available(now) < 1 or self._node.available(now) < 1:
            return False
        return bucket.allow(now) and self._node.allow(now)
