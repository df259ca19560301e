"""`GET /cp` from a cache kept per change (`evcharge.central.cp_listing`): always what the state says.

Central's state is driven through its real decisions (registration, health, a
charge and its readings, an operator stop, a monitor leaving, a CP forgotten);
after each, the cached body must decode to exactly what `cps_json` builds from
scratch, and a poll with nothing changed must cost no encoding at all.
"""

from __future__ import annotations

import json

from evcharge.central import decisions
from evcharge.central.cp_listing import CpListing
from evcharge.central.state import CentralState
from evcharge.central.view import cp_json, cps_json
from evcharge.protocol.messages import Health, MeterReading, SessionStarted
from tests.test_unit_decisions import NOW, Clock, applied, charge, event, joined


def agrees(listing: CpListing, state: CentralState) -> None:
    assert json.loads(listing.body()) == {"charging_points": cps_json(state)}
    for cp_id in state.cps:
        assert json.loads(listing.cp(cp_id)) == cp_json(state, cp_id)


def test_the_cached_list_follows_every_kind_of_change_and_is_not_rebuilt_without_one() -> None:
    state, clock = CentralState(), Clock()
    listing = CpListing(lambda: state)
    assert json.loads(listing.body()) == {"charging_points": []}
    for cp_id in ("CP-2", "CP-1", "CP-3"):
        joined(state, clock, cp_id)
    agrees(listing, state)
    body = listing.body()
    assert listing.body() is body, "nothing changed: the same bytes, not encoded again"

    applied(
        state,
        decisions.heartbeat(
            state, "CP-3", "mon-1", Health.KO, engine=None, detail="fan", now=NOW, new_id=clock.new_id
        ),
    )
    agrees(listing, state)
    session_id = charge(state, clock, "CP-1").result.session_id
    agrees(listing, state)
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
    agrees(listing, state)
    assert json.loads(listing.cp("CP-1"))["session"]["wh"] == 6
    applied(
        state, decisions.set_stopped(state, ["CP-2"], True, by="panel", now=NOW, new_id=clock.new_id).change
    )
    agrees(listing, state)
    applied(state, decisions.monitor_left(state, "CP-3", "mon-1", "connection closed"))
    agrees(listing, state)
    applied(state, decisions.forget(state, "CP-3", by="panel").change)
    agrees(listing, state)
    assert [cp["cp_id"] for cp in json.loads(listing.body())["charging_points"]] == ["CP-1", "CP-2"]


def test_a_change_stamps_only_the_cps_it_touched() -> None:
    state, clock = CentralState(), Clock()
    for cp_id in ("CP-1", "CP-2"):
        joined(state, clock, cp_id)
    untouched = state.cp_versions["CP-2"]
    applied(
        state,
        decisions.heartbeat(
            state, "CP-1", "mon-1", Health.KO, engine=None, detail="", now=NOW, new_id=clock.new_id
        ),
    )
    assert state.cp_versions["CP-1"] == state.version > untouched == state.cp_versions["CP-2"]


def test_a_state_loaded_afresh_is_listed_afresh() -> None:
    clock = Clock()
    first = CentralState()
    joined(first, clock, "CP-1")
    holder = [first]
    listing = CpListing(lambda: holder[0])
    agrees(listing, first)
    # Loaded from the store again: every CP DISCONNECTED, and version numbers start over.
    holder[0] = CentralState.loaded(first.cps.values(), [])
    assert holder[0].version == 0
    agrees(listing, holder[0])
    assert json.loads(listing.cp("CP-1"))["status"] == "DISCONNECTED"
