"""Every Valkey key name Ringback uses, built here and nowhere else.

All keys of one profile share a hash tag, so a server-side function that updates a
profile touches one cluster slot:

    rb:{a:<site>:<anonymous_id>}:<suffix>   an anonymous visitor
    rb:{c:<customer_id>}:<suffix>           a known customer

Suffixes (the same for both kinds):
    p       string: the profile as one JSON object (counters, decayed intent, session,
            presence, calculator state, recent pages, rate-limit window)
    seen    sorted set: event ids seen in the dedupe window, each a 64-bit hash in
            decimal (score = receive hour since 2026-01-01: small ints a listpack packs)
    links   set (customers only): "<site>:<anonymous_id>" merged into this customer
    attrs   (unused; CRM attributes live in the profile value)
    hist    stream: contact history (decisions, outcomes), capped
    pol     hash: contact-policy state (cooldowns per rule and channel, daily counts)
    refs    sorted set: where this profile's personal data lives OUTSIDE its slot (audit
            and trigger records, entries of the shared streams), scored by the ms it is
            gone for sure; what erasure follows (engine/valkey/refs.py)

Not a profile key (erasure does not delete it, it writes it): the erasure marker
(`profile_erased`), the ms of the profile's last erasure, kept ~32 days so writes that
were in flight when it was erased are refused (`rb_refs`, `rb_history`) instead of
re-creating its data. It is in the profile's slot but does not name the customer.

Global streams are sharded by hash tag (`rb:{t:<n>}:triggers`) so a cluster spreads
them; a decision's audit record has its own tag (`rb:{d:<decision_id>}`), so it can
be found from the id alone. Erasure receipts (`rb:{erasures}`) hold no personal data.
"""

from __future__ import annotations

