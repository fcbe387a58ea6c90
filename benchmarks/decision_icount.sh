#!/bin/bash
# Instructions executed by deciding (valgrind callgrind), immune to a shared machine's
# noise. usage: benchmarks/decision_icount.sh TREE N_RULES ROUNDS
# Per decide: run with two ROUNDS values and divide the difference by their difference
# (the interpreter's start-up and the rule loading cancel out). TREE may be a
# `git worktree` of another revision; both layouts (before/after the folder move) work.
TREE=$1; N=$2; R=$3
VENV_PY="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
cd $TREE && valgrind --tool=callgrind --callgrind-out-file=/dev/null "$VENV_PY" -c "
import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]; sys.path.insert(0, '$TREE')
import engine; assert engine.__file__.startswith('$TREE')
import benchmarks.decision_bench as b, asyncio, tempfile
from pathlib import Path
try:
    from engine.delivery.executor import RulesDecider
    from engine.core.metrics import Metrics
except ImportError:
    from engine.decisions.engine import RulesDecider
    from engine.metrics import Metrics
from engine.decisions.loader import load_rules
with tempfile.TemporaryDirectory() as d:
    (Path(d) / 'p.yaml').write_text(b._pack($N)); rs = load_rules(d)
dec = RulesDecider(lambda: rs, b._NoIO(), Metrics(), lambda p: 'mortgage')
inp = b._input()
async def run():
    for _ in range($R): await dec.decide(inp)
asyncio.run(run())
" 2>&1 >/dev/null | grep -o "Collected : [0-9]*"
