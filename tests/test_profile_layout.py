"""The profile layout is declared once, and every place that uses it agrees (issue 10).

engine/profile/layout.py declares each profile code: how a batch writes it, how an
anonymous -> known merge combines it, where `decode_profile` puts it, its caps. Lua
cannot import it, so ringback.lua's header repeats the table; these tests check that
the two say the same, that a generated history sent through the real `rb_ingest`
(against a real valkey-server) stores what each declared write rule says, that the
real `rb_merge_apply` combines two such profiles as each declared merge rule says, and
that `decode_profile` reads every declared field where the layout says it lands.

Hypothesis example counts are fixed and derandomized: the same cases every run.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from itertools import pairwise
from math import isclose
from typing import Any

import orjson
from conftest import REPO, StoreTarget
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.settings import Settings
from engine.ingest.schema import Event, decode_batch
from engine.profile import layout as L
from engine.profile.layout import FIELDS, SPACES, Field, Merge, Write, family_of
from engine.profile.profiles import (
    ProfileStore,
    customer_attributes,
    decode_profile,
    page_entries,
)
from engine.valkey import keys
from engine.valkey.store import Store

LUA = (REPO / "engine/valkey/lua/ringback.lua").read_text()
SITE = "demo-bank"
T0_MS = 1_750_000_000_000
NOW_MS = T0_MS + 8 * 3_600_000  # every generated event is before now
HALF_LIFE_S = 86_400

_PROPERTY = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,  # a shared machine stalls at random; hangs are faulthandler's job
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the Lua header and constants agree with layout.py ------------------------------


def _lua_rows() -> list[tuple[str, str, str]]:
    block = LUA.split("<profile-fields>\n", 1)[1].split("</profile-fields>", 1)[0]
    rows = [line.split()[:3] for line in block.splitlines()[1:] if line.strip()]
    return [(code, write, merge) for code, write, merge in rows]


def test_the_lua_header_declares_the_same_fields_as_layout_py_row_for_row() -> None:
    declared = [(f.code, str(f.write), str(f.merge)) for f in FIELDS]
    lua = _lua_rows()
    assert sorted(set(lua) - set(declared)) == [], "in ringback.lua, not in layout.py"
    assert sorted(set(declared) - set(lua)) == [], "in layout.py, not in ringback.lua"
    assert lua == declared  # same order too, so a reader can compare them side by side


def test_the_lua_caps_are_the_caps_layout_py_declares() -> None:
    consts = {m[1]: int(m[2]) for m in re.finditer(r"^local (MAX_\w+) = (\d+)", LUA, re.M)}
    for space in SPACES:
        assert consts[space.lua_const] == space.cap, space
        assert f"['{space.count_code}'] = {space.lua_const}" in LUA, space
    assert consts["MAX_PAGES"] == L.MAX_PAGES
    assert consts[L.SEGMENT_SPACE.lua_const] == L.SEGMENT_SPACE.cap


# Literals of the profile functions that are not profile codes: replies and patterns.
_NOT_CODES = {"ok", "retry", "needs_merge", "rate_limited", "conflict", "table", ":"}
# rb_ingest's contact reservation: CRM attributes (inside `attrs`), the policy hash's
# fields (r:<rule>, c:<channel>, d:<channel>:<day>) and its refusal reasons.
_NOT_CODES |= {"consent_call", "do_not_call", "r:", "d:"}
_NOT_CODES |= {"cooldown_rule", "cooldown_channel", "daily_cap"}


def _could_be_code(literal: str) -> bool:
    return (
        literal not in _NOT_CODES
        and not literal.isupper()
        and re.fullmatch(r"[a-z_:]+", literal) is not None
        and literal not in ("", "0", "1")
    )


def test_every_profile_code_the_lua_functions_name_is_declared_in_layout_py() -> None:
    start = LUA.index("</profile-fields>")
    end = LUA.index("local function erase(")  # the functions after it read no profile field
    literals = {m[1] for m in re.finditer(r"'([^'\n]*)'", LUA[start:end])}
    codes = {lit for lit in literals if _could_be_code(lit)}
    assert codes, "the parse found no codes"
    declared = [f.code for f in FIELDS]
    undeclared = sorted(
        lit
        for lit in codes
        if not any(c == lit or c.startswith(lit) or c.endswith(lit) for c in declared)
    )
    assert undeclared == []


# -- generated histories ------------------------------------------------------------

PAGES = ["/mortgages/rates", "/loans/personal", "/cards", "/about", "/savings/isa", None]
CALC_PRODUCTS = ["mortgage", "car", "boat"]
INTEREST_PRODUCTS = ["mortgage", "loan", "pension"]
# Page-view props: campaigns (a touch: any utm_* or an external referrer) and not.
CAMPAIGNS: list[dict[str, str] | None] = [
    None,
    {"utm_source": "newsletter", "utm_campaign": "spring"},
    {
        "utm_source": "search",
        "utm_medium": "cpc",
        "utm_campaign": "brand",
        "utm_term": "loan",
        "utm_content": "a",
    },
    {"referrer": "https://www.Google.com/search?q=salary"},  # a touch: host only
    {"utm_medium": "email", "referrer": "https://mail.example/inbox"},
    {"referrer": "/loans"},  # an in-site navigation: no touch
    {"referrer": "http://localhost:8080/loans"},  # the site's own host: no touch
]
_REFERRER_HOSTS = {
    "https://www.Google.com/search?q=salary": "www.google.com",
    "https://mail.example/inbox": "mail.example",
}

_BODIES = (
    st.fixed_dictionaries(
        {"type": st.just("page_view"), "utm": st.sampled_from(CAMPAIGNS)},
    ),
    st.fixed_dictionaries(
        {"type": st.just("heartbeat"), "props": st.builds(dict, dwell_ms=st.integers(1, 60_000))}
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("calc"),
            "props": st.fixed_dictionaries(
                {
                    "product": st.sampled_from(CALC_PRODUCTS),
                    "amount": st.integers(1, 2_000_000),
                    "term_months": st.integers(1, 600),
                },
                optional={
                    "rate": st.sampled_from([1.5, 4.25, 7.0]),
                    "monthly_payment": st.integers(1, 20_000),
                },
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("form"),
            "props": st.fixed_dictionaries(
                {
                    "field": st.sampled_from(["email", "amount"]),
                    "action": st.sampled_from(["focus", "abandon", "submit"]),
                },
                optional={"form": st.sampled_from(["apply", "callback"])},
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("interest"),
            "props": st.fixed_dictionaries(
                {"product": st.sampled_from(INTEREST_PRODUCTS), "call_me": st.booleans()}
            ),
        }
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["click", "custom"])}),
)
_event_body = st.one_of(*_BODIES)


@st.composite
def histories(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """1-4 batches of events with distinct timestamps, in any order (late events too);
    every kind of event at least once, so two histories always share fields to merge."""
    base: list[dict[str, Any]] = [draw(body) for body in _BODIES]
    bodies: list[dict[str, Any]] = draw(
        st.permutations(base + draw(st.lists(_event_body, max_size=20)))
    )
    offsets = draw(
        st.lists(
            st.integers(0, 7 * 3_600_000),
            min_size=len(bodies),
            max_size=len(bodies),
            unique=True,
        )
    )
    events: list[dict[str, Any]] = []
    for body, offset in zip(bodies, offsets, strict=True):
        ev: dict[str, Any] = {"id": uuid.uuid4().hex[:12], "ts": T0_MS + offset}
        ev["page"] = draw(st.sampled_from(PAGES))
        etype = body["type"]
        ev["type"] = etype
        if etype == "page_view":
            ev["page"] = ev["page"] or "/"
            ev["props"] = body["utm"] or {}
        elif etype == "custom":
            ev["props"] = {"name": "quiz"}
        elif "props" in body:
            ev["props"] = body["props"]
        events.append({k: v for k, v in ev.items() if v is not None})
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(events) - 1)), max_size=3)))
    bounds = [0, *[c for c in cuts if c < len(events)], len(events)]
    return [events[a:b] for a, b in pairwise(bounds) if a < b]


def _events(batch: list[dict[str, Any]], anon: str) -> list[Event]:
    body = {"site": SITE, "anonymous_id": anon, "events": batch}
    return list(decode_batch(orjson.dumps(body)).events)


@dataclass
class _Run:
    profiles: ProfileStore
    store: Store


async def _open(store_target: StoreTarget, settings: Settings) -> _Run:
    store = store_target.store()
    await store.load_library()
    return _Run(ProfileStore(store, settings), store)


async def _ingest(
    run: _Run, prefix: str, anon: str, history: list[list[dict[str, Any]]], *, known: bool = False
) -> None:
    for batch in history:
        res = await run.profiles.apply_batch(
            prefix, SITE, _events(batch, anon), anonymous=not known, now_ms=NOW_MS
        )
        assert res.accepted == len(batch), res


async def _raw(run: _Run, prefix: str) -> dict[str, Any]:
    raw = await run.store.call("GET", keys.profile_keys(prefix)[0])
    return {} if raw is None else orjson.loads(raw)


# -- what each write rule means, from the events alone -------------------------------

_EPOCH = re.search(r"^local DEDUPE_EPOCH_MS = (\d+)", LUA, re.M)
assert _EPOCH is not None
_DEDUPE_EPOCH_MS = int(_EPOCH[1])  # trim_ts counts hours from it


def _newest(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(events, key=lambda e: e["ts"], default=None)


def _expected_written(
    history: list[list[dict[str, Any]]], settings: Settings, classify: Any
) -> dict[str, Any]:
    """The stored value of every deterministic code, from the events and the layout."""
    events = [e for batch in history for e in batch]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    views = by_type.get("page_view", [])
    want: dict[str, Any] = {
        L.FIRST_TS: min(e["ts"] for e in events),
        L.LAST_TS: max(e["ts"] for e in events),
        L.ONLINE_UNTIL: max(e["ts"] for e in events) + settings.profile.presence_ttl_s * 1000,
        L.RL_COUNT: len(history),
        L.RL_WINDOW: NOW_MS,
        L.TRIM_TS: (NOW_MS - _DEDUPE_EPOCH_MS) // 3_600_000,  # the hour
    }
    for etype, evs in by_type.items():
        want[L.count(etype)] = len(evs)  # counter
    for e in views:
        if cat := classify(e["page"]):
            want[L.category(cat)] = want.get(L.category(cat), 0) + 1
    if dwell := [e["props"]["dwell_ms"] for e in by_type.get("heartbeat", [])]:
        want[L.DWELL] = sum(dwell)
    if last := _newest(views):  # latest: the newest event's value and its ms
        want[L.LAST_PAGE], want[L.LAST_PAGE_TS] = last["page"], last["ts"]
    if last := _newest([e for e in views if _touch(e)]):  # a touch replaces all of one
        want.update(_touch(last))
        want[L.UTM_TS] = last["ts"]
        # first: written once, by the first batch with a touch; its earliest touch
        batch = next(b for b in history if any(_touch(e) for e in b))
        first = min((e for e in batch if _touch(e)), key=lambda e: e["ts"])
        want.update({L.FIRST_PREFIX + k: v for k, v in _touch(first).items()})
        want[L.FIRST_UTM_TS] = first["ts"]
    pages = sorted(((e["ts"], e["page"]) for e in views), reverse=True)[: L.MAX_PAGES]
    if pages:
        want[L.PAGES] = [f"{ts} {page}" for ts, page in pages]
    for product in CALC_PRODUCTS:
        calcs = [e for e in by_type.get("calc", []) if e["props"]["product"] == product]
        if not (last := _newest(calcs)):
            continue
        if was := _calc_was(history, product):  # its ts: ms before the newest calculation
            want[L.calc(product, L.CALC_WAS)] = [was[0], was[1], was[2] - last["ts"]]
        p = last["props"]
        want[L.calc(product, L.CALC_N)] = len(calcs)
        want[L.calc(product, L.CALC_MAX)] = max(e["props"]["amount"] for e in calcs)
        want[L.calc(product, L.CALC_TS)] = last["ts"]
        want[L.calc(product, L.CALC_AMOUNT)] = p["amount"]
        want[L.calc(product, L.CALC_TERM)] = p["term_months"]
        for code, prop in ((L.CALC_RATE, "rate"), (L.CALC_MONTHLY, "monthly_payment")):
            if prop in p:  # else not stored: the newest calculation had none
                want[L.calc(product, code)] = p[prop]
    forms = by_type.get("form", [])
    for action in ("focus", "abandon", "submit"):
        if n := sum(1 for e in forms if e["props"]["action"] == action):
            want[L.form(action)] = n
    abandons = [e for e in forms if e["props"]["action"] == "abandon"]
    if last := _newest(abandons):
        want[L.FORM_LAST_ABANDON] = last["props"].get("form") or last["props"]["field"]
        want[L.FORM_LAST_ABANDON_TS] = last["ts"]
    for e in by_type.get("interest", []):
        product = e["props"]["product"]
        want[L.interest(product)] = max(want.get(L.interest(product), 0), e["ts"])
        if e["props"]["call_me"]:
            code = L.interest_call(product)
            want[code] = max(want.get(code, 0), e["ts"])
    return want


def _touch(view: dict[str, Any]) -> dict[str, str]:
    """A page view's touch codes, {} when it is no touch (in-site, own host, none)."""
    props = view.get("props") or {}
    touch = {k: v for k, v in props.items() if k.startswith("utm_")}
    if host := _REFERRER_HOSTS.get(props.get("referrer", "")):
        touch[L.REFERRER] = host
    return touch


