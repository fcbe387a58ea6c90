"""Every Valkey key name Ringback uses, built here and nowhere else.

All keys of one profile share a hash tag, so a server-side function that updates a
profile touches one cluster slot:

    rb:{a:<site>:<anonymous_id>}:<suffix>   an anonymous visitor
    rb:{c:<customer_id>}:<suffix>           a known customer

Suffixes (the same for both kinds):
    p       string: the profile as one JSON object (counters, decayed intent, session,
            presence, calculator state, recent pages, rate-limit window)
    seen    sorted set: event ids seen in the dedupe window (score = receive ms)
    links   set (customers only): "<site>:<anonymous_id>" merged into this customer
    attrs   (unused; CRM attributes live in the profile value)
    hist    stream: contact history (decisions, outcomes), capped
    pol     hash: contact-policy state (cooldowns per rule and channel, daily counts)

Global streams are sharded by hash tag (`rb:{t:<n>}:triggers`) so a cluster spreads
them; a decision's audit record has its own tag (`rb:{d:<decision_id>}`), so it can
be found from the id alone.
"""

from __future__ import annotations

__all__ = [
    "PROFILE_SUFFIXES",
    "TRIGGER_SHARDS",
    "anonymous_prefix",
    "customer_prefix",
    "decision_key",
    "link_member",
    "outcome_stream",
    "profile_keys",
    "trigger_record",
    "trigger_shard",
    "trigger_stream",
]

PROFILE_SUFFIXES: tuple[str, ...] = ("p", "seen", "links", "attrs", "hist", "pol")


def anonymous_prefix(site: str, anonymous_id: str) -> str:
    return f"rb:{{a:{site}:{anonymous_id}}}"


def customer_prefix(customer_id: str) -> str:
    return f"rb:{{c:{customer_id}}}"


def profile_keys(prefix: str) -> list[str]:
    """The keys of one profile, in `PROFILE_SUFFIXES` order (the Lua side relies on it)."""
    return [f"{prefix}:{suffix}" for suffix in PROFILE_SUFFIXES]


TRIGGER_SHARDS = 4


def trigger_stream(shard: int) -> str:
    return f"rb:{{t:{shard}}}:triggers"


def trigger_shard(profile_prefix: str, shards: int = TRIGGER_SHARDS) -> int:
    """Stable shard of a profile, so one customer's triggers stay in order."""
    import zlib

    return zlib.crc32(profile_prefix.encode()) % shards


def trigger_record(trigger_id: str) -> str:
    """A trigger's state (data, claim, outcome), in its own slot."""
    return f"rb:{{tr:{trigger_id}}}"


def outcome_stream(shard: int) -> str:
    return f"rb:{{o:{shard}}}:outcomes"


def decision_key(decision_id: str) -> str:
    return f"rb:{{d:{decision_id}}}"


def link_member(site: str, anonymous_id: str) -> str:
    return f"{site}:{anonymous_id}"


def parse_link_member(member: str) -> tuple[str, str]:
    site, _, anonymous_id = member.partition(":")
    return site, anonymous_id
