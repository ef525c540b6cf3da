"""The node graph's upkeep with a fake clock, on a real engine: the first node, the join
retried with backoff, reachability checks (after joining, 60 s later, every 600 s, at once
after a reclassification) and publishing only when the record would say something new."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshkey.dht.engine import DhtEngine, SendRequest
from meshkey.dht.maintenance import (
    FIRST_RECHECK,
    JOIN_ALLOWED,
    JOIN_RETRY_FIRST,
    JOIN_RETRY_MAX,
    RECHECK,
    RECORD_CHECK_INTERVAL,
    Announce,
    AskPeer,
    FirstNode,
    GraphJoined,
    JoinAttempted,
    JoinRetry,
    JoinSlow,
    Maintenance,
    MaintenanceBusyError,
    ModeFound,
    Phase,
    PublishFailed,
    SaveMode,
)
from meshkey.dht.records import RecordContent
from meshkey.identity.keys import Identity
from meshkey.wire.dht import (
    DialBack,
    DialBackResult,
    FindNode,
    FindValue,
    Mode,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
    Value,
)

SEED_ADDRESS = ("192.0.2.1", 4000)
LOCAL = ("192.0.2.9", 5000)
NATED = ("198.51.100.7", 61000)  # what a NAT makes of LOCAL


class Rig:
    """A real engine and its upkeep, pumped the way the glue pumps them; the test plays the
    network (the seed answers or not) and the clock."""

    def __init__(self, *, fixed_mode: Mode | None = Mode.SERVER) -> None:
        self.engine = DhtEngine(
            Identity.generate(), 0.0, rng=random.Random(1), mode=fixed_mode or Mode.CLIENT
        )
        self.behind: bool | None = None
        self.upkeep = Maintenance(
            self.engine,
            fixed_mode=fixed_mode,
            behind_nat=lambda: self.behind,
            local_address=lambda: LOCAL,
            rng=random.Random(2),
        )
        self.seed = Identity.generate().node_id
        self.seeds = [(self.seed, SEED_ADDRESS)]
        self.sent: list[SendRequest] = []  # the engine's requests not yet answered
        self.commands: list[Any] = []
        self.events: list[Any] = []
        self.read = 0  # how often the record was read

    def record(self) -> RecordContent:
        """What a node's record says: its address only while it is a server."""
        self.read += 1
        return RecordContent(direct=(LOCAL,) if self.engine.mode is Mode.SERVER else ())

    def pump(self, now: float) -> None:
        while True:
            sent = [c for c in self.engine.commands() if isinstance(c, SendRequest)]
            engine_events = self.engine.events()
            for event in engine_events:
                self.upkeep.on_engine_event(event, now)
            commands, events = self.upkeep.commands(), self.upkeep.events()
            self.sent += sent
            self.commands += commands
            self.events += events
            if not (sent or engine_events or commands or events):
                return

    def take(self, kind: type) -> list[Any]:
        found = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return found

    def asks(self) -> list[AskPeer]:
        found = [c for c in self.commands if isinstance(c, AskPeer)]
        self.commands = [c for c in self.commands if not isinstance(c, AskPeer)]
        return found

    def answer_engine(self, now: float, *, rounds: int | None = None) -> None:
        """The seed answers the engine's requests (its hop authenticates first): all that
        follow, or only those of the next ``rounds`` rounds."""
        while self.sent and rounds != 0:
            rounds = None if rounds is None else rounds - 1
            batch, self.sent = self.sent, []
            for command in batch:
                self.engine.on_authenticated(command.peer, command.address, "outbound", now)
                self.engine.on_answer(command.txid, command.peer, self._answer(command), now)
                self.pump(now)

    @staticmethod
    def _answer(command: SendRequest) -> Any:
        request = command.request
        if isinstance(request, Ping):
            return Pong(request.txid, Mode.SERVER, None)
        if isinstance(request, FindNode):
            return Nodes(request.txid, Mode.SERVER, ())
        if isinstance(request, FindValue):
            return Value(request.txid, Mode.SERVER, None, ())
        assert isinstance(request, Store)
        return Stored(request.txid, Mode.SERVER)

    def fail_engine(self, now: float) -> None:
        """Nobody is at the seed's address: every request of the engine fails."""
        while self.sent:
            self.engine.on_failure(self.sent.pop(0).txid, now)
            self.pump(now)

    def tick(self, now: float) -> None:
        assert self.upkeep.next_deadline() == now
        self.upkeep.on_timer(now)
        self.pump(now)

    def dial_back(self, ask: AskPeer, now: float, *, ok: bool, helper: bool, inbound: bool) -> None:
        request = ask.request
        assert isinstance(request, DialBack) and ask.peer == self.seed
        if ok:
            self.upkeep.on_ping_nonce(request.nonce, inbound=inbound)
        result = DialBackResult(request.txid, Mode.SERVER, ok, helper)
        self.upkeep.on_answer(ask.txid, result, now)
        self.pump(now)


