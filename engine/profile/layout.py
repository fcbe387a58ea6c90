"""The profile's field layout, declared once: every code, what it means, how a batch
writes it, how an anonymous -> known merge combines it, and the caps on its key space.

The profile is one JSON object in Valkey (`ringback.lua`'s header says why) whose keys
are short codes: `n:page_view`, `c:mortgage:amount`, `s_last`... Four places use them,
in two languages: `engine/profile/delta.py` writes them, `rb_ingest` and
`rb_merge_apply` in `engine/valkey/lua/ringback.lua` apply and merge them,
`decode_profile` reads them, and tests look at stored profiles. They used to agree by
care alone; a code renamed in one place silently read as zero in another. So the codes
live here as named constants that delta.py and `decode_profile` use, and `FIELDS`
describes each one. Lua cannot import Python: the "Profile fields" table in the Lua
header repeats `FIELDS` (code, write, merge) and the caps, and
tests/test_profile_layout.py checks the two agree, row for row, and that a batch
through the real `rb_ingest`, a merge through the real `rb_merge_apply` and
`decode_profile` do what each row says.

A code with a `<name>` part is a family: `n:<type>` is one counter per event type.
Everything here is computed at import; the hot paths only concatenate constants.

>>> count("page_view"), calc("mortgage", CALC_AMOUNT), FIELD_BY_CODE[calc_code(CALC_N)].merge
('n:page_view', 'c:mortgage:amount', <Merge.SUM: 'sum'>)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "ATTRS",
    "CALC",
    "CALC_AMOUNT",
    "CALC_DECODED",
    "CALC_INT_FIELDS",
    "CALC_MAX",
    "CALC_MONTHLY",
    "CALC_N",
    "CALC_RATE",
    "CALC_SPACE",
    "CALC_TERM",
    "CALC_TS",
    "CALC_WAS",
    "CALL_SUFFIX",
    "CATEGORY",
    "CATEGORY_SPACE",
    "COUNT",
    "DWELL",
    "FIELDS",
    "FIELD_BY_CODE",
    "FIRST_PREFIX",
    "FIRST_REFERRER",
    "FIRST_TOUCH",
    "FIRST_TS",
    "FIRST_UTM_CAMPAIGN",
    "FIRST_UTM_CONTENT",
    "FIRST_UTM_MEDIUM",
    "FIRST_UTM_SOURCE",
    "FIRST_UTM_TERM",
    "FIRST_UTM_TS",
    "FORM",
    "FORM_ABANDON",
    "FORM_FOCUS",
    "FORM_LAST_ABANDON",
    "FORM_LAST_ABANDON_TS",
    "FORM_SUBMIT",
    "INTENT",
    "INTENT_SPACE",
    "INTENT_TS",
    "INTEREST",
    "INTEREST_SPACE",
    "LAST_PAGE",
    "LAST_PAGE_TS",
    "LAST_TOUCH",
    "LAST_TS",
    "MAX_PAGES",
    "MERGED_INTO",
    "ONLINE_UNTIL",
    "PAGES",
    "REFERRER",
    "RL_COUNT",
    "RL_WINDOW",
    "SEGMENTS",
    "SEGMENTS_EXITED",
    "SEGMENT_SPACE",
    "SITE",
    "SPACES",
    "S_DWELL",
    "S_EVENTS",
    "S_LAST",
    "S_N",
    "S_PAGES",
    "S_START",
    "TRIM_TS",
    "UTM_CAMPAIGN",
    "UTM_CONTENT",
    "UTM_MEDIUM",
    "UTM_SOURCE",
    "UTM_TERM",
    "UTM_TS",
    "Field",
    "Merge",
    "Space",
    "Write",
    "calc",
    "calc_code",
    "category",
    "count",
    "family_of",
    "form",
    "intent",
    "intent_ts",
    "interest",
    "interest_call",
]


class Write(StrEnum):
    """How `rb_ingest` applies a batch's delta to the field (the delta key it comes in)."""

    COUNTER = "counter"  # inc: adds the batch's count or sum
    MAX = "max"  # max: keeps the larger
    MIN = "min"  # min: keeps the smaller
    FIRST = "first"  # setnx: written once, never replaced
    LATEST = "latest"  # latest: replaced together with its timestamp field by a newer event
    PREVIOUS = "previous"  # was: the stored value a newer event changed (calc scenario)
    DECAYED = "decayed"  # decay: exponentially decayed sum (value, paired with its it: time)
    DECAY_TS = "decay_ts"  # decay: the ms the decayed value was computed at
    SESSION = "session"  # sess: the current session's segment, restarted after a gap
    RECENT = "recent"  # pages: "ts path" entries, the newest MAX_PAGES kept
    BOOKKEEPING = "bookkeeping"  # rate limit, dedupe trim, cap counts: the engine's own
    EXTERNAL = "external"  # written outside rb_ingest (attributes API, merge export)


