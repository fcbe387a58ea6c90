"""Live visitor profiles in Valkey: update, merge, read, erase.

The hot path is `ProfileStore.apply_batch`: ONE `FCALL rb_ingest` per batch, which
dedupes event ids, updates counters, decayed intent, session, presence and
calculator state, and returns the whole profile hash for the decision step. The
Lua side lives in `engine/lua/ringback.lua`; its header documents every field.

Anonymous -> known merges are the one cross-slot operation. They are rare (the first
identified batch of a visitor), explicit, and idempotent: the customer's `links` set
is checked and updated atomically inside `rb_merge_apply`, so a retried or
concurrent merge never double-counts.

Erasure (`erase_customer`) deletes the profiles' own keys and follows each profile's
index (`refs`, engine/refs.py) to its data in other slots: audit and trigger records,
entries of the shared streams; open callbacks are withdrawn from the floor.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from engine import keys, refs
from engine.capacity import dequeue
from engine.deliver import publish_event
from engine.errors import RateLimited, StoreUnavailable
from engine.profile_delta import build_delta
from engine.schema import Event
from engine.settings import Settings
from engine.store import Store

log = logging.getLogger("ringback.profile")

__all__ = [
    "BatchResult",
    "Erased",
    "Erasure",
    "PageClassifier",
    "ProfileStore",
    "decode_profile",
    "erasure_subject",
    "follow_refs",
    "second_sweep",
    "write_erasure_receipt",
]


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


@dataclass(frozen=True, slots=True)
class BatchResult:
    accepted: int
    duplicates: int
    needs_merge: bool
    fields: dict[str, Any]
    accepted_flags: str = ""  # '1'/'0' per event in batch order


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
        # Erasures' second sweeps still to run (kept referenced so they are not lost).
        self.sweeps: set[asyncio.Task[None]] = set()
        self.second_sweep_delay_s = SECOND_SWEEP_DELAY_S
        self.erase_skew_ms = ERASE_SKEW_MS
        # Our own embedded Valkey (no redis_url): its append-only file still holds what
        # an erasure deleted until it is rewritten, so erasures ask for a rewrite. A
        # Valkey someone else runs is theirs to rewrite (a fork is an ops decision).
        self.aof_rewrites = AofRewrites(store) if settings.redis_url is None else None

    def delta(self, events: Sequence[Event], now_ms: int) -> dict[str, Any]:
        return build_delta(
            events,
            classify=self.classifier.category,
            weights=self._weights,
            half_life_ms=self._half_life_ms,
            session_gap_ms=self._session_gap_ms,
            presence_ttl_ms=self._presence_ttl_ms,
            now_ms=now_ms,
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
    ) -> BatchResult:
        """Apply a batch to one profile in one round trip; raise RateLimited if over.

        The delta is built optimistically for "every event is new" (the common case);
        if Valkey has seen some ids, it writes nothing and says which, and we rebuild
        the delta for the new ones only (a retry overlapping a first send).
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        limits = self.settings.limits
        ids = [ev.id for ev in events]
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
            "site": site,
            "ids": ids,
        }
        fresh: Sequence[Event] = events
        for _ in range(4):
            header["expect"] = expect
            header["delta"] = self.delta(fresh, now_ms)
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
        )

    async def ingest(
        self,
        site: str,
        anonymous_id: str,
        customer_id: str | None,
        events: Sequence[Event],
        now_ms: int,
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
            prefix, site, events, anonymous=anonymous, link=link, now_ms=now_ms
        )
        if not (result.needs_merge and customer_id is not None):
            return result, None
        # Rare: this visitor's first identified batch. Merge, then apply the batch to the
        # merged profile (without the link check, which a conflict would never satisfy).
        outcome = await self.merge(site, anonymous_id, customer_id)
        result = await self.apply_batch(prefix, site, events, anonymous=False, now_ms=now_ms)
        return result, outcome

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
        pages = fields.get("pages")
        return (
            fields,
            pages if isinstance(pages, list) else [],
            sorted(links),
            [history_entry(entry_id, flat) for entry_id, flat in hist],
        )

    async def erase_customer(self, customer_id: str) -> Erasure:
        """Erase the customer, every anonymous id ever merged into it, and everything
        their indexes point at in other slots (audit and trigger records, stream
        entries), withdrawing open callbacks.

        Linked anonymous profiles go first and the customer (who holds the links) last,
        so an erasure cut short and retried still finds everything. Each profile is
        erased by `_erase_profile`, which leaves an erasure marker, and swept again a
        few seconds later (`_second_sweep`).
        """
        customer = keys.customer_prefix(customer_id)
        out = Erased()
        done: set[str] = set()
        links = await self.store.call("SMEMBERS", keys.profile_keys(customer)[2])
        for member in sorted(links):
            await self._erase_profile(_anonymous_prefix(member), out)
            done.add(member)
        # A merge racing with the erasure may have added a link meanwhile: take it too.
        for member in sorted(set(await self._erase_profile(customer, out)) - done):
            await self._erase_profile(_anonymous_prefix(member), out)
            done.add(member)
        self._schedule_second_sweep([customer, *(_anonymous_prefix(m) for m in sorted(done))])
        return Erasure(
            keys_deleted=out.keys,
            stream_entries_deleted=out.entries,
            triggers_withdrawn=out.withdrawn,
            anonymous_profiles=len(done),
        )

    async def _erase_profile(self, prefix: str, out: Erased) -> list[str]:
        """Follow the profile's index, then delete the profile (index included) and set
        its erasure marker in one atomic step, then follow what was indexed in between.
        Returns its links.

        The marker is the erasure's ms plus `ERASE_SKEW_MS` (workers' clocks differ),
        so a write in flight for data made before it is refused by `rb_refs` and
        `rb_history` instead of re-creating the index or the history."""
        first = await self.store.call("ZRANGE", keys.profile_refs(prefix), 0, -1)
        await follow_refs(self.store, first, out)
        marker_ms = int(time.time() * 1000) + self.erase_skew_ms
        deleted, links, last = await self.store.fcall(
            "rb_erase",
            [*keys.profile_keys(prefix), keys.profile_erased(prefix)],
            [marker_ms, refs.MARKER_TTL_MS],
        )
        out.keys += int(deleted)
        await follow_refs(self.store, sorted(set(last) - set(first)), out)
        return list(links)

    async def close(self) -> None:
        """Cancel erasures' pending second sweeps and AOF rewrite (on shutdown)."""
        tasks = list(self.sweeps)
        if self.aof_rewrites is not None and self.aof_rewrites.pending is not None:
            tasks.append(self.aof_rewrites.pending)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _schedule_second_sweep(self, prefixes: list[str]) -> None:
        """Run `second_sweep` in the background, at most `SECOND_SWEEPS_MAX` at once
        (past that the sweep is skipped and logged: erasures come one by one from a
        DPO, so this only bites under a flood)."""
        if len(self.sweeps) >= SECOND_SWEEPS_MAX:
            log.error("second erasure sweep skipped: %d already pending", len(self.sweeps))
            return
        task = asyncio.create_task(
            second_sweep(self.store, prefixes, self.second_sweep_delay_s, self.aof_rewrites),
            name="erase-sweep",
        )
        self.sweeps.add(task)
        task.add_done_callback(self.sweeps.discard)


