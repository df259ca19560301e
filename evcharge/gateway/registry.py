"""The chargers connected to this gateway: one live connection per charger id, and its central link.

A reconnect with the same charger id replaces the old socket (a charger that
lost its network and came back, or a zombie the kernel has not noticed yet):
the old connection is closed, the new one takes over the charger's central link
without central seeing the charger leave. When the last connection of a charger
ends, its link is closed and central shows it DISCONNECTED at once. Link tasks
are owned here: cancelled and awaited on close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from evcharge.gateway.central_link import CentralLink
from evcharge.gateway.health import ChargerHealth

if TYPE_CHECKING:
    from evcharge.gateway.charger import ChargerSession

log = logging.getLogger("evcharge.gateway")


@dataclass
class Live:
    cp_id: str
    session: ChargerSession
    health: ChargerHealth
    link: CentralLink | None = None
    link_task: asyncio.Task[None] | None = None
    # Transaction messages of one charger are applied one at a time, across its connections.
    tx_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Registry:
    def __init__(self) -> None:
        self._live: dict[str, Live] = {}
        self._closing = False

    def __len__(self) -> int:
        return len(self._live)

    def get(self, cp_id: str) -> Live | None:
        return self._live.get(cp_id)

    def sessions(self) -> list[ChargerSession]:
        return [live.session for live in self._live.values()]

    def attach(self, session: ChargerSession) -> tuple[Live, ChargerSession | None]:
        """Make `session` the charger's live one unless a newer connection is; the loser, if any.

        Newer is by the order the handshakes arrived (`OcppConnection.arrived`), not the
        order they got here: an old socket that took longer to set up never replaces a new one.
        """
        live = self._live.get(session.cp_id)
        if live is None:
            live = self._live[session.cp_id] = Live(session.cp_id, session, ChargerHealth())
            return live, None
        if live.session.conn.arrived > session.conn.arrived:
            return live, session
        replaced, live.session = live.session, session
        return live, replaced

    def detach(self, session: ChargerSession) -> bool:
        """The session ended: True if it was the live one (its link is then closed)."""
        live = self._live.get(session.cp_id)
        if live is None or live.session is not session:
            return False
        del self._live[session.cp_id]
        if live.link_task is not None:
            live.link_task.cancel()
        return True

    def start_link(
        self, live: Live, make: Callable[[], CentralLink], run: Callable[[CentralLink], asyncio.Task[None]]
    ) -> CentralLink:
        """The charger's central link, started once per charger (not per connection)."""
        if live.link is None or live.link_task is None or live.link_task.done():
            live.link = make()
            live.link_task = run(live.link)
        return live.link

    async def close(self) -> None:
        """Cancel every central link and wait for them: central sees every charger leave."""
        self._closing = True
        tasks = [live.link_task for live in self._live.values() if live.link_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
