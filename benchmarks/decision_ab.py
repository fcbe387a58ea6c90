"""Deciding, this tree against a git revision: `decision_bench.measure` from each tree,
alternated A B A B in one run (the machine is shared and noisy), as ratios; then what
a user sees, compared byte for byte (`golden`).

    python -m benchmarks.decision_ab --base 89bdb5e

Each side runs in a fresh interpreter that imports `engine` from that side's tree, so
layouts that differ (module moves) compare; the harness (`measure`, its rules and
input, the stubbed store) is this tree's `benchmarks/decision_bench.py` for both, so
only `engine` differs (a base whose own harness no longer runs, e.g. one from before
`Store.written`, still compares).

`golden` is the check that a speed-up changed nothing a user sees: 36 inputs (anonymous
and known visitors, consent, do-not-call, page loads and batches, open and closed
hours, an overloaded floor, published models, reservations from the profile update) x
5 rule sets (the shipped packs, the bench's packs at 10/50/200 rules, and a pack of the
rarer features: customer value boosts, enabled dates, notifications, fallbacks, a
control group), through the pure functions (`decide`'s plan: rankings, trace, hits,
suppressions, holdouts, features, who; `settle` under three policy answers; every audit
record and suppressed record) and through `RulesDecider.decide` with its writes
recorded (answers, audit records, triggers, counts, reservations, metrics), each twice
(the second time its records are already written). Both trees' dumps must be
byte-identical; the run ends by saying whether they are.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import types
from itertools import count
from pathlib import Path
from typing import Any

from benchmarks.results import write_section

REPO = Path(__file__).resolve().parent.parent

# Drop the venv's editable finder (it would map `engine` to this checkout), then import
# `engine` and `benchmarks` from the tree under test.
_RUN = (
    "import sys, json; sys.meta_path[:] = [f for f in sys.meta_path "
    "if 'editable' not in getattr(f, '__module__', '')]; sys.path.insert(0, {tree!r}); "
    "import engine; assert engine.__file__.startswith({tree!r}), engine.__file__; "
    "import importlib.util as u; spec = u.spec_from_file_location('bench', {bench!r}); "
    "b = u.module_from_spec(spec); spec.loader.exec_module(b); measure = b.measure; "
    "print(json.dumps({{n: measure(n, {rounds}) for n in {sizes!r}}}))"
)


_GOLDEN = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
    "if 'editable' not in getattr(f, '__module__', '')]; sys.path.insert(0, {tree!r}); "
    "import engine; assert engine.__file__.startswith({tree!r}), engine.__file__; "
    "import importlib.util as u; spec = u.spec_from_file_location('ab', {ab!r}); "
    "b = u.module_from_spec(spec); spec.loader.exec_module(b); "
    "sys.stdout.write(b.golden({dirs!r}))"
)


def _golden(tree: Path, dirs: list[str]) -> str:
    """`golden` run against `tree`'s engine, with this tree's harness."""
    code = _GOLDEN.format(tree=str(tree), ab=str(Path(__file__).resolve()), dirs=dirs)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True
    )
    return out.stdout


def _golden_dirs(tmp: Path) -> list[str]:
    """The shipped packs, the bench's packs at 10/50/200 rules and `_MIXED`."""
    from benchmarks.decision_bench import _pack

    dirs = [str(REPO / "rules")]
    for name, text in [*((f"bench{n}", _pack(n)) for n in (10, 50, 200)), ("mixed", _MIXED)]:
        (tmp / name).mkdir()
        (tmp / name / "p.yaml").write_text(text)
        dirs.append(str(tmp / name))
    return dirs


def compare_golden(base: Path, tmp: Path) -> tuple[bool, str]:
    """Both trees' golden dumps, byte for byte: (identical, what to say)."""
    dirs = _golden_dirs(tmp)
    a, b = _golden(base, dirs), _golden(REPO, dirs)
    digest = hashlib.sha256(b.encode()).hexdigest()[:16]
    if a == b:
        return True, f"golden: identical ({len(b.splitlines())} lines, sha256 {digest})"
    for n, (x, y) in enumerate(zip(a.splitlines(), b.splitlines(), strict=False)):
        if x != y:
            return False, f"golden: DIFFERS at line {n + 1}\n  base: {x[:400]}\n  this: {y[:400]}"
    return False, f"golden: DIFFERS in length ({len(a.splitlines())} vs {len(b.splitlines())})"


