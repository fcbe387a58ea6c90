"""Labels from delayed outcomes, beyond agents' calls: what the page and the bank's
systems say came of a decision, joined to the decision's audit record (its feature
snapshot at decision time), never to the profile as it is later.

Three sources, each written as an outcome entry by `record_outcome`
(engine/delivery/outcomes.py), the one stream the learner reads:

- **Clicks.** The snippet sends `custom` events `offer_click` with `data: {decision_id,
  offer_id}` (sdk-js/src/offers.js). A click counts only for the visitor the decision
  was made for (its audit record's `prefix` is this batch's anonymous or customer
  profile): a visitor must not label someone else's decisions. One `clicked` per
  decision, however often it is clicked: `keys.decision_label` is set NX.
- **Impressions left unclicked.** An `offer_impression` opens a click window
  (`[learning] click_window_s`): the decision waits in `keys.LABELS_PENDING`, scored by
  the window's end. `sweep` (run by the learner) pops what is due and records
  `ignored`, a negative, unless a click labelled it first. The label key decides
  between a late click and the sweep: whichever sets it first is the one label.
- **Conversions.** `POST /v1/conversions {customer_id, product, value?, ts}` for sales
  the bank's systems see (a loan signed days later). Attribution is last touch: the
  customer's most recent decision (offer or callback) whose offer is for that product,
  made within `[learning] conversion_window_s` before `ts`, gets `converted` with the
  value. Decisions of linked anonymous profiles count, and so do holdout members'
  (their conversions are what uplift is measured against).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import msgspec

from engine.core.errors import NotFound
from engine.core.settings import Settings
from engine.core.vocabulary import Action, Outcome
from engine.delivery.outcomes import record_outcome
from engine.delivery.records import AUDIT_TTL_S, decision_ids, read_audit
from engine.ingest.identity import CUSTOMER_ID_RE
from engine.ingest.schema import CustomEvent, Event, Product, TsMs
from engine.valkey import keys, refs
from engine.valkey.store import Store

__all__ = [
    "CONVERSION_DEDUPE_TTL_S",
    "OFFER_CLICK",
    "OFFER_IMPRESSION",
    "PAGE_BY",
    "Conversion",
    "ConversionBody",
    "convert",
    "page_outcomes",
    "sweep",
]

OFFER_IMPRESSION = "offer_impression"
OFFER_CLICK = "offer_click"
PAGE_BY = "page"  # the outcome entry's `by` for labels the page gave
# A conversion id is remembered this long: a bank system's retries come well within it.
CONVERSION_DEDUPE_TTL_S = 30 * 86400
SWEEP_BATCH = 500

_DECISION_ID = re.compile(r"^[0-9a-f]{24}$")

# Pop up to ARGV[2] members due by ARGV[1] in one step: two learners (an old lease
# holder still finishing) can never both pop, so never both emit, the same decision.
_POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


# -- page outcomes: clicks and impressions -----------------------------------------------


async def page_outcomes(
    store: Store,
    prefix_candidates: Sequence[str],
    events: Iterable[Event],
    now_ms: int,
    settings: Settings,
) -> int:
    """Record the page's offer clicks and open click windows for its impressions.

    `events` are the batch's events the profile accepted (duplicates already dropped);
    `prefix_candidates` the profiles that are this visitor (the batch's anonymous
    profile, and its customer's when identified). Returns how many offer events were
    ignored: a malformed or unknown decision id, someone else's decision, or not an
    offer. No Valkey call at all when no event is an offer impression or click.
    """
    wanted = [
        (ev.props.name, ev.props.data.get("decision_id"), ev.ts)
        for ev in events
        if type(ev) is CustomEvent and ev.props.name in (OFFER_IMPRESSION, OFFER_CLICK)
    ]
    if not wanted:
        return 0
    ids = sorted({d for _, d, _ in wanted if isinstance(d, str) and _DECISION_ID.match(d)})
    audits = dict(zip(ids, await asyncio.gather(*[read_audit(store, d) for d in ids]), strict=True))
    ours = set(prefix_candidates)
    ignored = 0
    window_ms = settings.learning.click_window_s * 1000
    for name, decision_id, ts_ms in wanted:
        audit = audits.get(decision_id) if isinstance(decision_id, str) else None
        if audit is None or audit.get("prefix") not in ours or audit.get("action") != Action.OFFER:
            ignored += 1
        elif name == OFFER_CLICK:
            await _label(store, audit, Outcome.CLICKED, now_ms)
            await store.call("ZREM", keys.LABELS_PENDING, audit["id"], writes=True)
        else:  # the first impression's window counts: NX keeps its deadline
            deadline = max(ts_ms, 0) + window_ms
            await store.call("ZADD", keys.LABELS_PENDING, "NX", deadline, audit["id"], writes=True)
    return ignored


async def sweep(store: Store, now_ms: int) -> int:
    """Impressions whose click window closed without a click: `ignored` (a negative).

    Pops what is due atomically (one script on the pending set's slot), so two
    learners never both emit a decision's label; a decision a click labelled first is
    skipped (`keys.decision_label`). A crash between popping and recording loses at
    most one batch of negatives, never invents a label. Returns the number recorded.
    """
    recorded = 0
    while True:
        due = await store.call(
            "EVAL", _POP_DUE, 1, keys.LABELS_PENDING, now_ms, SWEEP_BATCH, writes=True
        )
        ids = [str(d) for d in due or ()]
        audits = await asyncio.gather(*[read_audit(store, d) for d in ids])
        done = await asyncio.gather(
            *[_label(store, a, Outcome.IGNORED, now_ms) for a in audits if a is not None]
        )
        recorded += sum(done)
        if len(ids) < SWEEP_BATCH:
            return recorded


async def _label(store: Store, audit: dict[str, Any], outcome: Outcome, now_ms: int) -> bool:
    """The decision's one page label: True when this call recorded it."""
    decision_id = str(audit.get("id") or "")
    first = await store.call(
        "SET", keys.decision_label(decision_id), outcome, "NX", "EX", AUDIT_TTL_S, writes=True
    )
    if first is None:
        return False
    try:
        await record_outcome(store, audit, outcome, None, PAGE_BY, now_ms)
    except refs.Erased:  # the customer was erased meanwhile: nothing of it is kept
        return False
    return True


# -- conversions -----------------------------------------------------------------------

CustomerId = Annotated[str, msgspec.Meta(pattern=CUSTOMER_ID_RE.pattern)]


class ConversionBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`POST /v1/conversions`: a sale the bank's systems saw."""

    customer_id: CustomerId
    product: Product
    ts: Annotated[TsMs, msgspec.Meta(description="when the sale happened, ms")]
    value: Annotated[float, msgspec.Meta(ge=0)] | None = None
    # The same id twice records once (a retry): remembered CONVERSION_DEDUPE_TTL_S.
    conversion_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class Conversion(msgspec.Struct, frozen=True):
    """What `convert` did: the decision credited (None: none in the window), and
    whether this call recorded it (False: a repeated `conversion_id`)."""

    attributed: str | None
    recorded: bool


async def convert(
    store: Store, body: ConversionBody, now_ms: int, settings: Settings, by: str
) -> Conversion:
    """Attribute a conversion to the customer's latest decision for the product (last
    touch, within `conversion_window_s` before `body.ts`) and record `converted`.

    404 `unknown_customer` when no profile exists (never seen, or erased)."""
    prefix = keys.customer_prefix(body.customer_id)
    profile = keys.profile_keys(prefix)
    exists, links = await asyncio.gather(
        store.call("EXISTS", profile[0], profile[2]), store.call("SMEMBERS", profile[2])
    )
    if not exists:
        raise _unknown_customer(body.customer_id)
    seen: str | None = None
    if body.conversion_id is not None:
        digest = hashlib.blake2b(
            f"{body.customer_id}\0{body.conversion_id}".encode(),
            digest_size=16,
            person=b"rb-conversion",
        ).hexdigest()
        seen = keys.conversion_seen(digest)
        first = await store.call("SET", seen, "", "NX", "EX", CONVERSION_DEDUPE_TTL_S, writes=True)
        if first is None:
            before = await store.call("GET", seen)
            return Conversion(before or None, False)  # "": recorded with no decision
    prefixes = [prefix, *(keys.anonymous_prefix(*keys.parse_link_member(m)) for m in links)]
    window_ms = settings.learning.conversion_window_s * 1000
    decision = await _last_touch(store, prefixes, body.product, body.ts - window_ms, body.ts)
    if decision is not None:
        try:
            await record_outcome(store, decision, Outcome.CONVERTED, body.value, by, now_ms)
        except refs.Erased:  # erased while this ran: as if the customer never existed
            if seen is not None:
                await store.call("DEL", seen, writes=True)
            raise _unknown_customer(body.customer_id) from None
    attributed = str(decision["id"]) if decision is not None else None
    if seen is not None and attributed is not None:
        await store.call("SET", seen, attributed, "XX", "KEEPTTL", writes=True)
    return Conversion(attributed, True)


async def _last_touch(
    store: Store, prefixes: Sequence[str], product: str, from_ms: int, to_ms: int
) -> dict[str, Any] | None:
    """The latest audited decision for `product` made in [from_ms, to_ms], found through
    the profiles' indexes (`decision_ids`: older decisions' references are not read)."""
    ids = await decision_ids(store, prefixes, from_ms)
    audits = await asyncio.gather(*[read_audit(store, d) for d in ids])
    best: dict[str, Any] | None = None
    for audit in audits:
        if audit is None or audit.get("suppressed"):
            continue  # a contact that never happened earns no conversion
        offer = audit.get("offer")
        at_ms = audit.get("at_ms")
        if not isinstance(offer, dict) or offer.get("product") != product:
            continue
        if not isinstance(at_ms, int) or not from_ms <= at_ms <= to_ms:
            continue
        if best is None or (at_ms, str(audit.get("id"))) > (best["at_ms"], str(best.get("id"))):
            best = audit
    return best


def _unknown_customer(customer_id: str) -> NotFound:
    return NotFound("unknown_customer", f"no profile for customer {customer_id!r}", "$.customer_id")
