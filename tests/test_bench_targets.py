"""The targets table in benchmarks/RESULTS.md says, for each of issue 12's targets,
whether the newest figure meets it and, if not, by how much and what limits it."""

from __future__ import annotations

from benchmarks.targets import TARGETS, render


def _row(table: str, measure: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {measure} |"))


def test_a_missed_target_says_by_how_much_and_why() -> None:
    ingest = next(t for t in TARGETS if t.key == "ingest_floor_ratio")
    decide = next(t for t in TARGETS if t.key == "decide_50_us")
    figures = {
        "ingest_floor_ratio": {
            "value": 0.4,
            "baseline": "floor 4,740 req/s",
            "command": "c1",
            "measured": "2026-12-02",
        },
        "decide_50_us": {
            "value": 50.0,
            "baseline": "lambdas 30 µs",
            "command": "c2",
            "measured": "2026-12-02",
        },
    }
    table = render(figures)
    row = _row(table, ingest.measure)
    assert "missed: 3.0x off" in row and ingest.limited_by in row and "floor 4,740" in row
    assert "missed: 2.0x off" in _row(table, decide.measure)


def test_a_met_target_says_met_and_an_unmeasured_one_says_so() -> None:
    memory = next(t for t in TARGETS if t.key == "memory_visitor_b")
    figures = {
        "memory_visitor_b": {
            "value": 964,
            "baseline": "b",
            "command": "c",
            "measured": "2026-12-02",
        }
    }
    table = render(figures)
    assert "| met |" in _row(table, memory.measure)
    offer = next(t for t in TARGETS if t.key == "offer_p99_ms")
    assert "not measured" in _row(table, offer.measure)
