"""The contact-center dashboard in real Chromium: a visitor on /demo, two agents, one wins."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from browser import chromium
from conftest import RULES_DIR, EngineClient, open_store
from playwright.async_api import Page, expect

from engine.core.ids import new_decision_id
from engine.core.settings import Agent, Settings, hash_password
from engine.delivery.records import write_trigger
from engine.valkey import keys

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=\"document.title='pwned'\">Mortgage 320k"


async def _sign_in(page: Page, engine: EngineClient, user: str, password: str) -> None:
    await page.goto(f"{engine.url}/dashboard")
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", password)
    await page.press("input[name=password]", "Enter")  # keyboard only
    await expect(page.locator("#connection")).to_have_text("Live")


def _rules_for_any_hour(tmp_path: Path) -> Path:
    """The shipped rules with a contact center open around the clock and no holdout,
    so the test does not depend on when CI runs or on the hash lottery, and an offer
    title carrying markup (which both the visitor and the agent must see as text)."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    always = ", ".join(
        f'{d}: "00:00-24:00"' for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    )
    (rules / "calendars.yaml").write_text(
        "# Open around the clock (test)\ncalendars:\n"
        f"  - {{name: contact_center, timezone: Europe/London, hours: {{{always}}}}}\n"
    )
    mortgage = rules / "mortgage.yaml"
    mortgage.write_text(mortgage.read_text().replace("holdout_pct: 5", "holdout_pct: 0"))
    offers = rules / "offers.yaml"
    text = offers.read_text()
    title = "title: Talk to a mortgage adviser today"
    assert title in text
    offers.write_text(text.replace(title, f"title: {json.dumps(XSS)}"))
    return rules


async def _visitor_reworks_the_mortgage_calculator(page: Page, url: str) -> None:
    """A logged-in demo customer moves the amount slider three times, pausing each time."""
    await page.goto(f"{url}/demo/mortgages")
    await page.click("#login-button")
    await page.select_option("#login-form select[name=user]", "alex")
    await page.fill("#login-form input[name=password]", "demo")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#greeting")).to_have_text("Hi Alex")
    amount = page.locator("#mortgage-amount")
    await amount.focus()
    for _ in range(3):
        await amount.press("ArrowRight")  # +5,000: 255k, 260k, 265k
        await page.wait_for_timeout(900)  # a pause: one calc event each (700 ms debounce)


