"""Decision cost per batch for 10, 50 and 200 rules (target: 50 rules <= 25 µs).

Rules are generated in the shape of the shipped packs (1-3 conditions over profile,
customer and event, a mix of matching and non-matching) and loaded through the real
loader; the measured call is `RulesDecider.decide` on a realistic decoded profile,
with the contact-policy/audit I/O excluded (only offers match, and audit writes go
to a stub store), so the figure is the CPU cost of deciding. Baseline in the same
run: the same conditions as hand-written Python lambdas.

Before/after the compiled rule set (issue 12): the same rules, decided through the
set's one generated function (`engine/decisions/compiled.py`, the live path) and rule
by rule through each rule's own closure (`RuleSet(generated=False)`, what `decide` did
before), alternated A B A B in one run and reported as ratios; also the conditions
alone (`conditions.find`), without the rest of deciding.

    python -m benchmarks.decision_bench
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
import timeit
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import targets
from benchmarks.results import write_section
from engine.core.metrics import Metrics
from engine.decisions.inputs import DecisionInput
from engine.decisions.loader import RuleSet, load_rules
from engine.delivery.executor import RulesDecider
from engine.ingest.schema import CalcEvent, CalcProps, PageViewEvent
from engine.valkey.written import Seen

CONDITIONS = [
    (
        "profile.calc.mortgage.count >= {n}",
        lambda v, n: v["profile"]["calc"]["mortgage"]["count"] >= n,
    ),
    ("profile.intent.mortgage > {n}", lambda v, n: v["profile"]["intent"]["mortgage"] > n),
    (
        '"mortgage" not in default(customer.products_held, [])',
        lambda v, n: "mortgage" not in v["customer"].get("products_held", []),
    ),
    (
        "profile.categories.cards >= {n}",
        lambda v, n: v["profile"]["categories"].get("cards", 0) >= n,
    ),
    ('event.type == "calc"', lambda v, n: v["event"]["type"] == "calc"),
    ("session.pages > {n}", lambda v, n: v["session"]["pages"] > n),
]


class _NoIO:
    """Audit writes go nowhere: we measure deciding, not Valkey."""

    def __init__(self) -> None:
        self.written = Seen()  # what report counters remember writing (`Store.written`)

    def call(self, *args: Any, **kw: Any) -> asyncio.Future[Any]:
        """A done future, as `Store.call` returns one (callers may read `.result()`)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(1)
        return fut


def _pack(n_rules: int) -> str:
    lines = ["offers:", "  - {id: o, title: Offer, product: mortgage, value: 100}", "rules:"]
    for i in range(n_rules):
        # Thresholds 1..10 against counts of 4-6: about half the rules match.
        conds = [
            CONDITIONS[(i + k) % len(CONDITIONS)][0].format(n=(i % 10) + 1)
            for k in range(1 + i % 3)
        ]
        lines += [
            f"  - id: r{i}",
            f"    when: '{' and '.join(conds)}'",
            f"    action: {{type: offer, offer: o, slot: s{i % 4}}}",
        ]
    return "\n".join(lines) + "\n"


def _input() -> DecisionInput:
    now = int(time.time() * 1000)
    profile = {
        "counts": {"page_view": 12, "calc": 4},
        "categories": {"mortgage": 5, "cards": 1},
        "intent": {"mortgage": 6.5, "cards": 0.4},
        "calc": {
            "mortgage": {"amount": 250000, "term_months": 300, "count": 4, "max_amount": 300000}
        },
        "forms": {"abandoned": 0},
        "interest": {},
        "online": True,
        "session": {"number": 2, "pages": 6, "dwell_ms": 90000, "events": 20},
    }
    events = [
        PageViewEvent(id="e1", ts=now, page="/mortgages"),
        CalcEvent(
            id="e2",
            ts=now,
            page="/mortgages/calculator",
            props=CalcProps(product="mortgage", amount=250000, term_months=300),
        ),
    ]
    return DecisionInput(
        site="demo-bank",
        anonymous_id="anon-bench-1",
        customer_id=None,
        profile=profile,
        customer={"products_held": ["current_account"]},
        events=events,
        now_ms=now,
    )


# Each figure is the best of SAMPLES runs of `rounds` decides, the deciding and its
# baseline alike: on this shared 2-vCPU box other tenants only ever add time (the
# median moved +-30 % between runs minutes apart, the minimum ~10 %), so the
# best run is the code's own cost, as `timeit` recommends.
SAMPLES = 9


