"""Where a profile's personal data lives outside its own slot: the per-profile index.

A profile's keys share one hash tag, so deleting them is one call. But a customer's
data also lands in other slots: audit records (`rb:{d:<id>}`), trigger records
(`rb:{tr:<id>}`) and entries of shared streams (triggers, outcomes, webhook dead
letters and replays). Every writer of such data records a reference in the profile's
`refs` sorted set, scored by the ms after which the data is gone for sure (its TTL, or
its stream's age trim plus slack), so `DELETE /v1/profiles/{id}` follows the index
instead of scanning the keyspace (`follow_refs` in engine/privacy/erasure.py): erasure is
complete by construction, not by search.

The index looks after itself: expired references are dropped (by `rb_refs` on the
rare writes, by `rb_ingest`'s hourly trim for the plain ZADDs of page-offer audits)
and the key expires with its last reference. It has no cap: a cap would drop
references to data that still exists, and erasure would miss it. Its size is bounded
by the writes of 31 days: at most one page-offer audit per rule and 10-minute window
(~144 a day per offer rule), plus triggers and outcomes, which the contact policy and
the per-visitor rate limit bound.

Erasure races. An erasure leaves a marker in the profile's own slot
(`keys.profile_erased`, the erasure ms, `MARKER_TTL_MS`). `rb_refs` and `rb_history`
take the creation ms of the data they index or record and answer 'erased' (writing
nothing) when the profile was erased at or after it: the writer then deletes what it
just wrote and answers as if the data never existed. Page-offer audits skip the
function (hot path: a plain ZADD with the audit's SET); an audit in flight during an
erasure is caught by the erasure's second sweep a few seconds later.
References (sorted-set members):
    k|<key>                 a key to delete (an audit record)
    t|<trigger_id>          a trigger: its record, its place in the callback queue, and
                            a `withdrawn` event to the dashboards while it is open
    x|<stream>|<entry_id>   a stream entry to delete
    m|<set>|<member>        the profile's membership of a shared set (the phone index):
                            SREM the member only, never the others' (`parse` skips
                            these; `parse_members` reads them)
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from engine.core.errors import RingbackError
from engine.valkey import keys
from engine.valkey.store import Store

__all__ = [
    "MARKER_TTL_MS",
    "SLACK_MS",
    "STREAM_KEEP_MS",
    "Erased",
    "add",
    "add_plain",
    "entry_ref",
    "erased_since",
    "key_ref",
    "member_ref",
    "parse",
    "parse_members",
    "stream_trim",
    "stream_until_ms",
    "trigger_ref",
]

DAY_MS = 86_400_000
# Shared streams are trimmed by age (exact MINID) to this, so an entry's reference can
# say when the entry is gone; the same as an audit record's life.
STREAM_KEEP_MS = 30 * DAY_MS
# Stream entry ids are Valkey's clock, expiries the engine's: a day covers any skew.
SLACK_MS = DAY_MS
# An erasure's marker outlives every write that can still be in flight for data born
# before it: a webhook dead-letters within minutes, a replay copies a dead letter
# (which the erasure deleted), and nothing indexed lives past STREAM_KEEP_MS + SLACK_MS.
MARKER_TTL_MS = 32 * DAY_MS


class Erased(RingbackError):
    """The profile was erased after the data being written was created: the writer
    has deleted what it wrote, and answers as if the data never existed."""


def key_ref(key: str) -> str:
    return f"k|{key}"


def member_ref(key: str, member: str) -> str:
    """A set membership's reference; neither the key nor the member contains '|'.

    >>> member_ref("rb:{ph:ab}", "cust-1")
    'm|rb:{ph:ab}|cust-1'
    """
    return f"m|{key}|{member}"


def trigger_ref(trigger_id: str) -> str:
    return f"t|{trigger_id}"


def entry_ref(stream: str, entry_id: str) -> str:
    """A stream entry's reference; stream names never contain '|'.

    >>> entry_ref("rb:{t:1}:triggers", "1-0")
    'x|rb:{t:1}:triggers|1-0'
    """
    return f"x|{stream}|{entry_id}"


def stream_until_ms(now_ms: int | None = None) -> int:
    """When an entry added now has surely been trimmed from its stream."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return now_ms + STREAM_KEEP_MS + SLACK_MS