class Merge(StrEnum):
    """How `rb_merge_apply` folds an anonymous profile (A) into a customer's (C)."""

    SUM = "sum"  # A + C
    MAX = "max"  # the larger
    MIN = "min"  # the smaller
    FIRST = "first"  # C's when it has one, else A's
    # The earlier first touch by first_utm_ts (C's on a tie), all its fields; one stored
    # without first_utm_ts cannot be compared: C's when it has one, else A's.
    EARLIEST_TOUCH = "earliest_touch"
    NEWEST_TOUCH = "newest_touch"  # A's last touch when its utm_ts is newer: all its fields
    NEWEST_PRODUCT = "newest_product"  # A's when A's c:<product>:ts is newer, else C's
    NEWEST_SESSION = "newest_session"  # A's when A's s_last is newer, else C's
    NEWER_PROFILE = "newer_profile"  # A's when A's last_ts is newer or C has none
    DECAYED_SUM = "decayed_sum"  # the decayed sums add up (A + C, at any read time)
    RECENT = "recent"  # the newest MAX_PAGES of both lists
    KEPT = "kept"  # C's own; A's is bookkeeping of the anonymous profile and dropped
    RECOUNTED = "recounted"  # recounted from the merged profile (cap counts)
    UNION_MIN = "union_min"  # {name: ms} of both; per name the smaller (entered)
    UNION_MAX = "union_max"  # {name: ms} of both; per name the larger (exited)


@dataclass(frozen=True, slots=True)
class Space:
    """A key space whose names a client (or config) chooses, capped so a profile has a
    worst-case size (`ringback.lua` "Bounded size"; tests/test_profile_caps.py)."""

    name: str
    count_code: str  # the kn:<space> field that counts the names kept ('': the object's size)
    cap: int  # names kept; the least recent (or least viewed) go first
    lua_const: str  # the Lua constant holding `cap`
    ranked_by: str  # the field deciding which names stay


@dataclass(frozen=True, slots=True)
class Field:
    """One profile code (or family of codes, with a `<name>` part)."""

    code: str
    meaning: str
    write: Write
    merge: Merge
    decoded: str | None  # where decode_profile puts it (dotted path), None: not read there
    space: Space | None = None


