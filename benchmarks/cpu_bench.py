"""CPU per request of the engine and of Valkey under wrk load (what throughput hides).

    python -m benchmarks.cpu_bench [--duration 8] [--runs 2]

One `ringback serve` worker with the shipped rules over its own valkey-server,
loaded by wrk (the ingest benchmark's script, 50 connections) with 1- and 10-event
batches. CPU comes from /proc/<pid>/stat around the measured run, so the figure is
what one request costs each process, whatever else the shared machine is doing.
To compare two versions, run it on each (e.g. in two checkouts) in the same session.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

from benchmarks import ingest_bench as ib
from engine.valkey.embedded import EmbeddedValkey, free_port


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(batch: int, duration_s: int) -> tuple[float, float, float]:
    """(req/s, engine µs/request, Valkey µs/request) for one run."""
    tmp = Path(tempfile.mkdtemp(prefix="ringback-cpu-bench-"))
    valkey = EmbeddedValkey(tmp / "valkey")
    valkey.start()
    port = free_port()
    procs = ib._start("ringback", 1, port, valkey.url, tmp / "data", rules=ib.REPO / "rules")
    try:
        assert valkey.process is not None
        ib._wrk(port, batch, 2, 50, f"cw{batch}")  # warm-up
        e0, v0 = _cpu_s(procs[0].pid), _cpu_s(valkey.process.pid)
        out = ib._wrk(port, batch, duration_s, 50, f"c{batch}{time.time_ns() % 100_000}")
        e1, v1 = _cpu_s(procs[0].pid), _cpu_s(valkey.process.pid)
    finally:
        ib._stop(procs)
        valkey.stop()
    m = re.search(r"(\d+) requests in", out)
    requests = int(m.group(1)) if m else 0
    if not requests:
        raise RuntimeError(f"wrk made no requests: {out[-500:]}")
    return requests / duration_s, 1e6 * (e1 - e0) / requests, 1e6 * (v1 - v0) / requests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args(argv)
    for batch in (1, 10):
        for _ in range(args.runs):
            rate, engine_us, valkey_us = measure(batch, args.duration)
            print(
                f"batch={batch:2}: {rate:7.0f} req/s  engine {engine_us:6.1f} µs/request  "
                f"valkey {valkey_us:5.1f} µs/request",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