def stream_trim(store: Store, stream: str, now_ms: int | None = None) -> Awaitable[Any]:
    """Queue an exact age trim of a shared stream (exact: an approximate one keeps whole
    nodes, so a quiet stream could keep an entry for ever). Cheap when nothing is due."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return store.call("XTRIM", stream, "MINID", now_ms - STREAM_KEEP_MS, writes=True)


def add(
    store: Store,
    prefix: str,
    refs: Sequence[tuple[str, int]],
    born_ms: int,
    now_ms: int | None = None,
) -> Awaitable[bool]:
    """Record `(reference, until_ms)` pairs in the profile's index, unless the profile
    was erased at or after `born_ms` (the data's creation): then nothing is written and
    the result is False, and the caller must delete the data it just wrote.

    The command is queued before this returns (it rides in the pipeline of whatever the
    caller queued in the same tick); await the result to see failures.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    flat: list[Any] = []
    for member, until_ms in refs:
        flat += (int(until_ms), member)
    index = [keys.profile_refs(prefix), keys.profile_erased(prefix)]
    argv = [now_ms, int(born_ms), *flat]
    queued = store.call("FCALL", "rb_refs", 2, *index, *argv, writes=True)

    async def done() -> bool:
        try:
            res = await queued
        except ResponseError as exc:
            msg = str(exc).lower()
            if "function not found" not in msg and "no such" not in msg:
                raise
            # A server restarted empty: `fcall` reloads the library and retries.
            res = await store.fcall("rb_refs", index, argv)
        return bool(res != "erased")

    return done()


def add_plain(store: Store, prefix: str, member: str, until_ms: int) -> list[Awaitable[Any]]:
    """Index one reference with plain commands, for the hot path (page-offer audits):
    no function call, no erasure check (the erasure's second sweep catches a write in
    flight), no trim (`rb_ingest` drops expired references hourly). The key's TTL only
    ever grows to the newest reference: NX sets it on a new key, GT extends it."""
    key = keys.profile_refs(prefix)
    return [
        store.call("ZADD", key, int(until_ms), member, writes=True),
        store.call("PEXPIREAT", key, int(until_ms), "NX", writes=True),
        store.call("PEXPIREAT", key, int(until_ms), "GT", writes=True),
    ]


async def erased_since(store: Store, prefix: str, born_ms: int) -> bool:
    """Whether the profile was erased at or after `born_ms` (its marker says so)."""
    at = await store.call("GET", keys.profile_erased(prefix))
    return at is not None and str(at).isdigit() and int(at) >= born_ms


def parse(refs: Iterable[str]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(keys, trigger ids, {stream: entry ids}).

    >>> parse(["k|rb:{d:1}", "t|ab", "x|rb:{o:0}:outcomes|1-0", "bogus"])
    (['rb:{d:1}'], ['ab'], {'rb:{o:0}:outcomes': ['1-0']})
    """
    dels: list[str] = []
    triggers: list[str] = []
    entries: dict[str, list[str]] = defaultdict(list)
    for ref in refs:
        kind, _, rest = ref.partition("|")
        if kind == "k" and rest:
            dels.append(rest)
        elif kind == "t" and rest:
            triggers.append(rest)
        elif kind == "x":
            stream, _, entry_id = rest.rpartition("|")
            if stream and entry_id:
                entries[stream].append(entry_id)
    return dels, triggers, dict(entries)


def parse_members(refs: Iterable[str]) -> list[tuple[str, str]]:
    """The (set, member) pairs of membership references.

    >>> parse_members(["m|rb:{ph:ab}|cust-1", "k|rb:{d:1}", "m|broken"])
    [('rb:{ph:ab}', 'cust-1')]
    """
    pairs: list[tuple[str, str]] = []
    for ref in refs:
        kind, _, rest = ref.partition("|")
        key, _, member = rest.partition("|")
        if kind == "m" and key and member:
            pairs.append((key, member))
    return pairs
