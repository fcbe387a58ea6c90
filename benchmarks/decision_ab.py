"""Deciding, this tree against a git revision: `decision_bench.measure` from each tree,
alternated A B A B in one run (the machine is shared and noisy), as ratios.

    python -m benchmarks.decision_ab --base 89bdb5e

Each side runs in a fresh interpreter that imports `engine` from that side's tree, so
layouts that differ (module moves) compare; the harness (`measure`, its rules and
input, the stubbed store) is this tree's `benchmarks/decision_bench.py` for both, so
only `engine` differs (a base whose own harness no longer runs, e.g. one from before
`Store.written`, still compares).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

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


def _measure(tree: Path, sizes: list[int], rounds: int) -> dict[int, tuple[float, float]]:
    bench = str(REPO / "benchmarks" / "decision_bench.py")
    code = _RUN.format(tree=str(tree), bench=bench, rounds=rounds, sizes=sizes)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True
    )
    return {int(k): (v[0], v[1]) for k, v in json.loads(out.stdout.splitlines()[-1]).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--pairs", type=int, default=3, help="A B rounds")
    ap.add_argument("--rounds", type=int, default=1000, help="decides per sample")
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
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
            for _ in range(args.pairs):
                for tree, into in ((base, base_s), (REPO, head_s)):
                    for n, (us, _lambdas) in _measure(tree, sizes, args.rounds).items():
                        into[n].append(us)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False
            )
    rows = [
        "| rules | base µs (median) | this tree µs (median) | this / base |",
        "|---|---|---|---|",
    ]
    for n in sizes:
        b, h = statistics.median(base_s[n]), statistics.median(head_s[n])
        rows.append(f"| {n} | {b:.1f} | {h:.1f} | {h / b:.2f} |")
    text = "\n".join(rows)
    print(text)
    if not args.no_write:
        head = f"## Deciding: this tree vs {args.base}, A B alternated ({args.pairs} pairs)\n\n"
        cmd = f"`python -m benchmarks.decision_ab --base {args.base} --pairs {args.pairs}`\n\n"
        write_section("decision-ab", head + cmd + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
