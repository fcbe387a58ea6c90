"""The supervisor's view in real Chromium agrees with the queue it summarises."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
from browser import chromium
from conftest import RULES_DIR, EngineClient, event
from playwright.async_api import Page, expect

from engine.core.settings import Settings

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
