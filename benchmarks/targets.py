"""Issue 12's performance targets in one table at the top of RESULTS.md.

Each benchmark that measures one of the targets calls `record` with its headline
figure and the baseline it measured in the same run; the table is rewritten from
`figures.json` (the newest figure of each target, with its date and command), so a
partial `make bench` (`--only decisions`) refreshes its own rows and keeps the others.
For a missed target the table says by how much, and what limits it: that column is
the analysis in RESULTS.md's prose, kept here by hand (it is judgement, not a
measurement), and should be edited whenever that analysis changes.

    python -m benchmarks.targets      # rewrite the table from figures.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.results import write_section

__all__ = ["TARGETS", "Target", "record", "render", "write"]

FIGURES = Path(__file__).resolve().parent / "figures.json"


@dataclass(frozen=True, slots=True)
class Target:
    """One row: the measure, its limit, which way is better, and what limits it."""

    key: str
    measure: str
    unit: str
    limit: float
    higher_is_better: bool
    limited_by: str

    def met(self, value: float) -> bool:
        return value >= self.limit if self.higher_is_better else value <= self.limit

    def gap(self, value: float) -> str:
        """How far a missed figure is from the limit, as a factor of the limit."""
        if self.met(value):
            return "met"
        factor = self.limit / value if self.higher_is_better else value / self.limit
        return f"missed: {factor:.1f}x off"


TARGETS: tuple[Target, ...] = (
    Target(
        "ingest_floor_ratio",
        "ingest req/s / the realistic floor's, 1 worker, 10-event batches",
        "x",
        1.2,
        True,
        "CPU on one core: the engine runs at ~99 % of a core and spends ~530 µs a request "
        "(validation, dedupe, delta, the profile function's reply, deciding, the answer); "
        "the floor spends ~210 µs on one EVALSHA of a last-event-only update. Valkey's "
        "`rb_ingest` (~250 µs of Valkey CPU a request: dedupe, sessions, recent pages, "
        "caps) shares the second core with the load generator. Profiles: "
        "benchmarks/profiles/README.md.",
    ),
    Target(
        "decide_50_us",
        "decide, 50 rules, µs per batch",
        "µs",
        25.0,
        False,
        "Fixed cost per batch (plan, executor bookkeeping) and per winning offer "
        "(decision id, factors, answer dict); see 'Reading the decision numbers'.",
    ),
    Target(
        "callback_p99_mixed_ms",
        "event -> callback on the agent's WebSocket, p99 at half load, mixed traffic",
        "ms",
        5.0,
        False,
        "Any request's wait for the one worker's loop, not the callback's own work: in "
        "the same run an identified batch no rule fires on has the same p99 (column 4). "
        "The loop runs ~0.5 ms of CPU per background batch and ~1.9 ms per callback "
        "(benchmarks/request_cost.py); each request passes "
        "through several loop turns (body, profile reply, reservation, writes, answer), "
        "each waiting up to the loop lag (p99 ~5 ms mixed). "
        "Engine, Valkey, wrk and the harness share 2 vCPUs whose speed moves +-30 % "
        "between runs.",
    ),
    Target(
        "callback_p999_mixed_ms",
        "event -> callback on the agent's WebSocket, p99.9 at half load, mixed traffic",
        "ms",
        10.0,
        False,
        "As the p99, with fewer samples (400 callbacks a run).",
    ),
    Target(
        "offer_p99_ms",
        "event -> offer in the HTTP answer, p99 at half load",
        "ms",
        2.0,
        False,
        "The same waits for the loop as any request: 'half load' is half of a closed-loop "
        "maximum (730-933 callbacks/s between runs) that coalescing at 32-64 senders "
        "inflates; paced, half of it keeps the engine at ~90 % of a core. A quarter of "
        "it: offers' and callbacks' p99 ~4-6 ms.",
    ),
    Target(
        "memory_visitor_b",
        "Valkey bytes per visitor, profile + dedupe (100 k visitors x 10 events)",
        "B",
        1024.0,
        False,
        "",
    ),
    Target(
        "memory_visitor_audit_b",
        "... with the page offer's audit record, the shipped rule packs",
        "B",
        1638.0,
        False,
        "",
    ),
    Target(
        "memory_visitor_audit_bank_b",
        "... with the page offer's audit record, a bank's own rule pack",
        "B",
        1638.0,
        False,
        "The audit record's deflate dictionary.",
    ),
)

_BY_KEY = {t.key: t for t in TARGETS}


def _load() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record(key: str, value: float, baseline: str, command: str) -> None:
    """Keep `value` as the newest figure of target `key` and rewrite the table.

    `baseline` says what the figure was compared with in the same run (the floor's
    req/s, plain lambdas' µs...); `command` is what produced it."""
    if key not in _BY_KEY:
        raise KeyError(f"no target {key!r}; known: {', '.join(_BY_KEY)}")
    figures = _load()
    figures[key] = {
        "value": round(float(value), 4),
        "baseline": baseline,
        "command": command,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    FIGURES.write_text(json.dumps(figures, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    write()


def render(figures: dict[str, dict[str, Any]] | None = None) -> str:
    """The targets section: one row per target, the newest figure or 'not measured'."""
    figures = _load() if figures is None else figures
    rows = [
        "## Issue 12 targets: the newest figure of each, beside its baseline",
        "",
        "Each row is written by the benchmark named in it (`make bench` runs them all; "
        "`benchmarks/targets.py` keeps the table). 'Limited by' is the analysis in the "
        "sections below, not a measurement.",
        "",
        "| measure | target | now | baseline, same run | verdict | limited by | measured "
        "| command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in TARGETS:
        fig = figures.get(t.key)
        sign = ">=" if t.higher_is_better else "<="
        limit = f"{sign} {t.limit:g} {t.unit}"
        if fig is None:
            rows.append(f"| {t.measure} | {limit} | not measured | | | | | |")
            continue
        value = float(fig["value"])
        shown = f"{value:.2f} {t.unit}" if value < 100 else f"{value:,.0f} {t.unit}"
        verdict = t.gap(value)
        why = t.limited_by if verdict != "met" else ""
        rows.append(
            f"| {t.measure} | {limit} | **{shown}** | {fig['baseline']} | {verdict} | {why} "
            f"| {fig['measured']} | `{fig['command']}` |"
        )
    return "\n".join(rows)


def write() -> None:
    """Rewrite the targets section of RESULTS.md from figures.json."""
    write_section("targets", render())


if __name__ == "__main__":
    write()