# -- codes --------------------------------------------------------------------------
# Fixed fields.
FIRST_TS: Final = "first_ts"
LAST_TS: Final = "last_ts"
ONLINE_UNTIL: Final = "online_until"
DWELL: Final = "dwell"
S_N: Final = "s_n"
S_START: Final = "s_start"
S_LAST: Final = "s_last"
S_PAGES: Final = "s_pages"
S_DWELL: Final = "s_dwell"
S_EVENTS: Final = "s_events"
PAGES: Final = "pages"
LAST_PAGE: Final = "last_page"
LAST_PAGE_TS: Final = "lp_ts"
# Campaign attribution: the last touch (a page view carrying any utm_* or an external
# referrer), replaced as a whole by a newer touch, and the first touch, written once.
UTM_SOURCE: Final = "utm_source"
UTM_MEDIUM: Final = "utm_medium"
UTM_CAMPAIGN: Final = "utm_campaign"
UTM_TERM: Final = "utm_term"
UTM_CONTENT: Final = "utm_content"
REFERRER: Final = "ref"  # the referring host, never the URL (its query carries search terms)
UTM_TS: Final = "utm_ts"
FIRST_PREFIX: Final = "first_"  # first_<last-touch code>: the first touch
FIRST_UTM_SOURCE: Final = FIRST_PREFIX + UTM_SOURCE
FIRST_UTM_MEDIUM: Final = FIRST_PREFIX + UTM_MEDIUM
FIRST_UTM_CAMPAIGN: Final = FIRST_PREFIX + UTM_CAMPAIGN
FIRST_UTM_TERM: Final = FIRST_PREFIX + UTM_TERM
FIRST_UTM_CONTENT: Final = FIRST_PREFIX + UTM_CONTENT
FIRST_REFERRER: Final = FIRST_PREFIX + REFERRER
FIRST_UTM_TS: Final = FIRST_PREFIX + UTM_TS
# A touch's value codes (without its ms), last and first; the Lua TOUCH table repeats them.
LAST_TOUCH: Final = (UTM_SOURCE, UTM_MEDIUM, UTM_CAMPAIGN, UTM_TERM, UTM_CONTENT, REFERRER)
FIRST_TOUCH: Final = tuple(FIRST_PREFIX + c for c in LAST_TOUCH)
# Segment membership ({segment id: ms}), written by rb_segments (segments_store.py).
SEGMENTS: Final = "sg"  # current members: the ms each was entered
SEGMENTS_EXITED: Final = "sgx"  # the last exit of each segment left
FORM_LAST_ABANDON: Final = "f:last_abandon"
FORM_LAST_ABANDON_TS: Final = "f:last_abandon_ts"
SITE: Final = "site"
RL_WINDOW: Final = "rl_w"
RL_COUNT: Final = "rl_n"
TRIM_TS: Final = "trim_ts"
ATTRS: Final = "attrs"
MERGED_INTO: Final = "merged_into"

# Families: prefix + name (+ ":" + sub-field for calculator products).
COUNT: Final = "n:"  # n:<type>
CATEGORY: Final = "cat:"  # cat:<category>
INTENT: Final = "i:"  # i:<key>
INTENT_TS: Final = "it:"  # it:<key>
CALC: Final = "c:"  # c:<product>:<sub>
INTEREST: Final = "x:"  # x:<product>
CALL_SUFFIX: Final = ":call"  # x:<product>:call
FORM: Final = "f:"  # f:<action>

# Calculator sub-fields (c:<product>:<sub>).
CALC_AMOUNT: Final = "amount"
CALC_TERM: Final = "term"
CALC_RATE: Final = "rate"
CALC_MONTHLY: Final = "monthly"
CALC_TS: Final = "ts"
CALC_N: Final = "n"
CALC_MAX: Final = "max"
# [amount, term, ts]: the scenario before the newest change; ts stored as ms before
# c:<product>:ts (<= 0; a profile stored before holds the ts itself, > 0)
CALC_WAS: Final = "was"

# Form actions (f:<action>), as FormProps.action spells them.
FORM_FOCUS: Final = FORM + "focus"
FORM_ABANDON: Final = FORM + "abandon"
FORM_SUBMIT: Final = FORM + "submit"

MAX_PAGES: Final = 20  # entries kept in `pages` (Lua MAX_PAGES)

