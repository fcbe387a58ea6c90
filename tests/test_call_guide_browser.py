"""The call guide in real Chromium: a callback card and an inbound screen-pop show the
bank's quote formatted in the site's locale and currency, as the agent sees it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, screenshot_rgb
from conftest import EngineClient, calc, mortgage_callback_trigger, open_store
from playwright.async_api import Page, expect

from engine.core.settings import Settings
from engine.delivery.records import write_trigger
from engine.valkey import keys

pytestmark = pytest.mark.browser

PHONE = "+441632960001"


async def _sign_in(page: Page, engine: EngineClient) -> None:
    await page.goto(f"{engine.url}/dashboard")
    await page.fill("input[name=user]", engine.credentials["agent_user"])
    await page.fill("input[name=password]", engine.credentials["agent_password"])
    await page.press("input[name=password]", "Enter")
    await expect(page.locator("#connection")).to_have_text("Live")


def _plain(text: str | None) -> str:
    """Intl puts no-break spaces in numbers ("400.000,00\u00a0€"): as plain spaces."""
    return (text or "").replace("\u00a0", " ").replace("\u202f", " ")


def _ink(png: bytes) -> tuple[tuple[int, int], float, int]:
    """((width, height), share of pixels clearly darker than the card's white, distinct
    colours): enough to tell a drawn card from a blank box."""
    image = screenshot_rgb(png)
    width, height = image.size
    colours = image.getcolors(maxcolors=width * height)  # [(count, (r, g, b)), ...]
    assert colours is not None
    dark = sum(count for count, px in colours if sum(px) < 3 * 160)
    return image.size, dark / (width * height), len(colours)


async def test_a_callback_card_shows_the_quote_in_the_sites_locale(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    sites = {k: replace(v, locale="de-DE", currency="EUR") for k, v in settings.sites.items()}
    engine: EngineClient = await make_engine(settings, sites=sites)
    now = int(time.time() * 1000)
    prefix = keys.customer_prefix("cust-card")
    trigger = mortgage_callback_trigger(
        engine.site,
        now,
        {
            "amount": 400_000.0,
            "term_months": 300,
            "rate": 3.5,
            "monthly": 2002.49,  # what the visitor's calculator showed
            "ts": now - 5_000,
            "previous": {"amount": 300_000.0, "term_months": 300, "ts": now - 65_000},
        },
        "<b>Talk</b> to a mortgage adviser",
        priority=20,
    )
    store = open_store(engine.settings)
    await write_trigger(store, prefix, trigger)
    await store.close()
    async with chromium() as browser:
        page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
        await _sign_in(page, engine)
        card = page.locator(f"li[data-id='{trigger['id']}']")
        quote_line = card.locator(".guide .guide-quote")
        await expect(quote_line).to_have_count(1)
        text = _plain(await quote_line.text_content())
        assert text == (
            "Quote (Mortgage, 10-year fixed): 400.000,00 € over 25 years at 4,10 % "
            "= 2.133,50 €/month"
        ), text
        guide = _plain(await card.locator(".guide").text_content())
        assert "Total repayable 640.050,00 €" in guide
        assert "Visitor's own figure at 3,50 %: 2.002,49 €/month (bank +131,01 €)" in guide
        assert "Changed amount 300.000,00 € → 400.000,00 €" in guide
        offer = _plain(await card.locator(".guide .guide-offer").text_content())
        assert offer == (
            "Offer: <b>Talk</b> to a mortgage adviser — why: Reworked the mortgage "
            "calculator, propensity 41 %"
        )  # the title as text, never markup
        assert await card.locator(".guide b").count() == 0

        shot = tmp_path / "callback-card.png"
        png = await card.screenshot(path=str(shot))
        assert shot.exists() and shot.stat().st_size > 0
        box = await card.bounding_box()
        assert box is not None
        # Counted off the event loop: the engine under test shares it.
        (width, height), ink, colours = await asyncio.to_thread(_ink, png)
        assert abs(width - box["width"]) <= 3 and abs(height - box["height"]) <= 3  # the card
        assert ink > 0.01 and colours > 20, (ink, colours)  # text drawn, not a blank box


async def test_an_inbound_call_typed_by_the_agent_opens_the_customer_with_the_guide(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(settings)  # the demo site: en-GB, EUR
    async with engine.session.put(
        f"{engine.url}/v1/profiles/cust-caller/attributes",
        json={"consent_call": True, "phone": PHONE},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 200, await r.text()
    status, body, _ = await engine.post_events(
        engine.batch([calc("mortgage", 400_000, 300)], identity=engine.token("cust-caller"))
    )
    assert status == 200, body
    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        await _sign_in(page, engine)
        await page.fill("#inbound-form input[name=phone]", "+44 1632 960-001")  # as typed
        await page.press("#inbound-form input[name=phone]", "Enter")
        panel = page.locator("#customer")
        await expect(panel.locator("h3")).to_have_text("cust-caller")
        await expect(panel.locator(".guide .guide-quote")).to_have_count(1)
        quote = _plain(await panel.locator(".guide .guide-quote").text_content())
        assert "€400,000.00 over 25 years at 4.10% = €2,133.50/month" in quote, quote
        await expect(panel.locator("ol li").first).to_contain_text("inbound_call")
        await expect(panel.locator("ol li").first).to_contain_text(engine.credentials["agent_user"])
        await page.screenshot(path=str(tmp_path / "inbound.png"))

        await expect(panel.locator(".matched-by")).to_have_text(
            "matched by phone number — verify identity"
        )

        await page.fill("#inbound-form input[name=phone]", "+44 1632 960999")
        await page.press("#inbound-form input[name=phone]", "Enter")
        await expect(panel).to_have_text("Unknown caller: no customer has this number")
        await page.fill("#inbound-form input[name=phone]", "01632 960001")  # no country code
        await page.press("#inbound-form input[name=phone]", "Enter")
        await expect(panel).to_contain_text("Enter the number in international form")


async def test_a_shared_number_lets_the_agent_pick_the_caller(
    make_engine: Any, settings: Settings
) -> None:
    """A joint account's number: the ids as buttons, nothing written until one is picked."""
    engine: EngineClient = await make_engine(settings)
    for customer in ("cust-joint-x", "cust-joint-w"):
        async with engine.session.put(
            f"{engine.url}/v1/profiles/{customer}/attributes",
            json={"consent_call": True, "phone": PHONE},
            headers=engine.api_headers,
        ) as r:
            assert r.status == 200, await r.text()
    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        await _sign_in(page, engine)
        await page.fill("#inbound-form input[name=phone]", "+44 1632 960001")
        await page.press("#inbound-form input[name=phone]", "Enter")
        panel = page.locator("#customer")
        await expect(panel.locator("button.candidate")).to_have_text(
            ["cust-joint-w", "cust-joint-x"]
        )
        await expect(panel).to_contain_text("2 customers share this number")
        for customer in ("cust-joint-x", "cust-joint-w"):
            assert "inbound_call" not in await _history_kinds(engine, customer)

        await panel.locator("button.candidate", has_text="cust-joint-x").click()
        await expect(panel.locator("h3")).to_have_text("cust-joint-x")
        await expect(panel.locator(".matched-by")).to_have_text(
            "matched by phone number — verify identity"
        )
        await expect(panel.locator("ol li").first).to_contain_text("inbound_call")
        assert (await _history_kinds(engine, "cust-joint-x")).count("inbound_call") == 1
        assert "inbound_call" not in await _history_kinds(engine, "cust-joint-w")


async def _history_kinds(engine: EngineClient, customer: str) -> list[str]:
    status, ctx = await engine.get_json(
        f"/v1/customers/{customer}/context", headers=engine.api_headers
    )
    assert status == 200, ctx
    return [h["kind"] for h in ctx["contact_history"]]
