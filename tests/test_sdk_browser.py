"""The snippet in real Chromium against a real engine process and valkey-server.

Two kinds of page: the engine's own `/demo` bank site, and a minimal "bank page" that
playwright serves at http://127.0.0.1:8080 (an origin the demo site allows), which
loads the snippet cross-origin from the engine exactly as a bank's site would. What
arrives is read back from Valkey or the profile API, never from the snippet itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser import chromium
from conftest import LiveEngine, StoreTarget
from playwright.async_api import BrowserContext, Page, expect

from engine.core.settings import load_settings
from engine.profile import layout
from engine.profile.profiles import decode_profile
from engine.valkey import keys

pytestmark = pytest.mark.browser

DIST = Path(__file__).resolve().parent.parent / "sdk-js" / "dist" / "ringback.min.js"
BANK = "http://127.0.0.1:8080"  # allowed by the demo site's config; never really listened on
STUB = "window.ringback=window.ringback||function(){(ringback.q=ringback.q||[]).push(arguments)}"


# --- helpers -------------------------------------------------------------------------


async def wait_for(
    probe: Callable[[], Awaitable[Any]], timeout_s: float = 10.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


async def profile_of(live: LiveEngine, anon: str) -> dict[str, Any]:
    raw = await live.redis.get(keys.anonymous_prefix("demo-bank", anon) + ":p")
    return json.loads(raw) if raw else {}


async def wait_profile(
    live: LiveEngine, anon: str, check: Callable[[dict[str, Any]], Any], timeout_s: float = 10.0
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        p = await profile_of(live, anon)
        return p if p and check(p) else None

    return await wait_for(probe, timeout_s, f"the profile of {anon}")  # type: ignore[no-any-return]


async def anon_id(page: Page) -> str:
    async def probe() -> str | None:
        return await page.evaluate("localStorage.getItem('rb_aid')")  # type: ignore[no-any-return]

    return await wait_for(probe, 5, "an anonymous id")  # type: ignore[no-any-return]


def capture(page: Page, engine_url: str) -> list[str]:
    """Bodies of every request the page makes to the engine's API (fetch)."""
    bodies: list[str] = []
    page.on(
        "request",
        lambda r: (
            bodies.append(r.post_data or "") if r.url.startswith(engine_url + "/v1/") else None
        ),
    )
    return bodies


def events_in(bodies: list[str]) -> list[dict[str, Any]]:
    return [e for b in bodies if b for e in json.loads(b)["events"]]


def custom_named(bodies: list[str], name: str) -> list[dict[str, Any]]:
    return [e for e in events_in(bodies) if e["type"] == "custom" and e["props"]["name"] == name]


async def stored_queues(page: Page, min_events: int, timeout_s: float = 10.0) -> list[Any]:
    """The outboxes in localStorage, once they hold `min_events` events in all."""

    async def probe() -> list[Any] | None:
        stored = await rb_storage(page)
        queues = [json.loads(v) for k, v in stored.items() if k.startswith("rb_q.")]
        return queues if sum(len(q["e"]) for q in queues) >= min_events else None

    return await wait_for(probe, timeout_s, f"{min_events} events in the outbox")  # type: ignore[no-any-return]


async def rb_storage(page: Page) -> dict[str, str]:
    """Everything Ringback keeps in this origin's localStorage."""
    return await page.evaluate(  # type: ignore[no-any-return]
        "Object.fromEntries(Object.keys(localStorage).filter(k => k.startsWith('rb_'))"
        ".map(k => [k, localStorage.getItem(k)]))"
    )


BANK_BODY = """
<h1>Example Bank</h1>
<a id="rates" href="#rates">Our rates</a>
<form name="contact"><input name="full_name"><input type="password" name="password"></form>
<div style="height:3000px"></div>
"""


