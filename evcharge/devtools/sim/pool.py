"""`evcharge sim --processes N`: the fleet split over N worker processes, and one report of them all.

Each worker is `evcharge sim --worker K` (the same command, a hidden flag), running
its share of the CPs and drivers (`split`) on an event loop of its own. The parent
starts them, says go once every one is ready, watches central's API for the
whole fleet, and merges their reports (`merge`) into the report one process would
print, with the CPU of each process beside the total.

Processes of the same command rather than `multiprocessing`: a worker is the real
`evcharge sim`, with the same settings parsing, event loop (uvloop), signal path and
exit codes, and nothing is pickled; it is started from the main thread under
`evcharge.runtime.lifetime`'s guard like every child the project starts, and it
stays this process's own child (a forkserver's workers would be the server's, so
the bench, which meters the simulator as its process tree, would miss them).

Every worker is owned: a stop (Ctrl-C, SIGTERM) is passed to each on its stdin and
its report awaited; a worker that dies ends the run with a line naming it; on the
way out any worker still running has its stdin closed, then is killed after a
deadline; and one whose parent is gone stops by itself (`link`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from evcharge.config import SECRETS, argv, env_var, secrets_env
from evcharge.devtools.sim import merge, split
from evcharge.devtools.sim.app import (
    HTTP_TIMEOUT_S,
    PROGRESS_EVERY_S,
    STARTUP_TIMEOUT_S,
    Simulation,
    _NotStarted,
)
from evcharge.devtools.sim.drivers import ANSWER_TIMEOUT_S, TICKET_SLACK_S
from evcharge.devtools.sim.link import ParentLink
from evcharge.devtools.sim.report import SimStats
from evcharge.devtools.sim.settings import SimSettings
from evcharge.devtools.sim.split import Share
from evcharge.devtools.sim.wire import GO, STOP, Progress, Ready, Report, decode
from evcharge.errors import ProtocolError
from evcharge.protocol.topics import TOPICS
from evcharge.runtime.kafka import ensure_topics
from evcharge.runtime.lifetime import die_with_parent
from evcharge.runtime.retry import describe
from evcharge.runtime.waits import sleep_unless, wait_first

READY_TIMEOUT_S = 3 * STARTUP_TIMEOUT_S  # each worker's own start-up steps have their deadlines too
STOP_TIMEOUT_S = 2 * STARTUP_TIMEOUT_S  # told to stop: its Kafka flush and producer's close at most
TELL_TIMEOUT_S = 5.0
REPORT_LINE_LIMIT = 256 * 2**20  # a worker's report carries every sample it took, on one line


@dataclass
class _Worker:
    share: Share
    cp_range: str  # its first and last CP id
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # its output ended and it exited
    progress: SimStats | None = None
    report: Report | None = None
    exit_code: int | None = None

    @property
    def name(self) -> str:
        pid = f"pid {self.process.pid}, " if self.process is not None else ""
        return f"sim worker {self.share.worker} ({pid}CPs {self.cp_range})"


def worker_command(settings: SimSettings, worker: int) -> tuple[list[str], dict[str, str]]:
    """The `evcharge sim` arguments and environment of worker `worker`.

    Every flag is given, defaults too, so nothing falls back to an environment variable
    the parent was not run with; a secret travels in the environment, which other users
    cannot read, rather than on the command line, which they can.
    """
    plain = dataclasses.replace(settings, worker=worker, json_path=None)
    env = dict(os.environ)
    for f in dataclasses.fields(settings):
        variable = env_var(f)
        if variable is not None and getattr(settings, f.name) is None:
            env.pop(variable, None)  # unset for the parent: unset for the worker
    env.update(secrets_env(settings))
    return ["sim", *argv(plain, only_changed=False, leave_out=SECRETS)], env


class PooledSimulation(Simulation):
    """The parent of `--processes N`: no CP of its own, every worker's figures in its report."""

    def __init__(self, settings: SimSettings, console: Any = None) -> None:
        super().__init__(settings, console)
        s = settings
        self.workers = [
            _Worker(share, _cp_range(s, share))
            for share in split.split(s.cps, s.drivers, s.request_rate, s.seed, s.processes)
        ]
        self.begun = asyncio.Event()  # every worker was told to go
        self.failed = False  # a worker died, failed to start, or crashed: the run ends for all
        self._halt = asyncio.Event()  # the workers are stopped (this run's own stop is `_abort`)
        self._reaped_before = resource.getrusage(resource.RUSAGE_CHILDREN)

    async def _run(self, stop: asyncio.Event) -> None:
        s = self.settings
        kafka = s.kafka_access
        try:
            # Once here, so that N workers starting at once do not race to create them.
            await self._startup("Kafka topics", lambda: ensure_topics(kafka, TOPICS, s.partitions), stop)
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
                connector=aiohttp.TCPConnector(ssl=s.tls.client_context() or True),
            ) as http:
                await self._startup("central's HTTP API", lambda: self._get(http, "/health"), stop)
                watch_stop = asyncio.Event()
                planned = set(self.fleet_settings.cp_ids())
                async with asyncio.TaskGroup() as tasks:
                    watch = self._watch_registration(http, planned, self.begun.is_set)
                    tasks.create_task(self._guard("the registration watch", watch(watch_stop)))
                    tasks.create_task(self._guard("the progress line", self._pool_progress(watch_stop)))
                    try:
                        await self._run_workers(stop)
                    finally:
                        watch_stop.set()
                self._merge_reports()
                if self.begun.is_set() and not stop.is_set() and not self.failed:
                    missing = s.cps - self.stats.cps_registered
                    if missing:
                        self.stats.error("CP never shown ON at central during the run", missing)
                await self._final_look(http)
        except _NotStarted:
            pass  # counted and said where it happened
        self._crashed = self._crashed or self.failed

    async def _run_workers(self, stop: asyncio.Event) -> None:
        """Start every worker, go once all are ready, await their reports; stop them all on `stop`
        or when one fails; never return with one still running."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for worker in self.workers:
                    await self._start(worker)
                    if worker.process is not None:
                        tasks.create_task(self._follow(worker))
                self.console.print(
                    "sim: " + "; ".join(w.name for w in self.workers), markup=False, highlight=False
                )
                await self._conduct(stop)
        finally:
            await self._reap()

    async def _start(self, worker: _Worker) -> None:
        args, env = worker_command(self.settings, worker.share.worker)
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *die_with_parent([sys.executable, "-m", "evcharge", *args]),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # its log lines and warnings join this process's own
                env=env,
                limit=REPORT_LINE_LIMIT,
            )
        except OSError as exc:
            self._fail(f"{worker.name}: cannot start: {describe(exc)}")
            worker.done.set()

    async def _conduct(self, stop: asyncio.Event) -> None:
        interrupts = (stop, self._halt)
        if await _every([w.ready for w in self.workers], interrupts, READY_TIMEOUT_S):
            self.begun.set()  # before the first go: a short run may end before the last is told
            for worker in self.workers:
                await self._tell(worker, GO)
            s = self.settings
            # Each worker ends on its own deadlines; this one only catches a worker that does not.
            planned_s = s.ramp_up_s + s.duration_s + s.session_s + ANSWER_TIMEOUT_S + TICKET_SLACK_S
            ended = await _every([w.done for w in self.workers], interrupts, planned_s + STOP_TIMEOUT_S)
            if not ended and not stop.is_set() and not self._halt.is_set():
                self._fail(f"sim workers without a report {planned_s + STOP_TIMEOUT_S:.0f} s after go")
        elif not stop.is_set() and not self._halt.is_set():
            late = ", ".join(w.name for w in self.workers if not w.ready.is_set())
            self._fail(f"{late}: not ready within {READY_TIMEOUT_S:g} s")
        for worker in self.workers:
            if not worker.done.is_set():
                await self._tell(worker, STOP)
        if not await _every([w.done for w in self.workers], (), STOP_TIMEOUT_S):
            for worker in self.workers:
                if not worker.done.is_set():
                    # Killed here, not at the reaping: its output ends, so does the task following it.
                    if worker.process is not None and worker.process.returncode is None:
                        worker.process.kill()
                    self._fail(f"{worker.name} did not stop within {STOP_TIMEOUT_S:g} s: killed")

    async def _follow(self, worker: _Worker) -> None:
        """Read a worker's messages until its output ends, then its exit; a worker that ends without
        a report, or before the go, or crashed, fails the run."""
        process = worker.process
        assert process is not None and process.stdout is not None
        try:
            while line := await process.stdout.readline():
                try:
                    message = decode(line)
                except ProtocolError:
                    sys.stderr.write(line.decode(errors="replace"))  # a stray print: shown, not lost
                    continue
                if isinstance(message, Ready):
                    worker.ready.set()
                elif isinstance(message, Progress):
                    worker.progress = message.stats
                elif isinstance(message, Report):
                    worker.report = message
        except (ValueError, asyncio.LimitOverrunError) as exc:
            self._fail(f"{worker.name}: its output could not be read: {describe(exc)}")
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                worker.exit_code = await process.wait()
        except TimeoutError:
            process.kill()
            worker.exit_code = await process.wait()
        worker.done.set()
        if worker.report is None:
            self._fail(f"{worker.name} exited with code {worker.exit_code} before its report")
        elif worker.report.crashed:
            self._fail(f"{worker.name} failed (its errors are in the report)")
        elif not self.begun.is_set():
            self._fail(f"{worker.name} ended before the go (its errors are in the report)")

    async def _tell(self, worker: _Worker, word: str) -> None:
        process = worker.process
        if process is None or process.stdin is None or process.returncode is not None:
            return
        try:
            process.stdin.write(f"{word}\n".encode())
            async with asyncio.timeout(TELL_TIMEOUT_S):
                await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # it is gone or going: what it left behind is judged when its output ends

    async def _reap(self) -> None:
        """No worker outlives the run: stdin closed (it stops), then killed after the deadline."""
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for process in running:
            if process.stdin is not None:
                process.stdin.close()
        # One deadline for them all: hung workers cost it once, not once each.
        waits = asyncio.gather(*(process.wait() for process in running))
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.shield(waits)
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    process.kill()
            await waits

    def _fail(self, line: str) -> None:
        self.stats.error(line)
        self.console.print(line, style="red", markup=False, highlight=False)
        self.failed = True
        self._halt.set()

    async def _pool_progress(self, stop: asyncio.Event) -> None:
        await wait_first(self.begun, stop)
        started = time.monotonic()
        while not await sleep_unless(stop, PROGRESS_EVERY_S):
            parts = [w.progress for w in self.workers if w.progress is not None]
            now = merge.merge([*parts, self.stats], cps=self.settings.cps, drivers=self.settings.drivers)
            now.cps_registered = len(self.seen_at)
            self.console.print(now.progress_line(time.monotonic() - started), markup=False)

    def _merge_reports(self) -> None:
        reports = [w.report for w in self.workers if w.report is not None]
        s = self.settings
        merged = merge.merge([*(r.stats for r in reports), self.stats], cps=s.cps, drivers=s.drivers)
        started_at: dict[str, float] = {}
        for r in reports:
            started_at.update(r.started_at)
        firsts = [r.first_started for r in reports if r.first_started is not None]
        merge.registration(merged, self.seen_at, started_at, min(firsts, default=None))
        # In place: whatever holds this run's stats (its warning counter) goes on counting into it.
        vars(self.stats).update(vars(merged))

    def _finish(self) -> None:
        own = self._own_process()
        rows: list[dict[str, Any]] = []
        for w in self.workers:
            figures = w.report.stats.process if w.report is not None else {}
            pid = w.process.pid if w.process is not None else None
            rows.append({"name": f"worker {w.share.worker}", "pid": pid, "cps": w.cp_range, **figures})
        rows.append({"name": "parent", "pid": os.getpid(), "cps": "-", **own})
        self.stats.workers = rows
        total = merge.total_process(own, [r for r in rows if r["name"] != "parent"])
        # The kernel's count of every worker reaped, whole: its start and imports, and a worker
        # that died without a report, which the rows above cannot show.
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        user_s = own.get("user_s", 0.0) + reaped.ru_utime - self._reaped_before.ru_utime
        sys_s = own.get("sys_s", 0.0) + reaped.ru_stime - self._reaped_before.ru_stime
        figures = merge.process_figures(user_s, sys_s, own.get("wall_s", 0.0), total["max_rss_mb"])
        self.stats.process = {**total, **figures}
        self._print_report()


def _cp_range(settings: SimSettings, share: Share) -> str:
    ids = split.ids(settings.cp_prefix, share.cp_numbers, settings.cps)
    return f"{ids[0]}..{ids[-1]}"


async def _every(
    events: list[asyncio.Event], interrupts: tuple[asyncio.Event, ...], timeout_s: float
) -> bool:
    """Wait until every one of `events` is set (True), or one of `interrupts` is, or `timeout_s`."""
    all_set = asyncio.Event()

    async def each() -> None:
        for event in events:
            await event.wait()
        all_set.set()

    waiting = asyncio.create_task(each())
    try:
        await wait_first(all_set, *interrupts, timeout_s=timeout_s)
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    return all_set.is_set()


def pooled_or_single(settings: SimSettings) -> Callable[[asyncio.Event], Any]:
    """The run `evcharge sim` makes of its settings: one process, a worker, or the parent of N."""
    if settings.worker:
        return Simulation(settings, link=ParentLink(settings.worker)).run
    if settings.processes > 1:
        return PooledSimulation(settings).run
    return Simulation(settings).run