async def test_a_visitor_on_the_demo_reaches_exactly_one_of_two_agents(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(
        settings,
        rules_dir=_rules_for_any_hour(tmp_path),
        agents=(*settings.agents, Agent("bob", hash_password("bob-password-123"))),
    )
    # The bank's CRM knows Alex agreed to be called.
    async with engine.session.put(
        f"{engine.url}/v1/profiles/demo-alex/attributes",
        json={"consent_call": True, "products_held": ["current_account"]},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 200, await r.text()
    async with chromium() as browser:
        ctx_a, ctx_b, ctx_v = [await browser.new_context() for _ in range(3)]
        a, b, visitor = await ctx_a.new_page(), await ctx_b.new_page(), await ctx_v.new_page()
        await _sign_in(
            a, engine, engine.credentials["agent_user"], engine.credentials["agent_password"]
        )
        await _sign_in(b, engine, "bob", "bob-password-123")

        await _visitor_reworks_the_mortgage_calculator(visitor, engine.url)
        item_a = a.locator("#queue li[data-id]")
        item_b = b.locator("#queue li[data-id]")
        await expect(item_a).to_have_count(1, timeout=5000)
        await expect(item_b).to_have_count(1, timeout=5000)
        trigger_id = await item_a.get_attribute("data-id")
        assert trigger_id == await item_b.get_attribute("data-id")
        await expect(item_a.locator(".reason")).to_contain_text("Reworked the mortgage calculator")
        # The agent reads the bank's quote in the site's currency, not raw figures.
        await expect(item_a.locator(".guide-quote")).to_contain_text(
            "€265,000.00 over 25 years at 4.10%"
        )
        await expect(item_a.locator(".context")).not_to_contain_text("265000")
        await expect(item_a.locator(".context")).to_contain_text(f"offer shown: {XSS}")  # as text
        await expect(item_a.locator(".presence")).to_have_text("online now")
        # The supervisor (agent a) sees the floor at a glance.
        floor = a.locator("#floor")
        await expect(floor.locator("[data-stat=waiting]")).to_have_text("1")
        await expect(floor.locator("[data-stat=online]")).to_have_text("1")
        await expect(b.locator("#supervisor-section")).to_be_hidden()  # bob is an agent
        # The visitor sees the same offer on the page, as text too.
        hero = visitor.locator("[data-rb-slot=hero] .offer-title")
        await expect(hero).to_have_text(XSS)

        # Both agents press Claim at the same moment.
        click = f"document.querySelector(\"li[data-id='{trigger_id}'] button.claim\").click()"
        await asyncio.gather(a.evaluate(click), b.evaluate(click))
        statuses = ["", ""]
        for _ in range(100):  # until both pages have heard the outcome
            statuses = [
                await item_a.locator(".status").text_content() or "",
                await item_b.locator(".status").text_content() or "",
            ]
            if all(statuses):
                break
            await asyncio.sleep(0.05)
        assert statuses.count("claimed by you") == 1, statuses
        winner, loser = (a, b) if statuses[0] == "claimed by you" else (b, a)
        win_item = winner.locator(f"li[data-id='{trigger_id}']")
        lose_item = loser.locator(f"li[data-id='{trigger_id}']")
        await expect(lose_item.locator(".status")).to_contain_text("taken by")
        await expect(lose_item.locator("button.claim")).to_be_hidden()
        await expect(lose_item.locator("button.complete")).to_be_hidden()
        await winner.screenshot(path=str(tmp_path / "dashboard.png"))

        await win_item.locator("select.outcome").select_option("connected")
        await win_item.locator("button.complete").click()
        await expect(item_a).to_have_count(0)
        await expect(item_b).to_have_count(0)  # gone from the other agent's queue too
        await expect(floor.locator("[data-stat=waiting]")).to_have_text("0")

        # The per-rule funnel: fired -> claimed -> connected.
        await a.click("#refresh-funnel")
        row = a.locator("#funnel tbody tr", has_text="mortgage_calculator_callback")
        await expect(row.locator("td")).to_have_text(
            ["mortgage_calculator_callback", "1", "1", "1", "0", "0", "0", "0%"]
        )
        await expect(floor.locator("[data-stat=agents]")).to_have_text("2")
        await a.screenshot(path=str(tmp_path / "supervisor.png"))

        # The customer panel shows the contact history across channels.
        await winner.fill("#search-form input[name=customer]", "demo-alex")
        await winner.press("#search-form input[name=customer]", "Enter")
        await expect(winner.locator("#customer")).to_contain_text("connected")
        for page in (a, b, visitor):
            assert await page.title() != "pwned"
        for ctx in (ctx_a, ctx_b, ctx_v):
            await ctx.close()
    async with engine.session.get(f"{engine.url}/metrics") as r:
        text = await r.text()
    assert 'ringback_rule_triggers_total{rule="mortgage_calculator_callback"} 1.0' in text
    assert 'ringback_triggers_total{queue="callback"} 1.0' in text
    history = (await engine.profile("demo-alex"))["contact_history"]
    assert [(h["rule"], h["outcome"]) for h in history if h.get("outcome")] == [
        ("mortgage_calculator_callback", "connected")
    ]


async def test_a_visitor_who_asks_for_a_call_is_on_the_queue_at_once(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(settings, rules_dir=_rules_for_any_hour(tmp_path))
    async with chromium() as browser:
        agent = await (await browser.new_context()).new_page()
        await _sign_in(
            agent, engine, engine.credentials["agent_user"], engine.credentials["agent_password"]
        )
        visitor = await (await browser.new_context()).new_page()
        await visitor.goto(f"{engine.url}/demo/mortgages")
        await visitor.click("#login-button")
        await visitor.select_option("#login-form select[name=user]", "sam")  # no CRM consent
        await visitor.fill("#login-form input[name=password]", "demo")
        await visitor.click("#login-form button[type=submit]")
        await expect(visitor.locator("#greeting")).to_have_text("Hi Sam")
        await visitor.click("[data-call-me=mortgage]")
        await expect(visitor.locator("[data-call-me-done=mortgage]")).to_be_visible()

        # Sam asked: that is consent for this call, and the call_me pack puts it first.
        item = agent.locator("#queue li[data-id]")
        await expect(item).to_have_count(1, timeout=5000)
        await expect(item.locator(".customer")).to_have_text("demo-sam")
        await expect(item.locator(".reason")).to_contain_text("Asked for a call on the site")
        await expect(item.locator(".presence")).to_have_text("online now")


async def test_dashboard_is_served_with_a_strict_csp(engine: EngineClient) -> None:
    async with engine.session.get(f"{engine.url}/dashboard") as r:
        assert r.status == 200
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
    async with engine.session.get(f"{engine.url}/dashboard/../engine/settings.py") as r:
        assert r.status == 404


async def test_a_callback_decided_out_of_hours_shows_when_it_is_due(
    engine: EngineClient,
) -> None:
    store = open_store(engine.settings)
    now = int(time.time() * 1000)
    prefix = keys.customer_prefix("cust-night")
    due = now + 3 * 3_600_000
    trigger = {
        "id": new_decision_id(now),
        "kind": "callback",
        "customer_id": "cust-night",
        "prefix": prefix,
        "rule": "mortgage_calculator_callback",
        "reason": "Reworked the calculator at night",
        "priority": 20,
        "created_ms": now,
        "scheduled_for": due,
        "expires_ms": due + 600_000,
    }
    await write_trigger(store, prefix, trigger)
    await store.close()
    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        await _sign_in(
            page, engine, engine.credentials["agent_user"], engine.credentials["agent_password"]
        )
        item = page.locator(f"li[data-id='{trigger['id']}']")
        await expect(item.locator(".sla")).to_contain_text("scheduled")
        await expect(item).to_have_class(re.compile(r"\bscheduled\b"))
        # The supervisor counts it as scheduled, not as a callback waiting past its SLA.
        await expect(page.locator("#floor [data-stat=scheduled]")).to_have_text("1")
        await expect(page.locator("#floor [data-stat=waiting]")).to_have_text("0")
        await expect(page.locator("#floor [data-stat=late]")).to_have_text("0")
