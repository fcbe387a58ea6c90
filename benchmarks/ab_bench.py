"""What a change costs on the ingest path: this tree against a git revision, A B A B.

Both engines serve from their own checkout (the base as a temporary `git worktree`)
with the same venv, against one dedicated valkey-server, with the shipped rules and
the same wrk load as `ingest_bench` (50 connections, unique events, rotating
visitors). Runs alternate base / this tree so drift on the shared 2-core machine
hits both; the ratio is this tree's req/s over the base's, per round and overall.

    python -m benchmarks.ab_bench --base REV [--rounds 3] [--duration 8] [--batch 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.cpu_bench import _cpu_s
from benchmarks.ingest_bench import _latency_ms, _stop, _wait_port, _wrk
from benchmarks.results import write_section
from engine.valkey.embedded import EmbeddedValkey, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# The venv's editable install maps `engine` to this checkout from a meta-path finder
# that wins over sys.path (PYTHONPATH included): drop it, then import from `tree`.
_BOOT = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
    "if 'editable' not in getattr(f, '__module__', '')]; sys.path.insert(0, {tree!r}); "
    "import engine; assert engine.__file__.startswith({tree!r}), engine.__file__; "
    "from importlib import import_module; "
    "main = getattr(import_module('engine.cli.main' if __import__('importlib.util').util"
    ".find_spec('engine.cli.main') else 'engine.cli'), 'main'); "
    "sys.argv[0] = 'ringback'; sys.exit(main())"
)


def _engine(tree: Path, port: int, url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """`ringback serve` with `engine` imported from `tree`."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    cmd = [sys.executable, "-c", _BOOT.format(tree=str(tree)), "serve", "--port", str(port)]
    cmd += ["--redis", url]
    cmd += ["--data-dir", str(data_dir), "--rules", str(tree / "rules")]
    proc = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_port(port)
    return proc


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    engine_us: float  # engine process CPU per request
    valkey_us: float  # valkey-server CPU per request


def _measure(
    tree: Path,
    valkey: EmbeddedValkey,
    data_dir: Path,
    batch: int,
    duration_s: int,
    connections: int,
    visitors: int = 20000,
) -> Sample:
    """One run. CPU per request comes from /proc around the measured part: steadier
    than req/s on a shared machine, as it does not depend on who else got the cores."""
    redis.Redis.from_url(valkey.url).flushall()
    port = free_port()
    proc = _engine(tree, port, valkey.url, data_dir)
    assert valkey.process is not None
    try:
        _wrk(port, batch, 2, connections, "warm", visitors)
        e0, v0 = _cpu_s(proc.pid), _cpu_s(valkey.process.pid)
        out = _wrk(port, batch, duration_s, connections, f"ab{batch}", visitors)
        e1, v1 = _cpu_s(proc.pid), _cpu_s(valkey.process.pid)
    finally:
        _stop([proc])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Sample(
        rps,
        _latency_ms(out, "50"),
        _latency_ms(out, "99"),
        int(m.group(1)) if m else 0,
        (e1 - e0) / done * 1e6,
        (v1 - v0) / done * 1e6,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument(
        "--visitors",
        type=int,
        default=20000,
        help="visitor pool: 20000 makes most batches a new visitor's (the worst case), "
        "1000 is ../shared/perf's realistic mix of returning visitors",
    )
    ap.add_argument("--section", default="ab", help="RESULTS.md section to write")
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk (make bench does it)", file=sys.stderr)
        return 2
    base_rev = subprocess.run(
        ["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    head_rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    if subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip():
        head_rev += " with uncommitted changes"
    tmp = Path(tempfile.mkdtemp(prefix="ringback-ab-"))
    base_tree = tmp / "base"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(base_tree), args.base],
        cwd=REPO,
        check=True,
    )
    valkey = EmbeddedValkey(tmp / "valkey")
    valkey.start()
    rows: list[str] = []
    ratios: list[float] = []
    cpu: dict[str, list[float]] = {"base": [], "this": []}
    try:
        for i in range(args.rounds):
            pair = []
            for name, tree in (("base", base_tree), ("this", REPO)):
                data = tmp / f"data-{name}"
                s = _measure(
                    tree, valkey, data, args.batch, args.duration, args.connections, args.visitors
                )
                pair.append(s.rps)
                cpu[name].append(s.engine_us)
                rows.append(
                    f"| {i + 1} | {name} | {s.rps:,.0f} | {s.p50_ms:.2f} / {s.p99_ms:.2f} | "
                    f"{s.engine_us:.0f} | {s.valkey_us:.0f} | {s.errors} |"
                )
                print(rows[-1], flush=True)
            ratios.append(pair[1] / pair[0])
    finally:
        valkey.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO)
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = statistics.median(ratios)
    cpu_ratio = statistics.median(cpu["this"]) / statistics.median(cpu["base"])
    print(f"this / base: {ratio:.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"engine CPU per request, this / base: {cpu_ratio:.2f}x")
    if not args.no_write:
        body = "\n".join(
            [
                f"## A/B: {head_rev} against {base_rev}",
                "",
                f"Command: `python -m benchmarks.ab_bench --base {args.base} --rounds "
                f"{args.rounds} --duration {args.duration} --batch {args.batch} "
                f"--visitors {args.visitors} --section {args.section}`. "
                f"1 worker, shipped rules, {args.batch}-event batches, wrk -t1 "
                f"-c{args.connections}, one dedicated valkey-server; base and this tree "
                "alternate.",
                "",
                "| round | engine | req/s | p50 / p99 ms | engine CPU µs/req "
                "| Valkey CPU µs/req | non-2xx |",
                "|---|---|---|---|---|---|---|",
                *rows,
                "",
                f"**this / base: {ratio:.2f}x** req/s (rounds: "
                f"{', '.join(f'{r:.2f}' for r in ratios)}); engine CPU per request "
                f"{cpu_ratio:.2f}x (median of rounds).",
            ]
        )
        write_section(args.section, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
