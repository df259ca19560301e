"""A worker's line to the `evcharge sim --processes N` that started it: its stdin and stdout.

The parent's `go` and `stop` arrive on stdin; the end of stdin means the parent is
gone, and the worker stops as on `stop`: no worker runs on without its parent
(the kernel's SIGTERM at the parent's death, `evcharge.runtime.lifetime`, says
the same a second way). Messages leave on stdout, one line each (`wire`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import IO, BinaryIO

from evcharge.devtools.sim.wire import GO, WorkerMessage, command, encode
from evcharge.errors import ProtocolError

log = logging.getLogger("evcharge.sim")


class ParentLink:
    def __init__(self, worker: int, out: BinaryIO | None = None, commands: IO[bytes] | None = None) -> None:
        """`out` and `commands`: the worker's stdout and stdin unless given (a test's pipe)."""
        self.worker = worker
        self.go = asyncio.Event()
        self._out = out if out is not None else sys.stdout.buffer
        self._commands = commands if commands is not None else sys.stdin.buffer
        self._gone = False

    async def listen(self, stop: asyncio.Event) -> None:
        """Read the parent's commands until it says stop or goes away; either sets `stop`."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self._commands
        )
        try:
            while True:
                line = await reader.readline()
                if not line:
                    if not stop.is_set():
                        log.info("worker %d: its parent closed the pipe: stopping", self.worker)
                    stop.set()
                    return
                try:
                    word = command(line)
                except ProtocolError as exc:
                    log.warning("worker %d: %s", self.worker, exc)
                    continue
                if word == GO:
                    self.go.set()
                else:
                    stop.set()
        finally:
            transport.close()

    def send(self, message: WorkerMessage) -> None:
        """Write one message; a parent that is gone is not an error here (its stdin's end stops us)."""
        if self._gone:
            return
        try:
            self._out.write(encode(message))
            self._out.flush()
        except BrokenPipeError:
            self._gone = True
            # Nothing more reaches the parent; the interpreter's last flush must not fail loudly either.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._out.fileno())
            os.close(devnull)
