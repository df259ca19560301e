"""The driver's interactive prompt: list CPs, request one, stop the session, quit."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
from typing import Any, Protocol

import aiohttp

from evcharge.driver.journal import Outcome
from evcharge.driver.screen import Screen
from evcharge.protocol.units import price_text

HELP = "commands: list | request CP-ID | stop | quit"


class Controls(Protocol):
    """What the prompt drives: the driver app, seen from here."""

    screen: Screen

    async def request_charge(
        self, cp_id: str, index: int, request_id: str | None = None
    ) -> Outcome | None: ...
    async def stop_session(self) -> bool: ...


async def run_interactive(
    driver: Controls, stop: asyncio.Event, central_urls: str, tls: ssl.SSLContext | None = None
) -> None:
    screen = driver.screen
    screen.say(HELP)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    charging: asyncio.Task[Outcome | None] | None = None
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
                await _list_cps(screen, central_urls, tls)
            elif command == "request" and len(args) == 1:
                if charging is not None and not charging.done():
                    screen.say("a request is already in progress; 'stop' it first")
                    continue
                charging = asyncio.create_task(driver.request_charge(args[0], index))
                index += 1
            elif command == "stop":
                await driver.stop_session()
            else:
                screen.say(HELP)
    finally:
        transport.close()
        if charging is not None:
            charging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await charging


async def _list_cps(screen: Screen, central_urls: str, tls: ssl.SSLContext | None = None) -> None:
    data: Any = None
    errors = []
    for url in [u.strip() for u in central_urls.split(",") if u.strip()]:
        try:
            connector = aiohttp.TCPConnector(ssl=tls) if tls is not None else None
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), connector=connector) as http,
                http.get(f"{url}/cp") as response,
            ):
                data = await response.json()
                break
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors.append(f"{url}: {exc.__class__.__name__}")
    if data is None:
        screen.say(f"cannot reach central ({'; '.join(errors)})")
        return
    for cp in data["charging_points"]:
        mark = "✔" if cp["status"] == "ON" else " "
        price = price_text(cp["price"])
        screen.say(f" {mark} {cp['cp_id']:<10} {cp['status']:<13} {cp['location']:<20} {price} EUR/kWh")
