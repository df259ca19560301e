"""evcharge.runtime.lifetime with real processes: a child ends with its parent, even a SIGKILLed one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from evcharge.runtime import lifetime
from tests.harness import wait_until

pytestmark = pytest.mark.skipif(not lifetime.supported(), reason="PR_SET_PDEATHSIG is Linux only")

# Not Python, which ignores SIGPIPE by itself: what the child ignores is what it inherited.
SLEEPER = ["sleep", "60"]


def runs(pid: int) -> bool:
    """True while any thread of `pid` is neither a zombie nor gone (a dying JVM's main thread is first)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


def exec_done(pid: int) -> bool:
    """The step has exec'd the program: the same pid now runs `sleep`."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"


def signal_mask(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def is_set(mask: int, signum: int) -> bool:
    return bool(mask >> (signum - 1) & 1)


def test_the_child_is_the_program_itself_with_default_signals() -> None:
    child = subprocess.Popen(lifetime.die_with_parent(SLEEPER))
    try:
        # Same pid, now the program: the step exec'd it instead of starting it.
        wait_until(lambda: exec_done(child.pid), 5, "the exec")
        ignored = signal_mask(child.pid, "SigIgn")
        assert not is_set(ignored, signal.SIGPIPE)  # not inherited from the step's interpreter
        # SIGHUP as we have it: ignored only when we ignore it ourselves (run under nohup).
        assert is_set(ignored, signal.SIGHUP) == (signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)
    finally:
        child.kill()
        child.wait(5)


def test_a_child_on_the_parents_terminal_leaves_the_hangup_to_the_parent() -> None:
    child = subprocess.Popen(lifetime.die_with_parent(SLEEPER, ignore_hangup=True))
    try:
        wait_until(lambda: exec_done(child.pid), 5, "the exec")
        child.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.5)
    finally:
        child.kill()
        child.wait(5)


def test_the_child_gets_sigterm_when_its_parent_is_sigkilled() -> None:
    parent_code = (
        "import subprocess, time\n"
        "from evcharge.runtime.lifetime import die_with_parent\n"
        "child = subprocess.Popen(die_with_parent(['sleep', '60']))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    try:
        assert runs(child_pid)
        parent.kill()
        parent.wait(5)
        wait_until(lambda: not runs(child_pid), 5, "the orphan to end")
    finally:
        parent.stdout.close()
        if runs(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_a_child_whose_parent_died_before_it_could_ask_exits_at_once() -> None:
    command = lifetime.die_with_parent(SLEEPER)
    parent_at = command.index(str(os.getpid()))
    command[parent_at] = "1"  # as if we had died and it had been handed over to init
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 1
    assert "parent process ended" in result.stderr


def test_only_the_main_thread_may_start_such_children() -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            lifetime.die_with_parent(SLEEPER)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(5)
    assert len(errors) == 1 and "main thread" in str(errors[0])


def test_a_postgresql_server_ends_with_the_sigkilled_process_that_started_it() -> None:
    parent_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from evcharge.devtools.postgres import LocalPostgres\n"
        "from evcharge.runtime.ports import free_port\n"
        "server = LocalPostgres(Path(sys.argv[1]), free_port())\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    # Not under pytest's tmp_path: the postgres user must reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="evcharge-pg-"))
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code, str(folder)], stdout=subprocess.PIPE, text=True
    )
    postmaster = None
    try:
        assert parent.stdout is not None
        postmaster = int(parent.stdout.readline())
        assert runs(postmaster)
        parent.kill()
        parent.wait(5)
        wait_until(lambda: not runs(postmaster), 30, "the PostgreSQL server to end with its parent")
    finally:
        parent.kill()
        parent.wait(5)
        if parent.stdout is not None:
            parent.stdout.close()
        if postmaster is not None and runs(postmaster):
            os.kill(postmaster, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
