"""Campaign attribution and calculator history on the profile (issue 15), through the
real engine: batches posted to /v1/events, the profile read back from the API and
from Valkey.

A touch is a page view carrying any utm_* or an external referrer (an absolute URL
whose host is not one of the site's own: its allowed origins and its `internal_hosts`);
the profile keeps the first touch, written once, and the last, replaced as a whole by a
newer touch. Identifying merges the two profiles' touches whole: the newer last touch
and the earlier first touch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import EngineClient, calc, event, new_anon, now_ms

from engine.core.settings import Settings
from engine.profile import layout
from engine.profile.delta import CAMPAIGN_MAX_BYTES, referrer_host
from engine.profile.profiles import own_hosts
from engine.valkey import keys

GOOGLE_AD = {
    "utm_source": "google",
    "utm_medium": "cpc",
    "utm_campaign": "spring_mortgage",
    "utm_term": "fixed rate mortgage",
    "utm_content": "hero_a",
    "referrer": "https://www.Google.com/search?q=my+salary+45000&client=firefox",
}
NEWSLETTER = {"utm_source": "newsletter", "utm_campaign": "autumn_loans"}


OWN = own_hosts(["https://www.bank.example", "http://localhost:8080", "self"], "")


@pytest.mark.parametrize(
    ("referrer", "host"),
    [
        ("https://www.google.com/search?q=my+salary", "www.google.com"),
        ("HTTP://News.Example.ORG.:80/a", "news.example.org"),
        ("https://u:p@mail.example:8443/inbox#m", "mail.example"),
        ("https://[2001:db8::1]/x", "2001:db8::1"),
        ("/loans", None),  # an in-site navigation: the previous path
        ("https://bank.example/loans", None),  # own host, with or without www.
        ("https://www.bank.example/", None),
        ("http://localhost:8080/demo", None),
        ("android-app://com.google.android.gm/", None),
        ("https:///nohost", None),
        ("https://[::1/broken", None),
        ("", None),
    ],
)
def test_only_an_external_http_referrer_counts_and_only_its_host(
    referrer: str, host: str | None
) -> None:
    assert referrer_host(referrer, OWN) == host


# The bank's hosts that run no snippet: online banking, and every subdomain of
# bank.example (the mortgage application portal, the payment page).
INTERNAL = own_hosts(["https://www.bank.example"], "", ["NetBank.example.", "*.bank.example"])


@pytest.mark.parametrize(
    ("referrer", "host"),
    [
        ("https://netbank.example/logout", None),
        ("https://www.netbank.example/", None),  # with and without www., as origins
        ("https://apply.mortgage.bank.example/done?ref=42", None),  # any depth
        ("https://pay.bank.example:8443/ok", None),
        ("https://bank.example/", None),  # the apex: its allowed origin, not the wildcard
        ("https://evilbank.example/", "evilbank.example"),  # a look-alike is no subdomain
        ("https://bank.example.evil.example/", "bank.example.evil.example"),
        ("https://my-netbank.example/", "my-netbank.example"),
        ("https://sub.netbank.example/", "sub.netbank.example"),  # exact names are exact
    ],
)
def test_internal_hosts_and_their_wildcards_are_not_referrals(
    referrer: str, host: str | None
) -> None:
    assert referrer_host(referrer, INTERNAL) == host


def test_a_wildcard_stands_for_subdomains_only() -> None:
    own = own_hosts([], "", ["*.bank.example"])
    assert own == frozenset({"*.bank.example"})
    assert referrer_host("https://bank.example/", own) == "bank.example"
    assert referrer_host("https://x.bank.example/", own) is None


def _with_internal_hosts(settings: Settings, *hosts: str) -> Settings:
    sites = {k: replace(s, internal_hosts=hosts) for k, s in settings.sites.items()}
    return replace(settings, sites=sites)


async def _post(engine: EngineClient, anon: str, events: list[dict[str, Any]], **kw: Any) -> None:
    status, body, _ = await engine.post_events(engine.batch(events, anonymous_id=anon, **kw))
    assert status == 200, body


def _view(ts: int, page: str = "/mortgages", **props: Any) -> dict[str, Any]:
    return event("page_view", ts=ts, page=page, props=props)


async def _campaign(engine: EngineClient, customer: str) -> dict[str, Any]:
    profile: dict[str, Any] = (await engine.profile(customer))["profile"]
    return profile["campaign"]  # type: ignore[no-any-return]


async def _stored(redis: aioredis.Redis, prefix: str) -> dict[str, Any]:
    raw = await redis.get(keys.profile_keys(prefix)[0])
    assert raw is not None
    return orjson.loads(raw)  # type: ignore[no-any-return]


async def test_a_second_visit_replaces_the_whole_last_touch_and_keeps_the_first(
    engine: EngineClient,
) -> None:
    customer, anon, t = "cust-attr1", new_anon(), now_ms() - 60_000
    token = engine.token(customer)
    await _post(engine, anon, [_view(t, **GOOGLE_AD), _view(t + 1_000)], identity=token)
    await _post(engine, anon, [_view(t + 30_000, **NEWSLETTER)], identity=token)

    assert await _campaign(engine, customer) == {
        # last touch: the newsletter's, nothing of the ad's (no medium, term, referrer)
        "utm_source": "newsletter",
        "utm_campaign": "autumn_loans",
        "ts": t + 30_000,
        # first touch: the ad, whole
        "first_utm_source": "google",
        "first_utm_medium": "cpc",
        "first_utm_campaign": "spring_mortgage",
        "first_utm_term": "fixed rate mortgage",
        "first_utm_content": "hero_a",
        "first_referrer": "www.google.com",
        "first_ts": t,
    }


async def test_the_earliest_touch_of_a_batch_is_the_first_and_the_newest_the_last(
    engine: EngineClient,
) -> None:
    customer, anon, t = "cust-attr2", new_anon(), now_ms() - 60_000
    # Sent out of order: the ad's view is the earlier one.
    await _post(
        engine,
        anon,
        [_view(t + 5_000, **NEWSLETTER), _view(t, **GOOGLE_AD)],
        identity=engine.token(customer),
    )
    campaign = await _campaign(engine, customer)
    assert campaign["first_utm_campaign"] == "spring_mortgage" and campaign["first_ts"] == t
    assert campaign["utm_campaign"] == "autumn_loans" and campaign["ts"] == t + 5_000
    assert "utm_medium" not in campaign and "referrer" not in campaign


async def test_in_site_navigations_and_own_host_referrers_are_not_touches(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    customer, anon, t = "cust-attr3", new_anon(), now_ms() - 60_000
    token = engine.token(customer)
    await _post(engine, anon, [_view(t, referrer="/loans")], identity=token)
    assert await _campaign(engine, customer) == {}

    await _post(engine, anon, [_view(t + 1_000, **NEWSLETTER)], identity=token)
    await _post(
        engine,
        anon,
        [
            _view(t + 2_000, page="/loans", referrer="/mortgages"),  # SPA navigation: a path
            # a full page load from the site itself (demo-bank's allowed origin)
            _view(t + 3_000, page="/cards", referrer="http://localhost:8080/loans?x=1"),
            _view(t + 4_000, page="/cards", referrer="android-app://com.example/"),
        ],
        identity=token,
    )
    campaign = await _campaign(engine, customer)
    assert campaign["utm_campaign"] == "autumn_loans" and campaign["ts"] == t + 1_000
    assert "referrer" not in campaign and "first_referrer" not in campaign
    stored = await _stored(redis, keys.customer_prefix(customer))
    assert layout.REFERRER not in stored and layout.FIRST_REFERRER not in stored


async def test_an_external_referrer_is_a_touch_kept_as_its_host_only(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    customer, anon, t = "cust-attr4", new_anon(), now_ms() - 60_000
    token = engine.token(customer)
    await _post(engine, anon, [_view(t, **NEWSLETTER)], identity=token)
    referrer = "https://user:pw@Search.Example.COM:8443/results?q=my+salary+45000#top"
    await _post(engine, anon, [_view(t + 1_000, referrer=referrer)], identity=token)

    campaign = await _campaign(engine, customer)
    # A referral is a touch: it replaces the newsletter's last touch as a whole.
    assert {k: v for k, v in campaign.items() if not k.startswith("first_")} == {
        "referrer": "search.example.com",
        "ts": t + 1_000,
    }
    assert campaign["first_utm_campaign"] == "autumn_loans"
    raw = await redis.get(keys.profile_keys(keys.customer_prefix(customer))[0])
    for secret in ("salary", "45000", "results", "user", "pw@", "8443"):
        assert secret not in raw, secret


async def test_a_return_from_the_banks_own_hosts_keeps_the_last_touch_campaign(
    make_engine: Any, settings: Settings, redis: aioredis.Redis
) -> None:
    # A newsletter visitor goes to online banking and to the payment page (no snippet
    # there) and comes back: the conversion still counts for the newsletter.
    engine: EngineClient = await make_engine(
        _with_internal_hosts(settings, "netbank.example", "*.bank.example")
    )
    customer, anon, t = "cust-attr8", new_anon(), now_ms() - 60_000
    token = engine.token(customer)
    await _post(engine, anon, [_view(t, **NEWSLETTER)], identity=token)
    await _post(
        engine,
        anon,
        [
            _view(t + 1_000, page="/accounts", referrer="https://netbank.example/logout"),
            _view(t + 2_000, page="/thanks", referrer="https://pay.checkout.bank.example/ok"),
        ],
        identity=token,
    )
    campaign = await _campaign(engine, customer)
    assert {k: v for k, v in campaign.items() if not k.startswith("first_")} == {
        "utm_source": "newsletter",
        "utm_campaign": "autumn_loans",
        "ts": t,
    }
    stored = await _stored(redis, keys.customer_prefix(customer))
    assert layout.REFERRER not in stored

    # A look-alike of the wildcard's domain is a referral like any other.
    await _post(
        engine, anon, [_view(t + 3_000, referrer="https://evilbank.example/")], identity=token
    )
    campaign = await _campaign(engine, customer)
    assert campaign["referrer"] == "evilbank.example" and campaign["ts"] == t + 3_000
    assert "utm_campaign" not in campaign and campaign["first_utm_campaign"] == "autumn_loans"


async def test_without_internal_hosts_a_return_from_online_banking_is_a_referral(
    engine: EngineClient,
) -> None:
    # The distortion `internal_hosts` removes: the same return, not configured.
    customer, anon, t = "cust-attr9", new_anon(), now_ms() - 60_000
    token = engine.token(customer)
    await _post(engine, anon, [_view(t, **NEWSLETTER)], identity=token)
    await _post(
        engine, anon, [_view(t + 1_000, referrer="https://netbank.example/")], identity=token
    )
    campaign = await _campaign(engine, customer)
    assert campaign["referrer"] == "netbank.example" and "utm_campaign" not in campaign


async def test_long_campaign_values_are_clipped(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    customer, anon, t = "cust-attr5", new_anon(), now_ms() - 60_000
    long = "x" * 256
    host = ("a" * 60 + ".") * 4 + "example"
    await _post(
        engine,
        anon,
        [_view(t, utm_source=long, utm_term=long, referrer=f"https://{host}/")],
        identity=engine.token(customer),
    )
    stored = await _stored(redis, keys.customer_prefix(customer))
    for code in (layout.UTM_SOURCE, layout.UTM_TERM, layout.FIRST_UTM_TERM, layout.REFERRER):
        assert len(stored[code]) == CAMPAIGN_MAX_BYTES, code
    assert stored[layout.REFERRER] == host[:CAMPAIGN_MAX_BYTES]


async def test_identifying_keeps_the_customers_earlier_first_touch_and_the_newest_last_touch(
    engine: EngineClient,
) -> None:
    customer, t = "cust-attr6", now_ms() - 600_000
    token = engine.token(customer)
    # The customer's first device: the newsletter, then identified.
    await _post(engine, new_anon(), [_view(t, **NEWSLETTER)], identity=token)
    # A second device, anonymous: the ad, later; then the visitor logs in there.
    phone = new_anon()
    await _post(engine, phone, [_view(t + 60_000, **GOOGLE_AD)])
    await _post(engine, phone, [_view(t + 120_000, page="/login")], identity=token)

    campaign = await _campaign(engine, customer)
    assert {k: campaign[k] for k in campaign if k.startswith("first_")} == {
        "first_utm_source": "newsletter",
        "first_utm_campaign": "autumn_loans",
        "first_ts": t,
    }
    assert campaign["utm_medium"] == "cpc" and campaign["referrer"] == "www.google.com"
    assert campaign["ts"] == t + 60_000


async def test_identifying_takes_the_anonymous_first_touch_whole_when_it_is_earlier(
    engine: EngineClient,
) -> None:
    customer, t = "cust-attr10", now_ms() - 600_000
    token = engine.token(customer)
    # The phone saw the ad first, anonymously; the laptop later came from the newsletter,
    # logged in. Then the visitor logs in on the phone too.
    phone = new_anon()
    await _post(engine, phone, [_view(t, **GOOGLE_AD)])
    await _post(engine, new_anon(), [_view(t + 60_000, **NEWSLETTER)], identity=token)
    await _post(engine, phone, [_view(t + 120_000, page="/login")], identity=token)

    campaign = await _campaign(engine, customer)
    assert campaign == {
        # the customer's last touch is the newer one
        "utm_source": "newsletter",
        "utm_campaign": "autumn_loans",
        "ts": t + 60_000,
        # the ad came first: its first touch, whole, none of the newsletter's beside it
        "first_utm_source": "google",
        "first_utm_medium": "cpc",
        "first_utm_campaign": "spring_mortgage",
        "first_utm_term": "fixed rate mortgage",
        "first_utm_content": "hero_a",
        "first_referrer": "www.google.com",
        "first_ts": t,
    }


async def test_a_first_touch_stored_without_its_ms_stays_on_the_customer(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    # Profiles written before first_utm_ts existed cannot be compared: the customer's
    # first touch stays, as it did, even against an anonymous one that has its ms.
    customer, t = "cust-attr11", now_ms() - 600_000
    token = engine.token(customer)
    phone = new_anon()
    await _post(engine, phone, [_view(t, **GOOGLE_AD)])
    await _post(engine, new_anon(), [_view(t + 60_000, **NEWSLETTER)], identity=token)
    key = keys.profile_keys(keys.customer_prefix(customer))[0]
    stored = await _stored(redis, keys.customer_prefix(customer))
    del stored[layout.FIRST_UTM_TS]
    await redis.set(key, orjson.dumps(stored), keepttl=True)
    await _post(engine, phone, [_view(t + 120_000, page="/login")], identity=token)

    campaign = await _campaign(engine, customer)
    assert {k: campaign[k] for k in campaign if k.startswith("first_")} == {
        "first_utm_source": "newsletter",
        "first_utm_campaign": "autumn_loans",
    }


async def test_a_customer_without_a_campaign_takes_the_anonymous_first_touch_whole(
    engine: EngineClient,
) -> None:
    customer, t = "cust-attr7", now_ms() - 600_000
    token = engine.token(customer)
    await _post(engine, new_anon(), [_view(t)], identity=token)
    phone = new_anon()
    await _post(engine, phone, [_view(t + 60_000, **GOOGLE_AD)])
    await _post(engine, phone, [_view(t + 120_000, page="/login")], identity=token)

    campaign = await _campaign(engine, customer)
    assert campaign["first_utm_medium"] == "cpc" and campaign["first_ts"] == t + 60_000
    assert campaign["utm_term"] == "fixed rate mortgage"


# -- calculator history ---------------------------------------------------------------


async def _calc(engine: EngineClient, customer: str) -> dict[str, Any]:
    profile = (await engine.profile(customer))["profile"]
    return profile["calc"]["mortgage"]  # type: ignore[no-any-return]


async def test_a_new_calculator_scenario_keeps_the_one_before_it_as_previous(
    engine: EngineClient,
) -> None:
    customer, anon, t = "cust-calc1", new_anon(), now_ms() - 60_000
    token = engine.token(customer)
    await _post(engine, anon, [calc("mortgage", 200_000, 300, ts=t)], identity=token)
    assert "previous" not in await _calc(engine, customer)

    # The same scenario again (a recalculation, a reload): no change, no previous.
    await _post(engine, anon, [calc("mortgage", 200_000, 300, ts=t + 1_000)], identity=token)
    assert "previous" not in await _calc(engine, customer)

    await _post(engine, anon, [calc("mortgage", 250_000, 300, ts=t + 5_000)], identity=token)
    mortgage = await _calc(engine, customer)
    assert mortgage["amount"] == 250_000
    assert mortgage["previous"] == {"amount": 200_000, "term_months": 300, "ts": t + 1_000}

    # Unchanged again: previous stays what it was before the newest change.
    await _post(engine, anon, [calc("mortgage", 250_000, 300, ts=t + 6_000)], identity=token)
    assert (await _calc(engine, customer))["previous"]["ts"] == t + 1_000

    # The term alone changes: the 250k scenario becomes previous.
    await _post(engine, anon, [calc("mortgage", 250_000, 240, ts=t + 9_000)], identity=token)
    assert (await _calc(engine, customer))["previous"] == {
        "amount": 250_000,
        "term_months": 300,
        "ts": t + 6_000,
    }


async def test_calculator_changes_within_one_batch_keep_the_scenario_before_the_last(
    engine: EngineClient,
) -> None:
    customer, anon, t = "cust-calc2", new_anon(), now_ms() - 60_000
    token = engine.token(customer)
    await _post(engine, anon, [calc("mortgage", 100_000, 120, ts=t)], identity=token)
    await _post(
        engine,
        anon,
        [
            calc("mortgage", 180_000, 240, ts=t + 3_000),
            calc("mortgage", 150_000, 240, ts=t + 1_000),  # out of order: the earlier one
            calc("mortgage", 180_000, 240, ts=t + 4_000),
        ],
        identity=token,
    )
    mortgage = await _calc(engine, customer)
    assert (mortgage["amount"], mortgage["term_months"]) == (180_000, 240)
    assert mortgage["previous"] == {"amount": 150_000, "term_months": 240, "ts": t + 1_000}

    # A batch whose calculations are all one new scenario: the stored one is previous.
    await _post(
        engine,
        anon,
        [calc("mortgage", 90_000, 60, ts=t + 8_000), calc("mortgage", 90_000, 60, ts=t + 9_000)],
        identity=token,
    )
    assert (await _calc(engine, customer))["previous"] == {
        "amount": 180_000,
        "term_months": 240,
        "ts": t + 4_000,
    }


async def test_a_late_calculation_does_not_rewrite_the_history(engine: EngineClient) -> None:
    customer, anon, t = "cust-calc3", new_anon(), now_ms() - 60_000
    token = engine.token(customer)
    await _post(engine, anon, [calc("mortgage", 100_000, 120, ts=t)], identity=token)
    await _post(engine, anon, [calc("mortgage", 200_000, 120, ts=t + 5_000)], identity=token)
    await _post(engine, anon, [calc("mortgage", 999_000, 12, ts=t + 1_000)], identity=token)
    mortgage = await _calc(engine, customer)
    assert mortgage["amount"] == 200_000
    assert mortgage["previous"] == {"amount": 100_000, "term_months": 120, "ts": t}