def _measure(tree: Path, sizes: list[int], rounds: int) -> dict[int, tuple[float, float]]:
    bench = str(REPO / "benchmarks" / "decision_bench.py")
    code = _RUN.format(tree=str(tree), bench=bench, rounds=rounds, sizes=sizes)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True
    )
    return {int(k): (v[0], v[1]) for k, v in json.loads(out.stdout.splitlines()[-1]).items()}


# The rarer features, so the golden check reaches every branch of deciding.
_MIXED = """
calendars:
  - name: weekdays
    timezone: Europe/London
    hours: {mon: "09:00-17:00", tue: "09:00-17:00", wed: "09:00-17:00", thu: "09:00-17:00",
            fri: "09:00-17:00"}
offers:
  - {id: adviser, title: Adviser, text: "Call us", product: mortgage, value: 900,
     channels: [web, callback]}
  - {id: cheap, title: Cheap, product: cards, value: 10, channels: [web]}
  - {id: dear, title: Dear, product: savings, value: 500, channels: [web]}
levers: {cards: 1.5}
arbitration: {customer_value_weight: 0}
rules:
  - id: call_sched
    when: profile.calc.mortgage.count >= 3
    action: {type: callback, offer: adviser, channel: callback, fallback: email}
    priority: 10
    policy: {cooldown_s: 3600, channel_cooldown_s: 600, max_per_day: 2, calendar: weekdays,
             expires_s: 600, outside_hours: schedule, max_queue_per_agent: 2}
  - id: call_fallback
    when: profile.calc.mortgage.count >= 2
    action: {type: callback, channel: callback, fallback: email}
    policy: {calendar: weekdays, outside_hours: fallback, max_queue_per_agent: 2}
  - id: call_drop
    when: profile.online
    action: {type: callback, channel: callback}
    policy: {calendar: weekdays}
  - id: mail_me
    when: profile.calc.mortgage.count >= 3
    action: {type: notify, channel: email}
    value: 50
  - id: boosted
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: cheap, slot: hero}
    customer_value_weight: 50
  - id: dear_offer
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: dear, slot: hero}
  - id: tie_a
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: cheap, slot: side}
  - id: tie_b
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: cheap, slot: side}
    priority: 1
  - id: held_out
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: cheap, slot: held}
    holdout_pct: 100
  - id: half_held
    when: profile.counts.page_view >= 1
    action: {type: callback, offer: adviser, channel: callback, fallback: email}
    holdout_pct: 50
  - id: expired
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: dear, slot: old}
    enabled: {until: 2020-01-01}
  - id: current
    when: profile.missing > 1 or profile.counts.page_view >= 1
    action: {type: offer, offer: dear, slot: old}
    enabled: {from: 2020-01-01}
  - id: needs_value
    when: customer.value >= 10 and profile.intent.mortgage > 1
    action: {type: offer, offer: adviser, slot: value}
  - id: unknown
    when: profile.missing.value > 1
    action: {type: offer, offer: cheap, slot: other}
"""


