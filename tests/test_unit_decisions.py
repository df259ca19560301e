"""Central's decisions, driven in-process with a fake clock: no network, no broker, milliseconds.

Each test builds central's state, feeds one input to a pure decision and checks the
change it returns: what becomes durable, what memory shows after it is applied,
what must be sent, and what the observers are told.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from evcharge.central import decisions, facts
from evcharge.central.credentials import hash_secret
from evcharge.central.decisions import Rules
from evcharge.central.ledger import SessionState
from evcharge.central.state import CentralState, Change, Outcome
from evcharge.central.status import CpStatus
from evcharge.protocol.messages import (
    ChargeRequest,
    ChargingProgress,
    DenyCode,
    EndReason,
    Health,
    MeterReading,
    Register,
    RequestAccepted,
    RequestDenied,
    ResumeCp,
    SessionEnded,
    SessionStarted,
    StartSupply,
    StopCp,
    StopRequest,
    StopSupply,
    Ticket,
)

NOW = 1_700_000_000.0
RULES = Rules(request_ttl_s=60, start_timeout_s=10)
SECRET = "s" * 43


class Clock:
    def __init__(self) -> None:
        self.now = NOW
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        return f"id-{next(self._ids)}"


def register_frame(
    cp_id: str = "CP-1", instance: str = "mon-1", health: Health = Health.OK, **kw
) -> Register:
    return Register(
        cp_id=cp_id,
        location="Alicante",
        price=300_000,
        max_w=22_000,
        health=health,
        instance=instance,
        pid=42,
        **kw,
    )


def applied(state: CentralState, change: Change | None) -> Change:
    assert change is not None
    state.apply(change)
    return change


def joined(state: CentralState, clock: Clock, cp_id: str = "CP-1", **kw) -> None:
    decision = decisions.register(
        state, register_frame(cp_id, **kw), "127.0.0.1:5555", stored_hash=None, rules=RULES, now=clock.now,
        new_id=clock.new_id,
    )  # fmt: skip
    assert decision.refusal is None
    applied(state, decision.change)


def charge(state: CentralState, clock: Clock, cp_id: str = "CP-1", request_id: str = "r-1", **kw):
    request = ChargeRequest(driver_id="alice", cp_id=cp_id, request_id=request_id)
    decision = decisions.charge(
        state, request, earlier=kw.pop("earlier", None), waited_s=kw.pop("waited_s", 0.0), rules=RULES,
        now=clock.now, new_id=clock.new_id,
    )  # fmt: skip
    applied(state, decision.change)
    return decision


def event(state: CentralState, clock: Clock, *events, loaded=None):
    decision = decisions.apply_events(
        state, list(events), loaded=loaded or {}, now=clock.now, new_id=clock.new_id
    )
    applied(state, decision.change)
    return decision


# ------------------------------------------------------------------ registration


def test_a_new_cp_registers_and_shows_on_with_a_fact_for_the_observers() -> None:
    state, clock = CentralState(), Clock()
    decision = decisions.register(
        state,
        register_frame(),
        "127.0.0.1:5555",
        stored_hash=None,
        rules=RULES,
        now=clock.now,
        new_id=clock.new_id,
    )
    assert decision.change.cps["CP-1"].registered_at == NOW
    assert state.status("CP-1") is None, "nothing shows before the change is applied"
    state.apply(decision.change)
    assert state.status("CP-1") is CpStatus.ON
    assert state.links["CP-1"].pid == 42
    assert any(isinstance(f, facts.CpRegistered) and f.new for f in decision.change.facts)


def test_a_second_live_monitor_is_refused_and_the_first_keeps_the_cp() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    decision = decisions.register(
        state, register_frame(instance="mon-2"), "10.0.0.9:1", stored_hash=None, rules=RULES, now=clock.now,
        new_id=clock.new_id,
    )  # fmt: skip
    assert decision.refusal is not None and decision.refusal.code == "duplicate_cp"
    assert not decision.change.durable and state.links["CP-1"].instance == "mon-1"


def test_the_same_monitor_reconnecting_is_accepted_and_a_known_cp_keeps_its_stopped_flag() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    applied(
        state, decisions.set_stopped(state, ["CP-1"], True, by="panel", now=NOW, new_id=clock.new_id).change
    )
    joined(state, clock)
    assert state.cps["CP-1"].stopped and state.status("CP-1") is CpStatus.STOPPED


def test_with_a_join_token_a_new_cp_keeps_the_hash_of_its_own_secret_in_the_same_change() -> None:
    state, clock = CentralState(), Clock()
    rules = Rules(join_token="join")
    frame = register_frame(token="join", secret=SECRET)
    decision = decisions.register(
        state, frame, "p", stored_hash=None, rules=rules, now=NOW, new_id=clock.new_id
    )
    assert decision.change.secrets == {"CP-1": hash_secret(SECRET)}
    assert "CP-1" in decision.change.cps, "registration and secret in one unit of work"


def test_credentials_that_do_not_hold_are_refused_with_the_reason() -> None:
    state, clock = CentralState(), Clock()
    rules = Rules(join_token="join")
    cases = {
        "bad_token": (register_frame(token="guess", secret=SECRET), None),
        "weak_secret": (register_frame(token="join", secret="short"), None),
        "bad_secret": (register_frame(token="join", secret=SECRET), hash_secret("another" * 8)),
    }
    for code, (frame, stored) in cases.items():
        decision = decisions.register(
            state, frame, "p", stored_hash=stored, rules=rules, now=NOW, new_id=clock.new_id
        )
        assert decision.refusal is not None and decision.refusal.code == code
        assert not decision.change.durable, f"{code}: nothing kept"
        assert isinstance(decision.change.facts[0], facts.RegistrationRefused)


# -------------------------------------------------------------- health and links


def test_a_heartbeat_that_changes_nothing_decides_nothing() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    assert (
        decisions.heartbeat(
            state, "CP-1", "mon-1", Health.OK, engine=None, detail="", now=NOW, new_id=clock.new_id
        )
        is None
    )
    assert (
        decisions.heartbeat(
            state, "CP-1", "stale", Health.KO, engine=None, detail="", now=NOW, new_id=clock.new_id
        )
        is None
    )


def test_ko_while_supplying_closes_the_session_provisionally_at_the_last_reading() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    session_id = charge(state, clock).result.session_id
    event(
        state,
        clock,
        SessionStarted(
            cp_id="CP-1", session_id=session_id, driver_id="alice", seq=0, started_at=NOW, price=300_000
        ),
    )
    event(
        state,
        clock,
        MeterReading(cp_id="CP-1", session_id=session_id, seq=1, power_w=22_000, wh=6, micro_eur=1_800),
    )
    change = applied(
        state,
        decisions.heartbeat(
            state, "CP-1", "mon-1", Health.KO, engine=None, detail="fault", now=NOW + 5, new_id=clock.new_id
        ),
    )
    ticket = next(m for m in change.messages if isinstance(m, Ticket))
    stop = next(m for m in change.messages if isinstance(m, StopSupply))
    assert (ticket.wh, ticket.micro_eur, ticket.end_reason, ticket.provisional) == (
        6,
        1_800,
        EndReason.ENGINE_FAILURE,
        True,
    )
    assert stop.session_id == session_id
    assert state.status("CP-1") is CpStatus.BROKEN and state.detail["CP-1"] == "fault"
    assert state.session_on("CP-1") is None


def test_ko_before_the_engine_started_closes_the_session_not_started() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    charge(state, clock)
    change = applied(
        state,
        decisions.heartbeat(
            state, "CP-1", "mon-1", Health.KO, engine=None, detail="", now=NOW, new_id=clock.new_id
        ),
    )
    ticket = next(m for m in change.messages if isinstance(m, Ticket))
    assert (ticket.end_reason, ticket.provisional, ticket.wh) == (EndReason.NOT_STARTED, False, 0)


def test_a_monitor_leaving_shows_disconnected_but_its_session_goes_on() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    charge(state, clock)
    applied(state, decisions.monitor_left(state, "CP-1", "mon-1", "connection lost"))
    assert state.status("CP-1") is CpStatus.DISCONNECTED
    assert state.session_on("CP-1") is not None, "the engine still reports through Kafka"
    assert decisions.monitor_left(state, "CP-1", "mon-1", "again") is None


def test_the_end_of_a_monitors_old_link_decided_after_its_new_one_registered_leaves_the_cp_on() -> None:
    """A charger reconnecting through its OCPP gateway: the same monitor instance, a new TCP link,
    registered before central decides the old link's end."""
    state, clock = CentralState(), Clock()
    joined(state, clock)  # the old link, from 127.0.0.1:5555
    again = decisions.register(
        state, register_frame("CP-1"), "127.0.0.1:6666", stored_hash=None, rules=RULES, now=clock.now,
        new_id=clock.new_id,
    )  # fmt: skip
    applied(state, again.change)
    assert decisions.monitor_left(state, "CP-1", "mon-1", "connection closed", peer="127.0.0.1:5555") is None
    assert state.status("CP-1") is CpStatus.ON
    applied(state, decisions.monitor_left(state, "CP-1", "mon-1", "connection closed", peer="127.0.0.1:6666"))
    assert state.status("CP-1") is CpStatus.DISCONNECTED


