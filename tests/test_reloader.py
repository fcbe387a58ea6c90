"""Hot reload: edits are picked up; a broken edit is rejected and the old value serves."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from engine.core.reloader import Reloadable


def _load(path: Path) -> dict[str, int]:
    out = {}
    for f in sorted(path.glob("*.txt")):
        for lineno, line in enumerate(f.read_text().splitlines(), start=1):
            name, _, value = line.partition("=")
            if not value.strip().isdigit():
                raise ValueError(f"{f}:{lineno}:{len(name) + 2}: expected a number")
            out[name.strip()] = int(value)
    return out


def _metrics() -> tuple[Counter, Gauge]:
    r = CollectorRegistry()
    return Counter("errs", "e", registry=r), Gauge("ver", "v", registry=r)


async def test_edits_are_picked_up_and_broken_ones_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x = 1\n")
    errors, version = _metrics()
    holder = Reloadable(tmp_path, _load, errors=errors, version=version, poll_s=0.05)
    holder.start()
    try:
        (tmp_path / "a.txt").write_text("x = 2\n")
        for _ in range(100):
            if holder.current == {"x": 2}:
                break
            await asyncio.sleep(0.02)
        assert holder.current == {"x": 2}

        (tmp_path / "b.txt").write_text("y = oops\n")
        for _ in range(100):
            if holder.last_error:
                break
            await asyncio.sleep(0.02)
        assert holder.current == {"x": 2}  # the previous set keeps serving
        assert holder.last_error and "b.txt:1:4:" in holder.last_error
        assert errors._value.get() == 1

        (tmp_path / "b.txt").write_text("y = 3\n")
        assert await holder.reload("admin") is True
        assert holder.current == {"x": 2, "y": 3} and holder.last_error is None
    finally:
        await holder.stop()


async def test_whatever_triggers_a_reload_the_new_value_is_announced(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x = 1\n")
    errors, version = _metrics()
    seen: list[dict[str, int]] = []
    holder = Reloadable(
        tmp_path, _load, errors=errors, version=version, poll_s=0.05, on_loaded=seen.append
    )
    holder.start()
    try:
        (tmp_path / "a.txt").write_text("x = 1\ny = 2\n")  # picked up by the file watch
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.02)
        (tmp_path / "a.txt").write_text("x = broken\n")
        assert await holder.reload("SIGHUP") is False  # a rejected set is not announced
        assert seen == [{"x": 1}, {"x": 1, "y": 2}]
    finally:
        await holder.stop()