def _inputs(now: int) -> list[Any]:
    """36 inputs: four profiles x four visitors x four kinds of batch x three times,
    interleaved (not the full product), some with an overloaded floor, published
    models or the profile update's reservations (set by `golden`)."""
    from engine.ingest.schema import (
        CalcEvent,
        CalcProps,
        FormEvent,
        FormProps,
        InterestEvent,
        InterestProps,
        PageViewEvent,
    )

    hour = 3_600_000
    profiles: list[dict[str, Any]] = [
        {
            "counts": {"page_view": 12, "calc": 4},
            "categories": {"mortgage": 5, "cards": 1},
            "intent": {"mortgage": 6.5, "cards": 0.4},
            "calc": {"mortgage": {"amount": 250000, "term_months": 300, "count": 4}},
            "forms": {"abandoned": 0},
            "interest": {},
            "online": True,
            "session": {"number": 2, "pages": 6, "dwell_ms": 90000, "events": 20},
        },
        {
            "counts": {"page_view": 3, "calc": 5},
            "categories": {"mortgage": 5, "cards": 3, "investments": 2, "fees": 3},
            "intent": {"mortgage": 6.0, "investments": 3.0},
            "calc": {
                "mortgage": {
                    "amount": 300000,
                    "term_months": 300,
                    "count": 4,
                    "max_amount": 300000,
                    "ts": now - hour,
                    "previous": {"ts": now - 30 * hour},
                }
            },
            "interest": {"mortgage": now - hour},
            "online": True,
            "online_until": now + 60_000,
            "session": {"number": 2, "pages": 6, "start": now - hour // 2},
            "last_call_request": now - 300_000,
            "call_requested": {"mortgage": now - 300_000},
            "campaign": {
                "utm_campaign": "Spring Mortgage",
                "utm_source": "news",
                "referrer": "www.google.com",
                "first_utm_source": "news",
            },
            "segments": {"mortgage_researchers": now - 48 * hour, "gone": now - 2 * hour},
            "pages": [f"{now - 5000} /mortgages", f"{now - 9000} /mortgages/calculator"],
            "last_page": "/mortgages/calculator",
            "scores": {"churn": 0.3},
        },
        {
            "counts": {"page_view": 2, "form": 1},
            "categories": {"loans": 2, "fees": 3},
            "intent": {"loans": 2.0},
            "calc": {"mortgage": {"count": 2, "amount": 90000, "term_months": 120}},
            "forms": {"abandoned": 1, "last_abandoned_form": "personal-loan-application"},
            "session": {"number": 3, "pages": 2},
            "campaign": {"referrer": "www.bing.com"},
            "pages": [f"{now - 1000} /loans"],
        },
        {"counts": {"page_view": 1}},
    ]
    customers: list[tuple[str | None, dict[str, Any]]] = [
        (None, {}),
        (
            "cust-1",
            {
                "consent_call": True,
                "products_held": ["current_account"],
                "value_tier": "vip",
                "branch": "B12",
                "language": "en",
            },
        ),
        ("cust-2", {"products_held": ["current_account", "mortgage"], "value_tier": "standard"}),
        ("cust-3", {"do_not_call": True, "consent_call": True, "products_held": []}),
    ]
    batches: list[list[Any]] = [
        [],
        [PageViewEvent(id="e1", ts=now, page="/mortgages")],
        [
            PageViewEvent(id="e1", ts=now - 10, page="/mortgages"),
            CalcEvent(
                id="e2",
                ts=now,
                page="/mortgages/calculator",
                props=CalcProps(product="mortgage", amount=250000, term_months=300),
            ),
        ],
        [
            FormEvent(
                id="e3",
                ts=now,
                page="/loans/apply",
                props=FormProps(field="amount", action="abandon", form="personal-loan-application"),
            ),
            InterestEvent(
                id="e4", ts=now, page="/loans", props=InterestProps(product="loans", call_me=True)
            ),
        ],
    ]
    from engine.decisions.inputs import DecisionInput

    out = []
    for i in range(36):
        customer_id, customer = customers[(i // 4) % 4]
        out.append(
            DecisionInput(
                site="demo-bank",
                anonymous_id=f"anon-{i % 7}",
                customer_id=customer_id,
                profile=profiles[i % 4],
                customer=customer,
                events=batches[(i + i // 4) % 4],
                now_ms=now + (i // 12) * 8 * hour + (i % 3) * 61_000,
            )
        )
    return out


def _models(rs: Any, now: int) -> Any:
    """A mature model for the set's first offer rule and an immature one for its first
    contact rule: sampling, estimates and explored slots."""
    from engine.decisions.loader import model_name
    from engine.models.registry import LoadedModel
    from engine.models.snapshot import Snapshot

    out = {}
    offers = [r for r in rs.rules if r.action == "offer"]
    contacts = [r for r in rs.rules if r.action != "offer"]
    if offers:
        s = Snapshot(
            name=model_name(offers[0]),
            version=3,
            created_ms=now,
            samples=5000,
            positives=900,
            auc=0.7,
            log_loss=0.4,
            mature=True,
            prior=0.18,
            intercept=-1.0,
            scale={"calc_mortgage_amount": (100000.0, 50000.0)},
            crosses=[("value_tier", "daypart")],
            weights={"calc_mortgage_amount": 0.5, "value_tier=vip": 1.0, "known": 0.3},
            variances={"calc_mortgage_amount": 0.01, "value_tier=vip": 0.02},
            intercept_variance=0.01,
        )
        out[s.name] = LoadedModel(s, s.compile())
    if contacts:
        s = Snapshot(
            name=model_name(contacts[0]),
            version=1,
            created_ms=now,
            samples=40,
            positives=6,
            auc=None,
            log_loss=None,
            mature=False,
            prior=0.15,
            intercept=0.0,
        )
        out[s.name] = LoadedModel(s, s.compile())
    return out


def golden(rule_dirs: list[str]) -> str:
    """What a user sees of deciding, for every rule set in `rule_dirs` x the 36 inputs,
    as one JSON text per line (the same in both trees, or something changed)."""
    import msgspec

    import engine.delivery.executor as ex
    from engine.core.metrics import Metrics, render_metrics
    from engine.decisions.inputs import Capacity
    from engine.decisions.loader import load_rules
    from engine.decisions.plan import (
        Contact,
        Decision,
        audit_record,
        decide,
        settle,
        suppressed_decision,
    )

    now = 1_793_613_600_000  # Mon 2026-11-02 09:00 London: open, then 17:00, then 01:00
    key = b"golden-offer-key"
    lines: list[str] = []

    def put(*what: Any) -> None:
        lines.append(msgspec.json.encode(what, enc_hook=repr).decode())

    def wire(item: Any) -> Any:
        return item.wire() if isinstance(item, Decision) else msgspec.to_builtins(item)

    def plan_of(rs: Any, inp: Any, i: int, models: Any, cap: Any) -> Any:
        ids = count(1)
        return decide(
            rs,
            inp,
            inp.now_ms,
            cap,
            key,
            lambda page: "mortgage" if page and "mortgage" in page else "loans",
            new_id=lambda t: f"{t:012x}{next(ids):012x}",
            models=models,
        )

    overloaded = Capacity(agents_online=1, queue=9, measured=True)
    for d in rule_dirs:
        rs = load_rules(d)
        models = _models(rs, now)
        inputs = _inputs(now)
        for i, inp in enumerate(inputs):
            m = models if i % 3 == 2 else {}
            cap = overloaded if i % 6 == 5 else Capacity()
            plan = plan_of(rs, inp, i, m, cap)
            who = (plan.customer_value, plan.attribution, plan.branch, plan.dims)
            put(d, i, "plan", [wire(x) for x in plan.ranked], [wire(c) for c in plan.contacts])
            put(d, i, "trace", plan.trace, plan.hits, plan.suppressions, plan.features)
            put(d, i, "who", who, sorted(plan.segments), plan.entered, plan.exited)
            put(d, i, "holdouts", [wire(h) for h in plan.holdouts], plan.slots, plan.explored)
            cs: list[Contact] = plan.contacts
            answers = [
                ([], cs[0] if cs else None),
                ([(c, "rule_cooldown") for c in cs[:1]], cs[1] if len(cs) > 1 else None),
                ([(c, "daily_cap") for c in cs], None),
            ]
            for k, (refused, taken) in enumerate(answers):
                s = settle(plan, refused, taken)
                trace = list(s.trace.values())
                put(d, i, "settled", k, [wire(x) for x in s.decisions], wire(s.fired), trace)
                for x in [*s.decisions, *plan.holdouts]:
                    put(d, i, "audit", k, audit_record(plan, x, trace))
                whys = [*plan.suppressions, *((c.rule, why) for c, why in refused)]
                for rule_id, why in whys:
                    made = suppressed_decision(plan, inp, rule_id, why, key, m)
                    if made is not None:
                        put(d, i, "suppressed", k, wire(made[0]), made[1])
        put(d, "executor", _executor(rs, inputs, models, key, now, ex, Metrics, render_metrics))
    return "\n".join(lines) + "\n"


def _executor(
    rs: Any,
    inputs: list[Any],
    models: Any,
    key: bytes,
    now: int,
    ex: Any,
    metrics: Any,
    render: Any,
) -> list[Any]:
    """`RulesDecider.decide` on every input, twice, with its writes recorded instead of
    sent (stand-ins for the functions it calls, bound in its module) and its random
    ids and clock made deterministic; then the metrics it counted."""
    import dataclasses

    import msgspec

    import engine.core.ids

    calls: list[Any] = []
    n = count()

    def rec(name: str) -> Any:
        async def fake(store: Any, *args: Any, **kw: Any) -> None:
            calls.append((name, [msgspec.to_builtins(a, enc_hook=repr) for a in args], kw))

        return fake

    answers = iter(["ok", "rule_cooldown", "ok", "daily_cap", "channel_cooldown"] * 1000)

    async def reserve(store: Any, prefix: str, r: Any, history: Any, now_ms: int) -> str | None:
        calls.append(("reserve", prefix, msgspec.to_builtins(r), history, now_ms))
        a = next(answers)
        return None if a == "ok" else a

    for name in ("write_audit", "write_trigger", "count_decision", "enqueue", "append_history"):
        setattr(ex, name, rec(name))
    ex.release = rec("release")
    ex.reserve = reserve
    ex.time = types.SimpleNamespace(time=lambda: now / 1000 + 2.5)
    engine.core.ids.os = types.SimpleNamespace(urandom=lambda k: next(n).to_bytes(k, "big"))
    m = metrics()
    current: list[Any] = [{}]
    dec = ex.RulesDecider(
        lambda: rs, None, m, lambda page: "mortgage", offer_key=key, models=lambda: current[0]
    )
    dec.segments = types.SimpleNamespace(
        deliveries=lambda plan: [
            rec("segments")(None, sorted(plan.segments), plan.entered, plan.exited)
        ]
    )
    contact_rules = [r for r in rs.rules if r.action != "offer"]
    out: list[Any] = []

    async def run() -> None:
        for rnd in range(2):
            for i, inp in enumerate(inputs):
                current[0] = models if i % 3 == 2 else {}
                if contact_rules and i % 9 in (4, 7):
                    r = contact_rules[0]
                    verdict = "ok" if i % 9 == 4 else "rule_cooldown"
                    res = ((r.id, str(r.channel), verdict, "-", "1", "1", "", ""),)
                    inp = dataclasses.replace(inp, reservations=res, round_trips=2)
                calls.clear()
                answer = await dec.decide(inp)
                out.append((rnd, i, msgspec.to_builtins(answer, enc_hook=repr), list(calls)))
        dec.flush_hits()

    asyncio.run(run())
    text = render(m).decode()
    keep = (
        "ringback_rule",
        "ringback_offer",
        "ringback_trigger",
        "ringback_callback",
        "ringback_event_to",
    )
    out.append([line for line in text.splitlines() if line.startswith(keep)])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--pairs", type=int, default=3, help="A B rounds")
    ap.add_argument("--rounds", type=int, default=1000, help="decides per sample")
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
    ap.add_argument("--golden-only", action="store_true", help="only the byte-for-byte check")
    args = ap.parse_args()
    sizes = [10, 50, 200]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base), args.base],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        try:
            head_s: dict[int, list[float]] = {n: [] for n in sizes}
            base_s: dict[int, list[float]] = {n: [] for n in sizes}
            same, said = compare_golden(base, Path(tmp))
            print(said)
            if args.golden_only:
                return 0 if same else 1
            for _ in range(args.pairs):
                for tree, into in ((base, base_s), (REPO, head_s)):
                    for n, (us, _lambdas) in _measure(tree, sizes, args.rounds).items():
                        into[n].append(us)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False
            )
    rows = [
        "| rules | base µs | this tree µs | this / base |",
        "|---|---|---|---|",
    ]
    for n in sizes:
        b, h = statistics.median(base_s[n]), statistics.median(head_s[n])
        rows.append(f"| {n} | {b:.1f} | {h:.1f} | {h / b:.2f} |")
    text = "\n".join(rows) + "\n\n" + said.splitlines()[0]
    print(text)
    if not args.no_write:
        head = f"## Deciding: this tree vs {args.base}, A B alternated ({args.pairs} pairs)\n\n"
        cmd = (
            f"`python -m benchmarks.decision_ab --base {args.base} --pairs {args.pairs}`: "
            "each cell the median over the pairs of `decision_bench.measure` (best of 9 "
            f"runs of {args.rounds} decides); 'golden' compares what deciding outputs for "
            "36 inputs x 5 rule sets, byte for byte, in both trees.\n\n"
        )
        write_section("decision-ab", head + cmd + text)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