# -- capped key spaces --------------------------------------------------------------
CALC_SPACE: Final = Space("calc", "kn:c", 10, "MAX_CALC", "c:<product>:ts")
INTEREST_SPACE: Final = Space("interest", "kn:x", 10, "MAX_INTEREST", "x:<product>")
INTENT_SPACE: Final = Space("intent", "kn:i", 16, "MAX_INTENT", "it:<key>")
CATEGORY_SPACE: Final = Space("categories", "kn:cat", 16, "MAX_CATEGORIES", "cat:<category>")
SPACES: Final = (CALC_SPACE, INTEREST_SPACE, INTENT_SPACE, CATEGORY_SPACE)
# Names chosen by config (segment ids), inside one JSON object each: its size is its
# count, so no kn: field. Members: the earliest entered stay; exits: the latest.
SEGMENT_SPACE: Final = Space("segments", "", 32, "MAX_SEGMENTS", "sg/sgx ms")


def count(event_type: str) -> str:
    """n:<type>: events of that type."""
    return COUNT + event_type


def category(name: str) -> str:
    """cat:<category>: page views in that category."""
    return CATEGORY + name


def intent(key: str) -> str:
    """i:<key>: decayed intent for a category or product."""
    return INTENT + key


def intent_ts(key: str) -> str:
    """it:<key>: the ms `intent(key)` was computed at."""
    return INTENT_TS + key


def calc(product: str, sub: str) -> str:
    """c:<product>:<sub>: one calculator field of one product."""
    return CALC + product + ":" + sub


def calc_code(sub: str) -> str:
    """The declared (family) code of a calculator sub-field: c:<product>:<sub>."""
    return calc("<product>", sub)


def interest(product: str) -> str:
    """x:<product>: the newest ms the visitor registered interest in it."""
    return INTEREST + product


def interest_call(product: str) -> str:
    """x:<product>:call: the newest ms the visitor asked for a call about it."""
    return INTEREST + product + CALL_SUFFIX


def form(action: str) -> str:
    """f:<action>: form interactions of that kind."""
    return FORM + action


_W, _M = Write, Merge
# A touch's codes: (code, meaning, decode_profile's key in `campaign`).
_TOUCH: Final = (
    (UTM_SOURCE, "utm_source", "utm_source"),
    (UTM_MEDIUM, "utm_medium", "utm_medium"),
    (UTM_CAMPAIGN, "utm_campaign", "utm_campaign"),
    (UTM_TERM, "utm_term", "utm_term"),
    (UTM_CONTENT, "utm_content", "utm_content"),
    (REFERRER, "referrer host", "referrer"),
)

