"""The decision step's interface: profile in, decisions out.

`ingest` calls `Decider.decide` after each batch's profile update. The rules engine
(rules, contact policy, scoring, arbitration) plugs in here; until a rule set is
configured the engine runs `NoDecisions`, which answers every batch with none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.ingest.schema import Event
from engine.profile.profiles import customer_attributes, decode_profile

__all__ = ["Capacity", "Decider", "DecisionInput", "NoDecisions", "decision_input"]


@dataclass(frozen=True, slots=True)
class DecisionInput:
    site: str
    anonymous_id: str
    customer_id: str | None
    profile: dict[str, Any]
    customer: dict[str, Any] = field(default_factory=dict)  # CRM attributes (known only)
    events: list[Event] = field(default_factory=list)
    now_ms: int = 0
    # What the profile update's contact reservation did (`BatchResult.reservations`):
    # delivery's input, not deciding's (the plan never reads it).
    reservations: tuple[tuple[str, ...], ...] = ()
    round_trips: int = 0  # Valkey round trips the batch took before deciding


def decision_input(
    fields: dict[str, Any],
    *,
    site: str,
    anonymous_id: str,
    customer_id: str | None,
    now_ms: int,
    intent_half_life_s: float,
    events: Sequence[Event] = (),
    reservations: tuple[tuple[str, ...], ...] = (),
    round_trips: int = 0,
) -> DecisionInput:
    """The one way a stored profile hash becomes what deciding reads: the profile
    decoded as of `now_ms` (intent decayed to then) and the customer's CRM attributes.
    Ingest, the page-load decisions and the agent's context all go through here, so
    a rule sees the same inputs whichever way it is asked."""
    return DecisionInput(
        site=site,
        anonymous_id=anonymous_id,
        customer_id=customer_id,
        profile=decode_profile(fields, now_ms, intent_half_life_s, known=customer_id is not None),
        customer=customer_attributes(fields),
        events=list(events),
        now_ms=now_ms,
        reservations=reservations,
        round_trips=round_trips,
    )


class Decider(Protocol):
    async def decide(self, inp: DecisionInput) -> list[dict[str, Any]]:
        """Return the decisions for this batch or page load (may be empty)."""
        ...

    def reservations(self, customer_id: str | None, now_ms: int) -> list[dict[str, Any]]:
        """Contact candidates the profile update may reserve for (`rb_ingest`'s `res`)."""
        ...


class NoDecisions:
    """The decider used when no rules are loaded."""

    async def decide(self, inp: DecisionInput) -> list[dict[str, Any]]:
        return []

    def reservations(self, customer_id: str | None, now_ms: int) -> list[dict[str, Any]]:
        return []


@dataclass(frozen=True, slots=True)
class Capacity:
    """The floor as the capacity monitor last read it: a decision input."""

    agents_online: int = 0
    queue: int = 0
    measured: bool = False  # False until the first reading: don't hold calls back blind

    def overloaded(self, max_queue_per_agent: int) -> bool:
        if not self.measured or max_queue_per_agent <= 0:
            return False
        return self.queue >= self.agents_online * max_queue_per_agent
