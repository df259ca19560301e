"""The README's walk-through, run as a newcomer runs it: each command block marked runnable,
in order, exactly as written, on free ports (given through the `EVCHARGE_*` variables every
flag reads), so the README cannot drift from the program again."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from evcharge.devtools.supervisor import Child
from evcharge.runtime.ports import free_ports
from tests.harness import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.processes]

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- runnable[^>]*-->\n```bash\n(.*?)```", re.S)
# Roles that run until stopped: each in "its own terminal", here a background process.
LONG_RUNNING = ("central", "engine", "monitor")


def runnable_blocks() -> list[list[str]]:
    blocks = []
    for body in BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        lines = []
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(words)
        blocks.append(lines)
    return blocks


def test_the_readme_has_its_walk_through_marked_runnable() -> None:
    blocks = runnable_blocks()
    assert len(blocks) >= 4, "walk-through, ctl, HTTP API, stop: each a block the test runs"
    assert blocks[0][0] == ["evcharge", "kafka", "start"]


def test_every_runnable_block_works_as_written(tmp_path) -> None:
    kafka_port, _, tcp_port, http_port, engine_port = free_ports(5)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "EVCHARGE_KAFKA_PORT": str(kafka_port),
        "EVCHARGE_KAFKA_DIR": str(tmp_path / "kafka"),
        "EVCHARGE_KAFKA": f"127.0.0.1:{kafka_port}",
        "EVCHARGE_STATE_DIR": str(tmp_path / "state"),
        "EVCHARGE_CENTRAL_STORE": str(tmp_path / "state" / "central.sqlite"),
        "EVCHARGE_CENTRAL_TCP_PORT": str(tcp_port),
        "EVCHARGE_CENTRAL_HTTP_PORT": str(http_port),
        "EVCHARGE_CENTRAL": f"127.0.0.1:{tcp_port}",
        "EVCHARGE_CENTRAL_URL": f"http://127.0.0.1:{http_port}",
        "EVCHARGE_ENGINE_PORT": str(engine_port),
        "EVCHARGE_ENGINE": f"127.0.0.1:{engine_port}",
        # Faster than a person's pace; the commands themselves are the README's.
        "EVCHARGE_MAX_SESSION_S": "2",
        "EVCHARGE_INTERVAL_S": "0.3",
    }
    background: list[Child] = []
    ran: list[tuple[list[str], str]] = []
    try:
        for block in runnable_blocks():
            for words in block:
                words = [w.replace("localhost:8000", f"localhost:{http_port}") for w in words]
                if words[0] == "curl" and any("SESSION_ID" in w for w in words):
                    session = json.loads(ran_output(ran, "sessions?driver_id"))["sessions"][0]["session_id"]
                    words = [w.replace("SESSION_ID", session) for w in words]
                if words[0] == "evcharge" and words[1] in LONG_RUNNING:
                    process = Child(words[1], words[1:], tmp_path / f"{words[1]}.log", env=env, cwd=ROOT)
                    background.append(process.start())
                    if words[1] == "monitor":
                        wait_until(lambda: ctl_list(env).count("ON") == 1, 60, "CP-005 ON at central")
                    continue
                result = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
                assert result.returncode == 0, (
                    f"{shlex.join(words)} failed:\n{result.stdout}\n{result.stderr}"
                )
                ran.append((words, result.stdout))
                if words[0] == "curl" and words[-1].endswith("/metrics"):
                    assert list(text_string_to_metric_families(result.stdout)), "Prometheus' text format"
                elif words[0] == "curl":
                    json.loads(result.stdout)  # every other endpoint answers JSON
        assert [p.name for p in background if not p.alive] == [], (
            "central, the engine and the monitor ran throughout"
        )
    finally:
        for process in reversed(background):
            process.stop()
        subprocess.run(["evcharge", "kafka", "stop"], cwd=ROOT, env=env, capture_output=True, timeout=60)
    driver = ran_output(ran, "driver")
    assert driver.count("🎫 ticket") == 3 and "CP-099 is not a known charging point" in driver
    assert "summary: 4 requests" in driver
    assert "CP-005" in ran_output(ran, "list") and "BROKEN" not in ran_output(ran, "list")
    assert ran_output(ran, "sessions").count('"driver_id": "driver-alice"') == 3


def ran_output(ran: list[tuple[list[str], str]], word: str) -> str:
    """The output of the first command run with `word` in its line."""
    for words, output in ran:
        if any(word in w for w in words):
            return output
    raise AssertionError(f"no command with {word!r} ran")


def ctl_list(env: dict[str, str]) -> str:
    result = subprocess.run(
        ["evcharge", "ctl", "cp", "list"], env=env, capture_output=True, text=True, timeout=20
    )
    return result.stdout
