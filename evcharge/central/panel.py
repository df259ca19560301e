"""Central's live terminal panel (F3) and the operator's keys on it (F7).

`render` draws one frame from the service's state and needs no terminal; `KeyPad`
turns keystrokes into commands; `run_panel` wires both to the screen and stdin.
"""

from __future__ import annotations

import asyncio
import errno
import io
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from evcharge.central.ledger import Session, SessionState
from evcharge.central.observers import Messages
from evcharge.central.operator_keys import Action, Command, KeyPad, Notice, execute
from evcharge.central.service import CentralService
from evcharge.central.state import CentralState
from evcharge.central.status import CpStatus
from evcharge.logs import setup_logging
from evcharge.protocol.messages import Health
from evcharge.protocol.units import eur_text, kw_text, kwh_text, price_text
from evcharge.runtime.terminal import terminal_keys
from evcharge.runtime.waits import sleep_unless

LOG_FILE_ENV = "EVCHARGE_LOG_FILE"
DEFAULT_LOG_FILE = "evcharge-central.log"
REDRAW_INTERVAL_S = 0.25

TILE_WIDTH = 28
TILE_HEIGHT = 6
MAX_REQUEST_ROWS = 8
MAX_MESSAGES = 10

STATUS_STYLE = {
    CpStatus.ON: "green",
    CpStatus.SUPPLYING: "bold green",
    CpStatus.STOPPED: "dark_orange",
    CpStatus.BROKEN: "bold red",
    CpStatus.DISCONNECTED: "grey50",
}
MESSAGE_STYLE = {"info": "", "warning": "yellow", "error": "bold red"}
KEYS_HELP = "s stop CP · r resume CP · S stop all · R resume all · q quit central"


# ---------------------------------------------------------------- logging


def log_file_path() -> Path:
    return Path(os.environ.get(LOG_FILE_ENV) or DEFAULT_LOG_FILE).absolute()


def panel_logging(level: str) -> None:
    """Say where the log goes while the panel owns the screen; `run_panel` moves it there.

    Printed before the screen is taken, so it is still there when central exits.
    """
    if not isinstance(logging.getLevelName(level.upper()), int):
        return  # the logging setup that follows reports a bad level
    print(f"central panel: log lines go to {log_file_path()} while the panel is on", file=sys.stderr)


def _open_log_file(path: Path) -> IO[str]:
    return path.open("a", encoding="utf-8", buffering=1)


# ---------------------------------------------------------------- drawing


def render(
    state: CentralState,
    messages: Messages,
    now: float,
    *,
    width: int = 120,
    height: int = 45,
    prompt: str | None = None,
    notice: Notice | None = None,
    keys_on: bool = True,
    log_path: Path | None = None,
) -> RenderableType:
    """A frame for a `width` x `height` terminal; reads central's state, never changes it."""
    statuses = {cp_id: state.status(cp_id) for cp_id in state.cps}
    sessions = _sessions_by_cp(state.sessions.values())
    requests = _requests_table(state.sessions.values(), MAX_REQUEST_ROWS)
    latest = _messages_panel(messages, MAX_MESSAGES)
    fixed = 1 + _height(requests, width) + _height(latest, width) + 1
    return Group(
        _header(statuses, len(state.sessions), now),
        _tiles(state, statuses, sessions, width, max(TILE_HEIGHT, height - fixed)),
        requests,
        latest,
        _footer(prompt, notice, keys_on, log_path),
    )


def _height(renderable: RenderableType, width: int) -> int:
    console = Console(width=width, file=io.StringIO())
    return len(console.render_lines(renderable, console.options, pad=False))


def _header(statuses: dict[str, CpStatus | None], sessions: int, now: float) -> Table:
    counts = Text()
    for status in CpStatus:
        n = sum(1 for s in statuses.values() if s is status)
        if n:
            counts.append(f"● {n} {status.value}  ", style=STATUS_STYLE[status])
    counts.append(f"{len(statuses)} CPs · {sessions} active", style="dim")
    title = Text.assemble(
        (" EV Charging — Central ", "bold reverse"),
        ("  " + time.strftime("%H:%M:%S", time.localtime(now)), "bold"),
    )
    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(no_wrap=True, min_width=len(title))
    grid.add_column(justify="right", no_wrap=True, overflow="ellipsis")
    grid.add_row(title, counts)
    return grid


