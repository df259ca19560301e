"""The engine's keys in its terminal (F8): p plug in, u unplug, f fault, c clear, q quit,
under a one-line status that refreshes every second.

"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.text import Text

from evcharge.protocol.messages import EngineAction
from evcharge.runtime.terminal import terminal_keys
from evcharge.runtime.waits import sleep_unless

if TYPE_CHECKING:
    from evcharge.cp.engine import Engine

log = logging.getLogger("evcharge.engine")

ENGINE_KEYS = {
    "p": EngineAction.PLUG,
    "u": EngineAction.UNPLUG,
    "f": EngineAction.FAULT,
    "c": EngineAction.CLEAR,
}
HELP = "keys: p plug in · u unplug · f fault (answer KO) · c clear fault (answer OK) · q quit"
STATUS_INTERVAL_S = 1.0


def with_engine_keys(engine: Engine) -> Callable[[asyncio.Event], Awaitable[int]]:
    """`engine.run` with the CP's keys and status line in the terminal; returns its exit code."""

    async def run(stop: asyncio.Event) -> int:
        return await _EngineTerminal(engine, stop).run()

    return run


class _EngineTerminal:
    def __init__(self, engine: Engine, stop: asyncio.Event) -> None:
        self._engine = engine
        self._stop = stop
        self._pressed: asyncio.Queue[str | None] = asyncio.Queue()

    async def run(self) -> int:
        console = Console(stderr=True, highlight=False)
        console.print(HELP, style="bold")
        async with asyncio.TaskGroup() as tasks:
            engine_run = tasks.create_task(self._engine.run(self._stop), name="engine")
            # However the engine ends, the keys and the status line end with it.
            engine_run.add_done_callback(lambda _: self._stop.set())
            tasks.create_task(self._terminal(console), name="engine keys")
        return engine_run.result()

    async def _terminal(self, console: Console) -> None:
        with (
            Live(
                self._status(),
                console=console,
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=True,
            ) as live,
            _logs_through_live(),
            terminal_keys(self._on_keys) as keys_on,
        ):
            if not keys_on:
                live.console.print("stdin is not a terminal: keys are off")
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._run_presses(live), name="engine key presses")
                while not await sleep_unless(self._stop, STATUS_INTERVAL_S):
                    live.update(self._status(), refresh=True)
                self._pressed.put_nowait(None)

    def _on_keys(self, text: str) -> None:
        for key in text:
            self._pressed.put_nowait(key)

    async def _run_presses(self, live: Live) -> None:
        while (key := await self._pressed.get()) is not None:
            if self._stop.is_set():
                return  # shutting down: the engine takes no more actions
            if key == "q":
                live.console.print("q: quitting")
                self._stop.set()
                return
            action = ENGINE_KEYS.get(key)
            if action is None:
                if key in "h?":
                    live.console.print(HELP)
                continue
            live.console.print(f"{key}: {action.value} → {await self._act(action)}")
            live.update(self._status(), refresh=True)

    async def _act(self, action: EngineAction) -> str:
        try:
            return await self._engine.act(action)
        except Exception as exc:
            # A key press must never take the engine down; the log keeps the details.
            log.exception("%s: the %r key failed", self._engine.settings.cp_id, action)
            return f"failed: {exc or type(exc).__name__}"

    def _status(self) -> Text:
        described = self._engine.describe()
        style = "red" if described.startswith("KO") else "green" if "supplying" in described else ""
        return Text.assemble(
            (f"{self._engine.settings.cp_id} ", "bold"),
            (described, style),
            ("   p u f c q", "dim"),
        )


@contextlib.contextmanager
def _logs_through_live() -> Iterator[None]:
    """Point the log handlers at Live's stderr proxy, so log lines print above the status line.

    The handlers hold the stderr they were created with; Live only redirects `sys.stderr`.
    """
    proxy = sys.stderr
    real = getattr(proxy, "rich_proxied_file", None)
    moved = [
        handler
        for handler in logging.getLogger().handlers
        if real is not None and isinstance(handler, logging.StreamHandler) and handler.stream is real
    ]
    for handler in moved:
        handler.setStream(proxy)
    try:
        yield
    finally:
        for handler in moved:
            handler.setStream(real)
