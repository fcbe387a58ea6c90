"""Live visitor profiles in Valkey: update, merge, read, erase.

The hot path is `ProfileStore.apply_batch`: ONE `FCALL rb_ingest` per batch, which
dedupes event ids, updates counters, decayed intent, session, presence and
calculator state, and returns the whole profile hash for the decision step. The
Lua side lives in `engine/valkey/lua/ringback.lua`; its header documents every field.

Anonymous -> known merges are the one cross-slot operation. They are rare (the first
identified batch of a visitor), explicit, and idempotent: the customer's `links` set
is checked and updated atomically inside `rb_merge_apply`, so a retried or
concurrent merge never double-counts.

Erasure lives a stage up (engine/privacy/erasure.py): it reaches beyond profiles.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any
from urllib.parse import urlsplit

import orjson

from engine.core.errors import RateLimited, StoreUnavailable
from engine.core.settings import Settings
from engine.ingest.schema import Event
from engine.profile.delta import build_delta
from engine.profile.layout import (
    ATTRS,
    CALC,
    CALC_DECODED,
    CALC_INT_FIELDS,
    CALC_MONTHLY,
    CALC_RATE,
    CALC_TS,
    CALC_WAS,
    CALL_SUFFIX,
    CATEGORY,
    COUNT,
    DWELL,
    FIELDS,
    FIRST_TS,
    FORM_ABANDON,
    FORM_FOCUS,
    FORM_LAST_ABANDON,
    FORM_LAST_ABANDON_TS,
    FORM_SUBMIT,
    INTENT,
    INTENT_TS,
    INTEREST,
    LAST_PAGE,
    LAST_TS,
    MERGED_INTO,
    ONLINE_UNTIL,
    PAGES,
    S_DWELL,
    S_EVENTS,
    S_LAST,
    S_N,
    S_PAGES,
    S_START,
    SEGMENTS,
    SEGMENTS_EXITED,
)
from engine.profile.phones import PHONE_REF_FIELD
from engine.valkey import keys
from engine.valkey.store import Store

log = logging.getLogger("ringback.profile")

__all__ = [
    "BatchResult",
    "PageClassifier",
    "ProfileStore",
    "decode_profile",
    "dedupe_member",
    "own_hosts",
    "page_entries",
]


def dedupe_member(event_id: str) -> str:
    """The member an event id is kept as in the profile's dedupe set: a 64-bit hash, in
    decimal, so the set's listpack stores it as one 8-byte integer (10 B an entry with
    its back-length, where a 12-character snippet id took 14 and a longer one more).

    At 64 bits a false "duplicate" needs two ids of one visitor's 25 h window to collide:
    about n^2 / 2^65, 3e-12 for a visitor with 10,000 events in the window.

    >>> dedupe_member("k3j9x0a1b2c4")
    '-3637610331296765016'
    """
    digest = blake2b(event_id.encode(), digest_size=8).digest()
    return str(int.from_bytes(digest, "big", signed=True))


class PageClassifier:
    """URL path -> page category from config patterns, memoised (paths repeat a lot).

    >>> import re
    >>> c = PageClassifier(((("mortgage"), re.compile(r"/mortgage.*")),))
    >>> c.category("/mortgage/rates"), c.category("/about")
    ('mortgage', '')
    """

    def __init__(
        self, categories: Sequence[tuple[str, re.Pattern[str]]], cache_size: int = 4096
    ) -> None:
        self._categories = tuple(categories)
        self._cache: dict[str, str] = {}
        self._cache_size = cache_size

    def category(self, path: str | None) -> str:
        if not path:
            return ""
        hit = self._cache.get(path)
        if hit is not None:
            return hit
        found = ""
        for name, pattern in self._categories:
            if pattern.fullmatch(path):
                found = name
                break
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[path] = found
        return found


def own_hosts(
    allowed_origins: Sequence[str], public_url: str = "", internal_hosts: Sequence[str] = ()
) -> frozenset[str]:
    """A site's own host names, from its allowed origins (`self`: the engine's public
    URL) and its `internal_hosts` (the bank's hosts without the snippet: online banking,
    a payment page): a referrer from one is an in-site navigation or a return from the
    bank itself, not a campaign touch. Each with and without `www.`, since a bank serves
    both; a `*.bank.example` entry is kept as it is (`referrer_host` matches it against
    every subdomain).

    >>> sorted(own_hosts(["https://www.Bank.example", "self"], "http://127.0.0.1:8080"))
    ['127.0.0.1', 'bank.example', 'www.bank.example']
    >>> sorted(own_hosts([], "", ["netbank.example", "*.Pay.example"]))
    ['*.pay.example', 'netbank.example', 'www.netbank.example']
    """
    hosts: set[str] = set()
    names: list[str] = []
    for origin in allowed_origins:
        url = public_url if origin == "self" else origin
        try:
            host = urlsplit(url).hostname if url else None
        except ValueError:
            host = None
        if host:
            names.append(host)
    for name in internal_hosts:
        if name.startswith("*."):
            hosts.add(name.lower().rstrip("."))
        else:
            names.append(name.lower())
    for host in names:
        bare = host.rstrip(".").removeprefix("www.")
        hosts.update((bare, "www." + bare) if not _IP.fullmatch(bare) else (bare,))
    return frozenset(hosts)


_IP = re.compile(r"[0-9.]+|\[?[0-9a-f:]+\]?")


@dataclass(frozen=True, slots=True)
class BatchResult:
    accepted: int
    duplicates: int
    needs_merge: bool
    fields: dict[str, Any]
    accepted_flags: str = ""  # '1'/'0' per event in batch order
    # What rb_ingest's contact reservation did (candidates passed as `reserve`): one
    # [rule, channel, reason] per candidate policy refused, and [rule, channel, 'ok',
    # day, set_r, set_c, prev_r, prev_c] for the one it took (rb_release's argument).
    reservations: tuple[tuple[str, ...], ...] = ()
    round_trips: int = 1  # Valkey calls this batch took, in sequence (retries, merge)


class ProfileStore:
    """Profile operations over a coalescing `Store`."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.classifier = PageClassifier(settings.categories)
        self._weights = settings.intent_weights
        p = settings.profile
        self._dedupe_window_ms = p.dedupe_window_s * 1000
        self._half_life_ms = p.intent_half_life_s * 1000
        self._session_gap_ms = p.session_gap_s * 1000
        self._presence_ttl_ms = p.presence_ttl_s * 1000
        self._own_hosts = {
            site_id: own_hosts(site.allowed_origins, settings.public_url, site.internal_hosts)
            for site_id, site in settings.sites.items()
        }

    def delta(self, events: Sequence[Event], now_ms: int, site: str = "") -> dict[str, Any]:
        return build_delta(
            events,
            classify=self.classifier.category,
            weights=self._weights,
            half_life_ms=self._half_life_ms,
            session_gap_ms=self._session_gap_ms,
            presence_ttl_ms=self._presence_ttl_ms,
            now_ms=now_ms,
            own_hosts=self._own_hosts.get(site, frozenset()),
        )

    async def apply_batch(
        self,
        prefix: str,
        site: str,
        events: Sequence[Event],
        *,
        anonymous: bool,
        link: str = "",
        now_ms: int | None = None,
        reserve: Sequence[Mapping[str, Any]] = (),
    ) -> BatchResult:
        """Apply a batch to one profile in one round trip; raise RateLimited if over.

        The delta is built optimistically for "every event is new" (the common case);
        if Valkey has seen some ids, it writes nothing and says which, and we rebuild
        the delta for the new ones only (a retry overlapping a first send).

        `reserve`: contact candidates (`engine.decisions.precheck`) whose policy the
        same call checks and, for the first whose pre-check holds, takes: a callback
        then needs no reservation round trip of its own.
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        limits = self.settings.limits
        # Duplicates within the batch have equal members, so rb_ingest still finds them.
        ids = [dedupe_member(ev.id) for ev in events]
        expect = "1" * len(ids)
        header = {
            "now": now_ms,
            "ttl": self.settings.profile.anonymous_ttl_s if anonymous else 0,
            "win": self._dedupe_window_ms,
            "hl": self._half_life_ms,
            "gap": self._session_gap_ms,
            "rlmax": limits.batches_per_minute_per_visitor,
            "rlwin": 60_000,
            "link": link,
            "site": "" if anonymous else site,  # an anonymous profile's key holds it
            "ids": ids,
        }
        if reserve:
            header["res"] = reserve
        fresh: Sequence[Event] = events
        calls = 0
        for _ in range(4):
            calls += 1
            header["expect"] = expect
            header["delta"] = self.delta(fresh, now_ms, site)
            res = await self.store.fcall(
                "rb_ingest", keys.profile_keys(prefix), [orjson.dumps(header)]
            )
            if res[0] != "retry":
                break
            expect = res[1]
            fresh = [ev for ev, flag in zip(events, expect, strict=True) if flag == "1"]
        else:
            raise StoreUnavailable("profile kept changing under concurrent retries")
        if res[0] == "needs_merge":
            return BatchResult(accepted=0, duplicates=0, needs_merge=True, fields={})
        if res[0] == "rate_limited":
            raise RateLimited(
                "too many batches for this visitor", retry_after_s=int(res[1]) // 1000 + 1
            )
        return BatchResult(
            accepted=int(res[1]),
            duplicates=int(res[2]),
            needs_merge=False,
            fields=orjson.loads(res[4]),
            accepted_flags=res[5],
            reservations=tuple(tuple(v) for v in orjson.loads(res[6])) if res[6] else (),
            round_trips=calls,
        )

    async def ingest(
        self,
        site: str,
        anonymous_id: str,
        customer_id: str | None,
        events: Sequence[Event],
        now_ms: int,
        reserve: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[BatchResult, str | None]:
        """A batch into the visitor's profile - the customer's when identified - merging
        the anonymous history first on the visitor's first identified batch.

        Returns the result and the merge's outcome ('merged', 'already', 'conflict'; None
        when no merge was needed). The merge-then-retry lives here once, so the ingest
        handler and `rules test` replay read profile -> decide -> deliver.
        """
        if customer_id is not None:
            prefix = keys.customer_prefix(customer_id)
            link = keys.link_member(site, anonymous_id)
        else:
            prefix = keys.anonymous_prefix(site, anonymous_id)
            link = ""
        anonymous = customer_id is None
        result = await self.apply_batch(
            prefix, site, events, anonymous=anonymous, link=link, now_ms=now_ms, reserve=reserve
        )
        if not (result.needs_merge and customer_id is not None):
            return result, None
        # Rare: this visitor's first identified batch. Merge, then apply the batch to the
        # merged profile (without the link check, which a conflict would never satisfy).
        outcome = await self.merge(site, anonymous_id, customer_id)
        result = await self.apply_batch(
            prefix, site, events, anonymous=False, now_ms=now_ms, reserve=reserve
        )
        # The first call (needs_merge), the merge's two, then this batch's.
        return dataclasses.replace(result, round_trips=result.round_trips + 3), outcome

    async def merge(self, site: str, anonymous_id: str, customer_id: str) -> str:
        """Fold an anonymous profile into a customer's; 'merged', 'already' or 'conflict'."""
        anon_keys = keys.profile_keys(keys.anonymous_prefix(site, anonymous_id))
        exported = await self.store.fcall("rb_merge_export", anon_keys, [customer_id])
        if exported[0] == "conflict":
            return "conflict"
        fields, seen = exported[1], exported[2]
        args: list[Any] = [
            keys.link_member(site, anonymous_id),
            self._half_life_ms,
            self._dedupe_window_ms,
            fields,
            len(seen),
            *seen,
        ]
        applied = await self.store.fcall(
            "rb_merge_apply", keys.profile_keys(keys.customer_prefix(customer_id)), args
        )
        return "merged" if int(applied) == 1 else "already"

    async def read(
        self, prefix: str
    ) -> tuple[dict[str, Any], list[str], list[str], list[dict[str, Any]]]:
        """(profile fields, recent pages, linked anonymous ids, contact history, newest first)."""
        raw, links, hist = await self.store.fcall(
            "rb_read", keys.profile_keys(prefix), [], writes=False
        )
        fields = orjson.loads(raw)
        return (
            fields,
            page_entries(fields.get(PAGES)),
            sorted(links),
            [history_entry(entry_id, flat) for entry_id, flat in hist],
        )