# ------------------------------------------------------------------- requests


def test_an_accepted_request_creates_the_session_and_owes_the_engine_and_the_driver() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock, engine="engine-7")
    decision = charge(state, clock)
    outcome = decision.result
    assert outcome.outcome is Outcome.ACCEPTED
    start, accepted = decision.change.messages
    assert isinstance(start, StartSupply) and start.engine == "engine-7" and start.price == 300_000
    assert isinstance(accepted, RequestAccepted) and accepted.session_id == outcome.session_id
    assert state.status("CP-1") is CpStatus.SUPPLYING


def test_each_denial_has_its_code_and_reason() -> None:
    clock = Clock()
    state = CentralState()
    joined(state, clock, "CP-ON")
    joined(state, clock, "CP-BUSY")
    charge(state, clock, "CP-BUSY", "r-0")
    joined(state, clock, "CP-STOP")
    applied(
        state, decisions.set_stopped(state, ["CP-STOP"], True, by="t", now=NOW, new_id=clock.new_id).change
    )
    joined(state, clock, "CP-KO", health=Health.KO)
    joined(state, clock, "CP-GONE")
    applied(state, decisions.monitor_left(state, "CP-GONE", "mon-1", "gone"))
    expected = {
        "CP-BUSY": DenyCode.BUSY,
        "CP-STOP": DenyCode.STOPPED,
        "CP-KO": DenyCode.BROKEN,
        "CP-GONE": DenyCode.DISCONNECTED,
        "CP-NONE": DenyCode.UNKNOWN_CP,
    }
    for n, (cp_id, code) in enumerate(expected.items()):
        decision = charge(state, clock, cp_id, f"r-{n + 1}")
        assert decision.result.outcome is Outcome.DENIED and decision.result.code == code.value, cp_id
        [denied] = decision.change.messages
        assert isinstance(denied, RequestDenied) and denied.code is code and cp_id in denied.reason


