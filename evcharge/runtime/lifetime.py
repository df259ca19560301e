"""Child processes that end with their parent, even one that is SIGKILLed (Linux).

`die_with_parent(argv)` returns the command to start instead of `argv`: a short Python
step that asks the kernel for SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`),
makes sure the parent has not died already, and then execs `argv` in the same process, so
the pid is the child's own and the setting holds for the program it becomes. Done in a
separate step rather than in `preexec_fn`, which is unsafe in a parent that runs threads.

The kernel sends the signal when the *thread* that started the child ends, not the
process: start such children from the main thread only (enforced).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence

# Runs between fork and the real program: stdlib only, no site, no evcharge import.
# argv: parent pid, "1" to leave SIGHUP to the parent (else "0"), the user to become ("" to
# stay), then the command. The user changes first: a change of credentials clears the setting.
_STEP = """\
import ctypes, os, pwd, signal, sys
parent, ignore_hangup, user, argv = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], sys.argv[4:]
if user:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
PR_SET_PDEATHSIG = 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG): " + os.strerror(ctypes.get_errno()))
if os.getppid() != parent:
    sys.exit("evcharge: the parent process ended before this one started")
# This interpreter ignores SIGPIPE and SIGXFSZ; the program it becomes must not inherit that.
for name in ("SIGPIPE", "SIGXFSZ"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
if ignore_hangup:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
os.execvp(argv[0], argv)
"""


def supported() -> bool:
    """PR_SET_PDEATHSIG is Linux's; elsewhere children are started unchanged."""
    return sys.platform.startswith("linux")


def die_with_parent(argv: Sequence[str], *, ignore_hangup: bool = False, user: str = "") -> list[str]:
    """The command that runs `argv` as a process SIGTERMed when this process dies.

    `ignore_hangup`: for a child on this process's terminal, whose hangup this process
    turns into an ordered stop of everything (the child then gets SIGTERM in its turn).
    `user`: run `argv` as this user (we are root), e.g. a PostgreSQL server.
    """
    if not supported():
        return list(argv)
    if threading.current_thread() is not threading.main_thread():
        # The child would get SIGTERM as soon as this thread ends, long before the process.
        raise RuntimeError("children that die with their parent must be started from the main thread")
    step = [sys.executable, "-I", "-S", "-c", _STEP, str(os.getpid()), "1" if ignore_hangup else "0", user]
    return [*step, *argv]