def page_entries(stored: Any) -> list[str]:
    """The profile's `pages` as "ts path" entries, newest first.

    `rb_ingest` stores each entry after the newest as "-<ms before the one above> path",
    or "-<ms>" alone when its path is the one above's (ringback.lua `recent_pages`): a
    gap takes a few digits where a ts takes 13, a page viewed again none for its path.
    A profile stored before holds "ts path" entries only; they read as they are.

    >>> page_entries(["1700000009000 /loans", "-4000 /", "-500", "1700000001000 /old"])
    ['1700000009000 /loans', '1700000005000 /', '1700000004500 /', '1700000001000 /old']
    """
    if not isinstance(stored, list):
        return []
    out: list[str] = []
    ts: int | None = None
    path: str | None = None
    for entry in stored:
        head, sep, rest = str(entry).partition(" ")
        try:
            n = int(head)
        except ValueError:
            continue
        ts = ts + n if head[:1] == "-" and ts is not None else abs(n)
        if sep or path is None:
            path = rest
        out.append(f"{ts} {path}")
    return out


def _f(h: dict[str, Any], k: str) -> float:
    try:
        return float(h[k])
    except (KeyError, ValueError):
        return 0.0


def _i(h: dict[str, Any], k: str) -> int:
    return int(_f(h, k))