FIELDS: Final[tuple[Field, ...]] = (
    Field(FIRST_TS, "first event (ms)", _W.MIN, _M.MIN, "first_seen"),
    Field(LAST_TS, "newest event (ms)", _W.MAX, _M.MAX, "last_seen"),
    Field(
        ONLINE_UNTIL, "newest event (at most now) + presence ttl", _W.MAX, _M.MAX, "online_until"
    ),
    Field(count("<type>"), "events per type", _W.COUNTER, _M.SUM, "counts.<type>"),
    Field(
        category("<category>"),
        "page views per category",
        _W.COUNTER,
        _M.SUM,
        "categories.<category>",
        CATEGORY_SPACE,
    ),
    Field(
        intent("<key>"),
        "decayed intent per category or product",
        _W.DECAYED,
        _M.DECAYED_SUM,
        "intent.<key>",
        INTENT_SPACE,
    ),
    Field(
        intent_ts("<key>"),
        "the ms i:<key> was decayed to",
        _W.DECAY_TS,
        _M.DECAYED_SUM,
        None,
        INTENT_SPACE,
    ),
    Field(S_N, "sessions started", _W.SESSION, _M.NEWEST_SESSION, "session.number"),
    Field(
        S_START,
        "current session start (ms; absent: first_ts)",
        _W.SESSION,
        _M.NEWEST_SESSION,
        "session.start",
    ),
    Field(
        S_LAST,
        "current session last event (ms; absent: last_ts)",
        _W.SESSION,
        _M.NEWEST_SESSION,
        "session.last_seen",
    ),
    Field(S_PAGES, "current session page views", _W.SESSION, _M.NEWEST_SESSION, "session.pages"),
    Field(
        S_DWELL,
        "current session dwell (ms; absent: 0)",
        _W.SESSION,
        _M.NEWEST_SESSION,
        "session.dwell_ms",
    ),
    Field(S_EVENTS, "current session events", _W.SESSION, _M.NEWEST_SESSION, "session.events"),
    Field(DWELL, "total visible dwell (ms)", _W.COUNTER, _M.SUM, "dwell_ms"),
    Field(
        calc_code(CALC_AMOUNT),
        "newest calculator amount",
        _W.LATEST,
        _M.NEWEST_PRODUCT,
        "calc.<product>.amount",
        CALC_SPACE,
    ),
    Field(
        calc_code(CALC_TERM),
        "newest calculator term (months)",
        _W.LATEST,
        _M.NEWEST_PRODUCT,
        "calc.<product>.term_months",
        CALC_SPACE,
    ),
    Field(
        calc_code(CALC_RATE),
        "newest calculator rate (absent: none)",
        _W.LATEST,
        _M.NEWEST_PRODUCT,
        "calc.<product>.rate",
        CALC_SPACE,
    ),
    Field(
        calc_code(CALC_MONTHLY),
        "newest monthly payment (absent: none)",
        _W.LATEST,
        _M.NEWEST_PRODUCT,
        "calc.<product>.monthly_payment",
        CALC_SPACE,
    ),
    Field(
        calc_code(CALC_TS),
        "newest calculator event (ms)",
        _W.LATEST,
        _M.NEWEST_PRODUCT,
        "calc.<product>.ts",
        CALC_SPACE,
    ),
    Field(
        calc_code(CALC_WAS),
        "[amount, term, ts - c:<product>:ts] before the newest amount/term change",
        _W.PREVIOUS,
        _M.NEWEST_PRODUCT,
        "calc.<product>.previous",
        CALC_SPACE,
    ),
    Field(
        calc_code(CALC_N),
        "calculator events",
        _W.COUNTER,
        _M.SUM,
        "calc.<product>.count",
        CALC_SPACE,
    ),
    Field(
        calc_code(CALC_MAX),
        "largest amount",
        _W.MAX,
        _M.MAX,
        "calc.<product>.max_amount",
        CALC_SPACE,
    ),
    Field(FORM_FOCUS, "form fields focused", _W.COUNTER, _M.SUM, "forms.focused"),
    Field(FORM_ABANDON, "forms abandoned", _W.COUNTER, _M.SUM, "forms.abandoned"),
    Field(FORM_SUBMIT, "forms submitted", _W.COUNTER, _M.SUM, "forms.submitted"),
    Field(
        FORM_LAST_ABANDON,
        "newest abandoned form (name)",
        _W.LATEST,
        _M.NEWER_PROFILE,
        "forms.last_abandoned_form",
    ),
    Field(FORM_LAST_ABANDON_TS, "its ms", _W.LATEST, _M.NEWER_PROFILE, "forms.last_abandoned_ts"),
    Field(
        interest("<product>"),
        "newest interest (ms)",
        _W.MAX,
        _M.MAX,
        "interest.<product>",
        INTEREST_SPACE,
    ),
    Field(
        interest_call("<product>"),
        "newest call request (ms)",
        _W.MAX,
        _M.MAX,
        "call_requested.<product>",
        INTEREST_SPACE,
    ),
    Field(
        PAGES,
        "newest first: 'ts path', then '-<gap ms>[ path]'",
        _W.RECENT,
        _M.RECENT,
        "pages",
    ),
    Field(
        LAST_PAGE,
        "newest page (absent: pages' newest path)",
        _W.LATEST,
        _M.NEWER_PROFILE,
        "last_page",
    ),
    Field(
        LAST_PAGE_TS,
        "its ms (absent: pages' newest ts)",
        _W.LATEST,
        _M.NEWER_PROFILE,
        None,
    ),
    *(
        Field(code, f"last touch {what}", _W.LATEST, _M.NEWEST_TOUCH, f"campaign.{name}")
        for code, what, name in _TOUCH
    ),
    Field(UTM_TS, "last touch (ms)", _W.LATEST, _M.NEWEST_TOUCH, "campaign.ts"),
    *(
        Field(
            FIRST_PREFIX + code,
            f"first touch {what}",
            _W.FIRST,
            _M.EARLIEST_TOUCH,
            f"campaign.first_{name}",
        )
        for code, what, name in _TOUCH
    ),
    Field(FIRST_UTM_TS, "first touch (ms)", _W.FIRST, _M.EARLIEST_TOUCH, "campaign.first_ts"),
    Field(
        SEGMENTS,
        "{segment: ms entered}, current members",
        _W.EXTERNAL,
        _M.UNION_MIN,
        "segments",
        SEGMENT_SPACE,
    ),
    Field(
        SEGMENTS_EXITED,
        "{segment: ms of its last exit}",
        _W.EXTERNAL,
        _M.UNION_MAX,
        "segments_exited",
        SEGMENT_SPACE,
    ),
    Field(
        SITE,
        "site of the first batch (customers; an anonymous profile's key holds it)",
        _W.FIRST,
        _M.KEPT,
        None,
    ),
    Field(RL_WINDOW, "rate-limit window start (ms)", _W.BOOKKEEPING, _M.KEPT, None),
    Field(RL_COUNT, "batches in the window", _W.BOOKKEEPING, _M.KEPT, None),
    Field(
        TRIM_TS,
        "last dedupe-set trim (h, DEDUPE_EPOCH_MS)",
        _W.BOOKKEEPING,
        _M.KEPT,
        None,
    ),
    *(
        Field(
            s.count_code,
            f"{s.name} names kept" + ("" if s.count_code == "kn:c" else " (absent: 0)"),
            _W.BOOKKEEPING,
            _M.RECOUNTED,
            None,
            s,
        )
        for s in SPACES
    ),
    Field(ATTRS, "(customers) CRM attributes", _W.EXTERNAL, _M.KEPT, None),
    Field(
        MERGED_INTO, "(anonymous) the customer it merged into", _W.EXTERNAL, _M.KEPT, "merged_into"
    ),
)

