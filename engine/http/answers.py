"""The JSON answers of the HTTP interface, as msgspec structs.

Handlers still build plain dicts (orjson is the fast path); these structs describe
what those dicts hold, so `/openapi.json` documents the answers from the same types
and tests/test_route_table.py checks real answers against them. Top-level answers
forbid unknown fields: a key a handler adds without declaring it fails that test.
Nested shapes owned elsewhere (the decoded profile, an audit trace, a rule's offer)
stay open objects, documented where they are built.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from engine.core.vocabulary import Action, Channel, Outcome

__all__ = [
    "AttributesAnswer",
    "AuditRecord",
    "ClaimAnswer",
    "CompleteAnswer",
    "ContextAnswer",
    "ConversionAnswer",
    "CustomerDecision",
    "CustomerDecisionsAnswer",
    "Decision",
    "DecisionsAnswer",
    "DemoLoginAnswer",
    "ErasureAnswer",
    "ErrorBody",
    "ErrorDetail",
    "FunnelAnswer",
    "HealthAnswer",
    "IngestAnswer",
    "LinkedAnonymousId",
    "LoginAnswer",
    "LogoutAnswer",
    "MeAnswer",
    "ModelInfo",
    "ModelsAnswer",
    "OutcomeAnswer",
    "PageVisit",
    "ProfileAnswer",
    "ReadyAnswer",
    "ReloadAnswer",
]


class _Answer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A top-level answer: every key it may carry is declared."""


class ErrorDetail(msgspec.Struct, forbid_unknown_fields=True):
    code: str  # stable, machine-readable: what a client branches on
    message: str  # for people; wording may change
    path: str | None = None  # JSON path of the offending input (`$.events[3].ts`), if any


class ErrorBody(_Answer):
    """Every refusal, whatever the route and status (engine/http/errors.py)."""

    error: ErrorDetail


class Decision(msgspec.Struct, kw_only=True):
    """A decision as the snippet and agents receive it (engine/decisions/plan.py).
    Open: the decision layer may add keys without breaking clients."""

    id: str
    action: Action
    rule: str
    channel: Channel
    factors: dict[str, Any]
    slot: str | None = None  # offers: where on the page
    offer: dict[str, Any] | None = None  # the offer's public fields


class IngestAnswer(_Answer):
    accepted: int
    duplicates: int
    decisions: list[Decision]


class DecisionsAnswer(_Answer):
    decisions: list[Decision]


class AuditRecord(msgspec.Struct, kw_only=True):
    """Why a decision was made; `trace` holds every rule's verdict (matched or not,
    suppressed and why), `factors` the scores and arbitration."""

    id: str
    at_ms: int
    site: str
    customer_id: str | None
    anonymous_id: str
    rule: str
    action: Action
    channel: Channel
    rule_set: str
    factors: dict[str, Any]
    inputs: list[str]
    trace: list[dict[str, Any]]
    offer: dict[str, Any] | None = None


class PageVisit(msgspec.Struct, forbid_unknown_fields=True):
    ts: int | None
    path: str


class LinkedAnonymousId(msgspec.Struct, forbid_unknown_fields=True):
    site: str
    anonymous_id: str


class ProfileAnswer(_Answer):
    customer_id: str
    profile: dict[str, Any]  # decoded profile (engine/profile/profiles.py decode_profile)
    recent_pages: list[PageVisit]
    linked_anonymous_ids: list[LinkedAnonymousId]
    attributes: dict[str, Any]
    contact_history: list[dict[str, Any]]


class ErasureAnswer(_Answer):
    customer_id: str
    erased: bool
    keys_deleted: int
    stream_entries_deleted: int
    triggers_withdrawn: int
    anonymous_profiles: int
    receipt: str  # id of the erasure receipt (it holds no personal data)


class AttributesAnswer(_Answer):
    customer_id: str
    attributes: dict[str, Any]
    created: bool


class LoginAnswer(_Answer):
    user: str
    role: str
    csrf_token: str  # send back in X-CSRF-Token on state-changing calls


class LogoutAnswer(_Answer):
    signed_out: bool


class MeAnswer(_Answer):
    user: str
    role: str
    csrf_token: str | None = None  # session callers only


class ClaimAnswer(_Answer):
    trigger_id: str
    claimed_by: str


class CompleteAnswer(_Answer):
    trigger_id: str
    outcome: Outcome


class OutcomeAnswer(_Answer):
    decision_id: str
    recorded: bool


class ConversionAnswer(_Answer):
    """`POST /v1/conversions` (engine/learning/labels.py): the decision credited, last
    touch, or null when none for the product was made within the window."""

    customer_id: str
    product: str
    attributed: str | None
    recorded: bool  # false: this conversion_id was recorded before (the first answer's)


class Presence(msgspec.Struct, forbid_unknown_fields=True):
    online: bool
    last_seen: int | None
    session: dict[str, Any]


class ContextAnswer(_Answer):
    customer_id: str
    presence: Presence
    recent_pages: list[PageVisit]
    calculators: dict[str, Any]
    intent: dict[str, float]
    interest: dict[str, int]
    call_requested: dict[str, int]
    forms: dict[str, Any]
    attributes: dict[str, Any]
    best_offer: Decision | None
    contact_history: list[dict[str, Any]]


class CustomerDecision(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One audited decision about a customer (engine/http/customers.py): made, held
    out (`holdout`), or a contact a matching rule did not make (`suppressed`: why)."""

    id: str
    at_ms: int
    rule: str
    action: Action
    channel: Channel
    offer_id: str | None
    holdout: bool  # a control-group member's: recorded, never delivered
    suppressed: str | None  # do_not_call, no_consent, outside_hours, cooldown_rule, ...
    factors: dict[str, Any]  # propensity, value, lever, score
    model: dict[str, Any]  # {name, version, source}
    why: str  # one line for people, from the suppression or the factors
    features: dict[str, Any] | None = None  # full=1: the snapshot at decision time
    trace: list[dict[str, Any]] | None = None  # full=1: every rule's verdict


class CustomerDecisionsAnswer(_Answer):
    customer_id: str
    decisions: list[CustomerDecision]  # newest first


class FunnelRow(msgspec.Struct, forbid_unknown_fields=True):
    fired: int
    claimed: int
    outcomes: dict[str, int]


class Floor(msgspec.Struct, forbid_unknown_fields=True):
    agents_online: int | None
    callbacks_waiting: int | None


class FunnelAnswer(_Answer):
    rules: dict[str, FunnelRow]  # rule id -> its funnel
    floor: Floor


class ReloadAnswer(_Answer):
    reloaded: bool
    version: str
    rules: int
    error: str | None


class ModelInfo(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One published model as this worker serves it (engine/models/snapshot.py)."""

    name: str  # `callback:<rule_id>` or `offer:<offer_id>`
    version: int
    samples: int
    positives: int
    auc: float | None  # progressive validation; null while undefined (one class seen)
    log_loss: float | None
    mature: bool  # false: decisions use `prior` (the observed rate), not the model
    prior: float
    updated_at: int  # ms since the epoch: when this version was published


class ModelsAnswer(_Answer):
    models: list[ModelInfo]  # by name


class DemoLoginAnswer(_Answer):
    token: str
    customer_id: str
    name: str
    expires_in_s: int


class HealthAnswer(_Answer):
    status: Literal["ok"]


class ReadyAnswer(_Answer):
    status: Literal["ready", "unavailable"]
    store: Literal["up", "down"]
