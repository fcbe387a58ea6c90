"""A profile is stored without what it implies (the calculator's previous ts as ms before
the newest calculation, lp_ts / s_last / s_start while they are the newest page's ts,
last_ts and first_ts, an anonymous profile's site, `\\/` escapes), and reads as if it
had them all: one stored by the release before, in full, reads the same and takes new
batches the same (a rolling upgrade)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from conftest import StoreTarget

from engine.core.settings import Settings
from engine.ingest.schema import CalcEvent, CalcProps, Event, PageViewEvent
from engine.profile import layout as L
from engine.profile.profiles import ProfileStore, decode_profile, page_entries
from engine.valkey import keys
from engine.valkey.store import Store

SITE = "demo-bank"
T0_MS = 1_796_000_000_000
HALF_LIFE_S = 86_400


def _view(ts: int, page: str) -> PageViewEvent:
    return PageViewEvent(id=uuid.uuid4().hex[:12], ts=ts, page=page)


def _calc(ts: int, amount: float, term: int = 300) -> CalcEvent:
    props = CalcProps(product="mortgage", amount=amount, term_months=term)
    return CalcEvent(id=uuid.uuid4().hex[:12], ts=ts, page="/mortgages/calculator", props=props)


# One session on the mortgage journey, a changed scenario in it (200k -> 250k)...
FIRST: list[Event] = [
    _view(T0_MS, "/"),
    _view(T0_MS + 4_000, "/mortgages"),
    _view(T0_MS + 8_000, "/mortgages/calculator"),
    _calc(T0_MS + 9_000, 200_000),
    _calc(T0_MS + 12_000, 250_000),
]
# ...then the same scenario again, later (the previous one stays, its ts too)...
SAME: list[Event] = [_calc(T0_MS + 40_000, 250_000), _view(T0_MS + 41_000, "/mortgages/rates")]
# ...and, after a session gap, a new scenario: the 250k one becomes previous.
NEW: list[Event] = [_view(T0_MS + 3_600_000, "/mortgages"), _calc(T0_MS + 3_601_000, 300_000)]
NOW_MS = T0_MS + 3_700_000


@pytest.fixture
async def profiles(store_target: StoreTarget, settings: Settings) -> AsyncIterator[ProfileStore]:
    store: Store = store_target.store()
    await store.load_library()
    yield ProfileStore(store, settings)
    await store.close()


async def _apply(profiles: ProfileStore, prefix: str, events: list[Event]) -> None:
    res = await profiles.apply_batch(prefix, SITE, events, anonymous=True, now_ms=NOW_MS)
    assert res.accepted == len(events)


async def _stored(profiles: ProfileStore, prefix: str) -> bytes:
    raw = await profiles.store.call("GET", keys.profile_keys(prefix)[0], raw=True)
    assert isinstance(raw, bytes)
    return raw


def _decoded(raw: bytes) -> dict[str, Any]:
    return decode_profile(orjson.loads(raw), NOW_MS, HALF_LIFE_S)


def _as_the_release_before(raw: bytes) -> bytes:
    """The profile as the previous rb_ingest stored it: every timestamp spelled out, the
    previous scenario's ts in full, the site, cjson's `\\/`."""
    h = orjson.loads(raw)
    newest = page_entries(h[L.PAGES])[0].split(" ")[0]
    h.setdefault(L.LAST_PAGE_TS, int(newest))
    h.setdefault(L.S_LAST, h[L.LAST_TS])
    h.setdefault(L.S_START, h[L.FIRST_TS])
    h.setdefault(L.SITE, SITE)
    was = L.calc("mortgage", L.CALC_WAS)
    if was in h:
        amount, term, ts = h[was]
        h[was] = [amount, term, ts + h[L.calc("mortgage", L.CALC_TS)]]
    return orjson.dumps(h).replace(b"/", b"\\/")


async def test_a_profile_is_stored_without_what_it_implies(profiles: ProfileStore) -> None:
    prefix = keys.anonymous_prefix(SITE, "anon" + uuid.uuid4().hex[:16])
    await _apply(profiles, prefix, FIRST)
    raw = await _stored(profiles, prefix)
    h = orjson.loads(raw)

    assert b"\\/" not in raw and b' /mortgages/calculator"' in raw
    assert not {L.LAST_PAGE, L.LAST_PAGE_TS, L.S_LAST, L.S_START, L.SITE} & set(h)
    assert h[L.calc("mortgage", L.CALC_WAS)] == [200_000, 300, -3_000]

    p = _decoded(raw)
    assert p["calc"]["mortgage"]["previous"] == {
        "amount": 200_000.0,
        "term_months": 300,
        "ts": T0_MS + 9_000,
    }
    assert p["session"]["start"] == T0_MS and p["session"]["last_seen"] == T0_MS + 12_000
    assert p["last_page"] == "/mortgages/calculator"
    assert p["pages"][0] == f"{T0_MS + 8_000} /mortgages/calculator"


async def test_a_profile_the_release_before_stored_reads_and_updates_the_same(
    profiles: ProfileStore,
) -> None:
    now_form = keys.anonymous_prefix(SITE, "anon" + uuid.uuid4().hex[:16])
    old_form = keys.anonymous_prefix(SITE, "anon" + uuid.uuid4().hex[:16])
    await _apply(profiles, now_form, FIRST)
    full = _as_the_release_before(await _stored(profiles, now_form))
    await profiles.store.call("SET", keys.profile_keys(old_form)[0], full, writes=True)
    assert _decoded(full) == _decoded(await _stored(profiles, now_form))

    for batch in (SAME, NEW):  # each profile dedupes on its own
        await _apply(profiles, now_form, batch)
        await _apply(profiles, old_form, batch)
        got = _decoded(await _stored(profiles, old_form))
        want = _decoded(await _stored(profiles, now_form))
        assert got == want

    previous = want["calc"]["mortgage"]["previous"]
    assert previous == {"amount": 250_000.0, "term_months": 300, "ts": T0_MS + 40_000}
    assert want["session"]["number"] == 2 and want["session"]["start"] == T0_MS + 3_600_000
