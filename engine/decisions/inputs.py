"""The decision step's interface: profile in, decisions out.

`ingest` calls `Decider.decide` after each batch's profile update. The rules engine
(rules, contact policy, scoring, arbitration) plugs in here; until a rule set is
configured the engine runs `NoDecisions`, which answers every batch with none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.ingest.schema import Event

__all__ = ["Capacity", "Decider", "DecisionInput", "NoDecisions"]


@dataclass(frozen=True, slots=True)
class DecisionInput:
    site: str
    anonymous_id: str
    customer_id: str | None
    profile: dict[str, Any]
    customer: dict[str, Any] = field(default_factory=dict)  # CRM attributes (known only)
    events: list[Event] = field(default_factory=list)
    now_ms: int = 0


class Decider(Protocol):
    async def decide(self, inp: DecisionInput) -> list[dict[str, Any]]:
        """Return the decisions for this batch or page load (may be empty)."""
        ...


class NoDecisions:
    """The decider used when no rules are loaded."""

    async def decide(self, inp: DecisionInput) -> list[dict[str, Any]]:
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
