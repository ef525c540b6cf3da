"""The node's view of its own NAT, sans-IO: classification rounds, when to run them, and
whether the mapping moved (DESIGN.md decisions 10, 16 and 17).

Theory of operation
-------------------
:class:`NatClassifier` owns one :class:`~meshkey.nat.classify.ClassificationRound` at a time
and its :class:`~meshkey.nat.classify.RecheckPolicy`:

- **Whom to ask.** The configured observers (``--observer``, seeds), then the remotes of the
  node's open outbound QUIC hops (relay nodes), one per IP (:meth:`known_observers`); a round
  adds the alternate port an answer names (one rendezvous is enough, decision 16).
- **When.** At once when nothing is known; again on a new observer IP while the class is
  unknown, on the first TCP hop after a round with no UDP answer (what tells "UDP blocked"
  from "offline"), when a punch saw this socket where the classification does not predict
  it (:meth:`on_contradiction`), on a backoff while unknown, else every ten minutes.
- **Whether it moved** (decision 17). Every :data:`WATCH_INTERVAL` (5 s) one observer that
  answered the last round is asked again (one 64-byte WHOAMI); an answer other than what it
  saw then, or a change of the host's addresses (:meth:`set_local`), is a network change
  (:class:`NetworkChanged`) and starts a round at once; its result says ``changed``.

Inputs return nothing; drain :meth:`commands` (WHOAMI requests to send) and :meth:`events`
(:class:`NatClassified`, :class:`NetworkChanged`), then re-read :meth:`next_deadline`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meshkey.nat.classify import (
    Classification,
    ClassificationRound,
    Classified,
    RecheckPolicy,
    SendWhoami,
    classify,
)
from meshkey.wire.net import Endpoint, NatClass
from meshkey.wire.udp import (
    TXID_SIZE,
    WhoamiRequest,
    WhoamiResponse,
    encode_control_packet,
)

#: How often the mapping is checked for a change (one WHOAMI to one observer).
WATCH_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class NatClassified:
    classification: Classification
    changed: bool = False  # the mapping or the class differs from the one before


@dataclass(frozen=True, slots=True)
class NetworkChanged:
    """The socket's mapping or the host's addresses changed: a new round runs now."""

    reason: str


ClassifierEvent = NatClassified | NetworkChanged


class NatClassifier:
    def __init__(
        self, *, observers: list[Endpoint] | None = None, rng: random.Random | None = None
    ) -> None:
        self.rng = rng or random.Random()
        self.observers = list(observers or ())
        self.recheck = RecheckPolicy(rng=self.rng)
        self.classification: Classification | None = None
        self.local: tuple[Endpoint, ...] = ()  # every address the UDP socket has
        #: The remotes of the node's open outbound QUIC hops (the glue keeps it current).
        self.hop_observers: list[Endpoint] = []
        #: Whether a TCP hop is up: the evidence that tells "UDP blocked" from "offline".
        self.tcp_works: bool | None = None
        self._round: ClassificationRound | None = None
        self._watch_at: float | None = None  # when the mapping is checked next
        self._watch_txid: bytes | None = None
        self._watching: Endpoint | None = None  # the observer asked
        self._commands: list[SendWhoami] = []
        self._events: list[ClassifierEvent] = []

    # -- inputs -------------------------------------------------------------------------

    def set_local(self, local: tuple[Endpoint, ...], now: float) -> None:
        """The socket's addresses (one per host address for a wildcard socket); a change
        after the first is a network change."""
        before, self.local = self.local, local
        if before and set(before) != set(local):
            self.on_network_change("the host's addresses changed", now)

    def on_network_change(self, reason: str, now: float) -> None:
        """The glue saw the network change (or this core did): classify again at once."""
        self._events.append(NetworkChanged(reason))
        self.recheck.on_network_change(now)

    def on_contradiction(self, now: float) -> None:
        """A peer saw this socket where the classification does not predict it."""
        self.recheck.on_contradiction(now)

    def on_hop_up(self, transport: str, remote: Endpoint, now: float) -> None:
        """An outbound hop authenticated: a new observer (a QUIC hop to a new IP), or the
        first TCP hop after a round that got no UDP answer: ask again."""
        found = self.classification
        if found is not None and found.nat_class is not NatClass.UNKNOWN:
            return
        new_ip = transport == "udp" and remote[0] not in {a[0] for a in self.observers}
        no_answers = found is not None and not any(o.reflexive for o in found.observations)
        if new_ip or (transport == "tcp" and no_answers):
            self.recheck.on_network_change(now)

    @property
    def classifying(self) -> bool:
        return self._round is not None and self._round.result is None

    def known_observers(self) -> list[Endpoint]:
        """Configured observers, then the remotes of open outbound QUIC hops, one per IP."""
        seen: dict[str, Endpoint] = {}
        for address in [*self.observers, *self.hop_observers]:
            seen.setdefault(address[0], address)
        return list(seen.values())

    def classify(
        self, now: float, observers: list[Endpoint] | None = None, *, tcp_works: bool | None = None
    ) -> None:
        """Starts a round now, unless one runs (its result answers both). ``tcp_works``:
        what is known of TCP (default: :attr:`tcp_works`)."""
        if self.classifying:
            return
        self._round = ClassificationRound(
            observers if observers is not None else self.known_observers(),
            list(self.local),
            tcp_works=self.tcp_works if tcp_works is None else tcp_works,
            rng=self.rng,
        )
        self._round.start(now)
        self.recheck.on_round_started(now)
        self._drain_round()

    def on_whoami_response(self, source: Endpoint, response: WhoamiResponse, now: float) -> None:
        if response.txid == self._watch_txid and source == self._watching:
            self._watch_txid = None
            seen = (response.host, response.port)
            expected = self._expected_from(source)
            if expected is not None and seen != expected:
                self.on_network_change(
                    f"{source[0]}:{source[1]} now sees {seen[0]}:{seen[1]}, "
                    f"not {expected[0]}:{expected[1]}",
                    now,
                )
            return
        if self._round is not None:
            self._round.on_response(source, response, now)
            self._drain_round()

    def on_timer(self, now: float) -> None:
        if self.classifying:
            assert self._round is not None
            self._round.on_timer(now)
            self._drain_round()
        if self.recheck.due(now) and not self.classifying and self.known_observers():
            self.classify(now)
        self._watch(now)

    # -- outputs ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [
            d
            for d in (
                self._watch_at if self._watched() is not None else None,
                self._round.next_deadline() if self._round else None,
                self.recheck.next_deadline() if self.known_observers() else None,
            )
            if d is not None
        ]
        return min(deadlines, default=None)

    def commands(self) -> list[SendWhoami]:
        out, self._commands = self._commands, []
        return out

    def events(self) -> list[ClassifierEvent]:
        out, self._events = self._events, []
        return out

    # -- internals ----------------------------------------------------------------------

    def _watched(self) -> Endpoint | None:
        """The observer whose view of this socket is watched for a change: one that answered
        the last classification (none before one, or while a round runs)."""
        found = self.classification
        if found is None or self.classifying:
            return None
        answered = [o.observer for o in found.observations if o.reflexive is not None]
        return answered[0] if answered else None

    def _expected_from(self, observer: Endpoint) -> Endpoint | None:
        found = self.classification
        if found is None:
            return None
        for observation in found.observations:
            if observation.observer == observer:
                return observation.reflexive
        return None

    def _watch(self, now: float) -> None:
        observer = self._watched()
        if observer is None:
            self._watch_at = None
            return
        if self._watch_at is None:
            self._watch_at = now + WATCH_INTERVAL
            return
        if now < self._watch_at:
            return
        self._watch_at = now + WATCH_INTERVAL
        self._watching = observer
        self._watch_txid = self.rng.randbytes(TXID_SIZE)
        packet = encode_control_packet(WhoamiRequest(self._watch_txid))
        self._commands.append(SendWhoami(observer, packet))

    def _drain_round(self) -> None:
        if self._round is None:
            return
        self._commands.extend(self._round.commands())
        for classified in self._round.events():
            self._classified(classified)

    def _classified(self, classified: Classified) -> None:
        classification = classified.classification
        if (
            classification.nat_class is NatClass.UNKNOWN
            and classification.observations
            and not any(o.reflexive for o in classification.observations)
            and self.tcp_works
        ):
            # No UDP answer at all, and TCP hops came up while the round ran: UDP is blocked
            # (the round began before there was any evidence of TCP).
            classification = classify(
                classification.observations, list(self.local), tcp_works=True, at=classification.at
            )
        before = self.classification
        changed = before is not None and (
            before.nat_class is not classification.nat_class
            or before.mappings[:1] != classification.mappings[:1]
        )
        self.classification = classification
        self.recheck.on_classified(classification, classification.at)
        self._watch_at = classification.at + WATCH_INTERVAL
        self._events.append(NatClassified(classification, changed))