async def bank_page(
    context: BrowserContext,
    live: LiveEngine,
    attrs: str = 'data-consent="implied"',
    inline: str = "",
    local_sdk: bool = False,
) -> Page:
    """A bank's page at BANK that installs the snippet from the engine.

    `local_sdk` serves sdk.js from the committed build instead of the engine, so the
    page can load (and reload) while the engine is down.
    """
    # The fulfilled page has no address, so Chromium counts it as a public site calling
    # a loopback engine (Local Network Access): the permission a real prompt would ask.
    await context.grant_permissions(["local-network-access"])
    html = (
        f"<!doctype html><html><head><title>Example Bank</title>"
        f"<script>{STUB};{inline}</script>"
        f'<script async src="{live.url}/sdk.js" data-site="demo-bank" {attrs}></script>'
        f"</head><body>{BANK_BODY}</body></html>"
    )
    await context.route(
        f"{BANK}/**", lambda route: route.fulfill(body=html, content_type="text/html")
    )
    if local_sdk:
        await context.route(
            f"{live.url}/sdk.js",
            lambda route: route.fulfill(path=DIST, content_type="application/javascript"),
        )
    page = await context.new_page()
    await page.goto(f"{BANK}/")
    return page


async def loaded(page: Page) -> None:
    await page.wait_for_function("window.ringback && window.ringback.v")


# --- the demo site: what a visitor does arrives ------------------------------------------


async def test_page_view_arrives_with_its_campaign_but_never_the_query(
    live_engine: LiveEngine,
) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        bodies = capture(page, live_engine.url)
        await page.goto(
            f"{live_engine.url}/demo/mortgages"
            "?utm_source=newsletter&utm_campaign=spring-fix&email=jane%40example.com"
        )
        anon = await anon_id(page)
        prof = await wait_profile(
            live_engine, anon, lambda p: p.get(layout.count("page_view")) == 1
        )
        # (stored once: the newest page entry is also the last page)
        assert decode_profile(prof, int(time.time() * 1000), 86400)["last_page"] == (
            "/demo/mortgages"
        )
        assert prof[layout.category("mortgage")] == 1
        assert (prof[layout.UTM_SOURCE], prof[layout.UTM_CAMPAIGN]) == ("newsletter", "spring-fix")

        # A single-page-app route change is a page view too, referred by the last page.
        await page.click("nav >> text=Personal loans")
        prof = await wait_profile(
            live_engine, anon, lambda p: p.get(layout.count("page_view")) == 2
        )
        assert decode_profile(prof, int(time.time() * 1000), 86400)["last_page"] == "/demo/loans"
        views = [e for e in events_in(bodies) if e["type"] == "page_view"]
        assert views[1]["props"]["referrer"] == "/demo/mortgages"
        assert not any("jane" in b or "example.com" in b for b in bodies)


async def test_moving_the_calculator_sliders_updates_the_profile_and_shows_an_offer(
    live_engine: LiveEngine,
) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live_engine.url}/demo/mortgages")
        anon = await anon_id(page)
        amount, term = page.locator("#mortgage-amount"), page.locator("#mortgage-term")
        await amount.focus()
        for _ in range(4):
            await amount.press("ArrowRight")  # +5,000 each: 250,000 -> 270,000
        await term.focus()
        await term.press("ArrowLeft")  # one year less: 300 -> 288 months

        prof = await wait_profile(
            live_engine, anon, lambda p: p.get(layout.calc("mortgage", layout.CALC_N))
        )
        assert (
            prof[layout.calc("mortgage", layout.CALC_AMOUNT)],
            prof[layout.calc("mortgage", layout.CALC_TERM)],
        ) == (270_000, 288)
        shown = await page.locator("#mortgage-payment").text_content()
        monthly = prof[layout.calc("mortgage", layout.CALC_MONTHLY)]
        assert f"£{monthly:,.2f}" == shown  # what the visitor saw
        await page.wait_for_timeout(1000)
        prof = await profile_of(live_engine, anon)
        assert prof[layout.calc("mortgage", layout.CALC_N)] == 1  # one pause, one event

        # The shipped mortgage rule answers the calculator with an offer on the page.
        offer = page.locator("[data-rb-slot=hero] [data-rb-decision]")
        await expect(offer.locator(".offer-title")).to_have_text("Talk to a mortgage adviser today")


async def test_leaving_the_page_delivers_the_tail_by_beacon(live_engine: LiveEngine) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live_engine.url}/demo/loans")
        anon = await anon_id(page)
        await wait_profile(live_engine, anon, lambda p: p.get(layout.count("page_view")))
        await page.wait_for_timeout(400)  # the visitor reads for a moment

        await page.fill("input[name=full_name]", "Jane")
        await page.goto("about:blank")  # well within the 1 s flush: only the beacon remains

        prof = await wait_profile(live_engine, anon, lambda p: p.get(layout.FORM_ABANDON), 5)
        assert prof[layout.FORM_FOCUS] == 1
        assert prof[layout.FORM_LAST_ABANDON] == "personal-loan-application"
        # Visible time up to leaving.
        assert prof[layout.count("heartbeat")] == 1 and prof[layout.DWELL] >= 400