def test_a_request_that_waited_past_its_ttl_is_denied_expired() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    decision = charge(state, clock, waited_s=61)
    assert decision.result.code == DenyCode.EXPIRED.value
    assert state.status("CP-1") is CpStatus.ON


def test_a_replayed_request_is_decided_once_even_when_the_cp_is_free_again() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    first = charge(state, clock).result
    replay = charge(state, clock, earlier=first)
    assert replay.result == first and not replay.change.durable


def test_a_driver_stops_only_its_own_session() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    session_id = charge(state, clock).result.session_id
    mine = decisions.stop_request(
        state, StopRequest(driver_id="alice", session_id=session_id), now=NOW, new_id=clock.new_id
    )
    [stop] = mine.messages
    assert isinstance(stop, StopSupply) and stop.reason is EndReason.DRIVER
    theirs = decisions.stop_request(
        state, StopRequest(driver_id="mallory", session_id=session_id), now=NOW, new_id=clock.new_id
    )
    [denied] = theirs.messages
    assert (
        isinstance(denied, RequestDenied)
        and denied.code is DenyCode.NOT_YOURS
        and denied.driver_id == "mallory"
    )


# --------------------------------------------------------------------- events


def test_events_for_an_unknown_cp_or_session_are_rejected_for_dead_letters() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    reading = MeterReading(cp_id="CP-1", session_id="nobody", seq=1, power_w=1, wh=1, micro_eur=1)
    stranger = MeterReading(cp_id="CP-X", session_id="nobody", seq=1, power_w=1, wh=1, micro_eur=1)
    decision = event(state, clock, reading, stranger)
    assert set(decision.result) == {0, 1}
    assert decision.result[0][0] == "unknown_session"
    assert decision.result[1] == ("unknown_cp", "CP-X is not a known charging point")


def test_a_local_plug_in_is_billed_like_any_session() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    started = SessionStarted(
        cp_id="CP-1", session_id="local-1", driver_id="local", seq=0, started_at=NOW, price=300_000
    )
    ended = SessionEnded(
        cp_id="CP-1",
        session_id="local-1",
        seq=1,
        wh=12,
        micro_eur=3_600,
        ended_at=NOW,
        reason=EndReason.UNPLUGGED,
    )
    decision = event(state, clock, started, ended)
    assert any(isinstance(m, Ticket) and m.wh == 12 for m in decision.change.messages)
    assert any(isinstance(f, facts.LocalSupply) for f in decision.change.facts)