def joined(rig: Rig, now: float = 0.0) -> None:
    """The upkeep started and the seed answered the whole join (mode fixed)."""
    rig.upkeep.maintain(rig.seeds, now, record=rig.record)
    rig.pump(now)
    rig.answer_engine(now)
    assert rig.take(GraphJoined)


def phase(upkeep: Maintenance) -> Phase:
    return upkeep.phase  # a call: mypy would narrow the attribute across the steps


def test_the_first_node_of_a_network_is_a_server_at_once_and_nothing_follows() -> None:
    rig = Rig(fixed_mode=None)
    rig.upkeep.maintain([], 0.0, record=rig.record)
    rig.pump(0.0)
    assert rig.engine.mode is Mode.SERVER
    assert rig.commands == [SaveMode(Mode.SERVER)]
    assert rig.events == [FirstNode(Mode.SERVER)]
    assert not rig.sent and rig.upkeep.next_deadline() is None and rig.read == 0
    rig.upkeep.maintain(rig.seeds, 1.0, record=rig.record)  # once only
    rig.pump(1.0)
    assert not rig.sent and phase(rig.upkeep) == Phase.FIRST_NODE
    # A fixed mode stays what it is.
    fixed = Rig(fixed_mode=Mode.CLIENT)
    fixed.upkeep.maintain([], 0.0, record=fixed.record)
    fixed.pump(0.0)
    assert fixed.engine.mode is Mode.CLIENT
    assert fixed.commands == [] and fixed.events == [FirstNode(Mode.CLIENT)]


def test_a_join_nobody_answers_is_retried_with_backoff_from_1_s_to_60_s() -> None:
    rig = Rig()
    rig.upkeep.maintain(rig.seeds, 0.0, record=rig.record)
    rig.pump(0.0)
    now, delays = 0.0, []
    for _ in range(9):
        assert phase(rig.upkeep) == Phase.JOINING
        assert [c.peer for c in rig.sent] == [rig.seed]  # each attempt pings the seed
        rig.fail_engine(now)
        assert rig.take(JoinAttempted) == [JoinAttempted(0)]
        (retry,) = rig.take(JoinRetry)
        delays.append(retry.delay)
        assert phase(rig.upkeep) == Phase.BACKING_OFF
        assert rig.upkeep.next_deadline() == now + retry.delay
        rig.upkeep.on_timer(now + retry.delay - 0.001)  # not yet
        rig.pump(now + retry.delay - 0.001)
        assert not rig.sent
        now += retry.delay
        rig.tick(now)
    bases = [min(JOIN_RETRY_FIRST * 2**n, JOIN_RETRY_MAX) for n in range(9)]
    assert bases[-1] == JOIN_RETRY_MAX
    for delay, base in zip(delays, bases, strict=True):
        assert 0.8 * base <= delay <= 1.2 * base  # jittered by 20 %
    assert not rig.take(GraphJoined) and rig.read == 0  # nothing published meanwhile
    rig.answer_engine(now)  # the seed is up at last
    assert rig.take(GraphJoined) == [GraphJoined(1, Mode.SERVER)]
    assert rig.read == 1  # and the record goes out at once


