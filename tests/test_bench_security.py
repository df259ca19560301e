"""`make bench`'s security section: central's readings/s and request → accepted with everything
secure beside plain, in one run. The figures are the bench's to judge; here: that the section runs
on a real secure broker, measures both sides, and is written and shown beside the other sections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import load, report, security
from bench.loop import LoopThread
from bench.run import save

pytestmark = [pytest.mark.kafka, pytest.mark.processes, pytest.mark.bench]


def test_the_security_section_measures_plain_and_secure_and_is_written_beside_the_others(
    kafka_broker, tmp_path: Path
) -> None:
    loop = LoopThread()
    plain = load.LoadRunner(tmp_path, kafka_broker.bootstrap, loop, None)
    try:
        # The least that measures each figure: one trial, a small backlog, a few requests.
        figures = security.measure(
            loop, tmp_path, plain, load.Step(50, 0.05), backlog_s=4.0, samples=5, trials=1, say=print
        )
    finally:
        plain.close()
        loop.close()

    assert figures["error"] is None
    assert figures["modes"]["plain"] == {
        "central_api": "http", "operator_auth": False, "kafka": "PLAINTEXT", "proofs_required": False,
    }  # fmt: skip
    assert figures["modes"]["secure"] == {
        "central_api": "https",
        "operator_auth": True,
        "kafka": "SASL_SSL (SCRAM-SHA-512)",
        "proofs_required": True,
    }
    for mode in ("plain", "secure"):
        assert figures[f"{mode}_readings_per_s"]["median"] > 0
        assert figures[f"{mode}_accepted_s"]["count"] == 5
    (trial,) = figures["trials"]
    assert figures["ratio"]["readings_per_s"] == trial["readings_ratio"] > 0
    assert figures["ratio"]["accepted_p50"] > 0

    # Run alone, it goes into the results there are; every other section stays as it was.
    out = tmp_path / "results.json"
    out.write_text(
        json.dumps(
            {"machine": {"date": "earlier"}, "heartbeats": {"goal_us": 30, "runs": []}, "total_s": 600}
        )
    )
    save(out, {"machine": {"date": "now"}, "security": figures, "total_s": 90}, {"security"})
    written = json.loads(out.read_text())
    assert written["heartbeats"] == {"goal_us": 30, "runs": []} and written["machine"] == {"date": "earlier"}
    assert written["security"] == json.loads(json.dumps(figures))
    assert written["security_run"] == {"machine": {"date": "now"}, "total_s": 90}

    rows = [r for r in report.rows(written) if r.section == "security"]
    assert len(rows) == 2
    assert f"{figures['plain_readings_per_s']['median']:,.0f}/s" in rows[0].measured
    assert f"{figures['ratio']['readings_per_s']:.2f}x" in rows[0].verdict
    assert f"{figures['ratio']['accepted_p50']:.2f}x" in rows[1].verdict


def test_a_failed_security_section_says_why_in_the_table() -> None:
    (row,) = [
        r
        for r in report.rows({"security": {"error": "RuntimeError('no broker')"}})
        if r.section == "security"
    ]
    assert row.measured.startswith("failed: RuntimeError('no broker')")
