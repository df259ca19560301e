"""Start, stop and inspect a real single-node Apache Kafka broker (KRaft) on loopback.

Kafka itself comes from Maven Central as plain jars (fetched once per machine into a
cache dir) and runs as a detached JVM, so it outlives the command that started it, unless
asked to die with it (`die_with_parent`, for the demo: SIGTERM to the JVM, which then
shuts down by itself, however its parent ended).
Everything about one broker lives in its data dir:

    <data_dir>/server.properties   written on every start from host/port/controller_port
    <data_dir>/log4j2.properties   logging config: INFO to stdout, which goes to broker.log
    <data_dir>/broker.log          the JVM's stdout and stderr, appended across runs
    <data_dir>/broker.pid          pid of the running JVM
    <data_dir>/logs/               Kafka's own data (log.dirs), formatted once
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from evcharge.devtools.kafka.fetch import (
    KAFKA_VERSION,
    Progress,
    cached_libs,
    fetch_kafka,
    file_lock,
    kafka_home,
    last_lines,
    require_java,
    say,
)
from evcharge.devtools.kafka.secure import BrokerSecurity
from evcharge.devtools.procs import task_state
from evcharge.errors import BrokerError
from evcharge.runtime.kafka_access import KafkaAccess, access
from evcharge.runtime.lifetime import die_with_parent
from evcharge.runtime.ports import port_answers, port_free

JVM_FLAGS: tuple[str, ...] = ("-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9092

_LOG_TAIL_LINES = 40
# broker.log is appended to across runs; past this size the old content is moved aside.
_LOG_ROTATE_BYTES = 50 * 1024 * 1024

_T = TypeVar("_T")


def default_data_dir() -> Path:
    """`$EVCHARGE_KAFKA_DIR`, or `./evcharge-state/kafka` under the current directory."""
    env = os.environ.get("EVCHARGE_KAFKA_DIR")
    return Path(env).expanduser() if env else Path("evcharge-state") / "kafka"


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _cmdline(pid: int) -> str | None:
    """The command line of `pid`; "" while it is dying; None when it is gone.

    A process counts as live until its last thread is gone: a killed JVM's main thread
    turns zombie first while other threads still tear down its memory and hold its ports,
    and by then its command line can no longer be read.
    """
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").is_dir():
        state = task_state(proc)
        if state is None or state == "X":
            return None
        if state != "Z":
            try:
                return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                return None
        try:
            tids = os.listdir(proc / "task")
        except OSError:
            return None
        alive = any(task_state(proc / "task" / tid) not in (None, "Z", "X") for tid in tids)
        return "" if alive else None
    # No procfs (macOS): ask ps, which shows zombies as "<defunct>" with an empty command.
    out = subprocess.run(
        ["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    stat, _, command = out.stdout.strip().partition(" ")
    if out.returncode != 0 or not stat or stat.startswith("Z"):
        return None
    return command


def _run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """asyncio.run, also when called from code that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="evcharge-kafka-probe")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: _T = box["value"]
    return result


async def _answers_kafka(bootstrap: str | KafkaAccess, timeout_s: float) -> bool:
    # Imported here so the CLI's stop/status stay fast and do not need aiokafka loaded.
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    ms = max(int(timeout_s * 1000), 500)
    admin = AIOKafkaAdminClient(**access(bootstrap).client_options(), request_timeout_ms=ms)
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            await admin.list_topics()
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    log_path: Path


@dataclass(frozen=True)
class StartResult:
    """What `LocalBroker.start` did: started a broker, or found this data dir's one running."""

    status: BrokerStatus
    already_running: bool
    fetch_s: float | None  # None when the jars were cached already
    start_s: float  # 0.0 when already running


@dataclass(frozen=True)
class _Launch:
    """A JVM just spawned by `LocalBroker._launch`, not yet known to be ready."""

    started: float  # monotonic, before formatting
    log_offset: int  # where this run's output begins in broker.log
    fetch_s: float | None


