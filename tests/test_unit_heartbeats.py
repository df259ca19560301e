"""Central's heartbeat fast path (`evcharge.central.heartbeats`) over real loopback sockets.

A `HeartbeatLink` takes a registered connection over from its stream, as the
monitor server hands it: these tests start the same way (a stream reads the
registration, then the link gets the transport and whatever was read past it),
with the decision functions replaced by recorders, since what is tested here is
the link's ordering, acknowledgement and ending, not central's decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from evcharge.central.heartbeats import HeartbeatLink
from evcharge.errors import Fenced, StoreUnavailable
from evcharge.protocol.framing import FrameDecoder, encode_frame
from evcharge.protocol.messages import (
    TCP_FRAMES,
    Ack,
    ErrorReply,
    Health,
    Heartbeat,
    Register,
    encode,
)
from evcharge.runtime.tcp import FrameReader

# The roles run on uvloop where it is installed and on asyncio's own elsewhere: the link must work on
# both (their transports differ in how they hand over to a new protocol).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def on_both_loops(scenario: Callable[[], Awaitable[None]]) -> Callable[[str], None]:
    @pytest.mark.parametrize("loop", list(LOOPS))
    def test(loop: str) -> None:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            runner.run(scenario())  # type: ignore[arg-type]

    test.__name__, test.__doc__ = scenario.__name__, scenario.__doc__
    return test


CP = "CP-7"
DEADLINE_S = 10.0


def frame(message: object) -> bytes:
    return encode_frame(encode(message))  # type: ignore[arg-type]


def heartbeat(corr: int, cp_id: str = CP, health: Health = Health.OK) -> bytes:
    return frame(Heartbeat(corr=corr, cp_id=cp_id, health=health))


REGISTER = frame(
    Register(corr=1, cp_id=CP, location="here", price=300_000, max_w=22_000, health=Health.OK, instance="m-1")
)


@dataclass
class Central:
    """The link's side: what it was asked, and how it ended."""

    quick: Callable[[Heartbeat], bool] = lambda hb: True
    slow: Callable[[Heartbeat], Awaitable[None]] | None = None
    quick_seen: list[int] = field(default_factory=list)
    slow_seen: list[int] = field(default_factory=list)
    heard: int = 0
    heard_changed: asyncio.Event = field(default_factory=asyncio.Event)
    link: HeartbeatLink | None = None
    ended: asyncio.Future[str] | None = None
    attach_after_eof: bool = False  # take over only once the stream has seen the monitor close