async def test_identify_merges_the_anonymous_visitor_into_the_customer(
    live_engine: LiveEngine,
) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live_engine.url}/demo/mortgages")
        anon = await anon_id(page)
        await page.locator("#mortgage-amount").focus()
        await page.locator("#mortgage-amount").press("ArrowRight")
        await wait_profile(
            live_engine, anon, lambda p: p.get(layout.calc("mortgage", layout.CALC_N))
        )

        await page.click("#login-button")
        await page.select_option("#login-form select[name=user]", "alex")
        await page.fill("#login-form input[name=password]", "demo")
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#greeting")).to_have_text("Hi Alex")
        await page.click("nav >> text=Personal loans")  # the next batch carries the token

        async with aiohttp.ClientSession() as http:

            async def customer() -> dict[str, Any] | None:
                async with http.get(
                    f"{live_engine.url}/v1/profiles/demo-alex",
                    headers={"Authorization": f"Bearer {live_engine.credentials['api_token']}"},
                ) as r:
                    body = await r.json() if r.status == 200 else None
                    # The demo login created the profile already (its CRM record):
                    # wait for the merge itself.
                    return body if body and body["linked_anonymous_ids"] else None

            body = await wait_for(customer, 10, "the merged customer profile")
        assert {"site": "demo-bank", "anonymous_id": anon} in body["linked_anonymous_ids"]
        assert body["profile"]["calc"]["mortgage"]["amount"] == 255_000  # from before login

        # Logging out starts a new anonymous visitor: nothing more joins Alex's profile.
        await page.click("#logout-button")
        await expect(page.locator("#login-button")).to_be_visible()
        assert await page.evaluate("localStorage.getItem('rb_aid')") != anon


# --- privacy ---------------------------------------------------------------------------


async def test_form_values_never_leave_the_page(live_engine: LiveEngine) -> None:
    secrets = ["Jane Q Secretname", "jane.secret@example.com", "07700900123", "54321", "12345678"]
    async with chromium() as browser:
        page = await browser.new_page()
        bodies = capture(page, live_engine.url)
        await page.goto(f"{live_engine.url}/demo/loans")
        anon = await anon_id(page)
        form = page.locator("#loan-application")
        for name, value in zip(
            ["full_name", "email", "phone", "annual_income", "account_number"], secrets, strict=True
        ):
            await form.locator(f"[name={name}]").fill(value)
        await page.click("#login-button")
        await page.fill("#login-form input[name=password]", "hunter2-secret")
        await page.click("#login-cancel")
        await page.click("nav >> text=Mortgages")  # leaving the route abandons the form

        prof = await wait_profile(live_engine, anon, lambda p: p.get(layout.FORM_ABANDON))
        assert prof[layout.FORM_LAST_ABANDON] == "personal-loan-application"
        fields = {e["props"]["field"] for e in events_in(bodies) if e["type"] == "form"}
        # Names only, and never those of account numbers or passwords.
        assert fields == {"full_name", "email", "phone", "annual_income"}
        sent_or_stored = "\n".join(bodies) + json.dumps(await rb_storage(page))
        for secret in [*secrets, "hunter2-secret"]:
            assert secret not in sent_or_stored


async def test_required_consent_means_nothing_is_sent_or_stored_before_it(
    live_engine: LiveEngine,
) -> None:
    async with chromium() as browser:
        context = await browser.new_context()
        page = await bank_page(
            context,
            live_engine,
            'data-consent="required"',
            inline="ringback('track', 'queued_before_load')",
        )
        bodies = capture(page, live_engine.url)
        await loaded(page)
        await page.click("#rates")
        await page.evaluate("ringback.calc('mortgage', {amount: 300000, term_months: 240})")
        await page.mouse.wheel(0, 2000)
        await page.wait_for_timeout(1500)
        assert bodies == []
        assert await rb_storage(page) == {}

        await page.evaluate("ringback('consent', true)")
        anon = await anon_id(page)
        prof = await wait_profile(live_engine, anon, lambda p: p.get(layout.count("calc")))
        # What happened before consent was kept in memory and is sent now.
        assert prof[layout.count("page_view")] == 1 and prof[layout.count("click")] == 1
        assert prof[layout.count("custom")] == 1  # the call made before the snippet had loaded
        assert prof[layout.calc("mortgage", layout.CALC_AMOUNT)] == 300_000
        await context.close()


