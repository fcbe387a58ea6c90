"""Long work shows progress and survives interruption (issue 14, item 5).

A bank loading millions of CRM rows sees done/total, the rate and the time left on
its terminal (one line rewritten in place) or, in a log, a line every few seconds;
and an import that was interrupted resumes where it stopped instead of starting
over, while a changed file starts over.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import REPO, StoreTarget

from engine.core.progress import Progress
from engine.profile.attributes import (
    file_digest,
    import_file,
    resume_point,
    validate_import,
)
from engine.valkey import keys
from engine.valkey.store import Store


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_rewritten_with_rate_and_time_left() -> None:
    out, clock = _Terminal(), _Clock()
    p = Progress("importing", 1000, unit="rows", stream=out, clock=clock)
    for _ in range(4):
        clock.t += 0.5
        p.advance(100)
    summary = p.close()
    drawn = out.getvalue()
    assert "\n" not in drawn.removesuffix(summary + "\n")  # redrawn in place, no scroll
    assert "\rimporting: 400/1,000 rows (40.0%), 200 rows/s, 3s left" in drawn
    assert summary == "importing: 400 rows in 2s (200/s)"


def test_a_log_gets_a_plain_line_now_and_then() -> None:
    out, clock = io.StringIO(), _Clock()
    p = Progress("replay", None, unit="batches", stream=out, clock=clock, log_interval_s=10)
    for _ in range(30):
        clock.t += 1.0
        p.advance(5)
    p.close("replayed 150 batches")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == [
        "replay: 50 batches, 5 batches/s",
        "replay: 100 batches, 5 batches/s",
        "replay: 150 batches, 5 batches/s",
        "replayed 150 batches",
    ]


@pytest.fixture
async def store(store_target: StoreTarget, redis: aioredis.Redis) -> AsyncIterator[Store]:
    s = store_target.store()
    await s.load_library()
    yield s
    await s.close()


def _rows(path: Path, n: int, tier: str = "standard") -> Path:
    path.write_bytes(
        b"".join(
            orjson.dumps({"customer_id": f"c{i}", "attributes": {"value_tier": tier}}) + b"\n"
            for i in range(n)
        )
    )
    return path


class _Interrupted(Exception):
    pass


async def test_an_interrupted_import_resumes_where_it_stopped(
    store: Store, redis: aioredis.Redis, tmp_path: Path
) -> None:
    path = _rows(tmp_path / "crm.jsonl", 1000)
    lines, errors = validate_import(path)
    assert errors == []
    digest = file_digest(path)
    chunks = 0

    def interrupt_after_three(n: int) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 3:
            raise _Interrupted  # Ctrl-C, a killed pod, a lost connection

    with pytest.raises(_Interrupted):
        await import_file(store, lines, 100, digest=digest, on_progress=interrupt_after_three)
    assert await resume_point(store, digest) == 300
    assert len(await redis.keys("rb:{c:*}:p")) == 300

    written = await import_file(store, lines, 100, digest=digest, start=300)
    assert written == 700
    assert len(await redis.keys("rb:{c:*}:p")) == 1000
    assert await resume_point(store, digest) == 0  # done: nothing left to resume
    assert await redis.exists(keys.import_checkpoint(digest)) == 0

    # Another file (even under the same name) has its own checkpoint: no resume.
    assert file_digest(_rows(path, 1000, tier="vip")) != digest


def test_the_import_command_shows_progress_and_resumes(
    tmp_path: Path, store_target: StoreTarget
) -> None:
    client = store_target.emptied_sync_client()
    path = _rows(tmp_path / "crm.jsonl", 2000)
    # As if an earlier run had written the first 1,500 before it was stopped.
    client.set(keys.import_checkpoint(file_digest(path)), 1500)
    cmd = [sys.executable, "-m", "engine", "import", str(path), *store_target.cli_args]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "resuming an interrupted import of this file at line 1,501 of 2,000" in run.stderr
    assert "checked 2,000 line(s)" in run.stderr and "wrote 500 customer(s)" in run.stderr
    assert "imported attributes of 2000 customer(s) (1,500 written before" in run.stdout
    assert len(list(client.scan_iter("rb:{c:*}:p"))) == 500  # only the rest was written

    run = subprocess.run([*cmd, "--restart"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0 and "resuming" not in run.stderr
    assert len(list(client.scan_iter("rb:{c:*}:p"))) == 2000
