"""The contact-center dashboard in real Chromium: two agents, one claim wins."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from browser import chromium
from conftest import EngineClient, event
from playwright.async_api import Page, expect

from engine import keys
from engine.deliver import new_decision_id, write_trigger
from engine.metrics import Metrics
from engine.settings import Agent, Settings, hash_password
from engine.store import Store

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=\"document.title='pwned'\">Mortgage 320k"


async def _sign_in(page: Page, engine: EngineClient, user: str, password: str) -> None:
    await page.goto(f"{engine.url}/dashboard")
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", password)
    await page.press("input[name=password]", "Enter")  # keyboard only
    await expect(page.locator("#connection")).to_have_text("Live")


async def _fire(engine: EngineClient, customer: str, reason: str) -> str:
    store = Store(engine.settings.redis_url, Metrics())
    trigger_id = new_decision_id()
    now = int(time.time() * 1000)
    prefix = keys.customer_prefix(customer)
    await write_trigger(
        store,
        prefix,
        {
            "id": trigger_id,
            "kind": "callback",
            "customer_id": customer,
            "prefix": prefix,
            "rule": "mortgage_callback",
            "channel": "callback",
            "reason": reason,
            "priority": 2,
            "created_ms": now,
            "expires_ms": now + 600_000,
            "context": {"calc": {"mortgage": {"amount": 320000, "term_months": 300}}},
        },
    )
    await store.close()
    return trigger_id


async def test_two_agents_see_the_callback_and_exactly_one_claims_it(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(
        settings, agents=(*settings.agents, Agent("bob", hash_password("bob-password-123")))
    )
    await engine.post_events(
        engine.batch([event("page_view", page="/mortgages")], identity=engine.token("cust-dash"))
    )
    async with chromium() as browser:
        ctx_a, ctx_b = await browser.new_context(), await browser.new_context()
        a, b = await ctx_a.new_page(), await ctx_b.new_page()
        await _sign_in(
            a, engine, engine.credentials["agent_user"], engine.credentials["agent_password"]
        )
        await _sign_in(b, engine, "bob", "bob-password-123")

        trigger_id = await _fire(engine, "cust-dash", XSS)
        item_a = a.locator(f"li[data-id='{trigger_id}']")
        item_b = b.locator(f"li[data-id='{trigger_id}']")
        await expect(item_a).to_be_visible(timeout=3000)
        await expect(item_b).to_be_visible(timeout=3000)
        await expect(item_a.locator(".reason")).to_have_text(XSS)  # shown literally
        await expect(item_a.locator(".context")).to_contain_text("320000 over 300 months")

        # Both agents press Claim at the same moment.
        click = f"document.querySelector(\"li[data-id='{trigger_id}'] button.claim\").click()"
        await asyncio.gather(a.evaluate(click), b.evaluate(click))
        statuses = [
            await item_a.locator(".status").text_content(),
            await item_b.locator(".status").text_content(),
        ]
        for _ in range(50):  # until both pages have heard the outcome
            if all(statuses):
                break
            await asyncio.sleep(0.05)
            statuses = [
                await item_a.locator(".status").text_content(),
                await item_b.locator(".status").text_content(),
            ]
        assert statuses.count("claimed by you") == 1
        winner, loser = (a, b) if statuses[0] == "claimed by you" else (b, a)
        win_item = winner.locator(f"li[data-id='{trigger_id}']")
        lose_item = loser.locator(f"li[data-id='{trigger_id}']")
        await expect(lose_item.locator(".status")).to_contain_text("taken by")
        await expect(lose_item.locator("button.claim")).to_be_hidden()
        await expect(lose_item.locator("button.complete")).to_be_hidden()
        await winner.screenshot(path=str(tmp_path / "dashboard.png"))

        await win_item.locator("select.outcome").select_option("converted")
        await win_item.locator("button.complete").click()
        await expect(item_a).to_have_count(0)
        await expect(item_b).to_have_count(0)  # gone from the other agent's queue too

        await winner.fill("#search-form input[name=customer]", "cust-dash")
        await winner.press("#search-form input[name=customer]", "Enter")
        await expect(winner.locator("#customer")).to_contain_text("converted")
        assert await a.title() != "pwned" and await b.title() != "pwned"
        await ctx_a.close()
        await ctx_b.close()
    history = (await engine.profile("cust-dash"))["contact_history"]
    assert history[0]["outcome"] == "converted"


async def test_dashboard_is_served_with_a_strict_csp(engine: EngineClient) -> None:
    async with engine.session.get(f"{engine.url}/dashboard") as r:
        assert r.status == 200
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
    async with engine.session.get(f"{engine.url}/dashboard/../engine/settings.py") as r:
        assert r.status == 404
