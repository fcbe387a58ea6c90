"""engine/decisions/features.py: the flat dict models learn from and score with.

A realistic profile comes through the real path (events -> `rb_ingest` in a real Valkey ->
`decision_input`, which decodes it as deciding does); the families, caps and clock are
checked on profiles decoded from hand-written hashes of layout.py's codes.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from conftest import StoreTarget
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.settings import Settings
from engine.core.vocabulary import EVENT_TYPES
from engine.decisions.features import (
    CALC_PRODUCTS_MAX,
    CATEGORY_MAX,
    CROSSES,
    HOLDS_MAX,
    INTENT_MAX,
    MAX_KEYS,
    SEGMENTS_MAX,
    TEXT_MAX,
    features,
)
from engine.decisions.inputs import decision_input
from engine.ingest.schema import (
    CalcEvent,
    CalcProps,
    Event,
    HeartbeatEvent,
    InterestEvent,
    InterestProps,
    PageViewEvent,
    PageViewProps,
    decode_batch,
)
from engine.profile import layout as L
from engine.profile.attributes import CustomerAttributes, store_attributes
from engine.profile.profiles import ProfileStore, decode_profile
from engine.valkey import keys

SITE = "demo-bank"
HALF_LIFE_S = 86_400
LONDON = ZoneInfo("Europe/London")
NOW_MS = 1_764_650_000_000  # Tue 2025-12-02 04:33:20 UTC


def _ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def _decoded(h: dict[str, Any], *, known: bool = True, now_ms: int = NOW_MS) -> dict[str, Any]:
    return decode_profile({k: str(v) for k, v in h.items()}, now_ms, HALF_LIFE_S, known=known)


def _view(i: int = 0, page: str = "/mortgages", **props: Any) -> PageViewEvent:
    return PageViewEvent(id=f"pv{i}", ts=NOW_MS - 1000, page=page, props=PageViewProps(**props))


def _calc(product: str = "mortgage", amount: float = 250_000) -> CalcEvent:
    return CalcEvent(
        id="c1", ts=NOW_MS - 500, props=CalcProps(product=product, amount=amount, term_months=300)
    )


def _beat() -> HeartbeatEvent:
    return HeartbeatEvent(id="hb", ts=NOW_MS - 100)


# A returning visitor who priced a mortgage and a loan, from a campaign.
HASH: dict[str, Any] = {
    L.FIRST_TS: NOW_MS - 40 * 86_400_000,
    L.LAST_TS: NOW_MS - 1000,
    L.count("page_view"): 14,
    L.count("calc"): 5,
    L.count("heartbeat"): 30,
    L.category("mortgage"): 6,
    L.category("loans"): 3,
    L.intent("mortgage"): 8.0,
    L.intent_ts("mortgage"): NOW_MS - 86_400_000,
    L.calc("mortgage", L.CALC_AMOUNT): 250_000,
    L.calc("mortgage", L.CALC_TERM): 300,
    L.calc("mortgage", L.CALC_TS): NOW_MS - 30_000,
    L.calc("mortgage", L.CALC_N): 4,
    L.calc("mortgage", L.CALC_MAX): 300_000,
    L.calc("mortgage", L.CALC_RATE): "",
    L.calc("personal_loan", L.CALC_AMOUNT): 12_000,
    L.calc("personal_loan", L.CALC_TERM): 48,
    L.calc("personal_loan", L.CALC_TS): NOW_MS - 7_200_000,
    L.calc("personal_loan", L.CALC_N): 1,
    L.calc("personal_loan", L.CALC_MAX): 12_000,
    L.S_N: 3,
    L.S_PAGES: 5,
    L.S_DWELL: 240_000,
    L.S_EVENTS: 22,
    L.DWELL: 900_000,
    L.UTM_SOURCE: "newsletter",
    L.UTM_CAMPAIGN: "autumn_rates",
    L.FORM_ABANDON: 1,
    L.interest_call("mortgage"): NOW_MS - 60_000,
}
CUSTOMER = {
    "products_held": ["current_account", "Credit-Card"],
    "value_tier": "vip",
    "segment": "young_family",
    "consent_call": True,
    "do_not_call": False,
    "branch": "leeds",
    "language": "en",
}


def _check_bounded(f: dict[str, Any]) -> None:
    assert len(f) <= MAX_KEYS <= 72  # 64, and 8 real-time segments (issue 15)
    for name, v in f.items():
        assert isinstance(name, str) and name
        if isinstance(v, str):
            assert 0 < len(v) <= TEXT_MAX, (name, v)
        else:
            assert type(v) is float and math.isfinite(v), (name, v)


# -- the real path ---------------------------------------------------------------------


async def test_features_of_a_profile_built_by_real_ingest_and_crm_attributes(
    store_target: StoreTarget, settings: Settings
) -> None:
    store = store_target.store()
    await store.load_library()
    try:
        customer_id = "cust-features-1"
        attrs = CustomerAttributes(
            products_held=["current_account"], value_tier="vip", segment="family", branch="york"
        )
        await store_attributes(store, customer_id, attrs)
        t = NOW_MS - 60_000
        body = {
            "site": SITE,
            "anonymous_id": "anonfeatures01",
            "events": [
                {
                    "id": "e1",
                    "type": "page_view",
                    "ts": t,
                    "page": "/mortgages",
                    "props": {
                        "referrer": "https://www.google.com/",
                        "utm_source": "google",
                        "utm_medium": "cpc",
                        "utm_campaign": "spring_mortgage",
                    },
                },
                {"id": "e2", "type": "heartbeat", "ts": t + 1000, "props": {"dwell_ms": 15_000}},
                {
                    "id": "e3",
                    "type": "calc",
                    "ts": t + 2000,
                    "page": "/mortgages",
                    "props": {"product": "mortgage", "amount": 250_000, "term_months": 300},
                },
                {
                    "id": "e4",
                    "type": "calc",
                    "ts": t + 3000,
                    "page": "/mortgages",
                    "props": {"product": "mortgage", "amount": 180_000, "term_months": 240},
                },
            ],
        }
        events = decode_batch(orjson.dumps(body)).events
        profiles = ProfileStore(store, settings)
        res = await profiles.apply_batch(
            keys.customer_prefix(customer_id), SITE, events, anonymous=False, now_ms=NOW_MS
        )
        assert res.accepted == 4
        inp = decision_input(
            res.fields,
            site=SITE,
            anonymous_id="anonfeatures01",
            customer_id=customer_id,
            now_ms=NOW_MS,
            intent_half_life_s=settings.profile.intent_half_life_s,
            events=events,
        )
        f = features(inp.profile, inp.customer, inp.events, inp.now_ms, LONDON)
    finally:
        await store.close()

    assert f["known"] == 1.0
    assert f["calc_count"] == 2.0
    assert f["calc_mortgage_count"] == 2.0
    assert f["calc_mortgage_amount"] == 180_000.0  # the newest
    assert f["calc_mortgage_term_months"] == 240.0
    assert f["calc_mortgage_max_amount"] == 250_000.0
    assert f["since_last_calc_s"] == 57.0
    assert f["since_first_seen_days"] == 60_000 / 86_400_000
    assert isinstance(f["intent_mortgage"], float) and f["intent_mortgage"] > 0
    assert f["category_mortgage"] == 1.0
    assert f["count_page_view"] == 1.0 and f["count_calc"] == 2.0 and f["count_form"] == 0.0
    assert f["session_number"] == 1.0 and f["session_pages"] == 1.0
    assert f["session_dwell_s"] == 15.0 and f["dwell_s"] == 15.0
    assert (f["utm_source"], f["utm_medium"], f["utm_campaign"]) == (
        "google",
        "cpc",
        "spring_mortgage",
    )
    assert f["referrer_host"] == "google.com"
    assert (f["value_tier"], f["segment"], f["branch"]) == ("vip", "family", "york")
    assert f["holds_current_account"] == 1.0
    assert f["event_type"] == "calc"
    assert (f["hour"], f["weekday"]) == (4.0, "tue")  # 04:33 in London (GMT in December)
    _check_bounded(f)


# -- each family ---------------------------------------------------------------------


def test_calculator_features_per_product_and_in_total() -> None:
    f = features(_decoded(HASH), CUSTOMER, [], NOW_MS)
    assert f["calc_count"] == 5.0
    assert (
        f["calc_mortgage_count"],
        f["calc_mortgage_amount"],
        f["calc_mortgage_term_months"],
        f["calc_mortgage_max_amount"],
    ) == (4.0, 250_000.0, 300.0, 300_000.0)
    assert f["calc_personal_loan_amount"] == 12_000.0
    assert f["since_last_calc_s"] == 30.0  # the newest product's calculator
    assert not any(k.startswith("calc_") and "rate" in k for k in f)


def test_intent_is_the_decayed_value_and_categories_are_view_counts() -> None:
    f = features(_decoded(HASH), CUSTOMER, [], NOW_MS)
    assert f["intent_mortgage"] == 4.0  # 8, one half-life ago
    assert (f["category_mortgage"], f["category_loans"]) == (6.0, 3.0)


def test_session_dwell_counts_and_forms() -> None:
    f = features(_decoded(HASH), CUSTOMER, [], NOW_MS)
    assert (f["session_number"], f["session_pages"], f["session_events"]) == (3.0, 5.0, 22.0)
    assert (f["session_dwell_s"], f["dwell_s"]) == (240.0, 900.0)
    assert {f"count_{t}" for t in EVENT_TYPES} <= f.keys()
    assert (f["count_page_view"], f["count_heartbeat"], f["count_interest"]) == (14.0, 30.0, 0.0)
    assert (f["forms_abandoned"], f["forms_submitted"]) == (1.0, 0.0)


def test_recency_in_seconds_and_days() -> None:
    f = features(_decoded(HASH), CUSTOMER, [], NOW_MS)
    assert f["since_call_request_s"] == 60.0
    assert f["since_first_seen_days"] == 40.0
    # an event stamped a little after the decision is "just now", not negative
    ahead = features(_decoded(HASH), CUSTOMER, [], NOW_MS - 40_000)
    assert ahead["since_last_calc_s"] == 0.0


def test_crm_attributes_give_tier_segment_branch_and_products_held() -> None:
    f = features(_decoded(HASH), CUSTOMER, [], NOW_MS)
    assert (f["value_tier"], f["segment"], f["branch"]) == ("vip", "young_family", "leeds")
    assert f["holds_current_account"] == 1.0
    assert f["holds_credit_card"] == 1.0  # names are snake_case whatever the CRM's code
    assert "language" not in f and "consent_call" not in f


def test_campaign_from_the_batch_first_then_the_profile() -> None:
    batch: list[Event] = [
        _view(0, referrer="https://User@WWW.Example.co.uk:8443/path", utm_medium="email"),
        _view(1, utm_source="bing", utm_campaign="winter", referrer="/previous-page"),
    ]
    f = features(_decoded(HASH), CUSTOMER, batch, NOW_MS)
    assert (f["utm_source"], f["utm_medium"], f["utm_campaign"]) == ("bing", "email", "winter")
    assert f["referrer_host"] == "example.co.uk"
    # no campaign in the batch: the profile's newest; utm_medium is only in events
    g = features(_decoded(HASH), CUSTOMER, [_view(0, referrer="/mortgages")], NOW_MS)
    assert (g["utm_source"], g["utm_campaign"]) == ("newsletter", "autumn_rates")
    assert "utm_medium" not in g and "referrer_host" not in g  # a path: the site's own page


def test_event_type_is_the_most_significant_event_of_the_batch() -> None:
    interest = InterestEvent(id="i", ts=NOW_MS, props=InterestProps(product="mortgage"))
    profile = _decoded(HASH)
    assert features(profile, {}, [_view(), _calc(), _beat()], NOW_MS)["event_type"] == "calc"
    assert features(profile, {}, [_calc(), interest, _view()], NOW_MS)["event_type"] == "interest"
    assert features(profile, {}, [_beat(), _view()], NOW_MS)["event_type"] == "page_view"
    assert "event_type" not in features(profile, {}, [], NOW_MS)


def test_known_is_one_or_zero() -> None:
    assert features(_decoded(HASH, known=True), {}, [], NOW_MS)["known"] == 1.0
    assert features(_decoded(HASH, known=False), {}, [], NOW_MS)["known"] == 0.0


def test_every_cross_names_features_a_full_profile_has() -> None:
    batch: list[Event] = [_view(utm_source="google", utm_campaign="spring"), _calc()]
    f = features(_decoded(HASH), CUSTOMER, batch, NOW_MS)
    for a, b in CROSSES:
        assert a in f and b in f, (a, b)
        assert a != b


# -- absent, never None --------------------------------------------------------------


def test_missing_inputs_leave_keys_absent_never_none() -> None:
    f = features(_decoded({}, known=False), {}, [], NOW_MS)
    assert None not in f.values()
    for absent in (
        "value_tier",
        "segment",
        "branch",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "referrer_host",
        "event_type",
        "since_last_calc_s",
        "since_call_request_s",
        "since_first_seen_days",
    ):
        assert absent not in f, absent
    assert not any(
        k.startswith(("calc_", "intent_", "category_", "holds_")) for k in f if k != "calc_count"
    )
    assert f["calc_count"] == 0.0 and f["known"] == 0.0
    # CRM nulls are absent too
    g = features(
        _decoded(HASH), {"value_tier": "standard", "segment": None, "branch": None}, [], NOW_MS
    )
    assert g["value_tier"] == "standard" and "segment" not in g and "branch" not in g
    # and an empty dict for a profile reads as nothing known
    assert None not in features({}, {}, [], NOW_MS).values()


# -- bounds --------------------------------------------------------------------------


def _at_every_cap() -> tuple[dict[str, Any], dict[str, Any], list[Event]]:
    h: dict[str, Any] = {L.count(t): 7 for t in EVENT_TYPES}
    for i in range(L.CALC_SPACE.cap):
        p = f"product_{i}"
        h[L.calc(p, L.CALC_AMOUNT)] = 1000 * i
        h[L.calc(p, L.CALC_TERM)] = 12 + i
        h[L.calc(p, L.CALC_TS)] = NOW_MS - 60_000 * (i + 1)  # product_0 is the newest
        h[L.calc(p, L.CALC_N)] = i + 1
        h[L.calc(p, L.CALC_MAX)] = 2000 * i
        h[L.calc(p, L.CALC_RATE)] = 4.5
        h[L.calc(p, L.CALC_MONTHLY)] = 100
        h[L.interest(p)] = NOW_MS - 1000
        h[L.interest_call(p)] = NOW_MS - 1000
    for i in range(L.INTENT_SPACE.cap):
        h[L.intent(f"key_{i}")] = float(i)  # key_15 is the highest
        h[L.intent_ts(f"key_{i}")] = NOW_MS
    for i in range(L.CATEGORY_SPACE.cap):
        h[L.category(f"cat_{i}")] = 100 - i  # cat_0 is the most viewed
    h.update(
        {
            L.FIRST_TS: NOW_MS - 10**9,
            L.S_N: 9,
            L.S_PAGES: 9,
            L.S_DWELL: 9,
            L.S_EVENTS: 9,
            L.DWELL: 9,
            L.FORM_ABANDON: 1,
            L.FORM_SUBMIT: 1,
            L.FORM_FOCUS: 1,
            L.UTM_SOURCE: "s" * 256,
            L.UTM_CAMPAIGN: "c" * 256,
        }
    )
    customer = {
        "products_held": [f"held_{i}" for i in range(50)],
        "value_tier": "private",
        "segment": "x" * 64,
        "branch": "y" * 64,
    }
    batch: list[Event] = [
        _view(0, referrer="https://" + "h" * 300 + ".example/", utm_medium="m" * 256),
        _calc(),
    ]
    return _decoded(h), customer, batch


def test_a_profile_at_every_cap_stays_within_72_keys() -> None:
    profile, customer, batch = _at_every_cap()
    segments = frozenset(f"seg_{i:02}" for i in range(32))  # a rule set's most
    f = features(profile, customer, batch, NOW_MS, LONDON, segments)
    _check_bounded(f)
    assert len(f) == MAX_KEYS  # every slot filled, none more
    assert {k for k in f if k.startswith("seg_")} == {
        f"seg_seg_{i:02}" for i in range(SEGMENTS_MAX)
    }  # the first ids, in order
    calcs = {m[1] for k in f if (m := re.match(r"calc_(product_\d+)_", k))}
    assert calcs == {f"product_{i}" for i in range(CALC_PRODUCTS_MAX)}  # the newest
    assert {k for k in f if k.startswith("intent_")} == {
        f"intent_key_{i}" for i in range(15, 15 - INTENT_MAX, -1)
    }
    assert {k for k in f if k.startswith("category_")} == {
        f"category_cat_{i}" for i in range(CATEGORY_MAX)
    }
    assert sum(k.startswith("holds_") for k in f) == HOLDS_MAX
    assert f["calc_count"] == float(sum(range(1, L.CALC_SPACE.cap + 1)))  # all products
    assert f["utm_source"] == "s" * TEXT_MAX and f["utm_medium"] == "m" * TEXT_MAX


# -- time in the site's zone ---------------------------------------------------------


def test_hour_and_weekday_follow_the_zone_across_a_dst_change() -> None:
    profile = _decoded(HASH)

    def when(iso: str, zone: ZoneInfo | None = LONDON) -> tuple[float | str, float | str]:
        f = features(profile, {}, [], _ms(iso), zone)
        return f["hour"], f["weekday"]

    # spring forward, Sun 2026-03-29 01:00 UTC: 00:59 GMT, then 02:00 BST
    assert when("2026-03-29T00:59:00+00:00") == (0.0, "sun")
    assert when("2026-03-29T01:00:00+00:00") == (2.0, "sun")
    # fall back, Sun 2026-10-25 01:00 UTC: 01:30 comes twice
    assert when("2026-10-25T00:30:00+00:00") == (1.0, "sun")
    assert when("2026-10-25T01:30:00+00:00") == (1.0, "sun")
    assert when("2026-10-25T02:30:00+00:00") == (2.0, "sun")
    # the local day, not UTC's: Sunday 23:30 UTC is Monday in London's summer
    assert when("2026-06-21T23:30:00+00:00") == (0.0, "mon")
    assert when("2026-06-21T23:30:00+00:00", None) == (23.0, "sun")  # None is UTC
    assert when("2026-06-21T23:30:00+00:00", ZoneInfo("Asia/Kolkata")) == (5.0, "mon")


# -- purity --------------------------------------------------------------------------


def test_same_inputs_give_the_same_features_in_the_same_order() -> None:
    profile, customer, batch = _at_every_cap()
    a = features(profile, customer, batch, NOW_MS, LONDON)
    b = features(profile, customer, batch, NOW_MS, LONDON)
    assert list(a.items()) == list(b.items())
    # the capped families keep the same members whatever order the profile lists them in
    shuffled = dict(profile)
    for family in ("intent", "categories", "calc"):
        items = list(profile[family].items())
        random.Random(7).shuffle(items)
        shuffled[family] = dict(items)
    assert features(shuffled, customer, batch, NOW_MS, LONDON) == a
    assert profile == _at_every_cap()[0]  # the inputs are not changed


# -- any profile ---------------------------------------------------------------------

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_-.", min_size=1, max_size=40)
_ints = st.one_of(st.integers(min_value=0, max_value=10**6), st.integers(min_value=-(10**400)))
_floats = st.floats(allow_nan=True, allow_infinity=True)
_finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e308, max_value=1e308)
_text = st.text(max_size=300)


@st.composite
def _hashes(draw: st.DrawFn) -> dict[str, str]:
    h: dict[str, str] = {}
    for t in draw(st.lists(st.sampled_from((*EVENT_TYPES, "other")), max_size=9)):
        h[L.count(t)] = str(draw(_ints))
    for name in draw(st.lists(_names, max_size=20)):
        h[L.category(name)] = str(draw(_ints))
    for name in draw(st.lists(_names, max_size=20)):
        h[L.intent(name)] = str(draw(_floats))
        h[L.intent_ts(name)] = str(draw(st.integers(min_value=0, max_value=NOW_MS)))
    for name in draw(st.lists(_names, max_size=12)):
        for sub in (L.CALC_AMOUNT, L.CALC_MAX, L.CALC_RATE):
            h[L.calc(name, sub)] = draw(st.one_of(st.just(""), _floats.map(str)))
        for sub in (L.CALC_TERM, L.CALC_TS, L.CALC_N):  # decoded through float: finite
            h[L.calc(name, sub)] = str(draw(st.integers(-(10**300), 10**300)))
    for code in (L.S_N, L.S_PAGES, L.S_DWELL, L.S_EVENTS, L.DWELL, L.FIRST_TS, L.FORM_SUBMIT):
        if draw(st.booleans()):
            h[code] = str(draw(_finite))
    for code in (L.UTM_SOURCE, L.UTM_CAMPAIGN):
        if draw(st.booleans()):
            h[code] = draw(_text)
    return h


_customers = st.fixed_dictionaries(
    {},
    optional={
        "products_held": st.lists(_names, max_size=50),
        "value_tier": st.sampled_from(["standard", "vip", "private"]),
        "segment": st.one_of(st.none(), _text),
        "branch": st.one_of(st.none(), _text),
    },
)
_batches = st.lists(
    st.one_of(
        st.builds(
            lambda r, s, m, c: _view(0, referrer=r, utm_source=s, utm_medium=m, utm_campaign=c),
            st.one_of(st.none(), _text, _text.map(lambda t: "https://" + t)),
            st.one_of(st.none(), _text),
            st.one_of(st.none(), _text),
            st.one_of(st.none(), _text),
        ),
        st.just(_beat()),
        st.just(_calc()),
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(
    h=_hashes(),
    customer=_customers,
    batch=_batches,
    known=st.booleans(),
    now_ms=st.integers(min_value=0, max_value=4_102_444_800_000),
    zone=st.sampled_from([None, LONDON, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")]),
)
def test_any_profile_gives_finite_floats_and_short_strings(
    h: dict[str, str],
    customer: dict[str, Any],
    batch: list[Event],
    known: bool,
    now_ms: int,
    zone: ZoneInfo | None,
) -> None:
    profile = decode_profile(h, now_ms, HALF_LIFE_S, known=known)
    f = features(profile, customer, batch, now_ms, zone)
    _check_bounded(f)
    hour = f["hour"]
    assert isinstance(hour, float) and 0.0 <= hour <= 23.0 and hour.is_integer()
    assert f == features(profile, customer, batch, now_ms, zone)