ERASE_SKEW_MS = 5_000  # data made up to this long after an erasure counts as erased
SECOND_SWEEPS_MAX = 1_000
SECOND_SWEEP_DELAY_S = 5.0


class AofRewrites:
    """`BGREWRITEAOF` after erasures, at most once per `min_interval_s`.

    Valkey's append-only file is a log: what an erasure deleted is gone from memory at
    once but stays on disk in the commands that wrote it until the file is rewritten
    (by itself only when it has doubled). A rewrite forks and does not block Valkey;
    rate-limited, a burst of erasures costs one. Failures (a rewrite already running,
    a Valkey that refuses) are logged: the next erasure asks again."""

    def __init__(self, store: Store, min_interval_s: float = 600.0) -> None:
        self.store = store
        self.min_interval_s = min_interval_s
        self.done = 0  # rewrites this process asked for and Valkey accepted
        self._last = -math.inf
        self._pending: asyncio.Task[None] | None = None

    @property
    def pending(self) -> asyncio.Task[None] | None:
        return self._pending

    def request(self) -> None:
        if self._pending is not None:
            return  # the one already scheduled covers this erasure too
        delay_s = max(0.0, self._last + self.min_interval_s - time.monotonic())
        self._pending = asyncio.create_task(self._run(delay_s), name="aof-rewrite")

    async def _run(self, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
            await self.store.call("BGREWRITEAOF")
            self._last = time.monotonic()
            self.done += 1
        except Exception as exc:
            log.warning("AOF rewrite after an erasure not started: %s", exc)
        finally:
            self._pending = None


async def second_sweep(
    store: Store,
    prefixes: Sequence[str],
    delay_s: float,
    aof_rewrites: AofRewrites | None = None,
) -> None:
    """The erasure again, `delay_s` later, over the profiles' indexes only: catches a
    page-offer audit that was in flight in a pipeline when the profile was erased (its
    plain ZADD skips the erasure marker, so it re-created the index). What is found is
    deleted and its references removed; a reference added meanwhile stays. Failures
    are logged, never raised (nobody awaits this)."""
    await asyncio.sleep(delay_s)
    out = Erased()
    for prefix in prefixes:
        try:
            found = await store.call("ZRANGE", keys.profile_refs(prefix), 0, -1)
            if found:
                await follow_refs(store, found, out)
                await store.call("ZREM", keys.profile_refs(prefix), *found, writes=True)
        except Exception:
            log.exception("second erasure sweep of a profile failed")
    if out.keys or out.entries:
        log.info("second erasure sweep deleted %d keys, %d entries", out.keys, out.entries)
    if aof_rewrites is not None:  # after the sweep: the rewrite leaves out what it found
        aof_rewrites.request()


def _anonymous_prefix(link: str) -> str:
    return keys.anonymous_prefix(*keys.parse_link_member(link))


@dataclass(slots=True)
class Erased:
    """Running totals of an erasure."""

    keys: int = 0
    entries: int = 0
    withdrawn: int = 0


@dataclass(frozen=True, slots=True)
class Erasure:
    """What `DELETE /v1/profiles/{id}` erased: counts only, never the data."""

    keys_deleted: int
    stream_entries_deleted: int
    triggers_withdrawn: int
    anonymous_profiles: int


ERASURES_MAX = 1_000_000  # receipts kept (~150 bytes each, no personal data)


def erasure_key(settings: Settings) -> bytes:
    """The key of receipt subjects, derived from the config's secrets (per-site identity
    secrets, API token hashes): the same in every worker and across restarts, and
    unknown to anyone holding only a copy of Valkey, who therefore cannot test a list
    of customer ids against the receipts. Rotating those secrets starts a new key;
    each receipt names its key (`key_id`) so a DPO knows which config to use."""
    h = hashlib.blake2b(digest_size=32, person=b"rb-erasures")
    for key in sorted(settings.sites):
        h.update(key.encode() + b"\0" + (settings.sites[key].identity_secret or "").encode())
        h.update(b"\0")
    for token in sorted(t.sha256 for t in settings.api_tokens):
        h.update(token.encode() + b"\0")
    return h.digest()


def erasure_subject(key: bytes, customer_id: str) -> str:
    """A keyed hash of the customer id: proves an id was erased without storing it.

    >>> erasure_subject(b"k", "cust-1") == erasure_subject(b"k", "cust-1")
    True
    >>> erasure_subject(b"k", "cust-1") == erasure_subject(b"other", "cust-1")
    False
    """
    return hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest()


async def write_erasure_receipt(
    store: Store, settings: Settings, customer_id: str, by: str, erasure: Erasure
) -> str:
    """Who erased, when and how much, in a capped stream; the customer only as a keyed
    hash. Returns the receipt's id."""
    key = erasure_key(settings)
    receipt = {
        "at_ms": int(time.time() * 1000),
        "by": by,
        "subject": erasure_subject(key, customer_id),
        "key_id": hashlib.blake2b(key, digest_size=4).hexdigest(),
        "keys_deleted": erasure.keys_deleted,
        "stream_entries_deleted": erasure.stream_entries_deleted,
        "triggers_withdrawn": erasure.triggers_withdrawn,
        "anonymous_profiles": erasure.anonymous_profiles,
    }
    flat = [x for k, v in receipt.items() for x in (k, str(v))]
    entry_id = await store.call(
        "XADD", keys.erasures_stream(), "MAXLEN", "~", ERASURES_MAX, "*", *flat, writes=True
    )
    return str(entry_id)


async def follow_refs(store: Store, references: Sequence[str], out: Erased) -> None:
    """Delete everything index references point at; withdraw open triggers.

    A trigger's record is deleted, so claiming or completing it answers 404 and writes
    nothing; one still open also leaves the callback queue, and every dashboard hears
    `withdrawn` on its shard. Idempotent: following the same references again deletes
    nothing more and withdraws nothing twice.
    """
    if not references:
        return
    dels, triggers, entries = refs.parse(references)
    states = await asyncio.gather(
        *[store.call("HMGET", keys.trigger_record(t), "shard", "outcome") for t in triggers]
    )
    deletes = [store.call("DEL", k, writes=True) for k in dels]
    deletes += [store.call("DEL", keys.trigger_record(t), writes=True) for t in triggers]
    xdels = [store.call("XDEL", s, *ids, writes=True) for s, ids in entries.items()]
    others: list[Awaitable[Any]] = [dequeue(store, t) for t in triggers]
    for trigger_id, (shard, outcome) in zip(triggers, states, strict=True):
        if shard is not None and outcome is None:  # still open: take it off the floor
            event = {"kind": "withdrawn", "trigger_id": trigger_id, "reason": "erased"}
            others.append(publish_event(store, int(shard), event))
            out.withdrawn += 1
    n_deletes, n_xdels, *_ = await asyncio.gather(
        asyncio.gather(*deletes), asyncio.gather(*xdels), *others
    )
    out.keys += sum(int(n) for n in n_deletes)
    out.entries += sum(int(n) for n in n_xdels)


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
    for k, v in h.items():
        if k.startswith("n:"):
            counts[k[2:]] = int(v)
        elif k.startswith("cat:"):
            categories[k[4:]] = int(v)
        elif k.startswith("i:"):
            key = k[2:]
            age = max(0.0, now_ms - _f(h, "it:" + key))
            intent[key] = round(float(v) * 2 ** (-age / half_life_ms), 6)
        elif k.startswith("c:"):
            _, prod, field = k.split(":", 2)
            c = calc.setdefault(prod, {})
            name = {
                "amount": "amount",
                "term": "term_months",
                "rate": "rate",
                "monthly": "monthly_payment",
                "n": "count",
                "max": "max_amount",
                "ts": "ts",
            }.get(field)
            if name:
                c[name] = float(v) if v not in ("",) else None
                if name in ("term_months", "count", "ts") and c[name] is not None:
                    c[name] = int(c[name])
        elif k.startswith("x:"):
            parts = k.split(":")
            if len(parts) == 3 and parts[2] == "call":
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
            "focused": _i(h, "f:focus"),
            "abandoned": _i(h, "f:abandon"),
            "submitted": _i(h, "f:submit"),
            "last_abandoned_form": h.get("f:last_abandon"),
            "last_abandoned_ts": _i(h, "f:last_abandon_ts") or None,
        },
        "interest": interest,
        "call_requested": call_requested,
        # The newest "call me" of any product: a visitor's own request for a call.
        "last_call_request": max(call_requested.values(), default=None),
        "session": {
            "number": _i(h, "s_n"),
            "start": _i(h, "s_start") or None,
            "last_seen": _i(h, "s_last") or None,
            "pages": _i(h, "s_pages"),
            "dwell_ms": _i(h, "s_dwell"),
            "events": _i(h, "s_events"),
        },
        "first_seen": _i(h, "first_ts") or None,
        "last_seen": _i(h, "last_ts") or None,
        "online": now_ms < _f(h, "online_until"),
        "online_until": _i(h, "online_until") or None,
        "dwell_ms": _i(h, "dwell"),
        "last_page": h.get("last_page"),
        "pages": h.get("pages") if isinstance(h.get("pages"), list) else [],
        "campaign": {
            k: h[k]
            for k in ("utm_source", "utm_campaign", "first_utm_source", "first_utm_campaign")
            if k in h
        },
        "merged_into": h.get("merged_into"),
    }


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
    """The CRM attributes stored with a known customer's profile ({} if none)."""
    attrs = h.get("attrs")
    return attrs if isinstance(attrs, dict) else {}
