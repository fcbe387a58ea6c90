"""Contact policy, enforced atomically in Valkey.

Cooldowns (per customer per rule, per customer per channel) and daily caps per
channel are checked and taken in ONE server-side call (`rb_reserve`) on the
customer's slot, which also appends the decision to the contact history. Two
workers deciding for the same customer at the same instant cannot both fire: the
second finds the cooldown the first just set. Only a batch that fires a callback or
notification pays for this round trip; web offers do not reserve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engine.valkey import keys
from engine.valkey.store import Store

__all__ = [
    "ANONYMOUS_HISTORY_TTL_S",
    "HISTORY_MAX",
    "Reservation",
    "append_history",
    "release",
    "reserve",
]

HISTORY_MAX = 200  # entries per customer (approximate: MAXLEN ~)
ANONYMOUS_HISTORY_TTL_S = 30 * 86400  # the default anonymous profile TTL


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one contact would consume."""

    rule: str
    channel: str
    rule_cooldown_s: int = 0
    channel_cooldown_s: int = 0
    max_per_day: int = 0  # 0 = uncapped
    day: str = ""  # YYYY-MM-DD in the calendar's time zone: caps follow the customer's day


async def reserve(
    store: Store,
    prefix: str,
    r: Reservation,
    history: dict[str, Any],
    now_ms: int,
) -> str | None:
    """Take the contact if policy allows: None on success, else the suppression reason."""
    arg = {
        "now": now_ms,
        "rule": r.rule,
        "channel": r.channel,
        "rule_cooldown_ms": r.rule_cooldown_s * 1000,
        "channel_cooldown_ms": r.channel_cooldown_s * 1000,
        "max_per_day": r.max_per_day,
        "day": r.day or "-",
        "history": history,
        "history_max": HISTORY_MAX,
    }
    res = await store.fcall("rb_reserve", keys.profile_keys(prefix), [orjson.dumps(arg)])
    if res[0] != "ok":
        return str(res[1])
    await _expire_anonymous_history(store, prefix)
    return None


async def release(store: Store, prefix: str, taken: tuple[str, ...]) -> None:
    """Give back a reservation `rb_ingest` took (`taken`: its reply's
    [rule, channel, 'ok', day, set_r, set_c, prev_r, prev_c]) for a contact the
    decision did not make: the cooldowns it set go back unless a newer reservation
    replaced them, and the day's count goes down by one."""
    rule, channel, _, day, set_r, set_c, prev_r, prev_c = taken
    arg = {
        "rule": rule,
        "channel": channel,
        "day": day,
        "set_r": set_r,
        "set_c": set_c,
        "prev_r": prev_r,
        "prev_c": prev_c,
    }
    await store.fcall("rb_release", keys.profile_keys(prefix), [orjson.dumps(arg)])


async def append_history(store: Store, prefix: str, entry: dict[str, Any]) -> str:
    """Append to the contact history without a policy check (offers shown, outcomes)."""
    arg = {"entry": entry, "max": HISTORY_MAX}
    entry_id = await store.fcall("rb_history", keys.profile_keys(prefix), [orjson.dumps(arg)])
    await _expire_anonymous_history(store, prefix)
    return str(entry_id)


async def _expire_anonymous_history(store: Store, prefix: str) -> None:
    """An anonymous visitor's history goes with its profile, not for ever: the profile
    expires after a month without visits, and so, from its last entry, does this.
    (Only anonymous contacts pay this extra call; a customer's history stays.)"""
    if keys.is_anonymous(prefix):
        hist = keys.profile_keys(prefix)[4]
        await store.call("EXPIRE", hist, ANONYMOUS_HISTORY_TTL_S, writes=True)
