"""The supervisor's view in real Chromium agrees with the queue it summarises."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from browser import chromium
from conftest import RULES_DIR, EngineClient, event, write_pack
from playwright.async_api import Page, expect

from engine.core.settings import Settings
from engine.delivery.uplift import count_conversion
from engine.http.state import STORE

pytestmark = pytest.mark.browser

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _rules_with_the_contact_center_closed_until_later(tmp_path: Path) -> Path:
    """The shipped rules, with the contact center open for one hour three days from
    now only: a callback decided now is scheduled for then, whenever the test runs."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    opening_day = DAYS[(dt.datetime.now(dt.UTC).weekday() + 3) % 7]
    (rules / "calendars.yaml").write_text(
        "# Closed now, open later (test)\ncalendars:\n"
        f'  - {{name: contact_center, timezone: UTC, hours: {{{opening_day}: "10:00-11:00"}}}}\n'
    )
    return rules


async def _sign_in(page: Page, engine: EngineClient) -> None:
    await page.goto(f"{engine.url}/dashboard")
    await page.fill("input[name=user]", engine.credentials["agent_user"])
    await page.fill("input[name=password]", engine.credentials["agent_password"])
    await page.press("input[name=password]", "Enter")
    await expect(page.locator("#connection")).to_have_text("Live")


async def test_the_supervisor_view_counts_a_scheduled_callback_and_the_agent_on_the_floor(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(
        settings, rules_dir=_rules_with_the_contact_center_closed_until_later(tmp_path)
    )
    # A customer presses "call me" while the contact center is closed.
    body = engine.batch(
        [event("interest", page="/mortgages", props={"product": "mortgage", "call_me": True})],
        identity=engine.token("night-owl"),
    )
    status, reply, _ = await engine.post_events(body)
    assert status == 200, reply
    [decision] = [d for d in reply["decisions"] if d["rule"] == "call_me_requested"]
    assert decision["channel"] == "callback"

    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        await _sign_in(page, engine)  # the demo's supervisor: the one person signed in
        item = page.locator(f"#queue li[data-id='{decision['id']}']")
        await expect(item.locator(".sla")).to_contain_text("scheduled")
        floor = page.locator("#floor")
        stat = {
            name: floor.locator(f"[data-stat={name}]")
            for name in ("waiting", "scheduled", "claimed", "late", "agents")
        }
        await expect(stat["scheduled"]).to_have_text("1")
        await expect(stat["waiting"]).to_have_text("0")
        await expect(stat["claimed"]).to_have_text("0")  # nobody has claimed it
        await expect(stat["late"]).to_have_text("0")
        await expect(stat["agents"]).to_have_text("1")
        await expect(page.locator("#queue-depth")).to_have_text("(0 waiting, 1 scheduled)")

        await item.locator("button.claim").click()
        await expect(item.locator(".status")).to_have_text("claimed by you")
        await expect(stat["claimed"]).to_have_text("1")
        await expect(stat["scheduled"]).to_have_text("0")
        await expect(stat["waiting"]).to_have_text("0")
        await expect(page.locator("#queue-depth")).to_have_text("(0 waiting)")
        await expect(stat["agents"]).to_have_text("1")


HELD_OUT_PACK = """
rules:
  - id: adviser_call
    when: 'event.type == "interest" and event.props.product == "mortgage"'
    action: {type: callback, channel: callback}
    holdout_pct: 50
"""


def _pp(x: float) -> str:
    """The page's signed percentage points: JavaScript's toFixed rounds the exact binary
    value half away from zero, as Decimal(x) with ROUND_HALF_UP does."""
    digits = Decimal(abs(x) * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    return f"{'-' if x < 0 and digits else '+'}{digits}"


def _bar_label(name: str, cohort: dict[str, Any]) -> str:
    rate = Decimal(cohort["rate"] * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    return f"{name}: {rate}% converted ({cohort['conversions']} of {cohort['decisions']})"


def _uplift_text(report: dict[str, Any]) -> str:
    lo, hi = report["ci95"]
    return f"{_pp(report['uplift'])} pp (95%: {_pp(lo)} to {_pp(hi)})"


async def test_the_supervisor_view_charts_a_rules_uplift_as_the_report_states_it(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, HELD_OUT_PACK))
    )
    store = engine.extra["app"][STORE]
    treated: list[str] = []
    held: list[str] = []
    for i in range(40):  # 40 visitors ask for a mortgage call; half are the holdout
        customer = f"visitor-{i:02d}"
        status, reply, _ = await engine.post_events(
            engine.batch(
                [
                    event(
                        "interest",
                        page="/mortgages",
                        props={"product": "mortgage", "call_me": True},
                    )
                ],
                identity=engine.token(customer),
            )
        )
        assert status == 200, reply
        called = [d["id"] for d in reply["decisions"] if d["rule"] == "adviser_call"]
        (treated if called else held).extend(called or [customer])
    assert treated and held
    now = int(time.time() * 1000)
    for decision_id in treated[:4]:
        await count_conversion(store, "adviser_call", now, False, decision_id)
    # The report counts distinct decision ids per cohort; the holdout's is stable per
    # customer, so the customer stands in for it here.
    await count_conversion(store, "adviser_call", now, True, f"held:{held[0]}")

    async def report() -> dict[str, Any]:
        status, body = await engine.get_json(
            "/v1/reports/uplift?rule=adviser_call", headers=engine.api_headers
        )
        assert status == 200, body
        assert body["uplift"] is not None and body["ci95"] is not None
        return body  # type: ignore[no-any-return]

    first = await report()
    assert first["treated"]["conversions"] == 4 and first["holdout"]["conversions"] == 1

    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        await _sign_in(page, engine)
        chart = page.locator("#uplift li[data-rule=adviser_call]")
        await expect(page.locator("#uplift-title")).to_have_text("Uplift (last 30 days)")
        treated_bar = chart.locator(".bar-row.treated .bar")
        held_bar = chart.locator(".bar-row.holdout .bar")
        await expect(treated_bar).to_have_attribute("role", "img")
        await expect(treated_bar).to_have_attribute(
            "aria-label", _bar_label("Treated", first["treated"])
        )
        await expect(held_bar).to_have_attribute(
            "aria-label", _bar_label("Holdout", first["holdout"])
        )
        await expect(chart.locator(".uplift-text")).to_have_text(_uplift_text(first))
        # The bars are drawn to scale: the larger rate fills its track.
        widths = {}
        for name, bar in (("treated", treated_bar), ("holdout", held_bar)):
            track = await bar.bounding_box()
            fill = await bar.locator(".fill").bounding_box()
            assert track is not None and fill is not None
            widths[name] = fill["width"] / track["width"]
        rates = (first["treated"]["rate"], first["holdout"]["rate"])
        assert abs(max(widths.values()) - 1.0) < 0.01
        assert abs(widths["holdout"] / widths["treated"] - rates[1] / rates[0]) < 0.02

        # More sales come in; the funnel's Refresh button redraws the chart from the report.
        for decision_id in treated[4:8]:
            await count_conversion(store, "adviser_call", now, False, decision_id)
        second = await report()
        assert second["treated"]["conversions"] == min(8, len(treated))
        await page.click("#refresh-funnel")
        await expect(treated_bar).to_have_attribute(
            "aria-label", _bar_label("Treated", second["treated"])
        )
        await expect(chart.locator(".uplift-text")).to_have_text(_uplift_text(second))

        shot = tmp_path / "uplift.png"
        await page.locator("#supervisor-section").screenshot(path=str(shot))
        assert shot.exists() and shot.stat().st_size > 0
