"""The operator's web page in a real Chromium against a real central, real CPs and a real driver.

A charge shows live (SUPPLYING, the kWh growing), the operator stops it from the page
with the token (a wrong one refused on the page), and a central killed and restarted
is followed by the page on its own. EVCHARGE_SCREENSHOT=path saves the page while it
charges (`make screenshot` refreshes the README's picture).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import LIVE_MS, SLOW_MS, chromium, expect, opened, tile
from tests.harness import System

pytestmark = [pytest.mark.kafka, pytest.mark.processes, pytest.mark.browser]

JOIN, OPERATOR = "join-token-for-the-page", "operator-token-for-the-page"
READING_MS = 1000  # an engine reads its meter once a second


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def test_a_real_charge_shows_live_and_the_operator_stops_it_from_the_page(system: System, browser) -> None:
    system.max_session_s = 120  # the charge goes on until the operator stops it
    system.central_overrides = {"require_auth": True, "join_token": JOIN, "operator_token": OPERATOR}
    system.monitor_overrides = {"join_token": JOIN}
    system.start_central()
    cp1 = system.add_cp(system.ident("CP-001"), location="Alicante")
    cp2 = system.add_cp(system.ident("CP-002"), location="Elche", price="0.45")
    with opened(browser, system.url + "/") as page:
        expect(tile(page, cp1.cp_id)).to_have_attribute("data-status", "ON", timeout=SLOW_MS)
        expect(tile(page, cp2.cp_id)).to_have_attribute("data-status", "ON")
        expect(tile(page, cp2.cp_id).get_by_test_id("cp-price")).to_have_text("0.45 EUR/kWh")
        expect(page.get_by_test_id("role")).to_contain_text("auth on")

        alice = system.ident("driver-alice")
        system.start_driver(alice, [cp1.cp_id])
        supplying = tile(page, cp1.cp_id)
        expect(supplying).to_have_attribute("data-status", "SUPPLYING", timeout=SLOW_MS * 4)
        expect(supplying.get_by_test_id("cp-driver")).to_have_text(alice)
        expect(supplying.get_by_test_id("cp-status")).to_have_text(re.compile(r"^SUPPLYING 22\.0 kW$"))
        kwh = supplying.get_by_test_id("cp-kwh")
        first = kwh.inner_text()
        expect(kwh).not_to_have_text(first, timeout=READING_MS + LIVE_MS)
        assert float(kwh.inner_text()) > float(first), "the kWh grew with the meter"
        expect(page.get_by_test_id("session-row").filter(has_text=alice)).to_have_count(1)
        if os.environ.get("EVCHARGE_SCREENSHOT"):
            expect(kwh).not_to_have_text("0.000")
            page.screenshot(path=os.environ["EVCHARGE_SCREENSHOT"], full_page=True)

        supplying.get_by_test_id("cp-stop").click()
        expect(page.get_by_test_id("token-form")).to_be_visible()
        page.get_by_test_id("token-input").fill("not-the-operator-token")
        page.get_by_test_id("token-submit").click()
        expect(page.get_by_test_id("error-toast").filter(has_text="401")).to_be_visible(timeout=LIVE_MS)
        expect(page.get_by_test_id("token-reason")).to_contain_text("401")
        assert system.status(cp1.cp_id) == "SUPPLYING", "the wrong token changed nothing"

        page.get_by_test_id("token-input").fill(OPERATOR)
        page.get_by_test_id("token-submit").click()
        expect(supplying).to_have_attribute("data-status", "STOPPED", timeout=LIVE_MS * 2)
        expect(supplying.get_by_test_id("cp-status")).to_have_text("STOPPED · Out of order")
        assert system.status(cp1.cp_id) == "STOPPED"
        system.wait_driver_done(alice, 30)
        (ticket,) = system.tickets(alice)
        assert ticket.reason == "operator" and ticket.wh > 0
        ended = page.locator(f'[data-testid="history-row"][data-session-id="{ticket.session_id}"]')
        expect(ended).to_have_count(1, timeout=LIVE_MS * 2)
        expect(ended.locator("td").nth(5)).to_have_text(f"{ticket.wh / 1000:.3f}")
        expect(ended.locator("td").nth(7)).to_have_text("operator")

        supplying.get_by_test_id("cp-resume").click()  # the token the page kept: not asked again
        expect(supplying).to_have_attribute("data-status", "ON", timeout=LIVE_MS * 2)
        expect(page.get_by_test_id("token-form")).to_be_hidden()
        assert system.status(cp1.cp_id) == "ON"
    refused = [
        line for line in (system.state_dir / "audit.log").read_text().splitlines() if "refused:" in line
    ]
    assert len(refused) == 1 and "a wrong operator token" in refused[0], refused
    system.assert_invariants()


def test_the_page_follows_central_through_a_kill_and_a_restart_by_itself(system: System, browser) -> None:
    system.start_central()
    cp1 = system.add_cp(system.ident("CP-001"))
    cp2 = system.add_cp(system.ident("CP-002"))
    with opened(browser, system.url + "/") as page:
        first = system.get("/health")["instance"]
        expect(page.get_by_test_id("role")).to_contain_text(first, timeout=SLOW_MS)
        banner = page.get_by_test_id("connection-banner")
        expect(banner).to_be_hidden()

        system.central.kill()
        expect(banner).to_be_visible(timeout=SLOW_MS)
        expect(banner).to_have_attribute("data-state", "disconnected")
        expect(banner).to_contain_text("Disconnected")
        # While central is away a CP goes for good: only a fresh snapshot can tell the page.
        cp2.monitor.stop()
        cp2.engine.stop()

        system.start_central()
        second = system.get("/health")["instance"]
        assert second != first
        expect(banner).to_be_hidden(timeout=SLOW_MS * 3)
        expect(page.get_by_test_id("role")).to_contain_text(second)
        expect(tile(page, cp2.cp_id)).to_have_attribute("data-status", "DISCONNECTED")
        expect(tile(page, cp1.cp_id)).to_have_attribute("data-status", "ON", timeout=SLOW_MS * 3)

        # Live again: an operator stop shows without a reload.
        status, _ = system.post(f"/cp/{cp1.cp_id}/stop")
        assert status == 200
        expect(tile(page, cp1.cp_id)).to_have_attribute("data-status", "STOPPED", timeout=LIVE_MS * 2)
    assert system.status(cp2.cp_id) == "DISCONNECTED", "the page showed what GET /cp says"
