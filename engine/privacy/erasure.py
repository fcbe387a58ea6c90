"""Erasure of a customer (GDPR art. 17): the profiles, and everything they point at.

`Eraser.erase_customer` deletes the customer's profile, every anonymous profile ever
merged into it, and follows each profile's index (`refs`, engine/valkey/refs.py) to
its data in other slots: audit and trigger records, the entries of shared streams,
and the customer's membership of the phone index (engine/profile/phones.py names it
in `refs`; only this customer's id leaves the set, a number shared with or passed on
to another customer stays theirs). Open callbacks are withdrawn
from the floor (the queue and every dashboard). This reaches across stages
(profiles, delivery records, the callback queue), which is why it is a stage of its
own above them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.core.settings import Settings
from engine.delivery.queue import dequeue
from engine.delivery.records import publish_event
from engine.valkey import keys, refs
from engine.valkey.store import Store

log = logging.getLogger("ringback.erasure")

__all__ = [
    "AofRewrites",
    "Erased",
    "Eraser",
    "Erasure",
    "erasure_subject",
    "follow_refs",
    "second_sweep",
    "write_erasure_receipt",
]


class Eraser:
    """Erases customers over a coalescing `Store`, with a second sweep a few seconds
    later for writes that were in flight."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        # Erasures' second sweeps still to run (kept referenced so they are not lost).
        self.sweeps: set[asyncio.Task[None]] = set()
        self.second_sweep_delay_s = SECOND_SWEEP_DELAY_S
        self.erase_skew_ms = ERASE_SKEW_MS
        # Our own embedded Valkey (no redis_url): its append-only file still holds what
        # an erasure deleted until it is rewritten, so erasures ask for a rewrite. A
        # Valkey someone else runs is theirs to rewrite (a fork is an ops decision).
        self.aof_rewrites = AofRewrites(store) if settings.redis_url is None else None

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
    """Delete everything index references point at; withdraw open triggers; take the
    profile out of the shared sets it belongs to (counted in `keys` when its id was
    there: Valkey deletes a set with its last member).

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
    deletes += [store.call("SREM", k, m, writes=True) for k, m in refs.parse_members(references)]
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
