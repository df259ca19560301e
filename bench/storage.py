"""What a commit costs in the stores central can use, as references for central's own figures.

SQLite's bare commit rate with an fsync on every commit (`synchronous=FULL`, what
central, engines and drivers use) beside `NORMAL` (WAL, no fsync per commit), on
the bench's temp dir; PostgreSQL's bare commit rate through asyncpg; and central
working off the capacity run's backlog with its store on PostgreSQL, on a server
of the bench's own (started in a temp folder, removed at the end whatever happens).
Each figure is one small row per transaction, the same shape on both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from bench.loop import LoopThread
from evcharge.devtools.postgres import LocalPostgres
from evcharge.runtime.ports import free_port

# About the size of one meter reading's row in central's store.
PAYLOAD = "x" * 120
PG_START_TIMEOUT_S = 60.0
PG_CONNECT_TIMEOUT_S = 10.0
PG_COMMAND_TIMEOUT_S = 10.0

Say = Callable[[str], None]


def sqlite_commit_rates(folder: Path, round_s: float, rounds: int) -> dict[str, Any]:
    """Commits per second of one small INSERT per transaction, FULL and NORMAL in alternating rounds.

    Alternating, so a neighbour's burst of disk or CPU on this shared machine
    lands on both levels rather than on one; each level's figure is the median.
    """
    folder.mkdir(parents=True, exist_ok=True)
    levels = ("FULL", "NORMAL")
    conns = {level: _sqlite_open(folder / f"commit-{level.lower()}.sqlite", level) for level in levels}
    rates: dict[str, list[float]] = {level: [] for level in levels}
    try:
        for _ in range(rounds):
            for level in levels:
                rates[level].append(_sqlite_round(conns[level], round_s))
    finally:
        for conn in conns.values():
            conn.close()
    out: dict[str, Any] = {
        "folder": str(folder),
        "filesystem": _filesystem(folder),
        "journal_mode": "wal",
        "round_s": round_s,
    }
    for level in levels:
        out[level.lower()] = {
            "commits_per_s": round(statistics.median(rates[level]), 1),
            "rounds_per_s": [round(r, 1) for r in rates[level]],
        }
    full, normal = out["full"]["commits_per_s"], out["normal"]["commits_per_s"]
    out["normal_vs_full"] = round(normal / full, 1) if full else None
    return out


def _sqlite_open(path: Path, level: str) -> sqlite3.Connection:
    # isolation_level=None and an explicit BEGIN IMMEDIATE ... COMMIT, as evcharge.runtime.sqlite does.
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={level}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id INTEGER PRIMARY KEY, at REAL, payload TEXT)")
    return conn


def _sqlite_round(conn: sqlite3.Connection, round_s: float) -> float:
    commits = 0
    started = time.monotonic()
    deadline = started + round_s
    while time.monotonic() < deadline:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO bench_commit (at, payload) VALUES (?, ?)", (time.time(), PAYLOAD))
        conn.execute("COMMIT")
        commits += 1
    return commits / (time.monotonic() - started)


def _filesystem(path: Path) -> str | None:
    """The type of the filesystem `path` is on (an fsync on tmpfs costs nothing: worth knowing)."""
    best, kind = "", None
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and str(path.resolve()).startswith(fields[1]) and len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind


async def postgres_commit_rate(url: str, round_s: float, rounds: int) -> dict[str, Any]:
    """Commits per second of one small INSERT per transaction on one asyncpg connection."""
    conn = await asyncpg.connect(url, timeout=PG_CONNECT_TIMEOUT_S, command_timeout=PG_COMMAND_TIMEOUT_S)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_commit "
            "(id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, payload TEXT NOT NULL)"
        )
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method")
        }
        rates = []
        for _ in range(rounds):
            commits = 0
            started = time.monotonic()
            deadline = started + round_s
            while time.monotonic() < deadline:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO bench_commit (at, payload) VALUES ($1, $2)", time.time(), PAYLOAD
                    )
                commits += 1
            rates.append(commits / (time.monotonic() - started))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)
    return {
        "commits_per_s": round(statistics.median(rates), 1),
        "rounds_per_s": [round(r, 1) for r in rates],
        "round_s": round_s,
        "settings": settings,
    }


class BenchPostgres:
    """The bench's own PostgreSQL server, in a temp folder of its own (reachable by the `postgres`
    user when we run as root, which a folder inside the bench's private temp dir is not)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="evcharge-bench-pg-"))
        self.server = LocalPostgres(self.folder, free_port())
        self.started_s: float | None = None

    def start(self) -> None:
        started = time.monotonic()
        self.server.start(timeout_s=PG_START_TIMEOUT_S)
        self.started_s = round(time.monotonic() - started, 2)

    def close(self) -> None:
        """Stop the server and remove its folder. Idempotent."""
        try:
            self.server.remove()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def measure(
    loop: LoopThread,
    folder: Path,
    round_s: float,
    rounds: int,
    say: Say,
    drain: Callable[[str, int | None], dict[str, Any]],
) -> dict[str, Any]:
    """The commit references and central's capacity on PostgreSQL; each failure is recorded as its own.

    `drain(url, pid)` runs the capacity run against the PostgreSQL database at `url`,
    served by the postmaster `pid`.
    """
    out: dict[str, Any] = {}
    say(f"SQLite commits, synchronous FULL vs NORMAL: {rounds} rounds of {round_s:g} s each")
    out["sqlite_commit"] = _attempt(lambda: sqlite_commit_rates(folder, round_s, rounds), say)
    say("PostgreSQL: starting the bench's own server")
    try:
        postgres = BenchPostgres()
    except Exception as exc:
        return _no_postgres(out, exc, say)
    try:  # stopped and removed whatever happens, Ctrl-C during its start included
        try:
            postgres.start()
        except Exception as exc:
            return _no_postgres(out, exc, say)
        server = postgres.server
        out["postgres_server"] = {"start_s": postgres.started_s, "port": server.port}
        say(f"PostgreSQL commits through asyncpg: {rounds} rounds of {round_s:g} s")
        out["postgres_commit"] = _attempt(
            lambda: loop.run(
                postgres_commit_rate(server.create_database("bench_commit"), round_s, rounds),
                timeout_s=rounds * round_s + 60,
            ),
            say,
        )
        out["postgres_drain"] = _attempt(
            lambda: drain(server.create_database("bench_central"), server.pid), say
        )
    finally:
        postgres.close()
    return out


def _no_postgres(out: dict[str, Any], exc: Exception, say: Say) -> dict[str, Any]:
    error = f"PostgreSQL did not start: {exc}"
    say(f"[red]{error}[/]")
    out["postgres_commit"] = {"error": error}
    out["postgres_drain"] = {"error": error}
    return out


def _attempt(work: Callable[[], dict[str, Any]], say: Say) -> dict[str, Any]:
    """One measurement; its failure is a figure of its own ("error"), not the end of the run."""
    try:
        return work()
    except Exception as exc:
        say(f"[red]failed: {exc!r}[/]")
        return {"error": repr(exc)}
