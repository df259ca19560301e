"""A local PostgreSQL server for development and tests, in a directory of its own.

Debian's server binaries (`/usr/lib/postgresql/<version>/bin`) run as the
`postgres` user when we are root (PostgreSQL refuses to run as root), as
ourselves otherwise. Nothing is installed or configured system-wide: the data
directory, its socket and its log live in one folder, removed with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from evcharge.devtools.procs import running
from evcharge.errors import BrokerError
from evcharge.runtime.lifetime import die_with_parent
from evcharge.runtime.ports import port_answers

SEARCH = ("/usr/lib/postgresql",)
POSTGRES_MISSING = (
    "PostgreSQL's server is needed for a PostgreSQL store (and its tests): install it "
    "(Debian: apt-get install postgresql), or set EVCHARGE_PG_BIN to the folder with initdb and postgres"
)
USER = "evcharge"


def server_binaries() -> Path:
    """The folder holding initdb and postgres, newest version first."""
    configured = os.environ.get("EVCHARGE_PG_BIN")
    candidates = [Path(configured)] if configured else []
    for root in SEARCH:
        with contextlib.suppress(OSError):
            versions = sorted(Path(root).iterdir(), key=lambda p: _version_key(p.name), reverse=True)
            candidates += [v / "bin" for v in versions]
    found = shutil.which("postgres")
    if found:
        candidates.append(Path(found).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise BrokerError(POSTGRES_MISSING)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit()) or (0,)


class LocalPostgres:
    """One PostgreSQL server on `host:port`, its data in `folder/data`.

    `command_prefix` runs the server and its tools elsewhere, e.g. `ip netns exec NAME` for a
    host made of a network namespace where `host` is one of the addresses. `trust_network` lets
    in, without a password, every client on the networks the server is on (`samenet`): only for
    networks a test or demo built and nobody else reaches.
    """

    def __init__(
        self,
        folder: Path,
        port: int,
        host: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
        *,
        detached: bool = False,
        trust_network: bool = False,
    ) -> None:
        self.folder = folder.resolve()
        # Detached: the server outlives us (`evcharge postgres start`); else it ends with us.
        self.detached = detached
        self.port = port
        self.host = host
        self.command_prefix = tuple(command_prefix)
        self.trust_network = trust_network
        self.data = self.folder / "data"
        self.log_path = self.folder / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        self._server: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for(USER)

    def url_for(self, database: str) -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def _run(
        self, *argv: str | Path, timeout_s: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in argv]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        command = [*self.command_prefix, *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and result.returncode != 0:
            said = (result.stderr or result.stdout).strip()[-800:]
            raise BrokerError(f"{Path(str(argv[0])).name} failed ({result.returncode}): {said}")
        return result

    def start(self, timeout_s: float = 60) -> None:
        """initdb (once), then the server as our own child (ending with us), ready for connections."""
        binaries = server_binaries()
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            # The postgres user must own its folder and reach it; nothing else changes hands.
            entry = pwd.getpwnam("postgres")
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            self.folder.chmod(0o700)
        if not (self.data / "PG_VERSION").exists():
            try:
                initdb: list[str | Path] = [binaries / "initdb", "-D", self.data, "-U", USER, "--auth=trust"]
                self._run(*initdb, "-E", "UTF8", "--no-sync")
            except BrokerError as exc:
                if "Permission denied" not in str(exc):
                    raise
                raise BrokerError(
                    f"{exc}\nthe postgres user must reach {self.folder}: choose a folder it can, "
                    "e.g. --data-dir /var/tmp/evcharge-postgres"
                ) from None
        if self.trust_network:
            self._trust_own_networks()
        command = [
            str(binaries / "postgres"),
            *("-D", str(self.data), "-p", str(self.port), "-h", self.host, "-k", str(self.folder)),
            *("-c", "max_connections=200"),
        ]
        with open(self.log_path, "ab") as log_file:
            # In the foreground, not through pg_ctl (which daemonizes): a parent that is killed
            # outright takes its server along.
            user = "postgres" if self._as_postgres else ""
            if self.detached:
                command = ["runuser", "-u", user, "--", *command] if user else command
            else:
                command = die_with_parent(command, user=user)
            self._server = subprocess.Popen(
                [*self.command_prefix, *command],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=self.detached,
            )
        deadline = time.monotonic() + timeout_s
        while not self._accepting(binaries):
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise BrokerError(
                    f"PostgreSQL did not answer on {self.host}:{self.port}; see {self.log_path}"
                )
            time.sleep(0.1)
        self.create_database(USER)

    def _trust_own_networks(self) -> None:
        """Listening off loopback, let in the hosts of the networks the server is on (`samenet`):
        initdb trusts only local connections, and the clients run on other hosts."""
        if _loopback(self.host):
            return
        hba = self.data / "pg_hba.conf"
        rule = f"host all {USER} samenet trust"
        if rule not in hba.read_text().splitlines():
            with hba.open("a") as rules:
                rules.write(f"# evcharge: clients on other hosts of this server's own networks\n{rule}\n")

    def _accepting(self, binaries: Path) -> bool:
        """Taking connections: past the port opening, past crash recovery (pg_isready)."""
        # From here the address of another host may be unreachable: pg_isready runs there.
        if not self.command_prefix and not port_answers(self.host, self.port, 0.5):
            return False
        ready = self._run(
            binaries / "pg_isready", "-q", "-h", self.host, "-p", str(self.port), "-t", "1", check=False
        )
        return ready.returncode == 0

    def create_database(self, name: str) -> str:
        """A database of its own (a test's); returns its URL. Fine if it exists."""
        binaries = server_binaries()
        result = self._run(
            binaries / "createdb", "-h", self.host, "-p", str(self.port), "-U", USER, name, check=False
        )
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise BrokerError(f"createdb {name} failed: {result.stderr.strip()}")
        return self.url_for(name)

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """A crash of the server, for the tests that prove central waits it out."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down: `fast` (SIGINT) or `immediate` (SIGQUIT), then make sure it is gone."""
        sig = signal.SIGQUIT if mode == "immediate" else signal.SIGINT
        server = self._server
        if server is not None and server.poll() is None:
            server.send_signal(sig)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        else:
            pid = self.pid  # started by another process (`evcharge postgres start`)
            if pid is not None and running(pid):
                os.kill(pid, sig)
                deadline = time.monotonic() + 30
                while running(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
        pid = self.pid
        if pid is not None and running(pid):  # make sure nothing lingers
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def running(self) -> bool:
        pid = self.pid
        return pid is not None and running(pid) and port_answers(self.host, self.port, 0.5)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