def decode_profile(
    h: dict[str, Any], now_ms: int, half_life_s: float, *, known: bool = False
) -> dict[str, Any]:
    """The profile hash as the plain dict that rules, scores and APIs read.

    Intent is decayed to `now_ms` here, so a stored value is never stale when read.
    The codes are `engine/profile/layout.py`'s; each declared field says where it lands:
    `campaign` holds the last touch (utm_*, `referrer` host, `ts`) and the first
    (`first_*`), only what is known; `calc.<product>.previous` the scenario before the
    newest change; `segments` / `segments_exited` {segment id: ms}.

    >>> p = decode_profile({"n:page_view": "3", "i:mortgage": "4", "it:mortgage": "0"},
    ...                    now_ms=86_400_000, half_life_s=86_400)
    >>> p["counts"]["page_view"], p["intent"]["mortgage"]
    (3, 2.0)
    """
    counts: dict[str, int] = {}
    categories: dict[str, int] = {}
    intent: dict[str, float] = {}
    calc: dict[str, dict[str, Any]] = {}
    interest: dict[str, int] = {}
    call_requested: dict[str, int] = {}
    half_life_ms = half_life_s * 1000
    pages = page_entries(h.get(PAGES))
    for k, v in h.items():
        if k.startswith(COUNT):
            counts[k[_N_LEN:]] = int(v)
        elif k.startswith(CATEGORY):
            categories[k[_CAT_LEN:]] = int(v)
        elif k.startswith(INTENT):
            key = k[_I_LEN:]
            age = max(0.0, now_ms - _f(h, INTENT_TS + key))
            intent[key] = round(float(v) * 2 ** (-age / half_life_ms), 6)
        elif k.startswith(CALC):
            _, prod, field = k.split(":", 2)
            c = calc.setdefault(prod, {})
            name = CALC_DECODED.get(field)
            if not c:  # stored only when the newest calculation had them (else none)
                c.update(_CALC_OPTIONAL)
            if field == CALC_WAS:
                if previous := _previous(v, h.get(CALC + prod + _TS_SUFFIX)):
                    c[_PREVIOUS] = previous
            elif name:
                c[name] = float(v) if v not in ("",) else None
                if name in CALC_INT_FIELDS and c[name] is not None:
                    c[name] = int(c[name])
        elif k.startswith(INTEREST):
            parts = k.split(":")
            if len(parts) == 3 and ":" + parts[2] == CALL_SUFFIX:
                call_requested[parts[1]] = int(float(v))
            elif len(parts) == 2:
                interest[parts[1]] = int(float(v))
    return {
        "known": known,
        "counts": counts,
        "categories": categories,
        "intent": intent,
        "calc": calc,
        "forms": {
            "focused": _i(h, FORM_FOCUS),
            "abandoned": _i(h, FORM_ABANDON),
            "submitted": _i(h, FORM_SUBMIT),
            "last_abandoned_form": h.get(FORM_LAST_ABANDON),
            "last_abandoned_ts": _i(h, FORM_LAST_ABANDON_TS) or None,
        },
        "interest": interest,
        "call_requested": call_requested,
        # The newest "call me" of any product: a visitor's own request for a call.
        "last_call_request": max(call_requested.values(), default=None),
        "session": {
            "number": _i(h, S_N),
            # Left out while they are first_ts / last_ts (ringback.lua `leave_out`).
            "start": _i(h, S_START) or (_i(h, FIRST_TS) if S_N in h else 0) or None,
            "last_seen": _i(h, S_LAST) or (_i(h, LAST_TS) if S_N in h else 0) or None,
            "pages": _i(h, S_PAGES),
            "dwell_ms": _i(h, S_DWELL),
            "events": _i(h, S_EVENTS),
        },
        "first_seen": _i(h, FIRST_TS) or None,
        "last_seen": _i(h, LAST_TS) or None,
        "online": now_ms < _f(h, ONLINE_UNTIL),
        "online_until": _i(h, ONLINE_UNTIL) or None,
        "dwell_ms": _i(h, DWELL),
        # Left out of the profile while it is the newest entry's path (rb_ingest).
        "last_page": h.get(LAST_PAGE) or (pages[0].partition(" ")[2] if pages else None),
        "pages": pages,
        "campaign": {name: h[k] for k, name in _CAMPAIGN if k in h},
        "segments": _ms_by_name(h.get(SEGMENTS)),
        "segments_exited": _ms_by_name(h.get(SEGMENTS_EXITED)),
        "merged_into": h.get(MERGED_INTO),
    }


