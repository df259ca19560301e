"""Single keystrokes from the terminal, without Enter, for the central panel and the engine."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def terminal_keys(on_keys: Callable[[str], None]) -> Iterator[bool]:
    """While inside, pass what is typed on stdin to `on_keys` key by key, without Enter.

    Yields False (and reads nothing) when stdin is not a terminal. The terminal's
    settings are restored on the way out, whatever happened inside.
    """
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        yield False
        return
    fd = stdin.fileno()
    loop = asyncio.get_running_loop()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def readable() -> None:
        try:
            data = os.read(fd, 256)
        except (BlockingIOError, InterruptedError):
            return
        if not data:  # the terminal went away: no more keys, the rest keeps running
            loop.remove_reader(fd)
            return
        text = decoder.decode(data)
        if text:
            on_keys(text)

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still signals
        loop.add_reader(fd, readable)
        try:
            yield True
        finally:
            loop.remove_reader(fd)
    finally:
        # A terminal that was closed (SIGHUP) cannot be restored, and need not be.
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