async def test_global_privacy_control_means_nothing_is_sent(live_engine: LiveEngine) -> None:
    async with chromium() as browser:
        gpc = await browser.new_context()
        await gpc.add_init_script(
            "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})"
        )
        page = await bank_page(gpc, live_engine, 'data-consent="implied" data-honor-gpc="true"')
        bodies = capture(page, live_engine.url)
        await loaded(page)
        await page.click("#rates")
        await page.evaluate("ringback.consent(true); ringback.track('after_consent')")
        await page.wait_for_timeout(1500)
        assert bodies == []
        assert await rb_storage(page) == {}

        # The same page without the signal does send: the silence was GPC's doing.
        plain = await browser.new_context()
        page = await bank_page(plain, live_engine, 'data-consent="implied" data-honor-gpc="true"')
        anon = await anon_id(page)
        await wait_profile(live_engine, anon, lambda p: p.get(layout.count("page_view")))


async def test_consent_withdrawn_forgets_the_visitor(live_engine: LiveEngine) -> None:
    async with chromium() as browser:
        context = await browser.new_context()
        page = await bank_page(context, live_engine)
        anon = await anon_id(page)
        await wait_profile(live_engine, anon, lambda p: p.get(layout.count("page_view")))
        bodies = capture(page, live_engine.url)

        await page.evaluate("ringback.consent(false); ringback.track('after_refusal')")
        await page.wait_for_timeout(1500)
        assert bodies == []
        assert await rb_storage(page) == {"rb_optout": "1"}  # only the refusal itself
        await page.reload()  # an "implied" site stays quiet on the next page too
        await page.wait_for_timeout(1500)
        assert bodies == []


# --- delivery ------------------------------------------------------------------------------


async def test_events_survive_an_engine_outage_and_a_reload_exactly_once(
    live_engine: LiveEngine,
) -> None:
    async with chromium() as browser:
        context = await browser.new_context()
        page = await bank_page(context, live_engine, local_sdk=True)
        anon = await anon_id(page)
        await wait_profile(live_engine, anon, lambda p: p.get(layout.count("page_view")))

        await live_engine.stop()
        for n in range(3):
            await page.evaluate(f"ringback.track('during_outage', {{n: {n}}})")
        queues = await stored_queues(page, 3)  # saved before the send, which fails
        assert sum(len(q["e"]) for q in queues) == 3

        await page.reload()  # the queue survives the page
        await loaded(page)
        await page.evaluate("ringback.track('during_outage', {n: 3})")
        await live_engine.start()

        prof = await wait_profile(
            live_engine, anon, lambda p: p.get(layout.count("custom")) == 4, 30
        )
        await page.wait_for_timeout(1500)  # room for any duplicate to land
        prof = await profile_of(live_engine, anon)
        assert (prof[layout.count("custom")], prof[layout.count("page_view")]) == (4, 2)


async def test_the_offline_queue_is_bounded_and_reports_what_it_dropped(
    live_engine: LiveEngine,
) -> None:
    await live_engine.stop()
    async with chromium() as browser:
        context = await browser.new_context()
        page = await bank_page(context, live_engine, local_sdk=True)
        bodies = capture(page, live_engine.url)
        await loaded(page)
        await page.evaluate("for (let n = 0; n < 520; n++) ringback.track('burst', {n})")
        (queue,) = await stored_queues(page, 500)
        # 521 events (the page view and 520 bursts) for 500 places: the oldest 21 go.
        assert len(queue["e"]) == 500 and queue["d"] == 21
        assert queue["e"][0]["props"]["data"]["n"] == 20

        await live_engine.start()
        anon = await anon_id(page)
        prof = await wait_profile(
            live_engine, anon, lambda p: p.get(layout.count("custom")) == 501, 30
        )
        assert layout.count("page_view") not in prof
        assert [e["props"]["data"] for e in custom_named(bodies, "rb_dropped")] == [{"count": 21}]


