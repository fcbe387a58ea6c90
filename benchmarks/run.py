"""`make bench`: run every benchmark and update RESULTS.md.

python -m benchmarks.run [--only ingest,floor,decisions,...] [--duration S]
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(BENCHMARKS))
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    args = ap.parse_args(argv)
    failed = 0
    for name in args.only.split(","):
        try:
            module = importlib.import_module(BENCHMARKS[name])
        except ModuleNotFoundError:
            print(f"[{name}] not available in this checkout", file=sys.stderr)
            continue
        print(f"[{name}]", flush=True)
        extra = ["--duration", str(args.duration)] if name in ("ingest", "floor") else []
        failed += int(module.main(extra) != 0)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
