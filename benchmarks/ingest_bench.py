"""Ingest throughput: Ringback vs the floor (bare aiohttp + msgspec + one EVALSHA).

Both servers run against the same dedicated valkey-server, one after the other, with
the same wrk load (50 connections, unique events, rotating visitors), at batch sizes
1 and 10 and with 1 and 2 worker processes. Target: Ringback >= 1.0x the floor's
requests/s (the floor does far less work per batch; coalescing pays for the rest).

    python -m benchmarks.ingest_bench [--duration 10] [--connections 50]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.results import write_section
from engine.valkey.embedded import EmbeddedValkey, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass
class Run:
    server: str
    workers: int
    batch: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def eps(self) -> float:
        return self.rps * self.batch


def _wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def _start(
    server: str,
    workers: int,
    port: int,
    url: str,
    data_dir: Path,
    durability: str = "aof",
    rules: Path | None = None,
) -> list[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if server == "ringback":
        cmd = [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--port",
            str(port),
            "--redis",
            url,
            "--workers",
            str(workers),
            "--data-dir",
            str(data_dir),
            "--durability",
            durability,
        ] + (["--rules", str(rules)] if rules else [])
        procs = [
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.floor_server",
            "--port",
            str(port),
            "--redis",
            url,
        ] + (["--reuse-port"] if workers > 1 else [])
        procs = [
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for _ in range(workers)
        ]
    _wait_port(port)
    time.sleep(0.5 if workers > 1 else 0.2)  # let every worker bind
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def _wrk(
    port: int, batch: int, duration_s: int, connections: int, tag: str, visitors: int = 20000
) -> str:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(HERE / "ingest.lua"),
        f"http://127.0.0.1:{port}",
        "--",
        str(batch),
        str(visitors),
        tag,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=duration_s + 60
    ).stdout


def measure(
    server: str,
    workers: int,
    batch: int,
    url: str,
    data_dir: Path,
    duration_s: int,
    connections: int,
    durability: str = "aof",
    rules: Path | None = None,
) -> Run:
    redis.Redis.from_url(url).flushall()
    port = free_port()
    procs = _start(server, workers, port, url, data_dir, durability, rules)
    try:
        _wrk(port, batch, 2, connections, f"w{server[0]}{workers}{batch}x")  # warm-up
        out = _wrk(port, batch, duration_s, connections, f"{server[0]}{workers}{batch}x")
    finally:
        _stop(procs)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors:.*?timeout (\d+)", out):
        errors += int(m.group(1))
    return Run(server, workers, batch, rps, _latency_ms(out, "50"), _latency_ms(out, "99"), errors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk (make bench does it)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ringback-bench-"))
    valkey = EmbeddedValkey(tmp / "valkey")
    valkey.start()
    runs: list[Run] = []
    try:
        for workers in (1, 2):
            for batch in (1, 10):
                pair = []
                for server in ("floor", "ringback"):
                    run = measure(
                        server,
                        workers,
                        batch,
                        valkey.url,
                        tmp / "data",
                        args.duration,
                        args.connections,
                    )
                    pair.append(run)
                    print(
                        f"{server:9} workers={workers} batch={batch:2}: {run.rps:8.0f} req/s "
                        f"{run.eps:9.0f} events/s p50 {run.p50_ms:.2f} ms "
                        f"p99 {run.p99_ms:.2f} ms errors {run.errors}",
                        flush=True,
                    )
                runs += pair
        durability_runs = [
            measure(
                "ringback",
                1,
                10,
                valkey.url,
                tmp / "data",
                args.duration,
                args.connections,
                durability="aof",
            )
        ]
        # The same engine with no rules loaded: what deciding costs on the ingest path.
        no_rules = tmp / "no-rules"
        no_rules.mkdir()
        (no_rules / "offers.yaml").write_text("offers: []\n")
        bare = measure(
            "ringback",
            1,
            10,
            valkey.url,
            tmp / "data",
            args.duration,
            args.connections,
            rules=no_rules,
        )
        # fsync mode as `ringback serve --durability fsync` runs it: appendfsync always.
        valkey_always = EmbeddedValkey(tmp / "valkey-always", appendfsync="always")
        valkey_always.start()
        try:
            durability_runs.append(
                measure(
                    "ringback",
                    1,
                    10,
                    valkey_always.url,
                    tmp / "data",
                    args.duration,
                    args.connections,
                    durability="fsync",
                )
            )
        finally:
            valkey_always.stop()
    finally:
        valkey.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        "## Ingest: Ringback vs the floor",
        "",
        f"Command: `make bench` (runs `python -m benchmarks.ingest_bench --duration "
        f"{args.duration} --connections {args.connections}`), wrk -t1 -c{args.connections}, "
        "unique event ids, 20 000 rotating visitors, one dedicated valkey-server (AOF "
        "everysec). Floor = bare aiohttp+uvloop handler: msgspec decode of the same batch + "
        "one EVALSHA per request. Measured "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| workers | batch | floor req/s | ringback req/s | ratio | ringback events/s | "
        "floor p50/p99 ms | ringback p50/p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in range(0, len(runs), 2):
        f, r = runs[i], runs[i + 1]
        lines.append(
            f"| {r.workers} | {r.batch} | {f.rps:,.0f} | {r.rps:,.0f} | "
            f"**{r.rps / f.rps:.2f}x** | {r.eps:,.0f} | {f.p50_ms:.2f} / {f.p99_ms:.2f} | "
            f"{r.p50_ms:.2f} / {r.p99_ms:.2f} | {f.errors + r.errors} |"
        )
    aof, fsync = durability_runs
    lines += [
        "",
        "### Durability modes (Ringback, 1 worker, 10-event batches, same run)",
        "",
        "| mode | acknowledged when | req/s | p50 / p99 ms |",
        "|---|---|---|---|",
        f"| `aof` (default) | applied and appended to the AOF (survives a Valkey crash) | "
        f"{aof.rps:,.0f} | {aof.p50_ms:.2f} / {aof.p99_ms:.2f} |",
        f"| `fsync` | also fsynced: Valkey `appendfsync always` (one fsync per event-loop "
        f"turn) + WAITAOF per pipeline (survives a machine crash) | {fsync.rps:,.0f} "
        f"({fsync.rps / aof.rps:.2f}x) | "
        f"{fsync.p50_ms:.2f} / {fsync.p99_ms:.2f} |",
    ]
    lines += [
        "",
        "### Share of deciding on the ingest path (1 worker, 10-event batches)",
        "",
        "| engine | req/s | p50 / p99 ms |",
        "|---|---|---|",
        f"| with the shipped rule packs (9 rules) | {aof.rps:,.0f} | "
        f"{aof.p50_ms:.2f} / {aof.p99_ms:.2f} |",
        f"| no rules loaded | {bare.rps:,.0f} | {bare.p50_ms:.2f} / {bare.p99_ms:.2f} |",
        f"| deciding costs | {max(0.0, 1 - aof.rps / bare.rps) * 100:.0f} % of throughput | |",
    ]
    if not args.no_write:
        write_section("ingest", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