def test_an_attempt_waits_for_the_engine_only_so_long_and_join_is_one_attempt() -> None:
    rig = Rig()
    rig.upkeep.join(rig.seeds, 0.0, timeout=2.0)
    rig.pump(0.0)
    assert rig.sent and rig.upkeep.next_deadline() == 2.0
    rig.tick(2.0)  # the seed is silent: the attempt ends without the engine's join
    assert rig.take(JoinSlow) == [JoinSlow(0)]
    assert rig.take(JoinAttempted) == [JoinAttempted(0)]
    assert phase(rig.upkeep) == Phase.DONE and rig.upkeep.next_deadline() is None
    assert not rig.events and not rig.commands  # no retry, no upkeep after join()
    late = [c.txid for c in rig.sent]
    rig.sent.clear()
    for txid in late:
        rig.engine.on_failure(txid, 5.0)
    rig.pump(5.0)  # the engine's join ends later: the attempt is over already
    assert not rig.events and phase(rig.upkeep) == Phase.DONE


def test_join_is_refused_while_an_attempt_or_the_upkeep_runs() -> None:
    rig = Rig()
    assert Phase.IDLE in JOIN_ALLOWED and Phase.JOINING not in JOIN_ALLOWED
    rig.upkeep.maintain(rig.seeds, 0.0, record=rig.record)
    rig.pump(0.0)
    with pytest.raises(MaintenanceBusyError):
        rig.upkeep.join(rig.seeds, 0.0, timeout=1.0)
    rig.answer_engine(0.0)
    assert phase(rig.upkeep) in (Phase.PUBLISHING, Phase.WAITING)
    with pytest.raises(MaintenanceBusyError):
        rig.upkeep.join(rig.seeds, 0.0, timeout=1.0)


def test_the_record_is_published_when_it_changes_and_only_then() -> None:
    rig = Rig()
    joined(rig)
    assert phase(rig.upkeep) == Phase.WAITING  # the first record went out (the seed has it)
    assert rig.upkeep.next_deadline() == RECORD_CHECK_INTERVAL
    sequence = rig.engine.publisher.sequence
    now = 0.0
    for _ in range(3):  # the same record: nothing is sent
        now += RECORD_CHECK_INTERVAL
        rig.tick(now)
        assert not rig.sent and phase(rig.upkeep) == Phase.WAITING
    assert rig.read == 4 and rig.engine.publisher.sequence == sequence
    rig.engine.set_mode(Mode.CLIENT)  # the record would now say: no direct address
    now += RECORD_CHECK_INTERVAL
    rig.tick(now)
    assert phase(rig.upkeep) == Phase.PUBLISHING and rig.sent
    assert rig.engine.publisher.sequence > sequence
    assert rig.engine.publisher.content == RecordContent()
    rig.answer_engine(now)
    assert phase(rig.upkeep) == Phase.WAITING
    now += RECORD_CHECK_INTERVAL
    rig.tick(now)
    assert not rig.sent


def test_a_publish_that_does_not_finish_is_tried_again_at_a_later_tick() -> None:
    rig = Rig()
    rig.upkeep.maintain(rig.seeds, 0.0, record=rig.record)
    rig.pump(0.0)
    while rig.sent and phase(rig.upkeep) == Phase.JOINING:
        rig.answer_engine(0.0, rounds=1)
    assert phase(rig.upkeep) == Phase.PUBLISHING
    rig.sent.clear()  # the publish's requests go unanswered
    deadline = rig.upkeep.next_deadline()
    assert deadline is not None
    rig.tick(deadline)
    assert rig.take(PublishFailed)
    assert phase(rig.upkeep) == Phase.WAITING
    rig.tick(deadline + RECORD_CHECK_INTERVAL)
    assert phase(rig.upkeep) == Phase.PUBLISHING  # not published yet: asked again


