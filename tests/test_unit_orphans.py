"""A Kafka request that fails after nobody waits for it any more is logged calmly; anything else is not."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from aiokafka.errors import RequestTimedOutError

from evcharge.runtime import orphans


async def fails(exc: BaseException) -> None:
    raise exc


def drop_a_failed_task(exc: BaseException) -> None:
    """A task that fails while nobody holds it: asyncio reports it when it is collected."""

    async def main() -> None:
        orphans.install(asyncio.get_running_loop())
        task = asyncio.ensure_future(fails(exc))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done()
        del task
        gc.collect()

    asyncio.run(main())


def test_a_kafka_request_failing_unretrieved_is_one_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        drop_a_failed_task(RequestTimedOutError())
    mine = [r for r in caplog.records if r.name == orphans.__name__]
    assert [r.levelno for r in mine] == [logging.DEBUG]
    assert "failed on its own later" in mine[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_any_other_unretrieved_failure_is_still_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        drop_a_failed_task(ValueError("a real defect"))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage().startswith(orphans.UNRETRIEVED)
    assert "a real defect" in errors[0].getMessage()
    assert not [r for r in caplog.records if r.name == orphans.__name__]
