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
    refs    sorted set: where this profile's personal data lives OUTSIDE its slot (audit
            and trigger records, entries of the shared streams), scored by the ms it is
            gone for sure; what erasure follows (engine/refs.py)

Global streams are sharded by hash tag (`rb:{t:<n>}:triggers`) so a cluster spreads
them; a decision's audit record has its own tag (`rb:{d:<decision_id>}`), so it can
be found from the id alone. Erasure receipts (`rb:{erasures}`) hold no personal data.
"""

from __future__ import annotations

__all__ = [
    "PROFILE_SUFFIXES",
    "TRIGGER_SHARDS",
    "anonymous_prefix",
    "customer_prefix",
    "decision_key",
    "erasures_stream",
    "is_anonymous",
    "link_member",
    "outcome_stream",
    "profile_keys",
    "profile_refs",
    "trigger_record",
    "trigger_shard",
    "trigger_stream",
    "webhook_dead_letters",
    "webhook_replay",
]

# Append only: the Lua functions address the keys by position.
PROFILE_SUFFIXES: tuple[str, ...] = ("p", "seen", "links", "attrs", "hist", "pol", "refs")


def anonymous_prefix(site: str, anonymous_id: str) -> str:
    return f"rb:{{a:{site}:{anonymous_id}}}"


def is_anonymous(prefix: str) -> bool:
    """Whether a profile prefix is an anonymous visitor's.

    >>> is_anonymous(anonymous_prefix("s", "a")), is_anonymous(customer_prefix("c"))
    (True, False)
    """
    return prefix.startswith("rb:{a:")


def customer_prefix(customer_id: str) -> str:
    return f"rb:{{c:{customer_id}}}"


def profile_keys(prefix: str) -> list[str]:
    """The keys of one profile, in `PROFILE_SUFFIXES` order (the Lua side relies on it)."""
    return [f"{prefix}:{suffix}" for suffix in PROFILE_SUFFIXES]


def profile_refs(prefix: str) -> str:
    """The profile's index of its data in other slots (the last of `profile_keys`).

    >>> profile_refs(customer_prefix("c1")) == profile_keys(customer_prefix("c1"))[-1]
    True
    """
    return f"{prefix}:refs"


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


def erasures_stream() -> str:
    """Erasure receipts: who, when, how much; a keyed hash instead of the id."""
    return "rb:{erasures}"


def webhook_dead_letters(target: str) -> str:
    return f"rb:{{wh:{target}}}:dead"


def webhook_replay(target: str) -> str:
    return f"rb:{{wh:{target}}}:replay"


def link_member(site: str, anonymous_id: str) -> str:
    return f"{site}:{anonymous_id}"


def parse_link_member(member: str) -> tuple[str, str]:
    site, _, anonymous_id = member.partition(":")
    return site, anonymous_id


def login_user_key(user: str) -> str:
    """Login attempts for one user name (a fixed window). The name is hashed: it is
    whatever a caller typed, so it may be long or hold any characters. All login
    keys share one hash tag: login is rare, and one slot keeps a cluster simple."""
    import hashlib

    digest = hashlib.sha256(user.encode()).hexdigest()[:32]
    return f"rb:{{login}}:u:{digest}"


def login_address_key(ip: str) -> str:
    """Login attempts from one client address (a fixed window)."""
    return f"rb:{{login}}:a:{ip}"
