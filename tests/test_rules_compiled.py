"""A rule set's one generated function decides exactly as its rules do one by one.

`engine.decisions.compiled` turns a rule set's conditions into one function (paths
read once, UNKNOWN checked inline, `and`/`or` leaving early). Whatever the inputs (a
value missing, None, of the wrong type, a dict where a number belongs, numbers too big
to divide), it must find the same rules matched and UNKNOWN as each rule's own
expression, and `decide` must produce the same plan and trace; where a rule's closure
raises, the set raises too (or, for a rule outside its dates, neither does).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.decisions.calendar import Calendar
from engine.decisions.compiled import Found, compile_rules, per_rule
from engine.decisions.expr import Expression, ExpressionError, compile_expression
from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import RuleSet, default_functions, load_rules
from engine.decisions.plan import Plan, decide
from engine.ingest.schema import CalcEvent, CalcProps, Event, PageViewEvent

RULES = Path(__file__).resolve().parent.parent / "rules"
NOW_MS = 2_000_000_000_000
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,  # the same cases every run: a red run is the change's doing
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Values a profile or CRM attribute may hold, right and wrong: numbers around the
# thresholds rules use, timestamps around now, product names, and the awkward ones.
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 12),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(NOW_MS - 2_000_000, NOW_MS + 10_000),
    st.sampled_from(["mortgage", "calc", "credit_card", "savings", "gold", "", "3"]),
    st.text(max_size=3),
    st.sampled_from([10**30, 10**400, -(10**400)]),  # 10**400 / 3 raises OverflowError
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b", "count", "mortgage"]), inner, max_size=3),
    ),
    max_leaves=6,
)


@st.composite
def shaped(draw: st.DrawFn, paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    """Variables in the shape the paths read: each path absent, set, or cut short by a
    value (often not a dict) at one of its steps."""
    v: dict[str, Any] = {}
    for path in paths:
        mode = draw(st.sampled_from(["absent", "set", "set", "set", "cut"]))
        if mode == "absent":
            continue
        end = draw(st.integers(0, len(path) - 1)) if mode == "cut" else len(path) - 1
        cur = v
        for key in path[:end]:
            nxt = cur.get(key)
            if not isinstance(nxt, dict):
                nxt = cur[key] = {}
            cur = nxt
        cur[path[end]] = draw(VALUES)
    return v


def _paths(exprs: Sequence[Expression]) -> list[tuple[str, ...]]:
    out = {p for e in exprs if e.checked for p in e.checked.paths.values()}
    return sorted(out | {("now",)})


def _same(exprs: Sequence[Expression], variables: dict[str, Any]) -> None:
    """The generated function against each closure: equal answers, or both raise."""
    fns = [e._fn for e in exprs]
    compiled = compile_rules(exprs)
    want: Found | type[BaseException]
    got: Found | type[BaseException]
    try:
        want = per_rule(fns, variables)
    except Exception as exc:  # which rules raise (and how) is part of what we compare
        want = type(exc)
    try:
        got = compiled.find(variables)
    except Exception as exc:
        got = type(exc)
    assert got == want


# ---- the shipped rules --------------------------------------------------------------

SHIPPED = load_rules(RULES)
SHIPPED_EXPRS = [r.when for r in SHIPPED.rules]


def test_every_shipped_rule_is_generated_inline() -> None:
    assert SHIPPED.conditions.closures == 0
    assert SHIPPED.conditions.source.startswith("def find(v):")


@SETTINGS
@given(shaped(_paths(SHIPPED_EXPRS)))
def test_shipped_rules_match_as_each_rule_alone(variables: dict[str, Any]) -> None:
    _same(SHIPPED_EXPRS, variables)


# ---- generated rule sets -------------------------------------------------------------

PATHS = [
    "profile.a",
    "profile.a.b",
    "profile.calc.mortgage.count",
    "profile.intent.mortgage",
    "customer.products_held",
    "customer.tier",
    "event.type",
    "score.mortgage",
    "session.pages",
    "now",
]
LITERALS = st.one_of(
    st.integers(-5, 12).map(str),
    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
    st.sampled_from(['"mortgage"', '"gold"', '"3"', "true", "false", "null", "[]"]),
    st.lists(st.sampled_from(['"mortgage"', '"gold"', "3", "null"]), max_size=3).map(
        lambda xs: "[" + ", ".join(xs) + "]"
    ),
    st.text(max_size=4).map(repr),  # quotes, backslashes, newlines inside a literal
)
ATOMS = st.one_of(st.sampled_from(PATHS), LITERALS)
CMP = ["==", "!=", "<", "<=", ">", ">=", "in", "not in"]


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    two = st.tuples(inner, inner)
    return st.one_of(
        st.tuples(inner, st.sampled_from(CMP), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, st.sampled_from("+-*/%"), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.lists(inner, min_size=1, max_size=4).map(lambda xs: "(" + " and ".join(xs) + ")"),
        st.lists(inner, min_size=1, max_size=4).map(lambda xs: "(" + " or ".join(xs) + ")"),
        inner.map(lambda x: f"(not {x})"),
        inner.map(lambda x: f"(-{x})"),
        inner.map(lambda x: f"known({x})"),
        two.map(lambda t: f"default({t[0]}, {t[1]})"),
        two.map(lambda t: f"{'max' if len(t[0]) % 2 else 'min'}({t[0]}, {t[1]})"),
        inner.map(lambda x: f"within({x}, 900, now)"),
        inner.map(lambda x: f"days_since({x}, now)"),
        inner.map(lambda x: f"count({x})"),
        two.map(lambda t: f"contains({t[0]}, {t[1]})"),
        inner.map(lambda x: f"lower({x})"),
        inner.map(lambda x: f"abs({x})"),
        inner.map(lambda x: f"business_hours({x}, now)"),
    )


EXPRESSIONS = st.recursive(ATOMS, _extend, max_leaves=12)
CALENDAR = Calendar("cc", "Europe/London", {d: [(480, 1200)] for d in range(5)})
FUNCTIONS = default_functions({"cc": CALENDAR})


def _compile_all(sources: list[str]) -> list[Expression]:
    out = []
    for s in sources:
        try:
            out.append(compile_expression(s, FUNCTIONS))
        except ExpressionError:
            continue  # too deep or too long: the checker's business, not ours
    return out


@pytest.mark.slow  # thousands of cases: 300 rule sets of up to 12 rules, 3 inputs each
@SETTINGS
@given(st.data())
def test_generated_rule_sets_match_as_each_rule_alone(data: st.DataObject) -> None:
    exprs = _compile_all(data.draw(st.lists(EXPRESSIONS, min_size=1, max_size=12)))
    paths = [tuple(p.split(".")) for p in PATHS] + [("customer", "tier", "gold")]
    for _ in range(3):
        _same(exprs, data.draw(shaped(paths)))


def test_a_short_cut_never_skips_what_would_raise() -> None:
    """`false and 10**400 / 3`: the closure evaluates the division and raises; so must
    the generated function (the decide path then re-evaluates rule by rule)."""
    e = compile_expression("profile.a > 5 and profile.b / 3 > 1", FUNCTIONS)
    with pytest.raises(OverflowError):
        e.evaluate({"profile": {"a": 1, "b": 10**400}})
    with pytest.raises(OverflowError):
        compile_rules([e]).find({"profile": {"a": 1, "b": 10**400}})


def test_a_comparison_shared_by_rules_is_made_once_a_call_and_only_if_reached() -> None:
    """50 rules that all test `event.type == "calc"` compare once per batch; rules whose
    earlier operand is False never reach it, and then it is not compared at all."""
    compared: list[object] = []

    class Kind:
        def __eq__(self, other: object) -> bool:
            compared.append(other)
            return other == "calc"

        __hash__ = object.__hash__

    exprs = [compile_expression(f'profile.a > {i} and event.type == "calc"') for i in range(50)]
    find = compile_rules(exprs).find
    assert find({"profile": {"a": 100}, "event": {"type": Kind()}}) == [
        (i, True) for i in range(50)
    ]
    assert compared == ["calc"]
    compared.clear()
    assert find({"profile": {"a": -1}, "event": {"type": Kind()}}) == []
    assert compared == []
    # Through a `default(...)` too, after other shared comparisons (its local must be
    # named alike in both generation passes).
    exprs = [compile_expression("profile.a > 1")] * 2 + [
        compile_expression('default(event.type, "none") == "calc"')
    ] * 3
    compared.clear()
    assert compile_rules(exprs).find({"profile": {"a": 2}, "event": {"type": Kind()}}) == [
        (i, True) for i in range(5)
    ]
    assert compared == ["calc"]


def test_rules_nested_past_the_block_limit_keep_their_closure() -> None:
    deep = "profile.a > 1"
    for i in range(20):
        deep = f"({deep} {'and' if i % 2 else 'or'} profile.b == {i})"
    exprs = [compile_expression(deep), compile_expression("profile.a > 1")]
    compiled = compile_rules(exprs)
    assert compiled.closures == 1
    for a, b in [(2, 0), (0, 3), (None, 1)]:
        v = {"profile": {"a": a, "b": b}}
        assert compiled.find(v) == per_rule([e._fn for e in exprs], v)


def test_rule_text_reaches_the_generated_code_only_as_literals() -> None:
    hostile = "'); import os; os.system('x') #"
    e = compile_expression(f'customer.tier == {hostile!r} or profile.os.system == "x"')
    compiled = compile_rules([e])
    assert repr(hostile) in compiled.source and "import" not in compiled.source.replace(
        repr(hostile), ""
    )
    assert compiled.find({"customer": {"tier": hostile}}) == [(0, True)]
    assert compiled.find({"customer": {"tier": "gold"}, "profile": {"os": {"system": "y"}}}) == []


# ---- decide: the same plans and traces -----------------------------------------------


def _decide(rs: RuleSet, inp: DecisionInput) -> Plan:
    ids = count(1)
    return decide(
        rs,
        inp,
        inp.now_ms,
        Capacity(),
        b"k" * 16,
        lambda page: "mortgage",
        new_id=lambda now: f"{now:012x}{next(ids):012x}",
    )


def _outcome(run: Callable[[], Plan]) -> tuple[Any, ...] | type[BaseException]:
    try:
        p = run()
    except Exception as exc:
        return type(exc)
    return (p.trace, p.hits, p.suppressions, p.ranked, p.contacts, p.holdouts, p.features)


def _input(variables: dict[str, Any], now_ms: int) -> DecisionInput:
    profile = variables.get("profile")
    customer = variables.get("customer")
    events: list[Event] = [
        PageViewEvent(id="e1", ts=now_ms, page="/mortgages"),
        CalcEvent(
            id="e2",
            ts=now_ms,
            page="/mortgages/calculator",
            props=CalcProps(product="mortgage", amount=250_000, term_months=300),
        ),
    ]
    return DecisionInput(
        "demo-bank",
        "anon-1",
        "cust-1" if isinstance(customer, dict) else None,
        profile if isinstance(profile, dict) else {},
        customer if isinstance(customer, dict) else {},
        events,
        now_ms,
    )


@SETTINGS
@given(
    shaped([p for p in _paths(SHIPPED_EXPRS) if p[0] in ("profile", "customer")]),
    st.integers(0, 14 * 24 * 60).map(lambda m: 1_764_000_000_000 + m * 60_000),
)
def test_decide_plans_and_traces_are_those_of_rule_by_rule(
    variables: dict[str, Any], now_ms: int
) -> None:
    inp = _input(variables, now_ms)
    reference = replace(SHIPPED, generated=False)
    assert _outcome(lambda: _decide(SHIPPED, inp)) == _outcome(lambda: _decide(reference, inp))


PACK = """
offers:
  - {id: o, title: O, product: mortgage, value: 100}
