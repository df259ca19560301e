"""A Kafka request given up at a role's own deadline that fails later is the same outage, not a defect.

aiokafka shields some of its requests from cancellation (an offset commit runs under
`asyncio.shield`). When a role stops waiting for one at its deadline, the outage is said
once by its `LinkWatch`; the shielded request goes on alone and, the broker still away,
fails later with a Kafka error nobody is left to retrieve. asyncio would log that as an
ERROR with a traceback in the middle of a calm outage. This handler logs it at DEBUG
instead. Every other exception nobody retrieved still goes to asyncio's own handler: that
one is a real defect, and says so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError

from evcharge.runtime.retry import describe

log = logging.getLogger(__name__)

UNRETRIEVED = "Task exception was never retrieved"


def install(loop: asyncio.AbstractEventLoop) -> None:
    loop.set_exception_handler(handle)


def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, KafkaError) and context.get("message") == UNRETRIEVED:
        log.debug("a Kafka request given up earlier failed on its own later: %s", describe(exc))
        return
    loop.default_exception_handler(context)
