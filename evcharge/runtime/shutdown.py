"""One exit path for SIGINT, SIGTERM and SIGHUP: the first asks the role to stop cleanly, a second
exits at once. SIGHUP is a terminal that closed: the role stops as it would on Ctrl-C.

Every role runs on uvloop where it is installed: central's monitor port and the
simulator carry ten thousand connections, and uvloop's transports cost a fraction
of asyncio's own per read and write (the bench measures both: EVCHARGE_EVENT_LOOP=asyncio
runs a role on asyncio's own loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from evcharge.runtime import orphans

log = logging.getLogger("evcharge")

EXIT_INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_role(role: Callable[[asyncio.Event], Awaitable[int | None]]) -> int:
    """Run `role(stop)` until it returns; a signal sets `stop`, a second one exits immediately."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        orphans.install(loop)

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("second %s: exiting now", signal.Signals(signum).name)
                os._exit(EXIT_INTERRUPTED)
            log.info("%s received: shutting down (again to force)", signal.Signals(signum).name)
            stop.set()

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return (await role(stop)) or 0
        finally:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)

    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        return runner.run(main())


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop, or None (asyncio's own) where uvloop is not installed or not wanted."""
    if os.environ.get("EVCHARGE_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
