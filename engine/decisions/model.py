"""What deciding produces: a `Decision` (the batch's answer, each audit record's subject)
and a `Trigger` (a fired contact, as delivery writes it to the triggers stream, the
trigger's record and every webhook).

They live here, beside the plan that makes them, because imports point down the data
path: delivery (`engine.delivery.records`) writes a `Trigger`, and decisions may not
import delivery. Fields are typed by the vocabulary (`engine.core.vocabulary`); a
`StrEnum` member encodes as its value, so the JSON is what the dicts these replaced
produced, key for key and in the same order (the dashboards' JS and webhook receivers
read it): `Decision` omits `slot` and `offer` when it has none, as the dicts did.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.core.vocabulary import Action, Channel, TriggerKind

__all__ = ["Decision", "Trigger"]


class _Record(msgspec.Struct, frozen=True, omit_defaults=True):
    """A struct that becomes JSON (`wire`): enum members as their values, fields left
    at their defaults omitted."""

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict: enum members as their values, defaults omitted."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


# gc=False: neither holds anything that could refer back to it (strings, numbers, and
# dicts of them), so the collector need not track them; one fewer cost per decision.
class Decision(_Record, frozen=True, omit_defaults=True, gc=False):
    """One decision of a batch: what the page shows (`offer`) or the contact that fired
    (`callback`, `notify`), by which rule, through which channel, scored how."""

    id: str
    action: Action
    rule: str
    channel: Channel
    factors: dict[str, float]  # propensity, value, lever, score: what ranked it
    model: dict[str, Any]  # {name, version, source}: where the propensity came from
    slot: str | None = None  # offers only: the page slot it fills
    offer: dict[str, Any] | None = None  # the offer's public fields, when the rule names one
    holdout: bool = False  # a control-group member's: recorded, never delivered

    def wire(self) -> dict[str, Any]:
        """The batch's answer for this decision, as the HTTP answer and the metrics read
        it. By hand, not `msgspec.to_builtins`: every batch with an offer pays this, and
        this is 2.5x faster (members stay members, which orjson writes as their values;
        `factors` and `offer` are shared, not copied: nothing changes them)."""
        out: dict[str, Any] = {
            "id": self.id,
            "action": self.action,
            "rule": self.rule,
            "channel": self.channel,
            "factors": self.factors,
            "model": self.model,
        }
        if self.slot is not None:
            out["slot"] = self.slot
        if self.offer is not None:
            out["offer"] = self.offer
        if self.holdout:
            out["holdout"] = True
        return out


class Trigger(_Record, frozen=True, omit_defaults=True, gc=False):
    """A fired contact: phone work for the agents (`kind` callback) or a notification
    for the webhooks (`kind` notify, an e-mail or SMS). Every field is always written."""

    id: str  # the decision's id
    kind: TriggerKind
    channel: Channel
    rule: str
    reason: str
    customer_id: str  # "" for an anonymous visitor
    anonymous_id: str
    site: str
    prefix: str  # the profile's key prefix: where erasure finds it
    priority: int
    vip: bool
    online: bool
    online_until: int  # ms; presence needs no read until then
    created_ms: int
    expires_ms: int
    scheduled_for: int | str  # ms of the next opening, "" when due now
    context: dict[str, Any]  # what the agent sees: calculators, intent, pages, offer
    factors: dict[str, float]  # as the decision's: propensity, value, lever, score
    model: dict[str, Any]  # as the decision's: {name, version, source}
    # Who it is for (issue 15), for reports and the agent: the campaign (last and first
    # touch: campaign, source, medium, term, content, referrer, first_campaign,
    # first_source, first_medium, first_referrer; only those known), the segments the
    # visitor was in (sorted), the CRM branch ("" unknown) and the customer value.
    attribution: dict[str, str]
    segments: list[str]
    branch: str
    customer_value: float
