"""Where a profile's personal data lives outside its own slot: the per-profile index.

A profile's keys share one hash tag, so deleting them is one call. But a customer's
data also lands in other slots: audit records (`rb:{d:<id>}`), trigger records
(`rb:{tr:<id>}`) and entries of shared streams (triggers, outcomes, webhook dead
letters and replays). Every writer of such data records a reference in the profile's
`refs` sorted set, scored by the ms after which the data is gone for sure (its TTL, or
its stream's age trim plus slack), so `DELETE /v1/profiles/{id}` follows the index
instead of scanning the keyspace (`follow_refs` in engine/profile.py): erasure is
complete by construction, not by search.

The index looks after itself: every write drops expired references, keeps at most
`REFS_MAX` (the soonest-expiring go first) and lets the key expire with its last
reference (`rb_refs` in lua/ringback.lua). Writes are queued, not awaited, so they
join the caller's pipeline: indexing an audit or trigger record costs no round trip.

References (sorted-set members):
    k|<key>                 a key to delete (an audit record)
    t|<trigger_id>          a trigger: its record, its place in the callback queue, and
                            a `withdrawn` event to the dashboards while it is open
    x|<stream>|<entry_id>   a stream entry to delete
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from engine import keys
from engine.store import Store

__all__ = [
    "REFS_MAX",
    "SLACK_MS",
    "STREAM_KEEP_MS",
    "add",
    "entry_ref",
    "key_ref",
    "parse",
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
# An active customer's page offers make at most ~144 audit records a day per offer rule
# (one per 10-minute window); 50 000 is 30 days of that for 11 rules, non-stop.
REFS_MAX = 50_000


def key_ref(key: str) -> str:
    return f"k|{key}"


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
    store: Store, prefix: str, refs: Sequence[tuple[str, int]], now_ms: int | None = None
) -> Awaitable[None]:
    """Record `(reference, until_ms)` pairs in the profile's index.

    The command is queued before this returns (it rides in the pipeline of whatever the
    caller queued in the same tick); await the result to see failures.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    flat: list[Any] = []
    for member, until_ms in refs:
        flat += (int(until_ms), member)
    key = keys.profile_refs(prefix)
    queued = store.call("FCALL", "rb_refs", 1, key, now_ms, REFS_MAX, *flat, writes=True)

    async def done() -> None:
        try:
            await queued
        except ResponseError as exc:
            msg = str(exc).lower()
            if "function not found" not in msg and "no such" not in msg:
                raise
            # A server restarted empty: `fcall` reloads the library and retries.
            await store.fcall("rb_refs", [key], [now_ms, REFS_MAX, *flat])

    return done()


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
