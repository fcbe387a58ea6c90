"""Real-time segments: named groups of visitors, declared beside the rules.

A rules file may hold

    segments:
      - id: mortgage_researchers
        description: Used the mortgage calculator or asked about mortgages this week
        when: within(default(profile.calc.mortgage.ts, 0), 7 * 86400, now)

The condition is a rule expression (`engine.decisions.expr`: the same variables,
functions and Kleene logic; UNKNOWN is "not a member"). A segment's condition may not
read `segments`: every segment is evaluated on the same inputs, together, before the
rules, so a rule can say `"mortgage_researchers" in segments`. All of a set's segment
conditions run as one generated function (`engine.decisions.compiled`), like its rules.

Membership is a fact about the visitor now. Deciding compares it with what the profile
stored (`profile["segments"]`: id -> ms entered), and the plan carries the entries and
exits; delivery (`engine.delivery.segment_counts`) writes them only when something
changed, so a visitor who stays in a segment costs no write. A segment id the rule set
no longer declares is left as an exit: membership is what the current rules say.

>>> from engine.decisions.expr import compile_expression as c
>>> segs = compile_segments((Segment("big", "", c("profile.amount > 5"), "f:1"),
...                          Segment("any", "", c("true"), "f:2")))
>>> sorted(segs.members({"profile": {"amount": 9}}))
['any', 'big']
>>> changes(frozenset({"any"}), {"big": 1_000, "gone": 5}, declared=segs.ids)
(('any',), ('big', 'gone'))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.decisions.compiled import CompiledRules, compile_rules
from engine.decisions.expr import Expression
from engine.profile.layout import SEGMENT_SPACE

__all__ = ["MAX_SEGMENTS", "NO_SEGMENTS", "Segment", "Segments", "changes", "compile_segments"]

# Segments a rule set may declare: as many as the profile keeps memberships
# (engine/profile/layout.py `SEGMENT_SPACE`; a segment past its cap would be "entered"
# again on every batch). Each is also a Prometheus label and a model feature.
MAX_SEGMENTS = SEGMENT_SPACE.cap


@dataclass(frozen=True)
class Segment:
    """A segment as loaded: its condition compiled."""

    id: str
    description: str
    when: Expression
    source: str  # file:line


@dataclass(frozen=True)
class Segments:
    """A rule set's segments and their conditions as one function."""

    segments: tuple[Segment, ...] = ()
    find: CompiledRules | None = field(default=None, repr=False, compare=False)
    ids: frozenset[str] = frozenset()

    def members(self, variables: Mapping[str, Any]) -> frozenset[str]:
        """The ids whose condition is definitely true for `variables`."""
        if self.find is None:
            return frozenset()
        segs = self.segments
        return frozenset([segs[i].id for i, matched in self.find.find(variables) if matched])

    def __bool__(self) -> bool:
        return bool(self.segments)


NO_SEGMENTS = Segments()


def compile_segments(segments: tuple[Segment, ...]) -> Segments:
    """The segments with their conditions generated into one function."""
    if not segments:
        return NO_SEGMENTS
    return Segments(
        segments, compile_rules([s.when for s in segments]), frozenset(s.id for s in segments)
    )


def changes(
    now: frozenset[str], stored: Mapping[str, Any], declared: frozenset[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(entered, exited), each sorted: the segments the visitor is in now and was not,
    and those stored that it no longer is in (or that are no longer `declared`)."""
    if not now and not stored:
        return (), ()
    entered = tuple(sorted(s for s in now if s not in stored))
    exited = tuple(sorted(s for s in stored if s not in now or s not in declared))
    return entered, exited
