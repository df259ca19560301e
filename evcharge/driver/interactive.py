"""The driver's interactive prompt: list CPs, request one, stop the session, quit."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from evcharge.driver.app import Driver

HELP = "commands: list | request CP-ID | stop | quit"


async def run_interactive(driver: Driver, stop: asyncio.Event, central_url: str | None = None) -> None:
    console = driver.console
    console.print(HELP)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    charging: asyncio.Task | None = None
    index = 0
    try:
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                break
            words = line.decode().split()
            if not words:
                continue
            command, args = words[0].lower(), words[1:]
            if command in ("quit", "exit", "q"):
                break
            if command == "list":
                await _list_cps(driver, central_url or driver.central_url)
            elif command == "request" and len(args) == 1:
                if charging is not None and not charging.done():
                    console.print("a request is already in progress; 'stop' it first")
                    continue
                charging = asyncio.create_task(driver.request_charge(args[0], index))
                index += 1
            elif command == "stop":
                await driver.stop_session()
            else:
                console.print(HELP)
    finally:
        transport.close()
        if charging is not None:
            charging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await charging


async def _list_cps(driver: Driver, central_url: str) -> None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"{central_url}/cp") as response,
        ):
            data = await response.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        driver.console.print(f"cannot reach central at {central_url}: {exc.__class__.__name__}")
        return
    for cp in data["charging_points"]:
        mark = "✔" if cp["status"] == "ON" else " "
        driver.console.print(
            f" {mark} {cp['cp_id']:<10} {cp['status']:<13} {cp['location']:<20} "
            f"{cp['price_eur_kwh']:.2f} EUR/kWh"
        )
