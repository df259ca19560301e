"""Central's panel drawn from a real service over a real store, without Kafka or a terminal."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from evcharge.central.decisions import Rules
from evcharge.central.observers import Messages
from evcharge.central.operator_keys import Action, Command, KeyPad, execute, resolve_cp
from evcharge.central.panel import natural_key, render
from evcharge.central.service import CentralService
from evcharge.central.state import Outcome
from evcharge.central.status import CpStatus
from evcharge.central.store import open_store
from evcharge.protocol.messages import ChargeRequest, Health, Register


def _text(renderable, width: int = 120) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


async def _register(service: CentralService, n: int, location: str = "Alicante") -> str:
    instance = f"i{n}"
    await service.register(
        Register(
            cp_id=f"CP-{n:03d}",
            location=location,
            price=300_000,
            max_w=22_000,
            health=Health.OK,
            instance=instance,
        ),
        "127.0.0.1:1",
    )
    return instance


@pytest.fixture
async def service(tmp_path):
    store = await open_store(tmp_path / "c.sqlite")
    messages = Messages()
    service = CentralService(store, Rules(), observers=[messages])
    service.messages = messages
    await service.load()
    yield service
    await store.close()


def frame(service: CentralService, **kw):
    return render(service.state, service.messages, time.time(), **kw)


@pytest.fixture
async def four_cps(service):
    """CP-001 supplying driver-alice, CP-002 broken, CP-003 stopped, CP-004 disconnected."""
    await _register(service, 1, "Alicante")
    link2 = await _register(service, 2, "Elche")
    await _register(service, 3, "Murcia")
    link4 = await _register(service, 4, "Valencia")
    await service.heartbeat("CP-002", link2, Health.KO)
    await service.set_stopped(["CP-003"], True, "panel")
    await service.monitor_left("CP-004", link4, "connection reset")
    outcome = await service.charge(ChargeRequest(driver_id="driver-alice", cp_id="CP-001", request_id="r1"))
    assert outcome.outcome is Outcome.ACCEPTED
    return service


async def test_panel_shows_every_cp_in_its_status(four_cps):
    service = four_cps
    assert [service.state.status(f"CP-00{n}") for n in range(1, 5)] == [
        CpStatus.SUPPLYING,
        CpStatus.BROKEN,
        CpStatus.STOPPED,
        CpStatus.DISCONNECTED,
    ]

    text = _text(frame(service, width=120, height=45))

    for n, place in enumerate(["Alicante", "Elche", "Murcia", "Valencia"], start=1):
        assert f"CP-00{n}" in text
        assert place in text
    assert "0.30 EUR/kWh" in text
    assert "SUPPLYING" in text
    assert "Out of order" in text
    assert "BROKEN" in text
    assert "DISCONNECTED" in text
    assert "EV Charging — Central" in text


async def test_ongoing_requests_and_messages(four_cps):
    text = _text(frame(four_cps, width=120, height=45))
    requests = text[text.index("Ongoing requests") : text.index("Messages")]
    assert "driver-alice" in requests
    assert "CP-001" in requests
    assert "authorised" in requests
    messages = text[text.index("Messages") :]
    assert "CP-003 stopped by the operator" in messages
    assert "CP-002 out of order: engine broken" in messages
    assert "driver-alice → CP-001: authorised" in messages


async def test_only_the_newest_messages_are_drawn(service):
    for n in range(30):
        service.messages.say(f"message number {n:02d}")
    text = _text(frame(service))
    assert "message number 29" in text
    assert "message number 20" in text
    assert "message number 19" not in text


async def test_colours_follow_the_status(four_cps):
    console = Console(record=True, width=120, file=io.StringIO(), color_system="truecolor")
    console.print(frame(four_cps, width=120, height=45))
    html = console.export_html(inline_styles=True)
    # rich's "dark_orange" is #ff8700; "red" is #800000 in the standard palette.
    assert "#ff8700" in html
    assert "Out of order" in html


async def test_empty_service_renders(service):
    text = _text(frame(service))
    assert "No charging points yet" in text
    assert "none" in text


async def test_hundreds_of_cps_are_capped_and_fast(service):
    for n in range(1, 501):
        await _register(service, n)
    started = time.perf_counter()
    text = _text(frame(service, width=120, height=45))
    elapsed = time.perf_counter() - started
    tiles = text[: text.index("Ongoing requests")]
    assert "CP-001" in tiles
    assert "CP-500" not in tiles
    assert "more charging points (500 in all" in text
    assert "● 500 ON" in text
    assert len(text.splitlines()) <= 45
    assert elapsed < 1.0, f"a frame of 500 CPs took {elapsed:.2f} s"


def test_ids_sort_by_number():
    assert sorted(["CP-10", "CP-2", "CP-1"], key=natural_key) == ["CP-1", "CP-2", "CP-10"]


def test_keypad_types_a_cp_then_enter():
    pad = KeyPad()
    assert pad.feed("s") is None
    assert pad.prompt is not None and "stop" in pad.prompt
    for key in "12x":
        assert pad.feed(key) is None
    pad.feed("\x7f")  # backspace
    assert pad.typed == "12"
    assert pad.feed("\r") == Command(Action.STOP, "12")
    assert pad.prompt is None
    assert pad.feed("S") == Command(Action.STOP_ALL)
    assert pad.feed("R") == Command(Action.RESUME_ALL)
    assert pad.feed("r") is None
    assert pad.feed("q") is None  # typed, not quit
    pad.feed("\x1b")
    assert pad.prompt is None
    assert pad.feed("q") == Command(Action.QUIT)
    assert pad.feed("x") is None


def test_resolve_cp_by_id_case_or_number():
    ids = ["CP-001", "CP-002", "cp-west-7"]
    assert resolve_cp("CP-001", ids) == "CP-001"
    assert resolve_cp("cp-002", ids) == "CP-002"
    assert resolve_cp("2", ids) == "CP-002"
    assert resolve_cp("7", ids) == "cp-west-7"
    assert resolve_cp("9", ids) is None
    assert resolve_cp("CP-009", ids) is None


async def test_operator_commands_go_through_the_service(four_cps):
    service = four_cps
    notice = await execute(service, Command(Action.RESUME, "3"))
    assert notice.text == "CP-003 resumed"
    assert service.state.status("CP-003") is CpStatus.ON

    notice = await execute(service, Command(Action.STOP, "CP-099"))
    assert notice.level == "error" and "CP-099" in notice.text

    notice = await execute(service, Command(Action.STOP_ALL))
    assert notice.text == "stopped 4 charging points"
    assert all(record.stopped for record in service.state.cps.values())
    text = _text(frame(service))
    assert text.count("Out of order") == 2  # CP-002 is BROKEN and CP-004 DISCONNECTED first

    notice = await execute(service, Command(Action.RESUME_ALL))
    assert notice.text == "resumed 4 charging points"
    assert not any(record.stopped for record in service.state.cps.values())


async def test_footer_shows_typing_and_notices(service):
    await _register(service, 1)
    pad = KeyPad()
    for key in "s1":
        pad.feed(key)
    text = _text(frame(service, prompt=pad.prompt))
    assert "stop CP" in text and ": 1" in text
    notice = await execute(service, Command(Action.STOP, "nope"))
    text = _text(frame(service, notice=notice))
    assert "no charging point matches 'nope'" in text