FIELD_BY_CODE: Final[dict[str, Field]] = {f.code: f for f in FIELDS}

# decode_profile's view of a calculator product: sub-field -> decoded name, and the
# decoded names that are integers.
CALC_DECODED: Final[dict[str, str]] = {
    f.code.rsplit(":", 1)[1]: f.decoded.rsplit(".", 1)[1]
    for f in FIELDS
    if f.code.startswith(CALC) and f.decoded
}
CALC_INT_FIELDS: Final = frozenset({"term_months", "count", "ts"})

_FAMILIES: Final = tuple(
    sorted(
        ((f.code.split("<", 1)[0], f.code.rsplit(">", 1)[1], f) for f in FIELDS if "<" in f.code),
        key=lambda t: -len(t[0]) - len(t[1]),
    )
)


def family_of(code: str) -> tuple[Field, str] | None:
    """The declared field a stored code belongs to, and its `<name>` part ('' for a fixed
    field); None when the layout does not declare it. For tests and tools, not hot paths.

    >>> family_of("c:mortgage:max")[0].code, family_of("c:mortgage:max")[1]
    ('c:<product>:max', 'mortgage')
    """
    fixed = FIELD_BY_CODE.get(code)
    if fixed is not None and "<" not in code:
        return fixed, ""
    for prefix, suffix, f in _FAMILIES:
        if code.startswith(prefix) and code.endswith(suffix):
            name = code[len(prefix) : len(code) - len(suffix)]
            if name and ":" not in name:
                return f, name
    return None