def _calc_was(history: list[list[dict[str, Any]]], product: str) -> list[Any] | None:
    """c:<product>:was by its declared rule: each batch newer than the stored scenario
    keeps the scenario before its newest change of amount or term, its own or else the
    stored one; a late batch changes nothing."""
    stored: tuple[int, int, int] | None = None  # ts, amount, term
    was = None
    for batch in history:
        runs = sorted(
            (e["ts"], e["props"]["amount"], e["props"]["term_months"])
            for e in batch
            if e["type"] == "calc" and e["props"]["product"] == product
        )
        if not runs or (stored is not None and runs[-1][0] < stored[0]):
            continue
        changes = [i for i in range(1, len(runs)) if runs[i][1:] != runs[i - 1][1:]]
        if changes:
            ts, amount, term = runs[changes[-1] - 1]
            was = [amount, term, ts]
        elif stored is not None and stored[1:] != runs[-1][1:]:
            was = [stored[1], stored[2], stored[0]]
        stored = runs[-1]
    return was


def _expected_intent(
    history: list[list[dict[str, Any]]], settings: Settings, classify: Any
) -> dict[str, float]:
    """Decayed intent at NOW_MS: each event's weight halves every half-life."""
    intent: dict[str, float] = {}
    for e in (e for batch in history for e in batch):
        key = (
            e["props"]["product"] if e["type"] in ("calc", "interest") else classify(e.get("page"))
        )
        w = settings.intent_weights.get(e["type"], 0.0)
        if key and w > 0:
            age_ms = NOW_MS - e["ts"]
            intent[key] = intent.get(key, 0.0) + w * 2 ** (-age_ms / (HALF_LIFE_S * 1000))
    return intent


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float | int) and isinstance(got, float | int):
        return isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)
    return bool(got == want)


