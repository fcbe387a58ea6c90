"""Contact candidates for the reservation that rides along with the profile update.

A callback used to cost three Valkey round trips in sequence: the profile update,
then the contact reservation (`rb_reserve`), then the trigger and its records. The
reservation could not go first because deciding needs the updated profile. This
module lets it go *with* the profile update: for each contact rule (a callback or a
notification) it derives, once per rule set, a pre-check that `rb_ingest` can test
on the updated profile without Python: the terms of the rule's top-level `and` that
compare a stored number with a constant (`profile.calc.mortgage.count >= 3`,
`profile.categories.cards >= 2`, `profile.online`), plus "has consented to calls" for
a callback. When a known customer's batch passes one, `rb_ingest` takes that rule's
reservation in the same call, and the decision that follows finds it already made.

The pre-check is necessary, not sufficient: terms it cannot read (customer
attributes, intent, `or`) are left to the decision, which has the last word. A
reservation the decision does not use is given back (`rb_release`) in the delivery
flush; one it uses saves the round trip. A rule none of whose terms can be read this
way gets no pre-check and keeps the separate reservation call, which is always
correct, only slower.
"""

from __future__ import annotations

import ast
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.core.vocabulary import Action, Channel
from engine.decisions.inputs import Capacity
from engine.decisions.loader import Rule, RuleSet
from engine.decisions.plan import holdout
from engine.profile.layout import CALC, CALC_DECODED, CATEGORY, COUNT

__all__ = ["ONLINE", "Candidates", "Term", "precheck"]

ONLINE = "@online"  # rb_ingest's pseudo-field: online_until is still ahead of now
_OPS = frozenset({">=", ">", "<=", "<", "==", "!="})
_FLIP = {">=": "<=", ">": "<", "<=": ">=", "<": ">", "==": "==", "!=": "!="}
_CALC_CODE = {decoded: code for code, decoded in CALC_DECODED.items()}

Term = tuple[str, str, float]  # (stored field, operator, constant)


def _field(path: tuple[str, ...]) -> str | None:
    """The stored profile field a decoded path reads, when it is one plain number."""
    if len(path) == 3 and path[0] == "profile":
        if path[1] == "counts":
            return COUNT + path[2]
        if path[1] == "categories":
            return CATEGORY + path[2]
    if len(path) == 4 and path[:2] == ("profile", "calc") and path[3] in _CALC_CODE:
        if path[3] in ("count", "max_amount", "amount", "term_months"):
            return f"{CALC}{path[2]}:{_CALC_CODE[path[3]]}"
    return None


def _path_of(node: ast.expr, paths: Mapping[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in paths:
        return paths[node.func.id]
    return None


def _number(node: ast.expr) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if not isinstance(node.value, bool):
            return float(node.value)
    return None


def _term(node: ast.expr, paths: Mapping[str, tuple[str, ...]]) -> Term | None:
    """One conjunct as a Term, or None when rb_ingest cannot test it."""
    if _path_of(node, paths) == ("profile", "online"):
        return (ONLINE, "==", 1.0)
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Subscript)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "C"
        and isinstance(node.func.slice, ast.Constant)
        and node.func.slice.value in _OPS
        and len(node.args) == 2
    ):
        return None
    op = str(node.func.slice.value)
    left, right = node.args
    path, value = _path_of(left, paths), _number(right)
    if path is None:  # constant on the left: `3 <= profile.calc.x.count`
        path, value, op = _path_of(right, paths), _number(left), _FLIP[op]
    if path is None or value is None:
        return None
    field = _field(path)
    return None if field is None else (field, op, value)


def precheck(rule: Rule) -> tuple[Term, ...]:
    """The terms of `rule`'s condition that rb_ingest can test; () if none.

    >>> from engine.decisions.expr import compile_expression as c
    >>> from types import SimpleNamespace as R
    >>> precheck(R(when=c("profile.calc.mortgage.count >= 3 and profile.online"
    ...                   " and 'mortgage' not in default(customer.products_held, [])")))
    (('c:mortgage:n', '>=', 3.0), ('@online', '==', 1.0))
    >>> precheck(R(when=c("profile.intent.mortgage > 2 or profile.counts.calc > 1")))
    ()
    """
    checked = rule.when.checked
    if checked is None:
        return ()
    body = checked.body
    conjuncts: Sequence[ast.expr] = [body]
    if isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id == "_and":
        conjuncts = body.args
    terms = (_term(node, checked.paths) for node in conjuncts)
    return tuple(t for t in terms if t is not None)


@dataclass(frozen=True, slots=True)
class _Candidate:
    rule: Rule
    pre: tuple[Term, ...]


class Candidates:
    """A rule set's contact rules that have a pre-check, best first (value, then
    priority: how the plan ranks contacts when the models know nothing yet). Built
    once per rule set."""

    def __init__(self, rs: RuleSet) -> None:
        self.rules = rs
        found = [
            _Candidate(r, pre)
            for r in rs.rules
            if r.action != Action.OFFER and (pre := precheck(r))
        ]
        found.sort(key=lambda c: (-c.rule.value, -c.rule.priority))
        self._found = tuple(found)

    def __bool__(self) -> bool:
        return bool(self._found)

    def for_batch(
        self, customer_id: str | None, now_ms: int, capacity: Capacity
    ) -> list[dict[str, Any]]:
        """What `rb_ingest` gets as `res` for this batch: only a known customer can be
        contacted; rules not enabled today, whose control group the customer is in, or
        whose calendar would drop the call now (closed and not scheduling, or the floor
        overloaded) cannot make a contact and are left out."""
        if customer_id is None or not self._found:
            return []
        out: list[dict[str, Any]] = []
        today: dt.date | None = None
        for cand in self._found:
            rule = cand.rule
            if rule.enabled_from is not None or rule.enabled_until is not None:
                today = today or dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).date()
                if not rule.enabled_on(today):
                    continue
            if holdout(customer_id, rule.id, rule.holdout_pct):
                continue
            day = ""
            cal = self.rules.calendars.get(rule.policy.calendar or "")
            if cal is not None:
                day = cal.day_key(now_ms)
            if rule.channel == Channel.CALLBACK:
                if cal is not None and rule.policy.outside_hours != "schedule":
                    if not cal.is_open(now_ms):
                        continue
                if capacity.overloaded(rule.policy.max_queue_per_agent):
                    continue
            out.append(
                {
                    "rule": rule.id,
                    "channel": str(rule.channel),
                    "rule_cooldown_ms": rule.policy.cooldown_s * 1000,
                    "channel_cooldown_ms": rule.policy.channel_cooldown_s * 1000,
                    "max_per_day": rule.policy.max_per_day,
                    "day": day or "-",
                    "pre": cand.pre,
                    "consent": rule.action == Action.CALLBACK,
                }
            )
        return out