@contextlib.asynccontextmanager
async def served(central: Central) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    central.ended = asyncio.get_running_loop().create_future()

    def quick(hb: Heartbeat) -> bool:
        central.quick_seen.append(hb.corr)
        return central.quick(hb)

    async def slow(hb: Heartbeat) -> None:
        central.slow_seen.append(hb.corr)
        if central.slow is not None:
            await central.slow(hb)

    def heard() -> None:
        central.heard += 1
        central.heard_changed.set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert central.ended is not None
        frames = FrameReader(reader)
        try:
            first = await frames.read(timeout_s=DEADLINE_S)
            assert isinstance(first, Register)
            if central.attach_after_eof:
                # StreamReader says "EOF seen" publicly only once its buffer is empty.
                await until(lambda: reader._eof)  # type: ignore[attr-defined]
            link = central.link = HeartbeatLink(
                CP,
                "peer",
                quick=quick,
                slow=slow,
                heard=heard,
                on_lost=writer.transport.get_protocol().connection_lost,  # type: ignore[attr-defined]
            )
            already_read = frames.detach()
            link.attach(writer.transport, already_read, ended=frames.ended)  # type: ignore[arg-type]
            central.ended.set_result(await link.run())
        except asyncio.CancelledError:
            central.ended.cancel()
            raise
        except Exception as exc:
            if not central.ended.done():
                central.ended.set_exception(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def replies(reader: asyncio.StreamReader, count: int) -> list[object]:
    """The next `count` frames central sent, within the deadline."""
    decoder, out = FrameDecoder(), []
    async with asyncio.timeout(DEADLINE_S):
        while len(out) < count:
            chunk = await reader.read(4096)
            assert chunk, f"central closed after {out}"
            out += [TCP_FRAMES.decode(p) for p in decoder.feed(chunk)]
    return out


async def until(condition: Callable[[], bool], changed: asyncio.Event | None = None) -> None:
    """`condition` comes true within the deadline: woken by `changed`, or polled where nothing tells."""
    async with asyncio.timeout(DEADLINE_S):
        while not condition():
            if changed is None:
                await asyncio.sleep(0.005)
            else:
                await changed.wait()
                changed.clear()


async def ending(central: Central) -> str:
    assert central.ended is not None
    async with asyncio.timeout(DEADLINE_S):
        return await central.ended


@on_both_loops
async def test_heartbeats_sent_with_the_registration_and_cut_across_writes_are_all_acknowledged_in_order():
    central = Central()
    async with served(central) as (reader, writer):
        fourth = heartbeat(5)
        # What arrives with the registration is read by the stream, before the link takes over.
        writer.write(REGISTER + heartbeat(2) + heartbeat(3) + heartbeat(4) + fourth[:5])
        await writer.drain()
        assert [r.corr for r in await replies(reader, 3)] == [2, 3, 4]  # type: ignore[attr-defined]
        for byte in fourth[5:]:
            writer.write(bytes([byte]))
            await writer.drain()
        (last,) = await replies(reader, 1)
        assert isinstance(last, Ack) and last.corr == 5
        writer.write_eof()
        assert await ending(central) == "connection closed"
    assert central.quick_seen == [2, 3, 4, 5] and central.slow_seen == [] and central.heard == 4


@on_both_loops
async def test_a_heartbeat_that_changes_something_is_carried_out_before_those_behind_it_are_answered():
    release = asyncio.Event()

    async def commit(hb: Heartbeat) -> None:
        await release.wait()

    central = Central(quick=lambda hb: hb.health is Health.OK, slow=commit)
    async with served(central) as (reader, writer):
        writer.write(REGISTER + heartbeat(2) + heartbeat(3, health=Health.KO) + heartbeat(4) + heartbeat(5))
        await writer.drain()
        (first,) = await replies(reader, 1)
        assert isinstance(first, Ack) and first.corr == 2
        await until(lambda: central.heard == 4, central.heard_changed)
        # The commit of 3 has not finished: 4 and 5 wait behind it, unanswered and not judged alone.
        assert central.quick_seen == [2, 3] and central.slow_seen == [3]
        release.set()
        assert [r.corr for r in await replies(reader, 3)] == [3, 4, 5]  # type: ignore[attr-defined]
        assert central.slow_seen == [3, 4, 5]
        # The queue is worked off: the next heartbeat is answered straight away again.
        writer.write(heartbeat(6))
        assert [r.corr for r in await replies(reader, 1)] == [6]  # type: ignore[attr-defined]
        assert central.quick_seen == [2, 3, 6]
        writer.write_eof()
        assert await ending(central) == "connection closed"


@on_both_loops
async def test_a_frame_other_than_its_own_heartbeat_gets_an_error_and_ends_the_link():
    central = Central()
    async with served(central) as (reader, writer):
        writer.write(REGISTER + heartbeat(2, cp_id="CP-OTHER"))
        (error,) = await replies(reader, 1)
        assert isinstance(error, ErrorReply) and error.code == "unexpected" and error.corr == 2
        assert await ending(central) == "protocol violation"
        assert await reader.read() == b""
    assert central.quick_seen == []


@on_both_loops
async def test_garbage_after_registering_ends_the_link_as_a_protocol_error():
    central = Central()
    async with served(central) as (reader, writer):
        writer.write(REGISTER + heartbeat(2))
        await replies(reader, 1)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert await ending(central) == "protocol error"
        assert await reader.read() == b""


@on_both_loops
async def test_a_monitor_that_closed_before_the_link_took_over_is_still_answered_and_let_go():
    central = Central(attach_after_eof=True)
    async with served(central) as (reader, writer):
        writer.write(REGISTER + heartbeat(2))
        writer.write_eof()
        (ack,) = await replies(reader, 1)
        assert isinstance(ack, Ack) and ack.corr == 2
        assert await ending(central) == "connection closed"


@on_both_loops
async def test_a_store_outage_answers_the_heartbeat_and_the_next_one_tries_the_change_again():
    failures = [StoreUnavailable("disk full")]

    async def commit(hb: Heartbeat) -> None:
        if failures:
            raise failures.pop()

    central = Central(quick=lambda hb: False, slow=commit)
    async with served(central) as (reader, writer):
        writer.write(REGISTER + heartbeat(2, health=Health.KO))
        assert [r.corr for r in await replies(reader, 1)] == [2]  # type: ignore[attr-defined]
        writer.write(heartbeat(3, health=Health.KO))
        assert [r.corr for r in await replies(reader, 1)] == [3]  # type: ignore[attr-defined]
        assert central.slow_seen == [2, 3] and not failures
        writer.write_eof()
        assert await ending(central) == "connection closed"


@on_both_loops
async def test_a_fenced_commit_ends_the_link_so_the_monitor_goes_to_the_leader():
    async def commit(hb: Heartbeat) -> None:
        raise Fenced("another central leads")

    central = Central(quick=lambda hb: False, slow=commit)
    async with served(central) as (reader, writer):
        writer.write(REGISTER + heartbeat(2, health=Health.KO))
        assert await ending(central) == "this central lost the lead"
        assert await reader.read() == b""


@on_both_loops
async def test_a_fault_of_centrals_own_is_raised_from_run_not_swallowed():
    def broken(hb: Heartbeat) -> bool:
        raise KeyError("a bug")

    central = Central(quick=broken)
    async with served(central) as (_, writer):
        writer.write(REGISTER + heartbeat(2))
        with pytest.raises(KeyError):
            await ending(central)


@on_both_loops
async def test_detach_hands_over_every_unread_byte_in_order():
    reader = asyncio.StreamReader()
    frames = FrameReader(reader)
    two, three = heartbeat(2), heartbeat(3)
    reader.feed_data(REGISTER + two + three[:4])
    assert isinstance(await frames.read(timeout_s=1), Register)
    reader.feed_data(three[4:9])  # still in the stream's own buffer
    assert frames.detach() == two + three[:9] and not frames.ended
    reader.feed_eof()
    assert frames.detach() == b"" and frames.ended
