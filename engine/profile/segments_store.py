"""Segment membership in the profile: who is in which segment since when, who left when.

Membership lives inside the profile (`sg`: {segment: ms entered}, `sgx`: {segment: ms
of its last exit}; engine/profile/layout.py), so the ingest path reads it with the rest
of the profile at no extra cost and `decode_profile` shows it as `segments` and
`segments_exited`. It changes rarely (a visitor enters or leaves a segment), so the
caller writes only changes, in ONE `FCALL rb_segments` that applies them atomically:

- an entered segment keeps its older entry time when the visitor already is a member;
- an exited one leaves the members and records its exit time, once;
- a profile that does not exist is never created: an erased visitor stays erased,
  even when a decision made before the erasure writes its segments after it;
- both objects are capped (`SEGMENT_SPACE`, Lua MAX_SEGMENTS), so a profile keeps its
  worst-case size. Segment ids come from config (rule-pack ids, <= 64 characters).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from engine.valkey import keys
from engine.valkey.store import Store

__all__ = ["apply_segment_changes"]


async def apply_segment_changes(
    store: Store, prefix: str, entered: Mapping[str, int], exited: Mapping[str, int]
) -> None:
    """Apply membership changes to the profile at `prefix` (a `keys.*_prefix`).

    `entered` / `exited`: {segment id: ms}. Nothing to change costs no call.
    """
    if not entered and not exited:
        return
    arg = orjson.dumps({"entered": dict(entered), "exited": dict(exited)})
    await store.fcall("rb_segments", keys.profile_keys(prefix), [arg])