def _newest_path(h: dict[str, Any]) -> str | None:
    pages = page_entries(h.get(L.PAGES))
    return pages[0].partition(" ")[2] if pages else None


def _newest_page_ts(h: dict[str, Any]) -> int | None:
    pages = page_entries(h.get(L.PAGES))
    return int(pages[0].partition(" ")[0]) if pages else None


def _implied(h: dict[str, Any]) -> dict[str, Any]:
    """The fields rb_ingest leaves out while the profile implies them, with their values:
    last_page and lp_ts (pages' newest path and ts), s_last (last_ts), s_start (first_ts)."""
    out: dict[str, Any] = {L.LAST_PAGE: _newest_path(h), L.LAST_PAGE_TS: _newest_page_ts(h)}
    if L.S_N in h:
        out[L.S_START] = h.get(L.FIRST_TS)
    if L.LAST_TS in h and L.S_N in h:
        out[L.S_LAST] = h[L.LAST_TS]
    return {k: v for k, v in out.items() if v is not None}


def _spelled_out(h: dict[str, Any]) -> dict[str, Any]:
    """The profile with the fields left out while it implies them spelled out."""
    return {**_implied(h), **h}


def _last_page_left_out_when_implied(h: dict[str, Any]) -> bool:
    """No field the profile implies is stored (with the value it implies)."""
    return all(h.get(k) != v for k, v in _implied(h).items())