def _tiles(
    state: CentralState,
    statuses: dict[str, CpStatus | None],
    sessions: dict[str, Session],
    width: int,
    height: int,
) -> RenderableType:
    if not state.cps:
        return Panel(
            Text("No charging points yet: a monitor registers its CP when it connects.", style="dim"),
            box=box.ROUNDED,
        )
    columns = max(1, (width + 1) // (TILE_WIDTH + 1))
    rows = max(1, height // TILE_HEIGHT)
    cp_ids = sorted(state.cps, key=natural_key)
    shown = cp_ids[: columns * rows]
    if len(shown) < len(cp_ids):
        rows = max(1, (height - 1) // TILE_HEIGHT)  # room for the "+K more" line
        shown = cp_ids[: columns * rows]
    grid = Table.grid(padding=(0, 1))
    for _ in range(min(columns, len(shown))):
        grid.add_column(width=TILE_WIDTH)
    tiles = [_tile(state, cp_id, statuses[cp_id], sessions.get(cp_id)) for cp_id in shown]
    for start in range(0, len(tiles), columns):
        grid.add_row(*tiles[start : start + columns])
    hidden = len(cp_ids) - len(shown)
    if not hidden:
        return grid
    return Group(
        grid,
        Text(
            f"+{hidden} more charging points ({len(cp_ids)} in all; GET /cp lists every one)",
            style="bold",
        ),
    )


def _tile(state: CentralState, cp_id: str, status: CpStatus | None, session: Session | None) -> Panel:
    record = state.cps[cp_id]
    style = STATUS_STYLE.get(status, "") if status else ""
    headline = Text(status.value if status else "?", style=f"bold {style}")
    if status is CpStatus.STOPPED:
        headline.append(" · Out of order")
    elif status is CpStatus.SUPPLYING and session and session.state is SessionState.SUPPLYING:
        headline.append(f" {kw_text(session.power_w)} kW")
    elif status is CpStatus.ON:
        headline.append(" · available", style="dim")
    lines = [headline, Text(record.location, style="italic")]
    if session is None:
        lines.append(Text(_idle_detail(state, cp_id, status), style="dim"))
    else:
        lines.append(Text(session.driver_id, style="cyan"))
        if session.state is SessionState.AUTHORISED:
            lines.append(Text("authorised, starting…", style="dim"))
        else:
            lines.append(Text(f"{kwh_text(session.wh)} kWh · {eur_text(session.micro_eur, 2)} EUR"))
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
    return Panel(
        Group(*lines),
        title=Text(cp_id, style="bold"),
        title_align="left",
        subtitle=f"{price_text(record.price)} EUR/kWh",
        subtitle_align="right",
        border_style=style or "grey50",
        box=box.ROUNDED,
        width=TILE_WIDTH,
        height=TILE_HEIGHT,
    )


def _idle_detail(state: CentralState, cp_id: str, status: CpStatus | None) -> str:
    if status is CpStatus.BROKEN:
        if state.health.get(cp_id) is not Health.KO:
            return "health not known yet"
        return state.detail.get(cp_id) or "engine KO"
    if status is CpStatus.DISCONNECTED:
        return "monitor not connected"
    if status is CpStatus.STOPPED:
        return "stopped by the operator"
    return f"up to {kw_text(state.cps[cp_id].max_w)} kW"


def _requests_table(active: Iterable[Session], max_rows: int) -> Table:
    table = Table(
        title="Ongoing requests",
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        expand=True,
        pad_edge=False,
    )
    table.add_column("Started", no_wrap=True, width=8)
    table.add_column("Driver", no_wrap=True, overflow="ellipsis", ratio=3)
    table.add_column("CP", no_wrap=True, overflow="ellipsis", ratio=2)
    table.add_column("State", no_wrap=True, width=10)
    table.add_column("kW", justify="right", no_wrap=True, width=6)
    table.add_column("kWh", justify="right", no_wrap=True, width=9)
    table.add_column("EUR", justify="right", no_wrap=True, width=8)
    sessions = sorted(active, key=lambda s: s.created_at)
    for session in sessions[:max_rows]:
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(session.started_at or session.created_at)),
            session.driver_id,
            session.cp_id,
            Text(
                session.state.value,
                style="green" if session.state is SessionState.SUPPLYING else "dim",
            ),
            kw_text(session.power_w),
            kwh_text(session.wh),
            eur_text(session.micro_eur, 2),
        )
    if len(sessions) > max_rows:
        table.add_row("", Text(f"+{len(sessions) - max_rows} more", style="bold"))
    if not sessions:
        table.add_row("", Text("none", style="dim"))
    return table


def _messages_panel(messages: Messages, count: int) -> Panel:
    newest = list(itertools.islice(reversed(messages.latest), count))
    lines = Text()
    for message in reversed(newest):
        if lines:
            lines.append("\n")
        lines.append(time.strftime("%H:%M:%S ", time.localtime(message.at)), style="dim")
        lines.append(message.text, style=MESSAGE_STYLE.get(message.level, ""))
    lines.no_wrap = True
    lines.overflow = "ellipsis"
    return Panel(
        lines or Text("no messages yet", style="dim"),
        title="Messages",
        title_align="left",
        box=box.ROUNDED,
    )


def _footer(prompt: str | None, notice: Notice | None, keys_on: bool, log_path: Path | None) -> Text:
    if prompt is not None:
        footer = Text(prompt, style="bold reverse")
    elif keys_on:
        footer = Text(KEYS_HELP, style="dim")
    else:
        footer = Text("keys off (stdin is not a terminal) · Ctrl-C stops central", style="dim")
    if notice is not None:
        footer.append("   ")
        footer.append(notice.text, style=MESSAGE_STYLE.get(notice.level) or "bold")
    if log_path is not None:
        footer.append(f"   log: {log_path}", style="dim")
    footer.no_wrap = True
    footer.overflow = "ellipsis"
    return footer


def _sessions_by_cp(active: Iterable[Session]) -> dict[str, Session]:
    return {session.cp_id: session for session in active}


def natural_key(cp_id: str) -> tuple[int | str, ...]:
    """CP-2 before CP-10: digit runs compare as numbers."""
    parts = re.split(r"(\d+)", cp_id)
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


# ---------------------------------------------------------------- keys


async def run_panel(service: CentralService, messages: Messages, stop: asyncio.Event) -> None:
    """Draw the panel full-screen and take the operator's keys until `stop` is set.

    Log lines go to a file meanwhile (they would scribble over the screen) and come
    back to stderr when the panel closes.
    """
    root = logging.getLogger()
    level = logging.getLevelName(root.level).lower()
    path = log_file_path()
    log_file = _open_log_file(path)
    setup_logging(level, stream=log_file)
    try:
        await _PanelScreen(service, messages, stop, path).run()
    finally:
        setup_logging(level)
        log_file.close()


class _PanelScreen:
    def __init__(
        self, service: CentralService, messages: Messages, stop: asyncio.Event, log_path: Path
    ) -> None:
        self._service = service
        self._messages = messages
        self._stop = stop
        self._log_path = log_path
        self._keypad = KeyPad()
        self._commands: asyncio.Queue[Command | None] = asyncio.Queue()
        self._notice: Notice | None = None
        self._keys_on = False
        self._live: Live | None = None

    async def run(self) -> None:
        try:
            await self._run()
        except OSError as exc:
            # The terminal closed under us (SIGHUP): central goes on stopping, without a screen.
            if exc.errno not in (errno.EIO, errno.ENXIO, errno.EBADF):
                raise
            logging.getLogger("evcharge.central").info("the panel's terminal is gone (%s)", exc)

    async def _run(self) -> None:
        console = Console()
        with (
            terminal_keys(self._on_keys) as keys_on,
            Live(
                console=console,
                screen=True,
                auto_refresh=False,
                refresh_per_second=4,
                redirect_stdout=False,
                redirect_stderr=False,
            ) as live,
        ):
            self._keys_on = keys_on
            self._live = live
            try:
                self._draw()
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._run_commands(), name="panel commands")
                    # Drawn from our own loop, not Live's thread: the service is not thread-safe.
                    while not await sleep_unless(self._stop, REDRAW_INTERVAL_S):
                        self._draw()
                    self._commands.put_nowait(None)  # finish the command in hand, then end
            finally:
                self._live = None

    def _draw(self) -> None:
        if self._live is None:
            return
        size = self._live.console.size
        self._live.update(
            render(
                self._service.state,
                self._messages,
                time.time(),
                width=size.width,
                height=size.height,
                prompt=self._keypad.prompt,
                notice=self._notice,
                keys_on=self._keys_on,
                log_path=self._log_path,
            ),
            refresh=True,
        )

    def _on_keys(self, text: str) -> None:
        for key in text:
            command = self._keypad.feed(key)
            if command is not None:
                self._commands.put_nowait(command)
        self._draw()

    async def _run_commands(self) -> None:
        while (command := await self._commands.get()) is not None:
            if command.action is Action.QUIT:
                self._notice = Notice("stopping central…")
                self._stop.set()
            else:
                self._notice = Notice(f"{command.action.value} {command.target}…".strip())
                self._draw()
                self._notice = await execute(self._service, command)
            self._draw()
