"""Features: what a model learns from and scores with, one flat dict per decided batch.

`features(profile, customer, events, now_ms, zone, segments)` turns the decoded profile
(`engine.profile.profiles.decode_profile`), the customer's CRM attributes (the
`CustomerAttributes` document stored with the profile, `{}` when anonymous), the batch's
events and the decision time into `dict[str, float | str]`. Numeric values are finite
floats, categorical values strings of at most 64 characters (a model one-hot encodes
them as `name=value`). Names are stable snake_case: they are the keys of a model's
weights, so renaming one forgets what was learnt about it. Something unknown (no
calculator used, no CRM segment, no campaign) is *absent*, never None: a linear model
then adds nothing for it. Counts are present even when 0, since zero is information.

It is pure (same inputs, same dict, same key order) and runs once per decided batch on
the hot path, so it reads the decoded profile as is and builds names from cached tuples.

| feature                        | kind | from                                                |
|--------------------------------|------|-----------------------------------------------------|
| `known`                        | num  | 1.0 identified customer, 0.0 anonymous visitor      |
| `hour`                         | num  | 0-23, the decision time in the site's zone          |
| `weekday`                      | cat  | mon..sun, in the site's zone                        |
| `daypart`                      | cat  | night 0-6, morning 7-11, afternoon 12-16, evening   |
|                                |      | 17-20, late 21-23: who picks up is not linear in    |
|                                |      | the hour (office hours vs after work)               |
| `event_type`                   | cat  | the batch's most significant event (`SIGNIFICANCE`) |
| `utm_source`, `utm_campaign`   | cat  | the batch's page views, else the profile's newest   |
| `utm_medium`                   | cat  | the batch's page views                              |
| `referrer_host`                | cat  | host of the batch's first absolute-URL referrer     |
| `value_tier`                   | cat  | CRM: standard, vip, private                         |
| `segment`, `branch`            | cat  | CRM                                                 |
| `holds_<product>`              | num  | 1.0 per CRM product held (first `HOLDS_MAX`)        |
| `session_number`               | num  | sessions started                                    |
| `session_pages`                | num  | page views in the current session                   |
| `session_events`               | num  | events in the current session                       |
| `session_dwell_s`              | num  | visible dwell in the current session (s)            |
| `dwell_s`                      | num  | visible dwell, all sessions (s)                     |
| `count_<type>`                 | num  | events per type, every `EventType` (0.0 if none)    |
| `forms_submitted`              | num  | form submits                                        |
| `forms_abandoned`              | num  | forms abandoned                                     |
| `calc_count`                   | num  | calculator events, all products                     |
| `calc_<product>_count`         | num  | calculator events for the product                   |
| `calc_<product>_amount`        | num  | its newest amount                                   |
| `calc_<product>_term_months`   | num  | its newest term (months)                            |
| `calc_<product>_max_amount`    | num  | its largest amount                                  |
| `intent_<key>`                 | num  | decayed intent per category or product              |
| `category_<name>`              | num  | page views per category                             |
| `since_last_calc_s`            | num  | s since the newest calculator event                 |
| `since_call_request_s`         | num  | s since the visitor last asked for a call           |
| `since_first_seen_days`        | num  | days since the first event                          |
| `seg_<id>`                     | num  | 1.0 per real-time segment the visitor is in now     |
|                                |      | (engine/decisions/segments.py; first `SEGMENTS_MAX` |
|                                |      | ids in order)                                       |

Bounded: the profile caps its products, intent keys and categories (layout.py `SPACES`),
but at those caps (10 products x 4, 16 + 16) a model would see more than it can use, so
the families keep their strongest members: the `CALC_PRODUCTS_MAX` most recently used
calculators, the `INTENT_MAX` highest intents, the `CATEGORY_MAX` most viewed categories
(ties by name), the first `HOLDS_MAX` products held, the first `SEGMENTS_MAX` segments.
`MAX_KEYS` (<= 72) is the sum. Segment ids come from the rule set (a closed set of at
most 32), but a visitor in many at once would crowd out the rest.
Names built from a profile's own keys (products, categories) keep `[a-z0-9_]` only and
at most 32 characters, as the ingest schema and settings already require of them.

`zone` is the site's time zone. Settings have no zone per site (only contact calendars
carry one, `Calendar.zone`), so the caller passes it; None means UTC.

>>> f = features({"known": True, "counts": {"calc": 2}, "calc": {"mortgage": {"count": 2,
...     "amount": 250000.0, "term_months": 300, "max_amount": 300000.0, "ts": 1000}}},
...     {"value_tier": "vip", "products_held": ["current"]}, [], now_ms=61_000)
>>> f["calc_mortgage_amount"], f["value_tier"], f["holds_current"], f["since_last_calc_s"]
(250000.0, 'vip', 1.0, 60.0)
>>> f["hour"], f["weekday"], "segment" in f
(0.0, 'thu', False)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo

from engine.core.vocabulary import EVENT_TYPES
from engine.ingest.schema import (
    CalcEvent,
    ClickEvent,
    CustomEvent,
    Event,
    FormEvent,
    HeartbeatEvent,
    InterestEvent,
    PageViewEvent,
    ScrollEvent,
)

__all__ = [
    "CALC_PRODUCTS_MAX",
    "CATEGORY_MAX",
    "CROSSES",
    "HOLDS_MAX",
    "INTENT_MAX",
    "MAX_KEYS",
    "SEGMENTS_MAX",
    "SIGNIFICANCE",
    "TEXT_MAX",
    "features",
]

Features = dict[str, float | str]

CALC_PRODUCTS_MAX: Final = 3
INTENT_MAX: Final = 6
CATEGORY_MAX: Final = 6
HOLDS_MAX: Final = 8
SEGMENTS_MAX: Final = 8
TEXT_MAX: Final = 64  # characters of a categorical value
NAME_MAX: Final = 32  # characters of a profile key inside a feature name

# The names that are always or at most once there; `MAX_KEYS` adds the families.
_FIXED_NUMERIC: Final = (
    "known",
    "hour",
    "session_number",
    "session_pages",
    "session_events",
    "session_dwell_s",
    "dwell_s",
    *(f"count_{t}" for t in EVENT_TYPES),
    "forms_submitted",
    "forms_abandoned",
    "calc_count",
    "since_last_calc_s",
    "since_call_request_s",
    "since_first_seen_days",
)
_CATEGORICAL: Final = (
    "weekday",
    "daypart",
    "event_type",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "referrer_host",
    "value_tier",
    "segment",
    "branch",
)
MAX_KEYS: Final = (
    len(_FIXED_NUMERIC)
    + len(_CATEGORICAL)
    + 4 * CALC_PRODUCTS_MAX
    + INTENT_MAX
    + CATEGORY_MAX
    + HOLDS_MAX
    + SEGMENTS_MAX
)
assert MAX_KEYS <= 72, MAX_KEYS

# Which event of a batch names it: an explicit ask beats a calculator (the strongest
# implicit signal), which beats form work, clicks, then browsing. Ties: the first.
SIGNIFICANCE: Final[tuple[str, ...]] = (
    "interest",
    "calc",
    "form",
    "click",
    "custom",
    "page_view",
    "scroll",
    "heartbeat",
)
_RANK: Final[dict[type, tuple[int, str]]] = {
    cls: (len(SIGNIFICANCE) - SIGNIFICANCE.index(name), name)
    for cls, name in (
        (InterestEvent, "interest"),
        (CalcEvent, "calc"),
        (FormEvent, "form"),
        (ClickEvent, "click"),
        (CustomEvent, "custom"),
        (PageViewEvent, "page_view"),
        (ScrollEvent, "scroll"),
        (HeartbeatEvent, "heartbeat"),
    )
}

# Crosses the learner adds by default (engine/learning): who responds depends on
# combinations a linear model misses. Each names two features by their exact names;
# a cross with a side absent is skipped (the snapshot contract, issue 11).
CROSSES: Final[tuple[tuple[str, str], ...]] = (
    # A VIP pricing a large mortgage is a different call from a standard customer doing so.
    ("value_tier", "calc_mortgage_amount"),
    ("value_tier", "intent_mortgage"),
    # A campaign brings people with a purpose: its visitors' intent means more (or less).
    ("utm_campaign", "intent_mortgage"),
    ("utm_source", "calc_count"),
    # A known customer using calculators can be called; an anonymous one only shown offers.
    ("known", "calc_count"),
    # When they browse says whether they can pick up the phone (a weekday evening is
    # not a weekday morning): day parts, as response is not linear in the hour.
    ("weekday", "daypart"),
    ("daypart", "calc_count"),
    # Engagement that only counts with intent behind it.
    ("session_dwell_s", "intent_mortgage"),
    ("segment", "event_type"),
)

_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAYPART: Final = (
    *("night",) * 7,
    *("morning",) * 5,
    *("afternoon",) * 5,
    *("evening",) * 4,
    *("late",) * 3,
)
assert len(_DAYPART) == 24
_UTC: Final = dt.UTC
_INF: Final = float("inf")
_BIG: Final = 1e300
_EMPTY: Final[Mapping[str, Any]] = {}
_COUNT_NAMES: Final = {t: f"count_{t}" for t in EVENT_TYPES}
_NO_COUNTS: Final = dict.fromkeys(_COUNT_NAMES.values(), 0.0)
_SESSION: Final = (
    ("number", "session_number", 1.0),
    ("pages", "session_pages", 1.0),
    ("events", "session_events", 1.0),
    ("dwell_ms", "session_dwell_s", 0.001),
)
_PROFILE: Final = (("dwell_ms", "dwell_s", 0.001),)
_FORMS: Final = (("submitted", "forms_submitted", 1.0), ("abandoned", "forms_abandoned", 1.0))


def _clean(name: str) -> str:
    """`name` as part of a feature name: lower case, `[a-z0-9_]` only, clipped."""
    out = "".join(
        c if ("a" <= c <= "z" or "0" <= c <= "9" or c == "_") else "_" for c in name.lower()
    )
    return out[:NAME_MAX]


@lru_cache(maxsize=1024)
def _calc_table(product: str) -> tuple[tuple[str, str, float], ...]:
    """A calculator product's rows for `_copy`: decoded name -> feature name."""
    p = "calc_" + _clean(product)
    return tuple(
        (key, p + "_" + key, 1.0) for key in ("count", "amount", "term_months", "max_amount")
    )


