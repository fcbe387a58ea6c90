"""The words of the data path, in one place: event types, actions, channels, trigger
kinds, stream-entry kinds and outcomes.

They are `StrEnum`s, so a member *is* its string: it goes into JSON, stream fields,
metrics labels and Lua unchanged, and a string read back from Valkey compares equal
to the member. Rule files, the OpenAPI document and the route schemas take their
allowed values from here, so no list of channels or outcomes is written twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

__all__ = [
    "AGENT_OUTCOMES",
    "DEFAULT_CHANNEL",
    "EVENT_TYPES",
    "Action",
    "Channel",
    "EntryKind",
    "EventType",
    "Outcome",
    "TriggerKind",
    "is_phone_work",
    "trigger_kind",
]


class EventType(StrEnum):
    """What the snippet (or a server source) reports; the tag of an event."""

    PAGE_VIEW = "page_view"
    CLICK = "click"
    SCROLL = "scroll"
    HEARTBEAT = "heartbeat"
    CALC = "calc"
    FORM = "form"
    INTEREST = "interest"
    CUSTOM = "custom"


EVENT_TYPES: tuple[str, ...] = tuple(EventType)


class Action(StrEnum):
    """What a rule does when it fires."""

    OFFER = "offer"  # shown on the page, in the answer to the batch
    CALLBACK = "callback"  # "call now": an agent phones the customer
    NOTIFY = "notify"  # a message through a webhook (e-mail, SMS)


class Channel(StrEnum):
    """How a decision reaches the customer."""

    WEB = "web"
    CALLBACK = "callback"
    EMAIL = "email"
    SMS = "sms"


DEFAULT_CHANNEL: Mapping[Action, Channel] = {
    Action.OFFER: Channel.WEB,
    Action.CALLBACK: Channel.CALLBACK,
    Action.NOTIFY: Channel.EMAIL,
}


class TriggerKind(StrEnum):
    """A fired contact: agents' phone work, or a notification for webhooks only."""

    CALLBACK = "callback"
    NOTIFY = "notify"


class EntryKind(StrEnum):
    """The `kind` of an entry on a triggers shard stream (engine/valkey/streams.py):
    a new trigger (a `TriggerKind`) or a change of state of one."""

    CALLBACK = "callback"
    NOTIFY = "notify"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    WITHDRAWN = "withdrawn"  # erased: off every dashboard (expiry is read from expires_ms)


class Outcome(StrEnum):
    """What came of a decision: from an agent (`AGENT_OUTCOMES`), from the page
    (clicked, dismissed; ignored: shown, not clicked within the click window, a
    negative label) or from the bank's systems (applied, converted)."""

    CONNECTED = "connected"
    NO_ANSWER = "no_answer"
    CONVERTED = "converted"
    NOT_INTERESTED = "not_interested"
    CLICKED = "clicked"
    DISMISSED = "dismissed"
    APPLIED = "applied"
    IGNORED = "ignored"


AGENT_OUTCOMES: tuple[Outcome, ...] = (
    Outcome.CONNECTED,
    Outcome.NO_ANSWER,
    Outcome.CONVERTED,
    Outcome.NOT_INTERESTED,
)


def trigger_kind(action: str, channel: str) -> TriggerKind:
    """What a fired contact is, from the channel eligibility actually chose: only a
    phone callback is agents' work (on the capacity queue, claimable on the
    dashboard); a callback that fell back to e-mail or SMS (do-not-call, no consent,
    outside hours) is a notification, for webhooks only. An agent must never be able
    to claim, and phone, a do-not-call customer.

    >>> trigger_kind("callback", "callback"), trigger_kind("callback", "email")
    (<TriggerKind.CALLBACK: 'callback'>, <TriggerKind.NOTIFY: 'notify'>)
    >>> trigger_kind("notify", "sms") == "notify"
    True
    """
    if action == Action.CALLBACK and channel == Channel.CALLBACK:
        return TriggerKind.CALLBACK
    return TriggerKind.NOTIFY


def is_phone_work(trigger: Mapping[str, Any]) -> bool:
    """Whether a trigger is agents' work: a phone callback. Only these go on the queue,
    to the dashboards and to claim; an e-mail or SMS fallback (a do-not-call customer's
    "call me", say) is a notification for webhooks, and an agent must never phone it.
    Checks the channel too, so an older entry that said `kind: callback` with an e-mail
    channel is still kept off the floor.

    >>> is_phone_work({"kind": "callback", "channel": "callback"})
    True
    >>> is_phone_work({"kind": "callback", "channel": "email"}), is_phone_work({"kind": "notify"})
    (False, False)
    """
    return (
        trigger.get("kind") == TriggerKind.CALLBACK
        and trigger.get("channel", Channel.CALLBACK) == Channel.CALLBACK
    )
