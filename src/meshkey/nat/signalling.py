"""The signalling of one punch: the CONNECT exchange and what it decides, sans-IO.

Theory of operation
-------------------
Each side builds a CONNECT (:mod:`meshkey.wire.punch`) from what it knows of itself
(:class:`LocalCandidates`: NAT class, candidate addresses, capabilities) and a fresh 32-byte
key share. The initiator sends its CONNECT and times it; the responder answers with its own
CONNECT (a *reply*). :meth:`Signalling.on_connect` takes the peer's CONNECT (the responder:
the first one; the initiator: the reply) and returns the verdict both sides reach alike:
:func:`~meshkey.nat.strategy.decide` on the two CONNECTs, then, for a birthday punch, this
node's :class:`~meshkey.nat.birthday.BirthdayGate` (one at a time per node). A :class:`Go`
carries the plan, the punch key (:mod:`meshkey.nat.token`, from both shares), the messages
still to send and when to start probing; a :class:`~meshkey.nat.strategy.Refusal` says why
not. The peer's CONNECT is taken only for its plausible candidates
(:func:`~meshkey.nat.allowance.plausible`: public ones at an observed IP, or only the first
as a claim; local ones on this node's LAN), so a peer cannot point the punch elsewhere.

With ``synchronise`` and two filtering sides (no public side: the pair whose probes could
clash in conntrack, NATLAB.md) both start probing at the same moment, in one of two ways:

* *timed start* (the default): the initiator offers the ``timed-start`` capability, and a
  responder that knows the round trip of the signalling path (the glue passes its estimate,
  e.g. the secure channel's handshake or the relay path's pings) answers with a reply that
  says ``start_in`` = RTT/2 and starts that long after sending it, when the reply arrives.
  The initiator measures the CONNECT round trip itself and starts on the reply plus
  ``start_in`` - its own RTT/2 (at once when the estimates agree): the responder's estimate
  only has to be close, the initiator corrects it. Signalling costs one round trip.
* *SYNC* (libp2p DCUtR; the fallback when the responder has no estimate, or the initiator
  does not offer the capability): the initiator measures the CONNECT round trip and starts
  RTT/2 after sending SYNC, when the responder receives it. One and a half round trips.

A responder's estimate that is too large only delays both sides (the initiator waits as
long); one too small by 2e starts the responder e early, which the probe schedule's low-TTL
openers absorb up to ``opener_lead`` plus the direct path's one-way time. When either side is
public there is no synchronisation (and no opener): a public side filters nothing and answers
whatever address a probe came from, so a clash on the other side does no harm, and each side
starts as soon as it knows the other's candidates (saving the synchronisation and the lead).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from meshkey.nat.allowance import Plausible, networks_of, plausible
from meshkey.nat.birthday import BirthdayGate
from meshkey.nat.strategy import Plan, PunchConfig, Refusal, Strategy, decide
from meshkey.nat.token import PunchKey
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.punch import (
    KEY_SHARE_SIZE,
    MAX_CANDIDATES,
    MAX_START_IN,
    AbortReason,
    Capability,
    Connect,
)
from meshkey.wire.udp import PunchRole


@dataclass(frozen=True, slots=True)
class LocalCandidates:
    """This node's side of a punch, what goes into its CONNECT: its NAT class, the
    addresses a peer may probe (``local``, ``reflexive``) or dial (``tcp``), and what it
    can do (``capabilities``). (Not :class:`meshkey.routing.message.LocalInfo`, which says
    where a routed message came in.)"""

    nat_class: NatClass
    local: tuple[Endpoint, ...] = ()
    reflexive: tuple[Endpoint, ...] = ()
    tcp: tuple[Endpoint, ...] = ()
    capabilities: frozenset[str] = frozenset()
    #: This node's networks (CIDR text, e.g. from its interfaces): a peer's local candidate
    #: is probed only inside one. Empty: a /24 (/64) around each ``local`` address.
    networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Go:
    """Punch: with ``plan`` and ``key``; send ``reply`` (the responder's CONNECT reply) and,
    if ``sync``, a SYNC; start probing at ``start_at`` (None: when the SYNC arrives)."""

    plan: Plan
    key: PunchKey
    start_at: float | None
    reply: Connect | None = None
    sync: bool = False


class Signalling:
    """One punch's CONNECT exchange, for ``role``: :attr:`mine` is this side's CONNECT (the
    initiator sends it as it starts); :meth:`on_connect` takes the peer's."""

    def __init__(
        self,
        *,
        role: PunchRole,
        punch_id: bytes,
        me: LocalCandidates,
        now: float,
        config: PunchConfig,
        rng: random.Random,
        gate: BirthdayGate,
        direct_allowed: bool = True,
        binding: bytes = b"",
        observed: tuple[Endpoint, ...] = (),
        seen: tuple[Endpoint, ...] = (),
    ) -> None:
        self.role = role
        self.punch_id = punch_id
        self.config = config
        #: The round trip of the path the signals travel: measured by the initiator, the
        #: glue's estimate for the responder (None: unknown).
        self.rtt: float | None = None
        #: The peer's CONNECT as it may be acted on: only its plausible candidates
        #: (:func:`~meshkey.nat.allowance.plausible`).
        self.theirs: Connect | None = None
        self.plausible: Plausible | None = None
        self._observed = observed
        self._seen = seen
        self._networks = networks_of(me.local, me.networks)
        self._sent_at = now
        self._gate = gate
        self._direct_allowed = direct_allowed
        self._binding = binding
        self._share = rng.randbytes(KEY_SHARE_SIZE)
        capabilities = frozenset(me.capabilities)
        if config.synchronise:
            capabilities |= {Capability.TIMED_START}
        self.mine = Connect(
            punch_id,
            reply=role is PunchRole.RESPONDER,
            key_share=self._share,
            nat_class=me.nat_class,
            local=me.local[:MAX_CANDIDATES],
            reflexive=me.reflexive[:MAX_CANDIDATES],
            tcp=me.tcp[:MAX_CANDIDATES],
            capabilities=capabilities,
        )

    def on_connect(self, theirs: Connect, now: float) -> Go | Refusal:
        """The peer's CONNECT (a reply, for the initiator): the verdict. A Go for a
        birthday punch holds the gate; the caller releases it when the punch ends.

        Only the candidates where the peer plausibly is count (:mod:`meshkey.nat.allowance`):
        with none left, the verdict is a refusal (no candidates)."""
        self.plausible = plausible(
            theirs.local,
            theirs.reflexive,
            theirs.tcp,
            observed=self._observed,
            networks=self._networks,
            seen=self._seen,
        )
        theirs = dataclasses.replace(
            theirs,
            local=self.plausible.local,
            reflexive=self.plausible.reflexive,
            tcp=self.plausible.tcp,
        )
        self.theirs = theirs
        if self.role is PunchRole.INITIATOR:
            self.rtt = now - self._sent_at
        verdict = decide(self.mine, theirs, self.config, direct_allowed=self._direct_allowed)
        if isinstance(verdict, Refusal):
            return verdict
        if verdict.strategy is Strategy.BIRTHDAY:
            wait = self._gate.try_acquire(self.punch_id, now)
            if wait is not None:
                return Refusal(
                    AbortReason.BIRTHDAY_BUSY,
                    "another birthday punch is running or ended recently",
                    True,
                    retry_after=wait,
                )
        shares = (self._share, theirs.key_share)
        if self.role is PunchRole.RESPONDER:
            shares = (theirs.key_share, self._share)
        key = PunchKey.derive(self.punch_id, *shares, self._binding)
        go = Go(verdict, key, start_at=now)
        # Synchronising guards against the conntrack clash of two filtering NATs; a public
        # side filters nothing (it answers whatever address a probe came from), so against one
        # the RTT/2 wait would only cost time.
        synchronised = self.config.synchronise and self.both_filter
        if self.role is PunchRole.RESPONDER:
            if not synchronised:
                return dataclasses.replace(go, reply=self.mine)
            start_in = self._timed_start(theirs)
            if start_in is None:  # wait for the initiator's SYNC
                return dataclasses.replace(go, reply=self.mine, start_at=None)
            reply = dataclasses.replace(self.mine, start_in=start_in)
            return dataclasses.replace(go, reply=reply, start_at=now + start_in)
        if not synchronised:
            return go
        one_way = (self.rtt or 0.0) / 2
        if theirs.start_in is not None:
            # The responder starts start_in after sending its reply, which took one_way to
            # get here: start then too (at once when its estimate was low: it is already on).
            return dataclasses.replace(go, start_at=now + max(0.0, theirs.start_in - one_way))
        return dataclasses.replace(go, sync=True, start_at=now + one_way)

    @property
    def both_filter(self) -> bool:
        """Neither side is public: the pair that needs sync and openers."""
        assert self.theirs is not None
        return NatClass.PUBLIC not in (self.mine.nat_class, self.theirs.nat_class)

    def _timed_start(self, theirs: Connect) -> float | None:
        """Responder: the ``start_in`` of its reply, or None for the SYNC exchange (the
        initiator cannot do a timed start, or the signalling RTT is unknown)."""
        rtt = self.rtt
        if Capability.TIMED_START not in theirs.capabilities or rtt is None:
            return None
        start_in = rtt / 2
        return round(start_in, 6) if start_in <= MAX_START_IN else None