def _previous(stored: Any, newest_ts: Any) -> dict[str, Any] | None:
    """c:<product>:was, stored [amount, term, ts], as {amount, term_months, ts}.

    `rb_ingest` stores its ts as ms before the newest calculation's (`newest_ts`,
    c:<product>:ts): <= 0, 6 digits where a ts takes 13. One stored before holds the
    ts itself (> 0) and reads as it is.

    >>> _previous([250000, 300, -4000], 1796225644342)
    {'amount': 250000.0, 'term_months': 300, 'ts': 1796225640342}
    >>> _previous([250000, 300, 1796225640342], 1796225644342)["ts"]
    1796225640342
    """
    if not isinstance(stored, list) or len(stored) != 3:
        return None
    amount, term, ts = stored
    ts = int(ts)
    if ts <= 0:
        try:
            ts += int(float(newest_ts))
        except (TypeError, ValueError):  # no newest calculation to count back from
            return None
    return {"amount": float(amount), "term_months": int(term), "ts": ts}


def _ms_by_name(stored: Any) -> dict[str, int]:
    """A stored {name: ms} object (segments), {} when absent (cjson writes {} as [])."""
    return {k: int(v) for k, v in stored.items()} if isinstance(stored, dict) else {}


_N_LEN, _CAT_LEN, _I_LEN = len(COUNT), len(CATEGORY), len(INTENT)
_PREVIOUS = CALC_DECODED[CALC_WAS]
_TS_SUFFIX = ":" + CALC_TS
_CALC_OPTIONAL: dict[str, Any] = {CALC_DECODED[CALC_RATE]: None, CALC_DECODED[CALC_MONTHLY]: None}
# (code, key in decode_profile's `campaign`): the touch codes, as layout.py places them.
_CAMPAIGN = tuple(
    (f.code, f.decoded.partition(".")[2])
    for f in FIELDS
    if f.decoded is not None and f.decoded.startswith("campaign.")
)


def history_entry(entry_id: str, flat: list[str] | dict[str, str]) -> dict[str, Any]:
    """A contact-history stream entry as a dict; JSON-looking values are decoded."""
    pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    entry: dict[str, Any] = {"id": entry_id}
    for k, v in pairs:
        if v[:1] in ("{", "["):
            try:
                entry[k] = orjson.loads(v)
                continue
            except orjson.JSONDecodeError:
                pass
        entry[k] = v
    return entry


def customer_attributes(h: dict[str, Any]) -> dict[str, Any]:
    """The CRM attributes stored with a known customer's profile ({} if none), as rules,
    agents and the profiles API see them: without the phone number's hash, which is the
    phone index's bookkeeping (engine/profile/phones.py), not something to decide on."""
    attrs = h.get(ATTRS)
    if not isinstance(attrs, dict):
        return {}
    if PHONE_REF_FIELD in attrs:
        return {k: v for k, v in attrs.items() if k != PHONE_REF_FIELD}
    return attrs