__all__ = [
    "LABELS_PENDING",
    "MODEL_INDEX",
    "PROFILE_SUFFIXES",
    "TRIGGER_SHARDS",
    "anonymous_prefix",
    "audit_dictionary",
    "conversion_seen",
    "customer_prefix",
    "decision_key",
    "decision_label",
    "decision_learned",
    "erasures_stream",
    "import_checkpoint",
    "is_anonymous",
    "key_slot",
    "learner_lease",
    "link_member",
    "model_snapshot",
    "outcome_stream",
    "profile_erased",
    "profile_keys",
    "profile_refs",
    "slot_tag",
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


def profile_erased(prefix: str) -> str:
    """The profile's erasure marker (the ms it was last erased). It must sit in the
    profile's cluster slot, so the functions that index or record the profile's data
    check it atomically; but it must not name the customer, whose id is the profile's
    hash tag. So its hash tag is a short string chosen to hash to the same slot
    (`slot_tag`), and the profile is named by a digest. Not in `PROFILE_SUFFIXES`:
    erasure sets it, it does not delete it.

    >>> m = profile_erased(customer_prefix("c1"))
    >>> "c1" in m, key_slot(m) == key_slot(customer_prefix("c1") + ":p")
    (False, True)
    """
    import hashlib

    digest = hashlib.blake2b(prefix.encode(), digest_size=16, person=b"rb-erased").hexdigest()
    return f"rb:{{{slot_tag(key_slot(prefix))}}}:erased:{digest}"


CLUSTER_SLOTS = 16384


def key_slot(key: str) -> int:
    """A key's cluster slot, by the cluster's rule (CRC16 of the hash tag if any).

    >>> key_slot("123456789"), key_slot("rb:{x}:a") == key_slot("{x}")
    (12739, True)
    """
    import binascii

    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % CLUSTER_SLOTS


# A hash tag of 4 characters from "@A...O" (0x40 | 4 free bits each): CRC16 is linear,
# so the 16 free bits map linearly onto the slot's 14, and any slot is solved for.
_TAG_BASE = b"@@@@"


def _tag_basis() -> list[tuple[int, int, int]]:
    """(slot bits, tag bits, pivot) rows, each free of the earlier rows' pivots."""
    import binascii

    c0 = binascii.crc_hqx(_TAG_BASE, 0)
    rows: list[tuple[int, int, int]] = []
    for bit in range(4 * len(_TAG_BASE)):
        flip = bytearray(_TAG_BASE)
        flip[bit // 4] ^= 1 << (bit % 4)
        v = (binascii.crc_hqx(bytes(flip), 0) ^ c0) % CLUSTER_SLOTS
        c = 1 << bit
        for rv, rc, pivot in rows:
            if v >> pivot & 1:
                v, c = v ^ rv, c ^ rc
        if v:
            rows.append((v, c, (v & -v).bit_length() - 1))
    return rows


_TAG_ROWS = _tag_basis()


def slot_tag(slot: int) -> str:
    """A hash tag (no braces) that puts a key in `slot`.

    >>> all(key_slot("{" + slot_tag(s) + "}") == s for s in (0, 1, 12739, 16383))
    True
    """
    import binascii

    want = (slot ^ binascii.crc_hqx(_TAG_BASE, 0)) % CLUSTER_SLOTS
    bits = 0
    for v, c, pivot in _TAG_ROWS:
        if want >> pivot & 1:
            want, bits = want ^ v, bits ^ c
    tag = bytes(b ^ (bits >> (4 * i) & 0xF) for i, b in enumerate(_TAG_BASE)).decode()
    if key_slot("{" + tag + "}") != slot:  # the rows span every slot: never happens
        raise AssertionError(f"no tag for slot {slot}")
    return tag


TRIGGER_SHARDS = 4

# Contact-center capacity: agents online per worker (hash), open phone callbacks by
# expiry (sorted set). Shared by every worker; no personal data.
CAPACITY_AGENTS = "rb:{cap}:agents"
CALLBACK_QUEUE = "rb:{cap}:queue"

# Model snapshots (engine/models): the index hash (model name -> version) and one JSON
# string per model, all in one slot so a publisher's SET + HSET touch one node.
MODEL_INDEX = "rb:{models}:index"


def model_snapshot(name: str) -> str:
    """A model's latest snapshot (JSON weights, never pickle)."""
    return f"rb:{{models}}:snap:{name}"


def trigger_stream(shard: int) -> str:
    return f"rb:{{t:{shard}}}:triggers"


def trigger_shard(profile_prefix: str, shards: int = TRIGGER_SHARDS) -> int:
    """Stable shard of a profile, so one customer's triggers stay in order."""
    import zlib

    return zlib.crc32(profile_prefix.encode()) % shards


def agent_session(session_id: str) -> str:
    """A signed-in agent's session (user, role, CSRF token), in its own slot."""
    return f"rb:{{s:{session_id}}}"


def trigger_record(trigger_id: str) -> str:
    """A trigger's state (data, claim, outcome), in its own slot."""
    return f"rb:{{tr:{trigger_id}}}"


def outcome_stream(shard: int) -> str:
    return f"rb:{{o:{shard}}}:outcomes"


UPLIFT_TTL_S = 400 * 86400  # a year of daily cohorts, and a bit


def uplift_counts(rule_id: str, day: str, group: str) -> str:
    """Distinct decision ids (HyperLogLog) of one rule's daily cohort: `t` treated, `h`
    holdout, `tc`/`hc` those of them that converted. One slot per rule, so a report
    over any day range is one multi-key PFCOUNT. No personal data: ids only, hashed."""
    return f"rb:{{uplift:{rule_id}}}:{day}:{group}"


# -- reports (engine/delivery/reports.py; helper R's block) ----------------------------
REPORT_TTL_S = 400 * 86400  # as the uplift cohorts: a year of days, and a bit


def uplift_dim_counts(kind: str, value: str, day: str, group: str) -> str:
    """As `uplift_counts`, for every decision of one report dimension (campaign,
    segment, branch, value band) across rules. One slot per dimension value, so a
    report over any day range is one multi-key PFCOUNT. `value` is already cleaned to
    `[A-Za-z0-9_.()-]` (no braces: the hash tag stays the tag); a rule id has no `:`,
    so no rule's cohorts are named like these.

    >>> key_slot(uplift_dim_counts("campaign", "x", "2026-01-01", "t")) == key_slot(
    ...     uplift_dim_counts("campaign", "x", "2026-12-31", "hc"))
    True
    """
    return f"rb:{{uplift:dim:{kind}:{value}}}:{day}:{group}"


def uplift_dim_values(day: str, kind: str) -> str:
    """Set: the values of one dimension that have uplift cohorts on `day` (what a report
    reads to know its rows), capped so URL-borne campaign names cannot grow it without
    bound (engine/delivery/reports.py)."""
    return f"rb:{{rep:{day}}}:udims:{kind}"


def report_funnel(day: str, kind: str = "rule") -> str:
    """Hash: the funnel of the triggers fired on `day` (UTC), field `<name>|<stage>`,
    by rule (`kind` "rule") or by one dimension. A day's hashes share a slot; field
    names are bounded (rules, cleaned dimension values, capped per hash)."""
    return f"rb:{{rep:{day}}}:funnel:{kind}"


def decision_converted(decision_id: str) -> str:
    """Set NX once a trigger's decision counted as converted in the funnel, so a sale
    reported twice (agent, then the bank) counts once. In the audit record's slot; no
    personal data.

    >>> key_slot(decision_converted("ab")) == key_slot(decision_key("ab"))
    True
    """
    return f"rb:{{d:{decision_id}}}:converted"


# -- end of helper R's block -----------------------------------------------------------


def decision_key(decision_id: str) -> str:
    return f"rb:{{d:{decision_id}}}"


def audit_dictionary(dictionary_id: str) -> str:
    """A rule set's audit dictionary (engine/delivery/audit_codec.py, format 3) by its
    id in hex: the bytes format-3 audit records were deflated against, kept longer than
    any of them. Rule-pack words only: no personal data, not in any profile's refs.

    >>> audit_dictionary("9c442c9658759420")
    'rb:{auditdict:9c442c9658759420}'
    """
    return f"rb:{{auditdict:{dictionary_id}}}"


def decision_label(decision_id: str) -> str:
    """The page label a decision got (`clicked` or `ignored`), set NX: the first one
    wins, so a decision is labelled once however often it is clicked. In the audit
    record's slot; no personal data (engine/learning/labels.py).

    >>> key_slot(decision_label("ab")) == key_slot(decision_key("ab"))
    True
    """
    return f"rb:{{d:{decision_id}}}:label"


def decision_learned(decision_id: str) -> str:
    """Set once a model has learned the decision's first label (engine/learning/
    learner.py): later outcomes of the same decision (a converted call's sale credited
    days later, an organic sale after a missed call) are not learned again, so a
    decision weighs one sample and the model's rate stays calibrated. In the audit
    record's slot; no personal data.

    >>> key_slot(decision_learned("ab")) == key_slot(decision_key("ab"))
    True
    """
    return f"rb:{{d:{decision_id}}}:learned"


# Offer impressions waiting for a click (engine/learning/labels.py): a sorted set of
# decision ids scored by the ms their click window closes. One slot, so the sweep pops
# what is due atomically. Decision ids only: no personal data.
LABELS_PENDING = "rb:{labels}:pending"


def import_checkpoint(digest: str) -> str:
    """How far `ringback import` got with one file (a digest of its content): the count
    of valid lines written, so an interrupted import resumes instead of starting over."""
    return f"rb:{{import:{digest}}}"


# -- call guide (engine/profile/phones.py; helper G's block) ----------------------------


def phone_index(phone_ref: str) -> str:
    """Set: the ids of the customers whose CRM phone number has this keyed hash
    (HMAC-SHA256, hex), for the inbound screen-pop; a shared number (joint account,
    household) has several. Never the number itself; its own slot. Each customer's
    profile names its membership in its `refs`, so erasure removes that member only.

    >>> phone_index("ab12")
    'rb:{ph:ab12}'
    """
    return f"rb:{{ph:{phone_ref}}}"


# -- end of helper G's block -------------------------------------------------------------


def conversion_seen(digest: str) -> str:
    """A conversion already recorded (`POST /v1/conversions` with a `conversion_id`),
    named by a digest of the caller's id (which might name the customer): SET NX, so
    a retried conversion is recorded once. Holds the decision it was attributed to."""
    return f"rb:{{cv:{digest}}}"


def erasures_stream() -> str:
    """Erasure receipts: who, when, how much; a keyed hash instead of the id."""
    return "rb:{erasures}"


def webhook_dead_letters(target: str) -> str:
    return f"rb:{{wh:{target}}}:dead"


def webhook_replay(target: str) -> str:
    return f"rb:{{wh:{target}}}:replay"


def learner_lease() -> str:
    """Who is the active learner (engine/learning/learner.py): a string holding its id,
    with a TTL it renews while alive, so another takes over when it dies."""
    return "rb:{learner}:lease"


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


# -- real-time segments (engine/delivery/segment_counts.py; helper D's block) -----------
SEGMENT_COUNTS_TTL_S = 400 * 86400  # as the uplift cohorts: a year of days, and a bit


def segment_members(segment_id: str, day: str) -> str:
    """HyperLogLog: the distinct profiles (prefixes) seen in a segment on `day` (UTC).
    One slot per segment, so a report over a range of days stays on one node. No
    profile can be read back out of it.

    >>> key_slot(segment_members("s", "2026-01-01")) == key_slot(segment_flow("s", "2026-12-31"))
    True
    """
    return f"rb:{{seg:{segment_id}}}:{day}:m"


def segment_flow(segment_id: str, day: str) -> str:
    """Hash: the entries (`entered`) and exits (`exited`) of a segment on `day` (UTC)."""
    return f"rb:{{seg:{segment_id}}}:{day}:f"