def _check_decoded(raw: dict[str, Any], decoded: dict[str, Any]) -> None:
    """Every stored code lands where its declared field says, with its stored value."""
    for code, value in raw.items():
        found = family_of(code)
        assert found is not None, f"{code!r} is stored but not declared in layout.py"
        field, name = found
        if field.decoded is None or field.write in (Write.DECAYED,):
            continue
        got = _at(decoded, field.decoded.replace("<" + _placeholder(field) + ">", name))
        want = None if value == "" else page_entries(value) if code == L.PAGES else value
        if field.code == L.calc_code(L.CALC_WAS):
            amount, term, ts = value
            if ts <= 0:  # ms before the newest calculation
                ts += raw[L.calc(name, L.CALC_TS)]
            want = {"amount": amount, "term_months": term, "ts": ts}
        assert _same(got, want), (code, got, want)


def _placeholder(field: Field) -> str:
    m = re.search(r"<(\w+)>", field.code)
    return m[1] if m else ""


def _at(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


def _with_profile_settings(settings: Settings) -> Settings:
    assert settings.profile.intent_half_life_s == HALF_LIFE_S
    return settings


@_PROPERTY
@given(history=histories())
def test_a_history_through_rb_ingest_stores_what_each_declared_write_rule_says_and_decodes(
    store_target: StoreTarget, settings: Settings, history: list[list[dict[str, Any]]]
) -> None:
    settings = _with_profile_settings(settings)

    async def scenario() -> tuple[dict[str, Any], ProfileStore]:
        run = await _open(store_target, settings)
        try:
            anon = "anon" + uuid.uuid4().hex[:16]
            prefix = keys.anonymous_prefix(SITE, anon)
            await _ingest(run, prefix, anon, history)
            return await _raw(run, prefix), run.profiles
        finally:
            await run.store.close()

    raw, profiles = asyncio.run(scenario())
    classify = profiles.classifier.category
    assert decode_profile(raw, NOW_MS, HALF_LIFE_S)["last_page"] == _spelled_out(raw).get(
        L.LAST_PAGE
    )
    want = _expected_written(history, settings, classify)
    assert _last_page_left_out_when_implied(raw)
    full = _spelled_out(raw)
    for code, value in want.items():
        assert code in full, f"{code} missing; stored {sorted(raw)}"
        got = page_entries(full[code]) if code == L.PAGES else full[code]
        assert _same(got, value), (code, got, value)
    for code, prop in ((L.CALC_RATE, "rate"), (L.CALC_MONTHLY, "monthly_payment")):
        absent = {L.calc(p, code) for p in CALC_PRODUCTS} - set(want)
        assert not absent & set(raw), f"{prop} stored for a calculation without one"
    assert raw.get(L.S_DWELL) != 0, "a count of 0 is left out"
    assert L.SITE not in raw, "an anonymous profile's key holds its site"

    # Codes the model above does not pin down, by their declared rules.
    intent_keys = {code[len(L.INTENT) :] for code in raw if code.startswith(L.INTENT)}
    assert {code[len(L.INTENT_TS) :] for code in raw if code.startswith(L.INTENT_TS)} == (
        intent_keys
    )
    for space in SPACES:  # recounted bookkeeping: the names each capped space holds
        # absent: 0 (kn:c is always there: it marks a profile stored with the caps)
        assert raw.get(space.count_code, 0) == len(_names(raw, space)), space
        assert raw.get(space.count_code) != 0 or space is L.CALC_SPACE, space
    assert 1 <= raw[L.S_N] and full[L.S_START] <= full[L.S_LAST] <= raw[L.LAST_TS]
    assert 1 <= raw[L.S_EVENTS] <= sum(len(b) for b in history)
    checked_above = {s.count_code for s in SPACES} | {f.code for f in FIELDS if f.write is _SESSION}
    unexplained = {
        code
        for code in set(raw) - set(want) - checked_above
        if not code.startswith((L.INTENT, L.INTENT_TS))
    }
    assert unexplained == set()

    decoded = decode_profile(raw, NOW_MS, HALF_LIFE_S)
    _check_decoded(full, decoded)  # what is left out as implied reads as spelled out
    intent = _expected_intent(history, settings, classify)
    assert decoded["intent"].keys() == intent.keys()
    for key, value in intent.items():
        assert isclose(decoded["intent"][key], value, rel_tol=1e-5, abs_tol=1e-5), key


_SESSION = Write.SESSION


def _names(raw: dict[str, Any], space: L.Space) -> set[str]:
    names: set[str] = set()
    for code in raw:
        found = family_of(code)
        if found is not None and found[0].space is space and found[1]:
            names.add(found[1])
    return names


# -- merges ---------------------------------------------------------------------------


def _num(h: dict[str, Any], code: str) -> float:
    return float(h.get(code) or 0)


def _merged_value(field: Field, name: str, code: str, a: dict[str, Any], c: dict[str, Any]) -> Any:
    """What the declared merge rule says the customer's `code` is after folding A into C."""
    both = [h[code] for h in (a, c) if code in h]
    rule = field.merge
    if rule is Merge.SUM:
        return a.get(code, 0) + c.get(code, 0)
    if rule is Merge.MAX:
        return max(both)
    if rule is Merge.MIN:
        return min(both)
    if rule is Merge.FIRST:
        return c[code] if code in c else a.get(code)
    # A's newest product or session wins with all its fields: one A lacks (a rate, a
    # dwell of 0) is absent from the merge too.
    if rule is Merge.NEWEST_PRODUCT:
        ts = L.calc(name, L.CALC_TS)
        return a.get(code) if _num(a, ts) > _num(c, ts) else c.get(code)
    if rule is Merge.NEWEST_SESSION:
        return a.get(code) if _num(a, L.S_LAST) > _num(c, L.S_LAST) else c.get(code)
    if rule is Merge.NEWER_PROFILE:
        newer = _num(a, L.LAST_TS) > _num(c, L.LAST_TS)
        return a[code] if code in a and (newer or code not in c) else c.get(code)
    if rule is Merge.KEPT:
        return c.get(code)
    # Touches merge whole: A's last touch when newer; the earlier first touch (C's on a
    # tie, or when either side's has no first_utm_ts to compare; A's when C has none).
    if rule is Merge.NEWEST_TOUCH:
        return a.get(code) if _num(a, L.UTM_TS) > _num(c, L.UTM_TS) else c.get(code)
    if rule is Merge.EARLIEST_TOUCH:
        c_has = any(k in c for k in (*L.FIRST_TOUCH, L.FIRST_UTM_TS))
        a_ts, c_ts = a.get(L.FIRST_UTM_TS), c.get(L.FIRST_UTM_TS)
        a_earlier = a_ts is not None and c_ts is not None and a_ts < c_ts
        return a.get(code) if not c_has or a_earlier else c.get(code)
    if rule in (Merge.UNION_MIN, Merge.UNION_MAX):
        pick = min if rule is Merge.UNION_MIN else max
        union: dict[str, int] = {}
        for side in (a.get(code) or {}, c.get(code) or {}):
            for k, v in side.items():
                union[k] = pick(union.get(k, v), v)
        return union or None
    raise AssertionError(f"{rule} is checked on its own")


@_PROPERTY
@given(anon_history=histories(), customer_history=histories())
def test_rb_merge_apply_combines_each_field_as_its_declared_merge_rule_says(
    store_target: StoreTarget,
    settings: Settings,
    anon_history: list[list[dict[str, Any]]],
    customer_history: list[list[dict[str, Any]]],
) -> None:
    settings = _with_profile_settings(settings)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        run = await _open(store_target, settings)
        try:
            anon, customer = "anon" + uuid.uuid4().hex[:16], "cust-" + uuid.uuid4().hex[:8]
            a_prefix = keys.anonymous_prefix(SITE, anon)
            c_prefix = keys.customer_prefix(customer)
            await _ingest(run, a_prefix, anon, anon_history)
            await _ingest(
                run, c_prefix, "anon" + uuid.uuid4().hex[:16], customer_history, known=True
            )
            a, c = await _raw(run, a_prefix), await _raw(run, c_prefix)
            assert await run.profiles.merge(SITE, anon, customer) == "merged"
            return a, c, await _raw(run, c_prefix)
        finally:
            await run.store.close()

    a, c, merged = asyncio.run(scenario())
    assert all(family_of(code) for code in merged), sorted(merged)
    assert _last_page_left_out_when_implied(merged)
    a, c, merged = _spelled_out(a), _spelled_out(c), _spelled_out(merged)
    for code in set(a) | set(c) | set(merged):
        found = family_of(code)
        assert found is not None, code
        field, name = found
        got: Any = merged.get(code)
        if field.merge is Merge.DECAYED_SUM:
            continue  # below, on the decoded values
        if field.merge is Merge.RECENT:
            got = page_entries(got)
            everything = sorted(page_entries(a.get(code)) + page_entries(c.get(code)), reverse=True)
            assert [p.split()[0] for p in got] == [p.split()[0] for p in everything][: L.MAX_PAGES]
            assert set(got) <= set(everything)
            continue
        if field.merge is Merge.RECOUNTED:
            assert field.space is not None
            assert (got or 0) == len(_names(merged, field.space)), code
            continue
        want = _merged_value(field, name, code, a, c)
        assert _same(got, want), (code, field.merge, got, want, a.get(code), c.get(code))

    # Decayed sums add up: at any read time, the merged intent is A's plus C's.
    for now_ms in (NOW_MS, NOW_MS + 3 * 86_400_000):
        da, dc, dm = (decode_profile(h, now_ms, HALF_LIFE_S)["intent"] for h in (a, c, merged))
        assert dm.keys() == da.keys() | dc.keys()
        for key, value in dm.items():
            want = da.get(key, 0.0) + dc.get(key, 0.0)
            assert isclose(value, want, rel_tol=1e-5, abs_tol=1e-5), key


# -- decode_profile reads every declared field -----------------------------------------


def _sample_profile() -> tuple[dict[str, Any], dict[str, Any]]:
    """A profile holding every declared code once, each with its own value; and the
    value decode_profile should show for it."""
    h: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for i, field in enumerate(FIELDS, start=1):
        name = {"type": "page_view", "category": "loans", "key": "loans"}.get(
            _placeholder(field), "mortgage"
        )
        code = re.sub(r"<\w+>", name, field.code)
        if field.write is Write.RECENT:
            value: Any = [f"{T0_MS + i} /p{i}"]
        elif field.space is L.SEGMENT_SPACE:
            value = {"seg_a": T0_MS + i, "seg_b": T0_MS}
        elif field.code == L.calc_code(L.CALC_WAS):
            value = [250_000, 300, T0_MS + i]
        elif field.code == L.ATTRS:
            value = {"segment": "gold"}
        elif field.write in (Write.LATEST, Write.FIRST, Write.EXTERNAL) and not (
            code.endswith("ts") or code.startswith(L.CALC)
        ):
            value = f"v{i}"
        else:
            value = T0_MS + i if field.write is not Write.DECAYED else 4.0
        h[code] = value
        if field.code == L.calc_code(L.CALC_WAS):
            value = {"amount": 250_000, "term_months": 300, "ts": T0_MS + i}
        if field.decoded is not None:
            shown[field.decoded.replace("<" + _placeholder(field) + ">", name)] = value
    return h, shown


def test_decode_profile_reads_every_declared_field_where_the_layout_says() -> None:
    h, shown = _sample_profile()
    decoded = decode_profile(h, NOW_MS, HALF_LIFE_S)
    intent = L.intent("loans")
    for path, value in shown.items():
        got = _at(decoded, path)
        if path == "intent.loans":  # decayed from it:loans to now
            age_ms = NOW_MS - h[L.intent_ts("loans")]
            value = round(h[intent] * 2 ** (-age_ms / (HALF_LIFE_S * 1000)), 6)
        assert _same(got, value), (path, got, value)
    assert customer_attributes(h) == h[L.ATTRS]


def test_every_value_decode_profile_shows_comes_from_a_declared_field() -> None:
    h, shown = _sample_profile()
    decoded = decode_profile(h, NOW_MS, HALF_LIFE_S)
    derived = {"known", "online", "last_call_request"}  # computed from declared fields

    # Values that are objects themselves: {segment: ms}, a calculator's previous scenario.
    whole = ("pages", "segments", "segments_exited")

    def leaves(node: Any, path: str) -> list[str]:
        if (
            isinstance(node, dict)
            and path.split(".")[0] not in whole
            and not path.endswith(".previous")
        ):
            return [p for k, v in node.items() for p in leaves(v, f"{path}.{k}".lstrip("."))]
        return [path]

    assert set(leaves(decoded, "")) - derived == set(shown)