@dataclass
class LocalBroker:
    """One single-node KRaft broker (broker and controller in one JVM) owned by a data dir."""

    data_dir: Path = field(default_factory=default_data_dir)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    controller_port: int | None = None  # None: port + 1
    cache: Path | None = None  # None: cache_dir(), shared by every broker on the machine
    # The JVMs this object starts get SIGTERM when the starting process (its main thread) ends.
    die_with_parent: bool = False
    # Prepended to the JVM's command line, e.g. ["ip", "netns", "exec", NAME] to run the
    # broker inside a network namespace where `host` is one of its addresses.
    command_prefix: Sequence[str] = ()
    # With it: a SASL_SSL listener, SCRAM users and ACLs instead of PLAINTEXT for anyone.
    security: BrokerSecurity | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    jvm_flags: ClassVar[tuple[str, ...]] = JVM_FLAGS

    def __post_init__(self) -> None:
        # Absolute, so the pid file and the JVM's command line match from any cwd.
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.controller_port is None:
            self.controller_port = self.port + 1
        if self.controller_port == self.port:
            raise BrokerError(f"the controller port must differ from the broker port {self.port}")
        self.command_prefix = tuple(self.command_prefix)

    @classmethod
    def from_env(cls) -> LocalBroker:
        """The broker the environment points at: EVCHARGE_KAFKA_{DIR,HOST,PORT}."""
        return cls(
            data_dir=default_data_dir(),
            host=os.environ.get("EVCHARGE_KAFKA_HOST", DEFAULT_HOST),
            port=int(os.environ.get("EVCHARGE_KAFKA_PORT", DEFAULT_PORT)),
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_path(self) -> Path:
        return self.data_dir / "log4j2.properties"

    @property
    def kafka_log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def _acls_marker(self) -> Path:
        return self.kafka_log_dir / "evcharge-acls"

    @property
    def admin_access(self) -> str | KafkaAccess:
        """How this process reaches the broker for readiness checks: as its admin when secure."""
        return self.security.access(self.bootstrap) if self.security is not None else self.bootstrap

    @property
    def _cport(self) -> int:
        assert self.controller_port is not None  # set in __post_init__
        return self.controller_port

    def fetch(self, progress: Progress | None = None) -> Path:
        """Make sure the Kafka jars are cached; returns their folder. Idempotent."""
        return fetch_kafka(self.cache, progress)

    def status(self) -> BrokerStatus:
        pid = self._live_pid()
        bootstrap = self.bootstrap
        if pid is not None:
            # The running JVM may have been started with other ports than this object's.
            bootstrap = self._running_bootstrap() or bootstrap
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            bootstrap=bootstrap,
            data_dir=self.data_dir,
            log_path=self.log_path,
        )

    def start(self, timeout_s: float = 60, progress: Progress | None = None) -> StartResult:
        """Start the broker unless it already runs, and wait until it answers Kafka requests.

        Returns with `already_running=True` when this data dir's broker is up already. Raises
        BrokerError when it cannot start; a JVM that did start but never became ready is
        killed again so no half-working broker is left behind.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir / ".lock"):
            existing = self.status()
            if existing.running:
                if existing.bootstrap != self.bootstrap:
                    raise BrokerError(
                        f"Kafka from {self.data_dir} is already running at {existing.bootstrap} "
                        f"(pid {existing.pid}), not at {self.bootstrap}: stop it first"
                    )
                return StartResult(existing, already_running=True, fetch_s=None, start_s=0.0)
            self.pid_path.unlink(missing_ok=True)  # stale: its process is gone
            launch = self._launch(progress)
            try:
                self._wait_ready(launch.started + timeout_s, launch.log_offset)
            except BaseException:
                # Covers Ctrl-C too: the JVM is detached and would otherwise live on unseen.
                self._abort()
                raise
            if self.security is not None and not self._acls_marker.is_file():
                count = self.security.grant(self.bootstrap)
                self._acls_marker.write_text(f"{count}\n")
                say(progress, f"ACLs for central, engines and drivers: {count} entries")
            start_s = time.monotonic() - launch.started
            say(progress, f"Kafka is up at {self.bootstrap} after {start_s:.1f} s")
            return StartResult(self.status(), already_running=False, fetch_s=launch.fetch_s, start_s=start_s)

    async def start_from_loop(self, timeout_s: float = 60) -> None:
        """`start` from an event loop on the main thread, without stalling the loop meanwhile.

        The JVM is spawned here (a child that dies with its parent must be spawned by the
        main thread); only the wait until it answers runs in a worker thread, so whatever
        else the loop runs (simulated chargers answering pings) goes on while Kafka starts.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.data_dir / ".lock"):
            if self.status().running:
                return
            self.pid_path.unlink(missing_ok=True)  # stale: its process is gone
            launch = self._launch(None)
            try:
                await asyncio.to_thread(self._wait_ready, launch.started + timeout_s, launch.log_offset)
            except BaseException:
                self._abort()
                raise

    def _launch(self, progress: Progress | None) -> _Launch:
        """Fetch, check the ports, write the config, format once, spawn; the caller waits."""
        java = require_java()
        fetch_started = time.monotonic()
        fetched = cached_libs(kafka_home(self.cache)) is None
        libs = self.fetch(progress)
        fetch_s = time.monotonic() - fetch_started if fetched else None
        self._check_ports_free()
        self._write_config()
        started = time.monotonic()
        if not (self.kafka_log_dir / "meta.properties").is_file():
            say(progress, "Formatting KRaft storage…")
            self._format(java, libs)
        say(progress, "Starting broker…")
        log_offset = self._spawn(java, libs)
        return _Launch(started=started, log_offset=log_offset, fetch_s=fetch_s)

    def _abort(self) -> None:
        """Kill a JVM that never became ready, so no half-working broker is left behind."""
        self._terminate(grace_s=5)
        self.pid_path.unlink(missing_ok=True)

    def _check_ports_free(self) -> None:
        if self.command_prefix:
            # The address belongs to another network namespace and cannot be bound from
            # here; a port taken there makes the JVM exit, which _wait_ready reports.
            return
        for port, role in ((self.port, ""), (self._cport, " (the KRaft controller port)")):
            if not port_free(self.host, port):
                raise BrokerError(
                    f"{self.host}:{port}{role} is already in use by another process "
                    f"(not the Kafka of {self.data_dir}): pick another port"
                )

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop the broker: SIGTERM, then SIGKILL after `timeout_s`. Idempotent.

        Returns True when a running broker was stopped, False when none was running.
        """
        if not self.data_dir.is_dir():
            return False
        with file_lock(self.data_dir / ".lock"):
            stopped = self._terminate(grace_s=timeout_s)
            self.pid_path.unlink(missing_ok=True)
            return stopped

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send a raw signal (SIGKILL, SIGSTOP, SIGCONT, …) to the broker; no cleanup.

        For chaos tests. Returns the pid signalled; BrokerError when it does not run.
        """
        pid = self._live_pid()
        if pid is None:
            raise BrokerError(f"Kafka from {self.data_dir} is not running")
        os.kill(pid, sig)
        return pid

    def _live_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None  # reaped: our own child exited (killed, crashed or stopped)
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        cmdline = _cmdline(pid)
        if cmdline == "":
            return pid  # our broker in its last moments: its ports are not free yet
        # The pid may have been reused by an unrelated process since the broker died.
        if cmdline is None or "kafka.Kafka" not in cmdline:
            return None
        if str(self.properties_path) not in cmdline:
            return None
        return pid

    def _running_bootstrap(self) -> str | None:
        try:
            text = self.properties_path.read_text()
        except OSError:
            return None
        match = re.search(r"^advertised\.listeners=(?:PLAINTEXT|SASL_SSL)://(\S+)$", text, re.MULTILINE)
        return match.group(1) if match else None

    def _write_config(self) -> None:
        self.kafka_log_dir.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{key}={value}\n" for key, value in self._properties().items())
        self.properties_path.write_text("# Written by evcharge on every start.\n" + body)
        self.log4j_path.write_text(
            "status = warn\n"
            "appender.out.type = Console\n"
            "appender.out.name = STDOUT\n"
            "appender.out.target = SYSTEM_OUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d{ISO8601}] %p %m (%c)%n\n"
            "rootLogger.level = info\n"
            "rootLogger.appenderRef.out.ref = STDOUT\n"
            # Per-request logging would drown everything else.
            "logger.request.name = kafka.request.logger\n"
            "logger.request.level = warn\n"
        )

    def _properties(self) -> dict[str, str]:
        """server.properties of a single node that is its own one-voter quorum."""
        if self.security is not None:
            # Secure: the plain controller listener is on loopback only (see secure.py).
            controller = f"127.0.0.1:{self._cport}"
            return {
                **self._common_properties(controller),
                **self.security.properties(self.host, self.port, controller, self.data_dir),
            }
        controller = f"{self.host}:{self._cport}"
        return {
            **self._common_properties(controller),
            "listeners": f"PLAINTEXT://{self.bootstrap},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap}",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        }

    def _common_properties(self, controller: str) -> dict[str, str]:
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.kafka_log_dir),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            # Fewer partitions of __consumer_offsets make the first group coordinator faster.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a crash (kill -9) the restarted broker cannot register until the
            # controller expires the old incarnation's session: 9 s by default, 3 s here.
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "3000",
            "auto.create.topics.enable": "false",
        }

    def _format_args(self) -> list[str]:
        """StorageTool's arguments after `-c props`: a new cluster id, a one-voter quorum."""
        users = self.security.format_args() if self.security is not None else []
        return [f"--cluster-id={new_cluster_id()}", "--standalone", *users]

    def _answers(self, timeout_s: float) -> bool:
        """Readiness: the broker answers a Kafka request within `timeout_s`."""
        return _run_blocking(functools.partial(_answers_kafka, self.admin_access, timeout_s))

    def _java_cmd(self, java: str, libs: Path, main: str, *args: str, linked: bool = True) -> list[str]:
        """The JVM's command line; `linked`: it dies with this process when `die_with_parent` asks so."""
        cmd = [
            java,
            *self.jvm_flags,
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]
        return die_with_parent(cmd) if self.die_with_parent and linked else cmd

    def _format(self, java: str, libs: Path) -> None:
        args = ["format", "-c", str(self.properties_path), *self._format_args()]
        # Waited for with a timeout, so it needs no link to this process; a cluster formats its
        # nodes in worker threads, where a linked child would be refused (see die_with_parent).
        cmd = self._java_cmd(java, libs, "kafka.tools.StorageTool", *args, linked=False)
        try:
            result = subprocess.run(
                cmd, cwd=self.data_dir, capture_output=True, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError("formatting the KRaft storage did not finish within 120 s") from exc
        with self.log_path.open("a") as log:
            log.write(f"--- evcharge: formatted KRaft storage at {datetime.now().isoformat()}\n")
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise BrokerError(
                f"formatting the KRaft storage in {self.kafka_log_dir} failed "
                f"(exit code {result.returncode}):\n" + last_lines(result.stdout + result.stderr, 25)
            )

    def _spawn(self, java: str, libs: Path) -> int:
        """Start the JVM detached; returns the offset in broker.log where its output begins."""
        if self.log_path.is_file() and self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
            self.log_path.replace(self.log_path.with_name("broker.log.1"))
        self._reap_previous()
        cmd = [*self.command_prefix, *self._java_cmd(java, libs, "kafka.Kafka", str(self.properties_path))]
        with self.log_path.open("ab") as log:
            log.write(
                f"--- evcharge: starting Kafka {KAFKA_VERSION} at {self.bootstrap} "
                f"on {datetime.now().isoformat()}\n".encode()
            )
            log.flush()
            offset = log.tell()
            # A new session: Ctrl-C in the starting terminal must not reach the broker.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        tmp_pid = self.pid_path.with_suffix(".pid.tmp")
        tmp_pid.write_text(f"{self._proc.pid}\n")
        tmp_pid.replace(self.pid_path)
        return offset

    def _reap_previous(self) -> None:
        """Collect an earlier JVM of ours that was killed, so it does not linger as a zombie."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Still alive although its pid file was gone: it cannot serve this data dir anyway.
            proc.kill()
            proc.wait(timeout=10)

    def _wait_ready(self, deadline: float, log_offset: int) -> None:
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else "?"
                raise BrokerError(
                    f"Kafka exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{self._log_tail(log_offset)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"Kafka did not answer at {self.bootstrap} in time; "
                    f"last lines of {self.log_path}:\n{self._log_tail(log_offset)}"
                )
            # A plain connect first: it is cheap, and aiokafka logs every refused connection.
            attempt = min(3.0, remaining)
            if port_answers(self.host, self.port, attempt) and self._answers(attempt):
                return
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))

    def _log_tail(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        if not text.strip():
            return "(nothing logged by this run yet)"
        return last_lines(text, _LOG_TAIL_LINES)

    def _terminate(self, grace_s: float) -> bool:
        """SIGTERM, then SIGKILL after `grace_s`; True when there was a broker to stop."""
        pid = self._live_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            # A broker paused with SIGSTOP would not act on SIGTERM before it is resumed.
            os.kill(pid, signal.SIGCONT)
        if not self._wait_gone(pid, time.monotonic() + grace_s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, time.monotonic() + 10):
                raise BrokerError(f"Kafka (pid {pid}) did not exit even after SIGKILL")
        return True

    def _wait_gone(self, pid: int, deadline: float) -> bool:
        while True:
            if self._proc is not None and self._proc.pid == pid:
                # Our own child: reap it, else it lingers as a zombie.
                if self._proc.poll() is not None:
                    self._proc = None
                    return True
            elif _cmdline(pid) is None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