@lru_cache(maxsize=1024)
def _name(prefix: str, key: str) -> str:
    return prefix + _clean(key)


def _num(v: Any) -> float | None:
    """A number of the decoded profile as a float; None for anything else (missing, text,
    a flag, NaN, infinite, beyond 1e300). int/float comparisons are exact, so a huge int
    is refused before `float` could overflow."""
    if (v.__class__ is float or v.__class__ is int) and -_BIG < v < _BIG:
        return float(v)
    return None


def _copy(out: Features, src: Mapping[str, Any], table: tuple[tuple[str, str, float], ...]) -> None:
    """out[name] = src[key] * scale for each row whose value is a usable number: `_num`'s
    test, inline and by duck typing (this is most of the features' work): NaN and
    infinities fail the comparison, text and None raise TypeError and are skipped."""
    for key, name, scale in table:
        v = src.get(key)
        if v is not None:
            try:
                if -_BIG < v < _BIG:
                    out[name] = v * scale
            except TypeError:
                pass


def _text(v: Any) -> str | None:
    return v[:TEXT_MAX] if isinstance(v, str) and v else None


@lru_cache(maxsize=1024)  # referrers repeat (search engines, the bank's own pages)
def _host(url: str) -> str | None:
    """The host of an absolute URL ('www.' dropped); None for a path (SPA navigation)."""
    i = url.find("//")
    if i < 0:
        return None
    host = url[i + 2 :].split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0].lower()
    if host.startswith("www."):
        host = host[4:]
    return host[:TEXT_MAX] or None