def measure(n_rules: int, rounds: int = 2000) -> tuple[float, float]:
    """(decide µs per batch, the same conditions as plain lambdas µs): best of SAMPLES."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "p.yaml").write_text(_pack(n_rules))
        rs = load_rules(d)
    decider = RulesDecider(lambda: rs, _NoIO(), Metrics(), lambda p: "mortgage")  # type: ignore[arg-type]
    inp = _input()

    async def timed() -> float:
        t = time.perf_counter()
        for _ in range(rounds):
            await decider.decide(inp)
        return (time.perf_counter() - t) / rounds * 1e6

    loop = asyncio.new_event_loop()
    samples = [loop.run_until_complete(timed()) for _ in range(SAMPLES)]
    # Baseline: the same conditions as plain lambdas, evaluated for every rule.
    fns = [
        [CONDITIONS[(i + k) % len(CONDITIONS)][1] for k in range(1 + i % 3)] for i in range(n_rules)
    ]
    v = {
        "profile": inp.profile,
        "customer": inp.customer,
        "session": inp.profile["session"],
        "event": {"type": "calc"},
    }
    base = []
    for _ in range(SAMPLES):
        t = time.perf_counter()
        for _ in range(rounds):
            for i, conds in enumerate(fns):
                all(f(v, (i % 10) + 1) for f in conds)
        base.append((time.perf_counter() - t) / rounds * 1e6)
    loop.close()
    return min(samples), min(base)


def _variables(inp: DecisionInput) -> dict[str, Any]:
    return {
        "event": {"type": "calc"},
        "profile": inp.profile,
        "session": inp.profile["session"],
        "customer": inp.customer,
        "now": inp.now_ms,
        "score": {},
    }


def measure_ab(n_rules: int, rounds: int = 300, pairs: int = 15) -> dict[str, float]:
    """Rule by rule (A) vs the generated function (B), alternated: medians in µs, and
    the median of the pairs' B / A ratios (`ratio`, `cond_ratio`): each pair ran
    back to back, so a neighbour's load spike moves both sides of a ratio alike."""
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "p.yaml").write_text(_pack(n_rules))
        generated = load_rules(d)
    by_rule = replace(generated, generated=False)
    inp = _input()
    loop = asyncio.new_event_loop()

    def decider(rs: RuleSet) -> RulesDecider:
        return RulesDecider(lambda: rs, _NoIO(), Metrics(), lambda p: "mortgage")  # type: ignore[arg-type]

    deciders = {"a": decider(by_rule), "b": decider(generated)}

    async def timed(dec: RulesDecider) -> float:
        t = time.perf_counter()
        for _ in range(rounds):
            await dec.decide(inp)
        return (time.perf_counter() - t) / rounds * 1e6

    v = _variables(inp)
    finds = {"a": by_rule.conditions.find, "b": generated.conditions.find}
    assert finds["a"](v) == finds["b"](v)
    samples: dict[str, list[float]] = {k: [] for k in ("a", "b", "cond_a", "cond_b")}
    for _ in range(pairs):
        for side in ("a", "b"):
            samples[side].append(loop.run_until_complete(timed(deciders[side])))
            samples["cond_" + side].append(
                timeit.timeit(functools.partial(finds[side], v), number=rounds) / rounds * 1e6
            )
    loop.close()
    out = {k: statistics.median(x) for k, x in samples.items()}
    for key, a, b in (("ratio", "a", "b"), ("cond_ratio", "cond_a", "cond_b")):
        out[key] = statistics.median(y / x for x, y in zip(samples[a], samples[b], strict=True))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
    args = ap.parse_args(argv)
    rows = []
    for n in (10, 50, 200):
        cost, base = measure(n)
        ab = measure_ab(n)
        rows.append((n, cost, base, ab))
        print(
            f"{n:4} rules: decide {cost:7.1f} µs/batch   plain lambdas {base:6.1f} µs   "
            f"rule by rule {ab['a']:7.1f} / generated {ab['b']:7.1f} µs "
            f"({ab['ratio']:.2f})   conditions alone {ab['cond_a']:6.1f} / "
            f"{ab['cond_b']:6.1f} µs ({ab['cond_ratio']:.2f})",
            flush=True,
        )
    lines = [
        "## Decisions: cost per batch",
        "",
        "Command: `python -m benchmarks.decision_bench` (also in `make bench`). Rules in "
        "the shape of the shipped packs (1-3 conditions each), loaded by the real loader; "
        "`RulesDecider.decide` on a realistic profile with Valkey I/O stubbed out; each "
        "figure the best of 9 runs of 2,000 decides, its baseline likewise (other tenants "
        "of this shared box only add time). "
        f"Measured {time.strftime('%Y-%m-%d')}.",
        "",
        "| rules | decide µs/batch | same conditions as plain lambdas µs | target |",
        "|---|---|---|---|",
    ]
    for n, cost, base, _ in rows:
        target = "<= 25 µs" if n == 50 else ""
        lines.append(f"| {n} | {cost:.1f} | {base:.1f} | {target} |")
    lines += [
        "",
        "Compiled rule set (issue 12): the same rules decided rule by rule, each through "
        "its own closure (A, before), and through the set's one generated function (B, the "
        "live path), alternated A B A B (15 pairs of 300 decides; µs are medians, B / A the "
        "median of the pairs' ratios); 'conditions' is `RuleSet.conditions.find` alone, "
        "without the rest of deciding.",
        "",
        "| rules | decide A µs | decide B µs | B / A | conditions A µs | conditions B µs | B / A |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, _, _, ab in rows:
        lines.append(
            f"| {n} | {ab['a']:.1f} | {ab['b']:.1f} | {ab['ratio']:.2f} "
            f"| {ab['cond_a']:.1f} | {ab['cond_b']:.1f} | {ab['cond_ratio']:.2f} |"
        )
    if not args.no_write:
        write_section("decisions", "\n".join(lines))
        _, cost, base, _ = next(r for r in rows if r[0] == 50)
        targets.record(
            "decide_50_us",
            cost,
            f"the same conditions as plain lambdas: {base:.1f} µs",
            "python -m benchmarks.decision_bench",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