def test_late_readings_for_a_session_central_closed_come_from_the_store_and_revise_the_ticket() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    session_id = charge(state, clock).result.session_id
    event(
        state,
        clock,
        SessionStarted(
            cp_id="CP-1", session_id=session_id, driver_id="alice", seq=0, started_at=NOW, price=300_000
        ),
    )
    change = applied(
        state,
        decisions.heartbeat(
            state, "CP-1", "mon-1", Health.KO, engine=None, detail="", now=NOW, new_id=clock.new_id
        ),
    )
    closed = change.sessions[session_id]
    assert session_id not in state.sessions, "an ended session leaves memory"
    late = [
        MeterReading(cp_id="CP-1", session_id=session_id, seq=1, power_w=22_000, wh=6, micro_eur=1_800),
        SessionEnded(
            cp_id="CP-1",
            session_id=session_id,
            seq=2,
            wh=6,
            micro_eur=1_800,
            ended_at=NOW,
            reason=EndReason.INTERRUPTED,
        ),
    ]
    decision = event(state, clock, *late, loaded={session_id: closed})
    [revised] = [m for m in decision.change.messages if isinstance(m, Ticket)]
    assert (revised.wh, revised.revision, revised.replaces) == (6, 2, closed.ticket_id)
    assert any(isinstance(f, facts.TicketRevised) for f in decision.change.facts)


def supplying(state: CentralState, clock: Clock, cp_id: str, driver_id: str) -> str:
    """A CP joined and its driver's session started; the session's id."""
    joined(state, clock, cp_id)
    request = ChargeRequest(driver_id=driver_id, cp_id=cp_id, request_id=f"r-{cp_id}")
    decision = decisions.charge(
        state, request, earlier=None, waited_s=0.0, rules=RULES, now=clock.now, new_id=clock.new_id
    )
    applied(state, decision.change)
    return decision.result.session_id


def reading(cp_id: str, session_id: str, seq: int) -> MeterReading:
    return MeterReading(
        cp_id=cp_id, session_id=session_id, seq=seq, power_w=22_000, wh=6 * seq, micro_eur=1_800 * seq
    )


def unplugged(cp_id: str, session_id: str, seq: int) -> SessionEnded:
    """The supply's end at the figures `reading` meters by `seq`."""
    return SessionEnded(
        cp_id=cp_id, session_id=session_id, seq=seq, wh=6 * seq, micro_eur=1_800 * seq, ended_at=NOW,
        reason=EndReason.UNPLUGGED,
    )  # fmt: skip


def started(cp_id: str, session_id: str, driver_id: str) -> SessionStarted:
    return SessionStarted(
        cp_id=cp_id, session_id=session_id, driver_id=driver_id, seq=0, started_at=NOW, price=300_000
    )


def test_behind_a_batch_tells_each_driver_where_its_charge_stands_once_not_every_step() -> None:
    state, clock = CentralState(), Clock()
    alice = supplying(state, clock, "CP-1", "alice")
    bob = supplying(state, clock, "CP-2", "bob")
    batch = [
        started("CP-1", alice, "alice"),
        reading("CP-1", alice, 1),
        started("CP-2", bob, "bob"),
        reading("CP-1", alice, 2),
        reading("CP-2", bob, 1),
        reading("CP-1", alice, 3),
    ]
    decision = event(state, clock, *batch)
    told = [(m.driver_id, m.seq, m.wh) for m in decision.change.messages if isinstance(m, ChargingProgress)]
    assert told == [("bob", 1, 6), ("alice", 3, 18)]
    assert (state.sessions[alice].wh, state.sessions[alice].last_seq) == (18, 3), "every reading applied"
    assert next(f for f in decision.change.facts if isinstance(f, facts.EventsApplied)).applied == 6


def test_live_each_reading_is_its_own_batch_and_each_is_told() -> None:
    state, clock = CentralState(), Clock()
    alice = supplying(state, clock, "CP-1", "alice")
    sent = [
        event(state, clock, e).change.messages
        for e in [started("CP-1", alice, "alice"), reading("CP-1", alice, 1), reading("CP-1", alice, 2)]
    ]
    assert [[(type(m).__name__, m.seq) for m in batch] for batch in sent] == [
        [("ChargingProgress", 0)],
        [("ChargingProgress", 1)],
        [("ChargingProgress", 2)],
    ]


