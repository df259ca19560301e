"""`make mutants`: break, one at a time, the code that keeps evcharge's promises, and check that
the test suite notices every time.

Each mutant is one small, deliberate bug (seq dedup gone, outbox bypassed, a reading dropped,
...) applied to a scratch copy of the tree; the tests that guard that promise are run against
the copy, and the mutant must be *killed* (a test fails). A mutant that survives is a hole in
the proofs: the table says which, and the run fails. First the same tests run on the
unmutated copy, which must pass, so a broken test cannot pass for a killed mutant.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                              ".hypothesis", "evcharge-state", "evcharge-runs", "*.egg-info")  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    name: str
    breaks: str  # the promise it breaks, in a user's words
    path: str
    before: str
    after: str
    tests: tuple[str, ...]


RESTART_TEST = "tests/test_system.py::test_an_engine_restarted_after_a_crash_closes_the_session_at_its_last_recorded_reading"

MUTANTS = (
    Mutant(
        "seq-dedup-removed",
        "a replayed or reordered meter event is billed again",
        "evcharge/central/ledger.py",
        '    if event.seq <= session.last_seq:\n        return Ignored(f"event {event.seq} of session {session.session_id} was applied before")\n    if isinstance(event, SessionStarted):\n        started',
        "    if isinstance(event, SessionStarted):\n        started",
        ("tests/test_unit_ledger.py",),
    ),
    Mutant(
        "outbox-bypassed",
        "central decides but never tells the engine or the driver",
        "evcharge/central/store/sqlite.py",
        "            await SqliteOutbox.add(db, encoded_messages(change))",
        "            encoded_messages(change)",
        (
            "tests/test_store_contract.py",
            "tests/test_system.py::test_a_request_for_a_busy_cp_is_denied_with_the_reason",
        ),
    ),
    Mutant(
        "driver-journal-skipped",
        "a restarted driver forgets the request it was waiting on and asks again",
        "evcharge/driver/journal.py",
        '        """Written before the request is sent: a crash after this resends the same request id."""\n'
        "        async with self._db.transaction() as db:",
        '        """Written before the request is sent: a crash after this resends the same request id."""\n'
        "        return\n        async with self._db.transaction() as db:",
        ("tests/chaos/test_recovery.py::test_r3_driver_killed_mid_session_gets_its_missed_ticket_once",),
    ),
    Mutant(
        "reading-dropped",
        "the engine does not record a meter reading it publishes",
        "evcharge/cp/engine_store.py",
        '            "UPDATE sessions SET seq = ?, power_w = ?, wh = ?, micro_eur = ? WHERE session_id = ?",',
        '            "UPDATE sessions SET seq = ?, power_w = ?, wh = wh, micro_eur = ? WHERE session_id = ?",',
        (
            "tests/test_system.py::test_an_engine_restarted_after_a_crash_closes_the_session_at_its_last_recorded_reading",
        ),
    ),
    Mutant(
        "status-matrix-stopped-hides-broken",
        "a stopped CP whose engine broke shows STOPPED, not BROKEN",
        "evcharge/central/status.py",
        "    if health is not Health.OK:\n        return CpStatus.BROKEN\n    if stopped:\n        return CpStatus.STOPPED",
        "    if stopped:\n        return CpStatus.STOPPED\n    if health is not Health.OK:\n        return CpStatus.BROKEN",
        ("tests/test_unit_status.py",),
    ),
    Mutant(
        "replay-check-removed",
        "a request delivered twice is decided twice",
        "evcharge/central/decisions.py",
        "    if earlier is not None:\n        return Decision(result=earlier)\n",
        "",
        (
            "tests/test_unit_decisions.py",
            "tests/test_kafka_input.py::test_a_replayed_request_is_decided_once",
        ),
    ),
    Mutant(
        "heartbeat-timeout-ignored",
        "a hung monitor is dropped late, at its connection's read deadline, not after the heartbeat timeout",
        "evcharge/central/monitor_server.py",
        "if c.last_heartbeat < deadline]",
        "if False]",
        (
            "tests/test_system.py::test_a_silent_monitor_shows_disconnected_after_the_heartbeat_timeout_and_comes_back",
        ),
    ),
    Mutant(
        "secret-check-skipped",
        "anyone with the join token takes over a CP that already joined",
        "evcharge/central/credentials.py",
        "        if presented_secret is not None and hmac.compare_digest("
        "hash_secret(presented_secret), stored_hash):",
        "        if True:",
        ("tests/test_unit_credentials.py",),
    ),
    Mutant(
        "meter-not-the-truth",
        "readings central had not applied are dropped after it closed the session",
        "evcharge/central/ledger.py",
        "    if not session.closed_by_central or session.meter_final:",
        "    if True:",
        ("tests/test_unit_ledger.py",),
    ),
    Mutant(
        "crashed-session-left-open",
        "an engine restarted after a crash never closes the session it was running",
        "evcharge/cp/engine.py",
        "        crashed = await store.open_session()",
        "        crashed = None",
        (
            "tests/test_system.py::test_an_engine_restarted_after_a_crash_closes_the_session_at_its_last_recorded_reading",
        ),
    ),
    Mutant(
        "expiry-by-the-driver-s-clock",
        "a request's age is read off the driver's clock again: a skewed driver is refused",
        "evcharge/central/app.py",
        "waited = max(0.0, time.time() - delivery.broker_time_s)",
        "waited = max(0.0, time.time() - message.ts)",
        (
            "tests/test_kafka_input.py::test_the_age_of_a_request_is_the_broker_s_to_tell_not_the_driver_s_clock",
        ),
    ),
    Mutant(
        "forged-event-accepted",
        "an event signed with another CP's key is applied: anyone with a credential bills anyone",
        "evcharge/central/provenance.py",
        "    if not signing.verify(key, payload, signature):",
        "    if not signature:",
        (
            "tests/test_unit_proofs.py",
            "tests/test_security_proofs.py::test_an_insider_with_cp_001s_key_cannot_get_an_event_accepted_for_cp_002",
        ),
    ),
    Mutant(
        "lease-not-checked-at-commit",
        "a leader that froze past its lease wakes up and commits beside the new one",
        "evcharge/central/store/postgres.py",
        "        if self.epoch is None:\n            return\n        current = await conn.fetchval(",
        "        if self.epoch is not None:\n            return\n        current = await conn.fetchval(",
        (
            "tests/test_store_contract.py",
            "tests/test_failover.py::test_a_frozen_leader_is_fenced_it_can_neither_commit_nor_publish_and_steps_down",
        ),
    ),
)


def copy_tree(into: Path) -> Path:
    scratch = into / "tree"
    shutil.copytree(ROOT, scratch, ignore=SKIP)
    return scratch


def run_tests(tree: Path, tests: tuple[str, ...], log: Path) -> tuple[int, float]:
    # The copy first on the import path: the mutated package, not the installed one, runs
    # in pytest and in every `python -m evcharge` child it starts.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    return result.returncode, time.monotonic() - started


def apply(tree: Path, mutant: Mutant) -> None:
    path = tree / mutant.path
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.before) != 1:
        raise SystemExit(f"mutant {mutant.name} no longer applies to {mutant.path}: update it with the code")
    path.write_text(text.replace(mutant.before, mutant.after), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    work = Path(tempfile.mkdtemp(prefix="evcharge-mutants-"))
    rows: list[tuple[str, str, str, float]] = []
    try:
        baseline_tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        tree = copy_tree(work / "baseline")
        code, seconds = run_tests(tree, baseline_tests, work / "baseline.log")
        print(
            f"baseline: the unmutated tree {'passes' if code == 0 else 'FAILS'} the tests ({seconds:.0f} s)"
        )
        if code != 0:
            print((work / "baseline.log").read_text()[-4000:])
            return 2
        for mutant in chosen:
            tree = copy_tree(work / mutant.name)
            apply(tree, mutant)
            code, seconds = run_tests(tree, mutant.tests, work / f"{mutant.name}.log")
            verdict = "killed" if code == 1 else "SURVIVED" if code == 0 else f"error ({code})"
            rows.append((mutant.name, mutant.breaks, verdict, seconds))
            print(f"{mutant.name:<36} {verdict:<10} {seconds:5.0f} s   {mutant.breaks}", flush=True)
            shutil.rmtree(tree, ignore_errors=True)
    finally:
        shutil.rmtree(work / "baseline", ignore_errors=True)
    print()
    print("| mutant | what it breaks | result |")
    print("|---|---|---|")
    for name, breaks, verdict, _ in rows:
        print(f"| {name} | {breaks} | {verdict} |")
    survivors = [r for r in rows if r[2] != "killed"]
    if survivors:
        print(f"\n{len(survivors)} mutant(s) not killed; logs in {work}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nall {len(rows)} mutants killed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