def test_reachability_is_checked_after_the_join_60_s_later_then_every_600_s() -> None:
    rig = Rig(fixed_mode=None)
    rig.upkeep.maintain(rig.seeds, 0.0, record=rig.record)
    rig.pump(0.0)
    rig.answer_engine(0.0)
    (ask,) = rig.asks()  # the join's own check
    assert phase(rig.upkeep) == Phase.CHECKING and not rig.take(GraphJoined)
    rig.dial_back(ask, 0.0, ok=True, helper=True, inbound=True)
    assert rig.take(ModeFound) == [ModeFound(Mode.SERVER, None, 1)]
    assert SaveMode(Mode.SERVER) in rig.commands and Announce((rig.seed,)) in rig.commands
    assert rig.take(GraphJoined) == [GraphJoined(1, Mode.SERVER)]
    rig.answer_engine(0.0)  # the record, which says where the server listens
    assert rig.engine.publisher.content == RecordContent(direct=(LOCAL,))
    now, checks = 0.0, []
    while now < FIRST_RECHECK + 2 * RECHECK:
        now += RECORD_CHECK_INTERVAL
        rig.tick(now)
        for ask in rig.asks():
            checks.append(now)
            rig.dial_back(ask, now, ok=True, helper=True, inbound=True)
        assert not rig.sent  # still a server: the record did not change
    assert checks == [FIRST_RECHECK, FIRST_RECHECK + RECHECK, FIRST_RECHECK + 2 * RECHECK]


def test_a_new_nat_classification_is_checked_at_the_next_tick() -> None:
    rig = Rig(fixed_mode=None)
    rig.upkeep.maintain(rig.seeds, 0.0, record=rig.record)
    rig.pump(0.0)
    rig.answer_engine(0.0)
    rig.dial_back(rig.asks()[0], 0.0, ok=True, helper=True, inbound=True)
    rig.answer_engine(0.0)
    rig.events.clear()
    rig.commands.clear()
    rig.tick(RECORD_CHECK_INTERVAL)
    assert not rig.asks()
    rig.behind = True  # classified behind a NAT: a client without asking anyone
    rig.tick(2 * RECORD_CHECK_INTERVAL)
    assert not rig.asks()
    assert rig.take(ModeFound) == [ModeFound(Mode.CLIENT, "behind a NAT (classified)", 0)]
    assert rig.commands == [SaveMode(Mode.CLIENT)] and rig.engine.mode is Mode.CLIENT
    assert phase(rig.upkeep) == Phase.PUBLISHING  # and its record says so at once
    assert rig.engine.publisher.content == RecordContent()
    rig.answer_engine(2 * RECORD_CHECK_INTERVAL)
    rig.commands.clear()
    rig.tick(3 * RECORD_CHECK_INTERVAL)
    assert not rig.commands  # unchanged since: no check
    rig.behind = False  # public now: asked at once
    rig.tick(4 * RECORD_CHECK_INTERVAL)
    assert len(rig.asks()) == 1


def test_a_dial_back_counts_only_if_it_came_over_an_inbound_hop() -> None:
    rig = Rig(fixed_mode=None)
    rig.upkeep.maintain(rig.seeds, 0.0, record=rig.record)
    rig.pump(0.0)
    rig.answer_engine(0.0)
    rig.dial_back(rig.asks()[0], 0.0, ok=True, helper=True, inbound=False)
    assert rig.take(ModeFound) == [ModeFound(Mode.CLIENT, None, 1)]
    assert not any(isinstance(c, Announce) for c in rig.commands)