# --- offers ----------------------------------------------------------------------------------

HOSTILE_RULES = """
offers:
  - id: hostile_offer
    title: <img src=x onerror=alert(1)>
    text: <b>not bold</b><script>alert(2)</script>
    cta_url: javascript:alert(3)
    cta_label: <i>Apply</i>
    product: mortgage
    value: 100
    channels: [web]
rules:
  - id: hostile
    description: every visitor sees the hostile offer
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: hostile_offer, slot: hero}
    priority: 1
"""


@pytest.fixture
async def hostile_engine(store_target: StoreTarget, redis: Any, tmp_path: Path) -> Any:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "offers.yaml").write_text(HOSTILE_RULES)
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    settings = load_settings(None, data_dir=data_dir, overrides=store_target.overrides)
    live = LiveEngine(
        settings,
        store_target.url,
        data_dir,
        extra_args=["--rules", str(rules)],
        cluster=store_target.cluster,
    )
    await live.start()
    yield live
    await live.stop()
    await live.redis.aclose()


async def test_an_offer_with_markup_is_shown_as_text(hostile_engine: LiveEngine) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
        bodies = capture(page, hostile_engine.url)
        await page.goto(f"{hostile_engine.url}/demo")

        offer = page.locator("[data-rb-slot=hero] [data-rb-decision]")
        await expect(offer.locator(".offer-title")).to_have_text("<img src=x onerror=alert(1)>")
        await expect(offer.locator(".offer-text")).to_have_text(
            "<b>not bold</b><script>alert(2)</script>"
        )
        await expect(offer.locator(".offer-cta")).to_have_text("<i>Apply</i>")
        assert await page.locator("[data-rb-slot=hero] :is(img, b, i, script)").count() == 0
        href = await offer.locator(".offer-cta").get_attribute("href")
        assert href is not None and not href.startswith("javascript")

        decision = await offer.get_attribute("data-rb-decision")
        await offer.locator(".offer-cta").click()
        await wait_for(
            lambda: asyncio.sleep(0, custom_named(bodies, "offer_click")), 5, "the click"
        )
        expected = {"decision_id": decision, "offer_id": "hostile_offer"}
        assert [e["props"]["data"] for e in custom_named(bodies, "offer_impression")] == [expected]
        assert [e["props"]["data"] for e in custom_named(bodies, "offer_click")] == [expected]
        assert dialogs == []


# --- robustness --------------------------------------------------------------------------------


async def test_the_snippet_never_throws_into_the_page(live_engine: LiveEngine) -> None:
    async with chromium() as browser:
        context = await browser.new_context()
        # Storage that refuses every write, and an engine nobody listens on.
        await context.add_init_script(
            "Storage.prototype.setItem = () => { throw new DOMException('full', 'QuotaExceeded') };"
            "window.__errors = [];"
            "addEventListener('error', e => __errors.push(String(e.message)));"
            "addEventListener('unhandledrejection', e => __errors.push(String(e.reason)));"
        )
        page = await bank_page(
            context, live_engine, 'data-consent="implied" data-endpoint="http://127.0.0.1:9/"'
        )
        page_errors: list[str] = []
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        await loaded(page)
        await page.evaluate(
            """() => {
              const cyclic = {}; cyclic.self = cyclic;
              ringback.calc(); ringback.calc('mortgage', null); ringback.calc(7, 'x');
              ringback.track(cyclic); ringback.track('x', cyclic);
              ringback.track({toString() { throw new Error('boom') }});
              ringback.identify(42); ringback.identify({}); ringback.interest();
              ringback.consent('maybe'); ringback('no_such_method', 1); ringback();
              ringback.reset();
              // Libraries dispatch synthetic events on document itself (no element target).
              for (const type of ['click', 'input', 'change', 'focusin', 'submit'])
                document.dispatchEvent(new Event(type, {bubbles: true}));
            }"""
        )
        await page.click("#rates")
        await page.fill("input[name=full_name]", "x")
        await page.mouse.wheel(0, 2500)
        await page.wait_for_timeout(2500)  # several failed sends and retries
        assert page_errors == []
        assert await page.evaluate("window.__errors") == []
