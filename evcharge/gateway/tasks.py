"""A set of background tasks with one owner: each referenced, its failure logged, all cancelled and
awaited on close. For work that outlives the call that started it (a charger's central link, a
remote start waiting for the charger's answer)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("evcharge.gateway")


class OwnedTasks:
    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        if self._closed:
            work.close()
            raise RuntimeError(f"{self._name} are closed")
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s: %s failed: %r", self._name, task.get_name(), exc, exc_info=exc)

    async def close(self) -> None:
        """Idempotent: cancel what runs and wait for all of it."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
