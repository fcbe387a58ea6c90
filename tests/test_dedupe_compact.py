"""The compact profile and dedupe set (issue 12, memory): what they store, and that
nothing a reader sees changes.

The dedupe set keeps a 64-bit hash of each event id, scored by the hour it arrived;
`pages` keeps gaps instead of timestamps and a repeated path once; `last_page`,
`rate`, `monthly` are left out when they say nothing new. Everything goes through the
real `rb_ingest` / `rb_merge_apply` in a real valkey-server.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from conftest import REPO, StoreTarget

from engine.core.settings import Settings
from engine.ingest.schema import Event, decode_batch
from engine.profile import layout as L
from engine.profile.profiles import ProfileStore, decode_profile, dedupe_member
from engine.valkey import keys
from engine.valkey.store import Store

SITE = "demo-bank"
HOUR_MS = 3_600_000
T0_MS = 1_796_200_000_000  # 2026-12
_EPOCH = re.search(
    r"^local DEDUPE_EPOCH_MS = (\d+)", (REPO / "engine/valkey/lua/ringback.lua").read_text(), re.M
)
assert _EPOCH is not None
_EPOCH_MS = int(_EPOCH[1])  # dedupe scores count hours from it

T = TypeVar("T")


def _run(store_target: StoreTarget, settings: Settings, body: Callable[..., Awaitable[T]]) -> T:
    async def main() -> T:
        store = store_target.store()
        await store.load_library()
        try:
            return await body(ProfileStore(store, settings), store)
        finally:
            await store.close()

    return asyncio.run(main())


def _events(anon: str, *evs: dict[str, Any]) -> list[Event]:
    body = {"site": SITE, "anonymous_id": anon, "events": list(evs)}
    return list(decode_batch(orjson.dumps(body)).events)


def _view(eid: str, ts: int, page: str) -> dict[str, Any]:
    return {"id": eid, "type": "page_view", "ts": ts, "page": page}


def _calc(eid: str, ts: int, amount: int, **props: Any) -> dict[str, Any]:
    props = {"product": "mortgage", "amount": amount, "term_months": 300, **props}
    return {"id": eid, "type": "calc", "ts": ts, "props": props}


def _anon() -> str:
    return "anon" + uuid.uuid4().hex[:16]


async def _raw(store: Store, prefix: str) -> dict[str, Any]:
    raw = await store.call("GET", keys.profile_keys(prefix)[0])
    return {} if raw is None else orjson.loads(raw)


# -- the dedupe set -------------------------------------------------------------------


def test_a_retried_batch_counts_once_and_the_set_holds_a_64_bit_hash_per_id(
    store_target: StoreTarget, settings: Settings
) -> None:
    anon = _anon()
    prefix = keys.anonymous_prefix(SITE, anon)
    batch = _events(anon, _view("e1", T0_MS, "/"), _view("e2", T0_MS + 1, "/a"))
    batch += _events(anon, _view("e1", T0_MS, "/"))  # a duplicate within the batch

    async def body(profiles: ProfileStore, store: Store) -> tuple[Any, ...]:
        first = await profiles.apply_batch(prefix, SITE, batch, anonymous=True, now_ms=T0_MS)
        again = await profiles.apply_batch(prefix, SITE, batch, anonymous=True, now_ms=T0_MS)
        seen = keys.profile_keys(prefix)[1]
        members = await store.call("ZRANGE", seen, 0, -1)
        return (
            first,
            again,
            members,
            await store.call("ZMSCORE", seen, *members),
            await store.call("OBJECT", "ENCODING", seen),
        )

    first, again, members, scores, encoding = _run(store_target, settings, body)
    assert (first.accepted, first.duplicates) == (2, 1)
    assert (again.accepted, again.duplicates) == (0, 3)
    assert sorted(members) == sorted([dedupe_member("e1"), dedupe_member("e2")])
    assert all(-(2**63) <= int(m) < 2**63 for m in members)
    assert {float(s) for s in scores} == {(T0_MS - _EPOCH_MS) // HOUR_MS}
    assert encoding == "listpack"


def test_an_id_is_a_duplicate_for_the_whole_window_and_new_after_it(
    store_target: StoreTarget, settings: Settings
) -> None:
    anon = _anon()
    prefix = keys.anonymous_prefix(SITE, anon)
    window_ms = settings.profile.dedupe_window_s * 1000

    async def body(profiles: ProfileStore, store: Store) -> list[int]:
        accepted = []
        # The hourly trim runs after a batch's check, so an id is forgotten at the first
        # trim past its window: the batch at window + 1 h is what drops it.
        for i, now in enumerate(
            (
                T0_MS,
                T0_MS + window_ms - HOUR_MS,
                T0_MS + window_ms + HOUR_MS,
                T0_MS + window_ms + HOUR_MS,
            )
        ):
            batch = _events(anon, _view("same", T0_MS, "/"), _view(f"new{i}", now, "/"))
            res = await profiles.apply_batch(prefix, SITE, batch, anonymous=True, now_ms=now)
            accepted.append(res.accepted)
        return accepted

    assert _run(store_target, settings, body) == [2, 1, 1, 2]


def test_ids_stored_before_hashing_are_trimmed_on_the_next_batch(
    store_target: StoreTarget, settings: Settings
) -> None:
    """A set written by an older engine: raw ids scored in ms, trim_ts in ms."""
    anon = _anon()
    prefix = keys.anonymous_prefix(SITE, anon)
    p_key, seen = keys.profile_keys(prefix)[:2]

    async def body(profiles: ProfileStore, store: Store) -> tuple[Any, ...]:
        await profiles.apply_batch(
            prefix, SITE, _events(anon, _view("e1", T0_MS, "/")), anonymous=True, now_ms=T0_MS
        )
        profile = await _raw(store, prefix)
        profile[L.TRIM_TS] = T0_MS
        await store.call("SET", p_key, orjson.dumps(profile))
        await store.call("ZADD", seen, T0_MS, "old-id-12345")
        res = await profiles.apply_batch(
            prefix, SITE, _events(anon, _view("e2", T0_MS + 1, "/")), anonymous=True, now_ms=T0_MS
        )
        return res, await store.call("ZRANGE", seen, 0, -1), await _raw(store, prefix)

    res, members, profile = _run(store_target, settings, body)
    assert res.accepted == 1
    assert sorted(members) == sorted([dedupe_member("e1"), dedupe_member("e2")])
    assert profile[L.TRIM_TS] == (T0_MS - _EPOCH_MS) // HOUR_MS


def test_events_the_anonymous_profile_counted_are_duplicates_after_the_merge(
    store_target: StoreTarget, settings: Settings
) -> None:
    anon, customer = _anon(), "cust-" + uuid.uuid4().hex[:8]
    batch = _events(anon, _view("e1", T0_MS, "/"), _view("e2", T0_MS + 1, "/a"))

    async def body(profiles: ProfileStore, store: Store) -> Any:
        await profiles.apply_batch(
            keys.anonymous_prefix(SITE, anon), SITE, batch, anonymous=True, now_ms=T0_MS
        )
        assert await profiles.merge(SITE, anon, customer) == "merged"
        return await profiles.apply_batch(
            keys.customer_prefix(customer), SITE, batch, anonymous=False, now_ms=T0_MS + HOUR_MS
        )

    res = _run(store_target, settings, body)
    assert (res.accepted, res.duplicates) == (0, 2)


# -- the compact profile ---------------------------------------------------------------


def test_pages_keep_gaps_and_a_repeated_path_once_and_read_back_in_full(
    store_target: StoreTarget, settings: Settings
) -> None:
    anon = _anon()
    prefix = keys.anonymous_prefix(SITE, anon)
    t = T0_MS

    async def body(profiles: ProfileStore, store: Store) -> tuple[dict[str, Any], ...]:
        views = [
            _view("a1", t, "/calc"),
            _view("a2", t + 1000, "/calc"),
            _view("b", t + 5000, "/b"),
        ]
        await profiles.apply_batch(prefix, SITE, _events(anon, *views), anonymous=True, now_ms=t)
        first = await _raw(store, prefix)
        late = _events(anon, _view("c", t + 2000, "/c"))  # arrives late, lands in between
        await profiles.apply_batch(prefix, SITE, late, anonymous=True, now_ms=t + 6000)
        return first, await _raw(store, prefix)

    first, later = _run(store_target, settings, body)
    assert first[L.PAGES] == [f"{t + 5000} /b", "-4000 /calc", "-1000"]
    assert L.LAST_PAGE not in first  # it is the newest page's path
    assert later[L.PAGES] == [f"{t + 5000} /b", "-3000 /c", "-1000 /calc", "-1000"]
    decoded = decode_profile(later, t + 6000, settings.profile.intent_half_life_s)
    assert decoded["pages"] == [
        f"{t + 5000} /b",
        f"{t + 2000} /c",
        f"{t + 1000} /calc",
        f"{t} /calc",
    ]
    assert decoded["last_page"] == "/b"


def test_pages_stored_by_an_older_engine_merge_with_new_ones(
    store_target: StoreTarget, settings: Settings
) -> None:
    anon = _anon()
    prefix = keys.anonymous_prefix(SITE, anon)
    t = T0_MS

    async def body(profiles: ProfileStore, store: Store) -> dict[str, Any]:
        await profiles.apply_batch(
            prefix, SITE, _events(anon, _view("x", t + 10, "/x")), anonymous=True, now_ms=t
        )
        profile = await _raw(store, prefix)
        profile[L.PAGES] = [f"{t + 10} /x", f"{t} /y"]  # absolute entries, as stored before
        profile[L.LAST_PAGE] = "/x"
        await store.call("SET", keys.profile_keys(prefix)[0], orjson.dumps(profile))
        late = _events(anon, _view("z", t + 5, "/z"))
        await profiles.apply_batch(prefix, SITE, late, anonymous=True, now_ms=t + 20)
        return await _raw(store, prefix)

    profile = _run(store_target, settings, body)
    assert profile[L.PAGES] == [f"{t + 10} /x", "-5 /z", "-5 /y"]


def test_a_page_longer_than_a_pages_entry_keeps_last_page_in_full(
    store_target: StoreTarget, settings: Settings
) -> None:
    anon = _anon()
    prefix = keys.anonymous_prefix(SITE, anon)
    long_page = "/guides/" + "x" * 150

    async def body(profiles: ProfileStore, store: Store) -> dict[str, Any]:
        batch = _events(anon, _view("l", T0_MS, long_page))
        await profiles.apply_batch(prefix, SITE, batch, anonymous=True, now_ms=T0_MS)
        return await _raw(store, prefix)

    profile = _run(store_target, settings, body)
    assert profile[L.LAST_PAGE] == long_page
    decoded = decode_profile(profile, T0_MS, settings.profile.intent_half_life_s)
    assert decoded["last_page"] == long_page
    assert decoded["pages"][0] != f"{T0_MS} {long_page}"  # the entry is clipped


def test_a_newer_calculation_without_a_rate_leaves_none_an_older_one_changes_nothing(
    store_target: StoreTarget, settings: Settings
) -> None:
    anon = _anon()
    prefix = keys.anonymous_prefix(SITE, anon)
    t = T0_MS

    async def body(profiles: ProfileStore, store: Store) -> list[dict[str, Any]]:
        out = []
        for batch in (
            [_calc("c1", t, 200_000, rate=4.2, monthly_payment=1100)],
            [_calc("c2", t + 1000, 210_000)],  # newer, no rate
            [_calc("c0", t - 1000, 190_000, rate=3.9, monthly_payment=1000)],  # late
        ):
            await profiles.apply_batch(
                prefix, SITE, _events(anon, *batch), anonymous=True, now_ms=t + 2000
            )
            out.append(await _raw(store, prefix))
        return out

    with_rate, without, after_late = _run(store_target, settings, body)
    half_life_s = settings.profile.intent_half_life_s
    calc = decode_profile(with_rate, t, half_life_s)["calc"]["mortgage"]
    assert (calc["rate"], calc["monthly_payment"]) == (4.2, 1100)
    for profile in (without, after_late):
        assert L.calc("mortgage", L.CALC_RATE) not in profile
        calc = decode_profile(profile, t, half_life_s)["calc"]["mortgage"]
        assert (calc["amount"], calc["rate"], calc["monthly_payment"]) == (210_000, None, None)