def test_a_session_that_ends_within_the_batch_shows_its_last_reading_then_its_ticket() -> None:
    state, clock = CentralState(), Clock()
    alice = supplying(state, clock, "CP-1", "alice")
    decision = event(
        state,
        clock,
        started("CP-1", alice, "alice"),
        reading("CP-1", alice, 1),
        reading("CP-1", alice, 2),
        unplugged("CP-1", alice, 3),
    )
    progress, ticket = decision.change.messages
    assert isinstance(progress, ChargingProgress) and (progress.seq, progress.wh) == (2, 12)
    assert isinstance(ticket, Ticket) and (ticket.wh, ticket.micro_eur) == (18, 5_400)


@given(
    readings=st.lists(st.sampled_from(["alice", "bob"]), max_size=12),
    cuts=st.sets(st.integers(0, 14)),
)
def test_however_the_events_are_batched_each_driver_ends_up_told_the_same(
    readings: list[str], cuts: set[int]
) -> None:
    def run(
        batches: list[list[MeterReading | SessionStarted]],
    ) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        state, clock = CentralState(), Clock()
        ids = {
            driver: supplying(state, clock, cp, driver) for cp, driver in [("CP-1", "alice"), ("CP-2", "bob")]
        }
        last: dict[str, tuple[int, int]] = {}
        most: dict[str, int] = {}
        for batch in batches:
            told = [
                m
                for m in event(state, clock, *[e(ids) for e in batch]).change.messages
                if isinstance(m, ChargingProgress)
            ]
            for driver in ("alice", "bob"):
                mine = [(m.seq, m.wh) for m in told if m.driver_id == driver]
                most[driver] = max(most.get(driver, 0), len(mine))
                if mine:
                    last[driver] = mine[-1]
        return last, most

    cps = {"alice": "CP-1", "bob": "CP-2"}
    seqs = {"alice": 0, "bob": 0}
    stream = [lambda ids, d=d: started(cps[d], ids[d], d) for d in ("alice", "bob")]
    for driver in readings:
        seqs[driver] += 1
        stream.append(lambda ids, d=driver, n=seqs[driver]: reading(cps[d], ids[d], n))
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    batched = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    one_by_one, _ = run([[e] for e in stream])
    last, most = run(batched)
    assert last == one_by_one
    assert all(n <= 1 for n in most.values()), "at most one progress per session and batch"


def test_sessions_nobody_started_in_time_are_closed_not_started() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    charge(state, clock)
    assert decisions.expire_unstarted(state, rules=RULES, now=NOW + 9, new_id=clock.new_id) is None
    change = applied(state, decisions.expire_unstarted(state, rules=RULES, now=NOW + 11, new_id=clock.new_id))
    [session] = change.sessions.values()
    assert session.state is SessionState.ENDED and session.end_reason is EndReason.NOT_STARTED
    assert any(isinstance(m, StopSupply) for m in change.messages), "the engine is told, should it come back"


# ------------------------------------------------------------------- operator


def test_stop_all_is_one_operation_over_the_cps_it_changes() -> None:
    state, clock = CentralState(), Clock()
    for cp_id in ("CP-1", "CP-2", "CP-3"):
        joined(state, clock, cp_id)
    applied(
        state, decisions.set_stopped(state, ["CP-2"], True, by="panel", now=NOW, new_id=clock.new_id).change
    )
    decision = decisions.set_stopped(
        state, None, True, by="http", peer="10.0.0.1", now=NOW, new_id=clock.new_id
    )
    assert decision.result == ["CP-1", "CP-3"]
    assert [type(m) for m in decision.change.messages] == [StopCp, StopCp]
    resumed = decisions.set_stopped(state, None, False, by="http", now=NOW, new_id=clock.new_id)
    assert resumed.result == ["CP-2"] and isinstance(resumed.change.messages[0], ResumeCp)
    unknown = decisions.set_stopped(state, ["CP-9"], True, by="http", now=NOW, new_id=clock.new_id)
    assert unknown.refusal is not None and unknown.refusal.code == "unknown_cp"


def test_forgetting_needs_a_disconnected_idle_cp() -> None:
    state, clock = CentralState(), Clock()
    joined(state, clock)
    assert decisions.forget(state, "CP-1", by="t").refusal.code == "cp_connected"
    charge(state, clock)
    applied(state, decisions.monitor_left(state, "CP-1", "mon-1", "gone"))
    assert decisions.forget(state, "CP-1", by="t").refusal.code == "cp_busy"
    state.sessions.clear()
    state.on_cp.clear()
    decision = decisions.forget(state, "CP-1", by="t")
    applied(state, decision.change)
    assert "CP-1" not in state.cps and decision.change.forget == ["CP-1"]
