"""Soak: the mixed load at half the maximum for minutes on end; does anything grow?

The callback benchmark's setup (benchmarks/callback_bench.py, reused here, not copied):
a real `python -m engine serve` (1 worker, embedded Valkey, loopback) with its own
rules dir (one callback rule on a mortgage `calc`, 24/7 calendar, no cooldown), a pool
of known consented customers with identity tokens, one signed-in agent on
`/v1/triggers/ws`. Then:

1. Maximum, briefly: wrk with the ingest benchmark's script (10-event anonymous
   batches) unpaced for a few seconds, as the callback benchmark's mixed phase does.
2. Soak: wrk paced at half of it, and within it callbacks at a steady
   MIXED_CALLBACKS_PER_S and as many identified batches no rule fires on, for
   `--minutes`. wrk runs one minute at a time (its own per-minute counts and latency
   percentiles; a fresh event-id tag each minute so dedupe never short-cuts the work).
3. Every SAMPLE_S: RSS of every engine process and of Valkey (/proc/<pid>/status),
   Valkey `used_memory`, DBSIZE, the shared streams' XLEN and the open callbacks.
4. At the end: a census of Valkey's keys by kind (count, estimated bytes, how many of
   a sample have no TTL), and a verdict per resource from a least-squares line over
   each half of the run.

Steady state needs bounded inputs, so every visitor comes from a bounded pool: wrk's
anonymous ids (at most 20,000, fewer when the rate would not cover them in half a
minute: every minute's wrk run walks the same pool) and `--customers` known ones, so
profiles stop being created early in the first minute. What still grows, by design,
is data kept for a retention window longer than any soak: event ids in each profile's
dedupe set (25 h), decision audit records (30 d), trigger and outcome stream entries
(30 d or their MAXLEN). That growth
is proportional to the events sent and every such key carries a TTL or a cap; the
verdict checks exactly that (bytes per event not rising, no TTL-less key outside the
known capped ones) rather than pretending Valkey's memory flattens within minutes.

    python -m benchmarks.soak [--minutes 10] [--customers 2000] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import uvloop

from benchmarks.callback_bench import (
    MIXED_CALLBACKS_PER_S,
    RULES,
    WRK_CONNECTIONS,
    Harness,
    _machine,
    _pct,
    _start_engine,
    _wrk,
)
from benchmarks.procs import stop
from benchmarks.results import write_section
from engine.valkey import keys
from engine.valkey.embedded import free_port

HERE = Path(__file__).resolve().parent
SAMPLE_S = 10.0
MINUTE_S = 60
WRK_VISITORS = 20_000  # the ingest script's anonymous pool, at most
POOL_COVER_S = 30  # ... and small enough that wrk's paced rate visits it all this fast
MIB = 1024 * 1024
# A resource "flattens" when, over the second half of the run, its fitted slope is at
# most this share of the first half's, or its total growth stays under the floor.
FLAT_SLOPE_SHARE = 0.25
RSS_FLOOR_BYTES = 8 * MIB
RSS_FLOOR_SHARE = 0.03  # of the value at mid-run, whichever floor is larger
# Valkey keeps data for windows longer than the run: its growth per event sent must not
# rise instead (second half's bytes per event at most this much above the first's; the
# first half also creates the pool's profiles, so it is usually the higher).
PER_EVENT_DRIFT = 0.25
CENSUS_SAMPLE = 200  # keys per kind whose TTL and size are looked at
CAPPED = {  # kinds with no TTL by design, and what bounds them
    "t:triggers": f"stream, MAXLEN ~ 100,000 per shard ({keys.TRIGGER_SHARDS} shards) "
    "and trimmed to 30 d",
    "o:outcomes": "stream, MAXLEN ~ 1,000,000 per shard and trimmed to 30 d",
    "cap": "one hash of agents online + one sorted set of open callbacks (expire)",
    "models": "model index and snapshots, one per model",
    "erasures": "erasure receipts stream",
    "labels": "one sorted set of impressions awaiting a click (popped when due)",
    "c:p": "one per known customer, kept until erased: the customer pool",
    "c:links": "one per known customer: the anonymous ids merged into it",
    "c:hist": "stream per known customer, MAXLEN ~ 200",
}


@dataclass
class Point:
    """One resource sample."""

    t: float  # s since the soak started
    engine_rss: int  # bytes, every engine process
    valkey_rss: int
    used_memory: int
    dbsize: int
    triggers_xlen: int
    outcomes_xlen: int
    open_callbacks: int


@dataclass
class Minute:
    batches: int = 0  # wrk's ordinary batches
    identified: int = 0  # the harness's one-event batches (callback + plain)
    http_errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    fired: int = 0  # callback decisions the engine made (its own counter)
    received: int = 0  # matched on the agent's WebSocket
    missing: int = 0  # callback-rule batches whose callback never came within 5 s
    cb_ms: list[float] = field(default_factory=list)
    post_p50_ms: float = float("nan")  # wrk's, ordinary batches
    post_p99_ms: float = float("nan")
    id_post_ms: list[float] = field(default_factory=list)  # identified batches
    background_failures: int = 0
    point: Point | None = None  # resources at the end of the minute


def _rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _descendants(root: int, skip: int | None) -> list[int]:
    """root and every process below it (the workers of a multi-worker engine), but not
    `skip` nor anything below it: the embedded Valkey is the engine's child, and its
    AOF-rewrite fork would otherwise count as engine memory while it lives."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rpartition(")")[2].split()[1])
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p == skip:
            continue
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def _fit(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t seconds, value) in value per minute."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return float("nan")
    return sum((t - mt) * (v - mv) for t, v in points) / var * 60