rules:
  - id: dated
    when: profile.big / 3 > 1
    action: {type: offer, offer: o, slot: a}
    enabled: {until: UNTIL}
  - id: unknown
    when: profile.missing > 1
    action: {type: offer, offer: o, slot: b}
  - id: plain
    when: profile.n >= 1
    action: {type: offer, offer: o, slot: c}
"""


@pytest.mark.parametrize("until", ["2020-01-01", "2099-01-01"])
def test_a_raising_rule_raises_only_while_enabled(tmp_path: Path, until: str) -> None:
    """The generated function evaluates every rule; a rule outside its dates must not
    make `decide` raise where evaluating the enabled rules alone would not."""
    (tmp_path / "p.yaml").write_text(PACK.replace("UNTIL", until))
    rs = load_rules(tmp_path)
    now_ms = int(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp() * 1000)
    inp = _input({"profile": {"big": 10**400, "n": 2}}, now_ms)
    got = _outcome(lambda: _decide(rs, inp))
    assert got == _outcome(lambda: _decide(replace(rs, generated=False), inp))
    if until == "2099-01-01":
        assert got is OverflowError
    else:
        assert not isinstance(got, type)
        trace = got[0]
        assert trace["unknown"]["result"] == "unknown" and trace["plain"]["result"] == "matched"
        assert "dated" not in trace