@pytest.mark.parametrize(
    ("behind", "observed", "mode"),
    [
        (False, None, Mode.SERVER),  # classified public: the asked node's dial-back counts
        (None, LOCAL, Mode.SERVER),  # unknown, but the server sees our own address
        (None, NATED, Mode.CLIENT),  # translated: any NAT lets the asked node's answer in
        (None, None, Mode.CLIENT),  # no answer to the question
    ],
)
def test_without_a_helper_only_an_untranslated_address_proves_reachability(
    behind: bool | None, observed: tuple[str, int] | None, mode: Mode
) -> None:
    rig = Rig(fixed_mode=None)
    rig.behind = behind
    rig.upkeep.maintain(rig.seeds, 0.0, record=rig.record)
    rig.pump(0.0)
    rig.answer_engine(0.0)
    rig.dial_back(rig.asks()[0], 0.0, ok=True, helper=False, inbound=True)
    if behind is None:
        (question,) = rig.asks()
        assert isinstance(question.request, Ping) and question.peer == rig.seed
        answer = None if observed is None else Pong(question.request.txid, Mode.SERVER, observed)
        rig.upkeep.on_answer(question.txid, answer, 1.0)
        rig.pump(1.0)
    assert not rig.asks()
    (found,) = rig.take(ModeFound)
    assert found.mode is mode and rig.engine.mode is mode
    if mode is Mode.CLIENT:
        assert found.reason == "behind a NAT, no third node"


def test_an_answer_from_a_check_that_is_over_changes_nothing() -> None:
    rig = Rig(fixed_mode=None)
    rig.upkeep.maintain(rig.seeds, 0.0, record=rig.record)
    rig.pump(0.0)
    rig.answer_engine(0.0)
    (ask,) = rig.asks()
    rig.dial_back(ask, 0.0, ok=True, helper=True, inbound=True)
    rig.events.clear()
    rig.dial_back(ask, 1.0, ok=False, helper=True, inbound=True)  # again, late
    assert not rig.events and rig.engine.mode is Mode.SERVER


def test_a_changed_record_is_published_at_once_when_told() -> None:
    """The node says when its record may have changed (a relay came up, the mapping
    moved): no waiting for the next 5 s tick."""
    rig = Rig()
    joined(rig)
    assert phase(rig.upkeep) == Phase.WAITING
    rig.upkeep.record_changed(1.0)  # nothing new: nothing sent, still waiting
    rig.pump(1.0)
    assert not rig.sent and phase(rig.upkeep) == Phase.WAITING
    rig.engine.set_mode(Mode.CLIENT)  # the record would now say something else
    rig.upkeep.record_changed(1.5)
    rig.pump(1.5)
    assert phase(rig.upkeep) == Phase.PUBLISHING and rig.sent


def test_the_join_status_says_whom_nobody_answered_and_for_how_long() -> None:
    rig = Rig()
    assert rig.upkeep.status(0.0) == "not started"
    rig.upkeep.maintain(rig.seeds, 0.0, record=rig.record)
    rig.pump(0.0)
    rig.fail_engine(0.0)
    status = rig.upkeep.status(12.0)
    assert status.startswith("joining (seed ") and "no answer for 12 s" in status
    host, port = rig.seeds[0][1]
    assert f"{host}:{port}" in status
    rig.tick(rig.upkeep.next_deadline() or 0.0)
    rig.answer_engine(13.0)
    assert rig.upkeep.status(14.0) == "joined"


def test_a_change_told_during_a_publish_supersedes_it_at_once() -> None:
    """A relay that died and was replaced: the record without it may still be on its way
    (waiting on the dead node's STORE) when the one with the new relay is ready."""
    rig = Rig()
    joined(rig)
    rig.engine.set_mode(Mode.CLIENT)
    rig.upkeep.record_changed(1.0)
    rig.pump(1.0)
    assert phase(rig.upkeep) == Phase.PUBLISHING
    first = rig.engine.publisher.sequence
    relay = "/ip4/203.0.113.33/udp/7000/service/forward_to_x"
    rig.record = lambda: RecordContent(relays=(relay,))  # type: ignore[method-assign]
    rig.upkeep._record = rig.record  # the node's record now names a new relay
    rig.upkeep.record_changed(1.1)
    rig.pump(1.1)
    assert phase(rig.upkeep) == Phase.PUBLISHING and rig.engine.publisher.sequence > first
    assert rig.engine.publisher.content == RecordContent(relays=(relay,))
