"""`make bench`: run every benchmark and update RESULTS.md.

python -m benchmarks.run [--only ingest,floor,decisions,...] [--duration S]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from benchmarks import targets
from engine.core.progress import duration

# name -> module with main(argv) -> int; optional ones are skipped if not present yet.
BENCHMARKS = {
    "ingest": "benchmarks.ingest_bench",
    "floor": "benchmarks.floor_bench",
    "decisions": "benchmarks.decision_bench",
    "sdk": "benchmarks.sdk_bench",
    "cpu": "benchmarks.cpu_bench",
    "callback": "benchmarks.callback_bench",
    "scoring": "benchmarks.scoring_bench",
    "learning": "benchmarks.learning_bench",
    "bandit": "benchmarks.bandit_bench",
    "memory": "benchmarks.memory_bench",
    "import": "benchmarks.import_bench",
    "cluster": "benchmarks.cluster_bench",
}


# How long each benchmark took last time on this machine: the time-left estimate.
DURATIONS = Path(__file__).resolve().parent / ".durations.json"


def _load_durations() -> dict[str, float]:
    try:
        data = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, int | float)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(BENCHMARKS))
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    args = ap.parse_args(argv)
    names = args.only.split(",")
    last = _load_durations()
    took: dict[str, float] = {}
    results: list[tuple[str, str, float]] = []
    started = time.monotonic()
    for i, name in enumerate(names, start=1):
        try:
            module = importlib.import_module(BENCHMARKS[name])
        except ModuleNotFoundError:
            print(f"[{name}] not available in this checkout", file=sys.stderr)
            results.append((name, "missing", 0.0))
            continue
        ahead = [last.get(n) for n in names[i - 1 :]]
        left = (
            f", about {duration(sum(t for t in ahead if t))} left (last run's times)"
            if all(ahead)
            else ""
        )
        print(
            f"[{i}/{len(names)} {name}] {duration(time.monotonic() - started)} elapsed{left}",
            flush=True,
        )
        extra = ["--duration", str(args.duration)] if name in ("ingest", "floor") else []
        t0 = time.monotonic()
        ok = module.main(extra) == 0
        took[name] = time.monotonic() - t0
        results.append((name, "ok" if ok else "FAILED", took[name]))
    DURATIONS.write_text(json.dumps({**last, **took}, indent=1, sort_keys=True))
    targets.write()  # the summary table, from each benchmark's newest figure
    failed = sum(1 for _, status, _ in results if status == "FAILED")
    print(f"\nmake bench: {len(results)} benchmark(s) in {duration(time.monotonic() - started)}")
    for name, status, seconds in results:
        print(f"  {name:<10} {status:<8} {duration(seconds)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