def _duration_s(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


async def _wrk_minute(
    port: int, seconds: int, delay_ms: float, visitors: int, tag: str
) -> dict[str, Any]:
    """One minute of paced ordinary traffic; counts errors instead of failing on them."""
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{WRK_CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(HERE / "ingest.lua"),
        f"http://127.0.0.1:{port}",
        "--",
        "10",
        str(visitors),
        tag,
        f"{delay_ms:.2f}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        raw, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        if proc.returncode is None:  # cancelled (Ctrl-C) or timed out: not left behind
            proc.kill()
            await proc.wait()
    out = raw.decode()
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise RuntimeError(f"wrk failed: {out[-500:]}")
    errors: dict[str, int] = {}
    if n := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors["wrk non-2xx"] = int(n.group(1))
    if s := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        for name, v in zip(("connect", "read", "write", "timeout"), s.groups(), strict=True):
            if int(v):
                errors[f"wrk {name}"] = int(v)
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    return {
        "requests": int(m.group(1)),
        "errors": errors,
        "p50_ms": _duration_s(pct.get("50", "")) * 1000,
        "p99_ms": _duration_s(pct.get("99", "")) * 1000,
    }


def _counter(text: str, name: str, labels: str = "") -> float:
    """Sum of a counter's series (those whose labels contain `labels`)."""
    total = 0.0
    for lab, v in re.findall(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M):
        if labels in lab:
            total += float(v)
    return total


class Soak:
    def __init__(self, h: Harness, engine_pid: int, valkey_pid: int | None, vk: Any) -> None:
        self.h = h
        self.engine_pid = engine_pid
        self.valkey_pid = valkey_pid
        self.vk = vk
        self.points: list[Point] = []
        self.minute_s = MINUTE_S
        self.visitors = WRK_VISITORS
        self.t0 = time.perf_counter()

    async def sample(self) -> Point:
        engine = sum(_rss(p) for p in _descendants(self.engine_pid, self.valkey_pid))
        pipe = self.vk.pipeline(transaction=False)
        pipe.info("memory")
        pipe.dbsize()
        for i in range(keys.TRIGGER_SHARDS):
            pipe.xlen(keys.trigger_stream(i))
        for i in range(keys.TRIGGER_SHARDS):
            pipe.xlen(keys.outcome_stream(i))
        pipe.zcard(keys.CALLBACK_QUEUE)
        r = await pipe.execute()
        n = keys.TRIGGER_SHARDS
        p = Point(
            t=time.perf_counter() - self.t0,
            engine_rss=engine,
            valkey_rss=_rss(self.valkey_pid) if self.valkey_pid else 0,
            used_memory=int(r[0]["used_memory"]),
            dbsize=int(r[1]),
            triggers_xlen=sum(r[2 : 2 + n]),
            outcomes_xlen=sum(r[2 + n : 2 + 2 * n]),
            open_callbacks=int(r[-1]),
        )
        self.points.append(p)
        return p

    async def sampler(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S - (time.perf_counter() - self.t0) % SAMPLE_S)
            await self.sample()

    async def minute(self, port: int, delay_ms: float, m: int) -> Minute:
        h = self.h
        before = await h.metrics_text()
        refused = sum(h.refusals.values())
        kinds0 = dict(h.refusals)
        wrk, cb, plain = await asyncio.gather(
            _wrk_minute(
                port, self.minute_s, delay_ms, self.visitors, f"soak{m}x{os.urandom(2).hex()}"
            ),
            h.open_loop(MIXED_CALLBACKS_PER_S, self.minute_s, calc=True),
            h.open_loop(MIXED_CALLBACKS_PER_S, self.minute_s, calc=False),
        )
        after = await h.metrics_text()
        row = Minute(
            batches=wrk["requests"],
            identified=len(cb.lag_s) + len(plain.lag_s),
            fired=round(
                _counter(after, "ringback_decisions_total", 'action="callback"')
                - _counter(before, "ringback_decisions_total", 'action="callback"')
            ),
            received=len(cb.samples),
            missing=cb.missing,
            cb_ms=[(s.callback_s or 0.0) * 1000 for s in cb.samples],
            post_p50_ms=wrk["p50_ms"],
            post_p99_ms=wrk["p99_ms"],
            id_post_ms=[s.http_s * 1000 for s in cb.samples + plain.samples],
            background_failures=round(
                _counter(after, "ringback_background_task_failures_total")
                - _counter(before, "ringback_background_task_failures_total")
            ),
        )
        row.error_kinds = dict(wrk["errors"])
        for k, v in h.refusals.items():
            if v - kinds0.get(k, 0):
                row.error_kinds[f"harness {k}"] = v - kinds0.get(k, 0)
        row.http_errors = sum(wrk["errors"].values()) + sum(h.refusals.values()) - refused
        row.point = await self.sample()
        return row

    async def census(self) -> dict[str, dict[str, float]]:
        """Every key by kind: count, and for a sample, bytes and how many have no TTL."""
        by_kind: dict[str, list[str]] = {}
        async for key in self.vk.scan_iter(count=2000):
            k = key.decode() if isinstance(key, bytes) else key
            by_kind.setdefault(_kind(k), []).append(k)
        out: dict[str, dict[str, float]] = {}
        rnd = random.Random(0)
        for kind, names in sorted(by_kind.items()):
            sample = rnd.sample(names, min(CENSUS_SAMPLE, len(names)))
            pipe = self.vk.pipeline(transaction=False)
            for k in sample:
                pipe.pttl(k)
                pipe.memory_usage(k, samples=0)
            r = await pipe.execute()
            ttls, sizes = r[0::2], [x or 0 for x in r[1::2]]
            out[kind] = {
                "count": len(names),
                "bytes": sum(sizes) / len(sample) * len(names),
                "no_ttl": sum(1 for t in ttls if t == -1) / len(sample),
            }
        return out


def _kind(key: str) -> str:
    """`rb:{a:site:anon}:seen` -> `a:seen`; `rb:{d:id}` -> `d`; `rb:{t:0}:triggers` ->
    `t:triggers`; uplift counters and the like by their tag's first word."""
    m = re.match(r"rb:\{([^:}]+)[^}]*\}(?::([^:]+))?", key)
    if not m:
        return "other"
    tag, suffix = m.group(1), m.group(2)
    if suffix and tag in ("a", "c", "t", "o", "d", "wh"):
        return f"{tag}:{suffix}"
    return tag


async def _run(url: str, port: int, creds: dict[str, str], pids: dict[str, Any], args: Any) -> Any:
    vk = aioredis.Redis(host="127.0.0.1", port=pids["valkey_port"])
    try:
        async with Harness(url, creds, args.customers) as h:
            t = time.perf_counter()
            await h.setup_customers()
            print(
                f"{args.customers} customers consented and identified in "
                f"{time.perf_counter() - t:.1f} s",
                flush=True,
            )
            warm = await h.closed_loop(4, 1.0)
            if not warm.samples:
                raise RuntimeError(f"no callback arrived (errors {warm.errors})")
            top = await _wrk(port, args.max_seconds, WRK_CONNECTIONS, 0.0, "mx")
            target = top / 2
            delay_ms = max(0.1, WRK_CONNECTIONS * 1000 / target - 1.0)  # as callback_bench
            print(f"ordinary traffic max {top:.0f} batches/s; soaking at ~{target:.0f}/s")
            soak = Soak(h, pids["engine"], pids["valkey"], vk)
            census0 = await soak.census()
            soak.minute_s = args.minute_seconds
            soak.visitors = max(1000, min(WRK_VISITORS, round(target * POOL_COVER_S)))
            await soak.sample()
            sampler = asyncio.create_task(soak.sampler())
            rows: list[Minute] = []
            try:
                for m in range(args.minutes):
                    row = await soak.minute(port, delay_ms, m)
                    rows.append(row)
                    p = row.point
                    assert p is not None
                    print(
                        f"minute {m + 1}: {row.batches / soak.minute_s:.0f} batches/s, errors "
                        f"{row.http_errors}, callbacks {row.fired}/{row.received}, p99 "
                        f"{_pct(row.cb_ms, 99):.2f} ms, engine RSS "
                        f"{p.engine_rss / MIB:.1f} MiB, Valkey {p.used_memory / MIB:.1f} MiB, "
                        f"{p.dbsize:,} keys",
                        flush=True,
                    )
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            census = await soak.census()
            return {
                "top": top,
                "visitors": soak.visitors,
                "rows": rows,
                "points": soak.points,
                "census0": census0,
                "census": census,
            }
    finally:
        await vk.aclose()


def _verdict_flat(name: str, pts: list[tuple[float, float]], total: float) -> tuple[bool, str]:
    """Slopes over each half; flat if the second is small or its growth under the floor."""
    mid = total / 2
    first = [p for p in pts if p[0] <= mid]
    second = [p for p in pts if p[0] >= mid]
    s1, s2 = _fit(first), _fit(second)
    at_mid = second[0][1] if second else float("nan")
    growth = s2 * (total - mid) / 60
    floor = max(RSS_FLOOR_BYTES, RSS_FLOOR_SHARE * at_mid)
    ok = growth <= floor or (s1 > 0 and s2 <= FLAT_SLOPE_SHARE * s1)
    return ok, (
        f"{name}: slope {s1 / MIB:+.2f} MiB/min over the first half, {s2 / MIB:+.2f} MiB/min "
        f"over the second ({growth / MIB:+.2f} MiB in it, floor {floor / MIB:.1f} MiB) -> "
        f"**{'flattens' if ok else 'still growing'}**"
    )


def _report(r: dict[str, Any], args: Any, machine: str) -> str:
    rows: list[Minute] = r["rows"]
    points: list[Point] = r["points"]
    total = points[-1].t if points else 0.0
    minute_s = args.minute_seconds
    cmd = "python -m benchmarks.soak" + (f" --minutes {args.minutes}" if args.minutes else "")
    for flag, value, default in (
        ("--customers", args.customers, 2000),
        ("--max-seconds", args.max_seconds, 5),
        ("--minute-seconds", args.minute_seconds, MINUTE_S),
    ):
        if value != default:
            cmd += f" {flag} {value}"

    table = [
        "| min | batches/s (ordinary + identified) | events | HTTP errors | callbacks "
        "fired / received | event -> callback p50 / p99 ms | POST p50 / p99 ms (ordinary) "
        "| engine RSS MiB | Valkey used_memory MiB | keys | trigger / outcome XLEN |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows, 1):
        p = row.point
        assert p is not None
        table.append(
            f"| {i} | {row.batches / minute_s:,.0f} + {row.identified / minute_s:,.0f} "
            f"| {row.batches * 10 + row.identified:,} | {row.http_errors:,} "
            f"| {row.fired:,} / {row.received:,} "
            f"| {_pct(row.cb_ms, 50):.2f} / {_pct(row.cb_ms, 99):.2f} "
            f"| {row.post_p50_ms:.2f} / {row.post_p99_ms:.2f} "
            f"| {p.engine_rss / MIB:.1f} | {p.used_memory / MIB:.1f} | {p.dbsize:,} "
            f"| {p.triggers_xlen:,} / {p.outcomes_xlen:,} |"
        )
    start = points[0]

    rss_ok, rss_line = _verdict_flat(
        "Engine RSS", [(p.t, float(p.engine_rss)) for p in points], total
    )
    vrss = [(p.t, float(p.valkey_rss)) for p in points]
    vrss_line = (
        f"Valkey RSS {points[0].valkey_rss / MIB:.1f} -> {points[-1].valkey_rss / MIB:.1f} "
        f"MiB, slope {_fit([p for p in vrss if p[0] <= total / 2]) / MIB:+.2f} MiB/min over "
        f"the first half, {_fit([p for p in vrss if p[0] >= total / 2]) / MIB:+.2f} over "
        "the second: it follows used_memory (below)"
    )

    # Valkey memory: bytes per event sent in each half, from the per-minute samples.
    mid = total / 2
    ends = [0.0] + [row.point.t for row in rows if row.point is not None]
    mem = [start.used_memory] + [row.point.used_memory for row in rows if row.point]
    events = [row.batches * 10 + row.identified for row in rows]
    half = max(1, len(rows) // 2)
    e1, e2 = sum(events[:half]), sum(events[half:])
    g1, g2 = mem[half] - mem[0], mem[-1] - mem[half]
    per1 = g1 / e1 if e1 else float("nan")
    per2 = g2 / e2 if e2 else float("nan")
    mem_pts = [(p.t, float(p.used_memory)) for p in points]
    s1 = _fit([p for p in mem_pts if p[0] <= mid])
    s2 = _fit([p for p in mem_pts if p[0] >= mid])
    steady = len(rows) >= 2 and per2 <= per1 * (1 + PER_EVENT_DRIFT) + 1.0

    census: dict[str, dict[str, float]] = r["census"]
    unbounded = [k for k, c in census.items() if c["no_ttl"] > 0 and k not in CAPPED]
    census0: dict[str, dict[str, float]] = r["census0"]
    census_lines = [
        "| kind | keys at start -> end | est. MiB at start -> end | share of a sample "
        "without TTL | bounded by |",
        "|---|---|---|---|---|",
    ]
    empty = {"count": 0.0, "bytes": 0.0}
    for kind, c in sorted(census.items(), key=lambda kv: -kv[1]["bytes"]):
        c0 = census0.get(kind, empty)
        census_lines.append(
            f"| `{kind}` | {c0['count']:,.0f} -> {c['count']:,.0f} | {c0['bytes'] / MIB:.1f} "
            f"-> {c['bytes'] / MIB:.1f} | {c['no_ttl']:.0%} "
            f"| {CAPPED.get(kind, 'TTL' if c['no_ttl'] == 0 else '**nothing**')} |"
        )
    seen_growth = sum(
        census.get(k, empty)["bytes"] - census0.get(k, empty)["bytes"] for k in ("a:seen", "c:seen")
    )
    rate_events = sum(events) / max(1.0, ends[-1])
    per_event = (mem[-1] - mem[0]) / max(1, sum(events))
    seen_per_event = seen_growth / max(1, sum(events))
    errors = sum(row.http_errors for row in rows)
    kinds: dict[str, int] = {}
    for row in rows:
        for k, v in row.error_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    bg_fail = sum(row.background_failures for row in rows)
    missing = sum(row.missing for row in rows)
    all_cb = [v for row in rows for v in row.cb_ms]
    id_post = [v for row in rows for v in row.id_post_ms]
    ok = rss_ok and steady and not unbounded and errors == 0 and bg_fail == 0

    lines = [
        f"## Soak: {args.minutes} minutes of the mixed load at half the maximum"
        + (f" ({minute_s} s rows)" if minute_s != MINUTE_S else ""),
        "",
        f"Command: `{cmd}` (`make soak` runs 10 minutes). The callback benchmark's setup: "
        "`python -m engine serve` (1 worker) with its embedded Valkey (AOF everysec) on "
        "loopback and its own rules (one callback rule on a mortgage `calc`, 24/7, no "
        f"cooldown), {args.customers:,} known consented customers, one agent on "
        "`/v1/triggers/ws`. Ordinary traffic: wrk with the ingest script (10-event "
        f"anonymous batches over a pool of {r['visitors']:,} visitors, {WRK_CONNECTIONS} "
        f"connections, random pauses) paced at half of its maximum ({r['top']:,.0f} "
        f"batches/s, measured for {args.max_seconds} s just before), one wrk run per "
        f"minute; within it callbacks at {MIXED_CALLBACKS_PER_S:.0f}/s and as many "
        "identified batches no rule fires on. Resources sampled every "
        f"{SAMPLE_S:.0f} s. Measured {time.strftime('%Y-%m-%d')}; {machine}.",
        "",
        f"At start: engine RSS {start.engine_rss / MIB:.1f} MiB, Valkey used_memory "
        f"{start.used_memory / MIB:.1f} MiB, {start.dbsize:,} keys.",
        "",
        *table,
        "",
        f"Whole run: {sum(events):,} events, {errors:,} HTTP errors"
        + (f" ({kinds})" if kinds else "")
        + f", {missing:,} callbacks that never arrived, {bg_fail} background task failures, "
        f"{points[-1].open_callbacks:,} open callbacks at the end (nobody claims them; "
        "they expire after 1 s); "
        f"event -> callback p50 {_pct(all_cb, 50):.2f} ms, p99 {_pct(all_cb, 99):.2f} ms, "
        f"p99.9 {_pct(all_cb, 99.9):.2f} ms over {len(all_cb):,}; identified batches' POST "
        f"p50 {_pct(id_post, 50):.2f} ms, p99 {_pct(id_post, 99):.2f} ms.",
        "",
        "Nothing grows without bound?",
        "",
        f"- {rss_line}.",
        f"- {vrss_line}.",
        f"- Valkey used_memory: slope {s1 / MIB:+.2f} MiB/min over the first half, "
        f"{s2 / MIB:+.2f} MiB/min over the second. It is expected to grow: every event id "
        "stays in its profile's dedupe set for 25 h, every decision's audit record and "
        "trigger for 30 d, far longer than a soak. What must hold is that the growth is "
        f"in proportion to the data kept, not faster: {per1:,.0f} bytes per event in the "
        f"first half (which also creates the pool's profiles), {per2:,.0f} in the second -> "
        f"**{'steady' if steady else 'rising'}** (allowed: +{PER_EVENT_DRIFT:.0%}). "
        f"Of the {per_event:,.0f} B/event, the dedupe sets "
        f"(`a:seen`, `c:seen` in the census below) took ~{seen_per_event:,.0f}: at this "
        f"rate ({rate_events:,.0f} events/s) the 25 h window alone levels off at "
        f"no less than ~{seen_per_event * rate_events * 25 * 3600 / 1024**3:,.1f} GiB (more: "
        "a set past 128 ids leaves Valkey's compact encoding; trimmed by each visitor's "
        "next batch, expired with an idle one); size Valkey for the rate times the windows.",
        f"- Keys: {start.dbsize:,} -> {points[-1].dbsize:,}. The visitor pools are bounded "
        "(profiles stop appearing once every visitor has been seen); by kind at the end:",
        "",
        *census_lines,
        "",
        f"Verdict: **{'nothing grows without bound' if ok else 'see above'}**"
        + (f" (keys without TTL or cap: {unbounded})" if unbounded else "")
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--max-seconds", type=int, default=5, help="wrk's unpaced maximum run")
    ap.add_argument(
        "--minute-seconds", type=int, default=MINUTE_S, help="length of a row (smoke tests)"
    )
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
    args = ap.parse_args(argv)
    if args.minutes < 1:
        ap.error("--minutes must be at least 1")
    if not shutil.which("wrk"):
        ap.error("wrk is needed (apt-get install wrk; `make soak` installs it)")
    machine = _machine()

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # `kill <pid>` cleans up as Ctrl-C does (the finally below)

    signal.signal(signal.SIGTERM, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix="ringback-soak-"))
    rules = tmp / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / name).write_text(text.replace("{expires_s}", "1"))
    port = free_port()
    proc, log_path = _start_engine(tmp, port)
    try:
        creds = orjson.loads((tmp / "data" / "demo-credentials.json").read_bytes())
        m = re.search(
            r"embedded valkey-server on 127\.0\.0\.1:(\d+) \(pid (\d+)", log_path.read_text()
        )
        if not m:
            raise RuntimeError("the engine's embedded Valkey was not announced")
        pids = {"engine": proc.pid, "valkey": int(m.group(2)), "valkey_port": int(m.group(1))}
        result = uvloop.run(_run(f"http://127.0.0.1:{port}", port, creds, pids, args))
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    text = _report(result, args, machine)
    if not args.no_write:
        write_section("soak", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