def _top(d: Mapping[str, Any], n: int) -> Iterable[tuple[str, Any]]:
    """The n largest values (ties by name); all of them, in order, when there are few."""
    if len(d) <= n:
        return d.items()

    def key(kv: tuple[str, Any]) -> tuple[float, str]:
        return (-(_num(kv[1]) or 0.0), kv[0])

    return sorted(d.items(), key=key)[:n]


def _newest_calcs(calc: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    if len(calc) <= CALC_PRODUCTS_MAX:
        return calc.items()

    def key(kv: tuple[str, Any]) -> tuple[float, str]:
        c = kv[1]
        return (-((_num(c.get("ts")) or 0.0) if isinstance(c, dict) else 0.0), kv[0])

    return sorted(calc.items(), key=key)[:CALC_PRODUCTS_MAX]


def features(
    profile: Mapping[str, Any],
    customer: Mapping[str, Any],
    events: Sequence[Event],
    now_ms: int,
    zone: ZoneInfo | None = None,
    segments: Collection[str] = (),
) -> Features:
    """The feature dict of one decided batch; see the module docstring for every name."""
    out: Features = {"known": 1.0 if profile.get("known") else 0.0}
    local = dt.datetime.fromtimestamp(now_ms / 1000, zone or _UTC)
    out["hour"] = float(local.hour)
    out["weekday"] = _DAYS[local.weekday()]
    out["daypart"] = _DAYPART[local.hour]

    # The batch: its most significant event and its campaign.
    best = 0
    utm_source = utm_medium = utm_campaign = referrer = None
    for ev in events:
        rank = _RANK.get(type(ev))
        if rank is not None and rank[0] > best:
            best = rank[0]
            out["event_type"] = rank[1]
        if type(ev) is PageViewEvent:
            props = ev.props
            utm_source = props.utm_source or utm_source
            utm_medium = props.utm_medium or utm_medium
            utm_campaign = props.utm_campaign or utm_campaign
            if referrer is None and props.referrer:
                referrer = _host(props.referrer)
    campaign = profile.get("campaign") or _EMPTY
    if v := _text(utm_source or campaign.get("utm_source")):
        out["utm_source"] = v
    if v := _text(utm_medium):
        out["utm_medium"] = v
    if v := _text(utm_campaign or campaign.get("utm_campaign")):
        out["utm_campaign"] = v
    if referrer:
        out["referrer_host"] = referrer

    # What the bank knows.
    if v := _text(customer.get("value_tier")):
        out["value_tier"] = v
    if v := _text(customer.get("segment")):
        out["segment"] = v
    if v := _text(customer.get("branch")):
        out["branch"] = v
    held = customer.get("products_held")
    if held and isinstance(held, list):
        for p in held[:HOLDS_MAX]:
            if isinstance(p, str) and p:
                out[_name("holds_", p)] = 1.0

    # Engagement.
    _copy(out, profile.get("session") or _EMPTY, _SESSION)
    _copy(out, profile, _PROFILE)
    out.update(_NO_COUNTS)  # zero is a count too; the profile's own overwrite them
    for etype, v in (profile.get("counts") or _EMPTY).items():
        name = _COUNT_NAMES.get(etype)
        if name and (v.__class__ is int or v.__class__ is float) and -_BIG < v < _BIG:
            out[name] = v * 1.0
    _copy(out, profile.get("forms") or _EMPTY, _FORMS)

    # Calculators: every product counts towards calc_count and recency, the newest few
    # get features of their own.
    calc = profile.get("calc") or _EMPTY
    total = 0.0
    last_ts = 0.0
    for c in calc.values():
        if isinstance(c, dict):  # a decoded profile's; not Mapping: an ABC check is slow
            n, ts = c.get("count"), c.get("ts")
            try:  # `_num`, inline as in `_copy`
                if n is not None and 0 < n < _BIG:
                    total += n
                if ts is not None and last_ts < ts < _BIG:
                    last_ts = ts
            except TypeError:
                pass
    out["calc_count"] = total if total < _INF else 0.0
    for product, c in _newest_calcs(calc):
        if isinstance(c, dict):
            _copy(out, c, _calc_table(product))
    for key, v in _top(profile.get("intent") or _EMPTY, INTENT_MAX):
        if (v.__class__ is float or v.__class__ is int) and -_BIG < v < _BIG:  # _num, inline
            out[_name("intent_", key)] = v * 1.0
    for key, v in _top(profile.get("categories") or _EMPTY, CATEGORY_MAX):
        if (v.__class__ is float or v.__class__ is int) and -_BIG < v < _BIG:
            out[_name("category_", key)] = v * 1.0

    # Recency, never negative (an event stamped a little ahead of the decision).
    if last_ts > 0:
        out["since_last_calc_s"] = max(0.0, now_ms - last_ts) / 1000
    if (x := _num(profile.get("last_call_request"))) is not None and x > 0:
        out["since_call_request_s"] = max(0.0, now_ms - x) / 1000
    if (x := _num(profile.get("first_seen"))) is not None and x > 0:
        out["since_first_seen_days"] = max(0.0, now_ms - x) / 86_400_000

    # Real-time segments: membership is the feature (absent: not a member).
    if segments:
        for seg in sorted(segments)[:SEGMENTS_MAX]:
            out[_name("seg_", seg)] = 1.0
    return out
