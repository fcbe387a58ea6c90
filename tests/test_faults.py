"""Faults injected into real processes while real clients keep working.

`kill -9` of a worker in the middle of a steady load of identified and anonymous
batches: the other worker keeps serving, the supervisor puts a new worker in its
place, and every event the engine acknowledged (a 200) is in its profile afterwards,
counted exactly once - including batches that clients re-sent (same event ids, as
the snippet does) because the dead worker took their connection with it.

(`test_serve.py` covers a worker killed while the pool is idle; webhook receivers
that are down for a while are in `test_webhooks.py`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import REPO, StoreTarget, event, now_ms

from engine.ingest.identity import mint_token
from engine.profile import layout
from engine.valkey import keys
from engine.valkey.embedded import free_port

pytestmark = pytest.mark.slow

RINGBACK = Path(sys.executable).with_name("ringback")
SITE = "demo-bank"
SENDERS = 20  # concurrent clients, half of them signed-in customers
PROFILES_PER_SENDER = 4  # keeps each visitor far below its per-minute batch limit
EVENTS_PER_BATCH = 3


# -- the process and /proc ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _workers(supervisor: int) -> list[int]:
    """The pool's worker processes (multiprocessing spawn children, not its helpers)."""

    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    return sorted(
        p
        for p in _children(supervisor)
        if b"spawn_main" in cmdline(p) and b"resource_tracker" not in cmdline(p)
    )


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _listening_inodes(port: int) -> set[int]:
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(name).read_text().splitlines()[1:]:
                cols = row.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                    inodes.add(int(cols[9]))
    return inodes


def _listens(pid: int, port: int) -> bool:
    """Does this process own one of the port's SO_REUSEPORT listening sockets?"""
    want = {f"socket:[{i}]" for i in _listening_inodes(port)}
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in want:
                    return True
    return False


class Pool:
    """`ringback serve --workers 2` on the test's valkey (or cluster), as a child
    process group."""

    def __init__(self, tmp: Path, target: StoreTarget) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "data"
        self.log = tmp / "serve.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    *(str(RINGBACK), "serve", "--port", str(self.port), "--workers", "2"),
                    *(*target.cli_args, "--data-dir", str(self.data_dir)),
                ],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text()

    @property
    def credentials(self) -> dict[str, str]:
        return orjson.loads((self.data_dir / "demo-credentials.json").read_bytes())  # type: ignore[no-any-return]

    async def ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"serve exited:\n{self.output()}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"{self.url}/readyz") as r:
                        if r.status == 200 and "Ringback serving on" in self.output():
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"not ready in {timeout_s}s:\n{self.output()}")


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    """Pools a test started; whatever is left running is killed by PID, workers too."""
    started: list[Pool] = []
    yield started
    for pool in started:
        if pool.proc.poll() is None:
            family = _children(pool.proc.pid)
            pool.proc.kill()
            pool.proc.wait(10)
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# -- the load ----------------------------------------------------------------------------


class Load:
    """SENDERS clients posting batches until stopped; every batch is re-sent, same event
    ids, until it is acknowledged (connection errors and 503s are what a killed worker
    looks like from outside)."""

    def __init__(self, url: str, identity_secret: str) -> None:
        self.url = url
        self.secret = identity_secret
        self.stop = asyncio.Event()
        self.ack_times: list[float] = []  # monotonic time of every 200
        self.expected: Counter[tuple[str, str]] = Counter()  # ("c"|"a", id) -> events
        self.resends = 0
        self.refused: list[tuple[int, Any]] = []

    async def _post(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> bool:
        data = orjson.dumps(body)
        while True:
            try:
                async with session.post(
                    f"{self.url}/v1/events",
                    data=data,
                    headers={"Content-Type": "application/json"},
                ) as r:
                    raw = await r.read()
                    if r.status == 200:
                        resp = orjson.loads(raw)
                        assert resp["accepted"] + resp["duplicates"] == len(body["events"]), resp
                        self.ack_times.append(time.monotonic())
                        return True
                    if r.status not in (429, 503):
                        self.refused.append((r.status, raw[:300]))
                        return False
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.resends += 1
            await asyncio.sleep(0.05)

    async def sender(self, session: aiohttp.ClientSession, i: int) -> None:
        identified = i % 2 == 0
        n = 0
        while not self.stop.is_set():
            k = n % PROFILES_PER_SENDER
            anon = f"anon-fault-{i:02d}-{k}"
            body: dict[str, Any] = {
                "site": SITE,
                "anonymous_id": anon,
                "events": [
                    event("page_view", id=f"f{i}-{n}-{j}", ts=now_ms(), page="/loans/personal")
                    for j in range(EVENTS_PER_BATCH)
                ],
            }
            who = ("a", anon)
            if identified:
                customer = f"cust-fault-{i:02d}-{k}"
                body["identity"] = mint_token(self.secret, SITE, customer, ttl_s=600)
                who = ("c", customer)
            if await self._post(session, body):
                self.expected[who] += EVENTS_PER_BATCH
            n += 1
            await asyncio.sleep(0.01)

    async def acks_reach(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.ack_times) < n:
            assert time.monotonic() < deadline, f"only {len(self.ack_times)} acks of {n}"
            assert not self.refused, self.refused[:3]
            await asyncio.sleep(0.02)


async def _page_views(redis: aioredis.Redis, who: tuple[str, str]) -> int:
    kind, ident = who
    prefix = keys.customer_prefix(ident) if kind == "c" else keys.anonymous_prefix(SITE, ident)
    profile_keys = keys.profile_keys(prefix)
    raw, _, _ = await redis.fcall("rb_read", len(profile_keys), *profile_keys)
    return int(orjson.loads(raw).get(layout.count("page_view"), 0))


async def test_a_worker_killed_under_load_loses_no_acknowledged_event(
    store_target: StoreTarget, redis: aioredis.Redis, tmp_path: Path, pools: list[Pool]
) -> None:
    pool = Pool(tmp_path, store_target)
    pools.append(pool)
    await pool.ready()
    workers = _workers(pool.proc.pid)
    assert len(workers) == 2, workers
    victim, survivor = workers

    load = Load(pool.url, pool.credentials["identity_secret"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=SENDERS)) as session:
        senders = [asyncio.create_task(load.sender(session, i)) for i in range(SENDERS)]
        try:
            await load.acks_reach(200)  # both workers busy

            os.kill(victim, signal.SIGKILL)  # the OOM killer, say
            killed_at = time.monotonic()
            # Until a replacement listens on the port, the survivor serves alone.
            deadline = killed_at + 60
            while True:
                now = _workers(pool.proc.pid)
                fresh = [w for w in now if w not in workers]
                if fresh and _listens(fresh[0], pool.port):
                    replaced_at = time.monotonic()
                    break
                assert pool.proc.poll() is None, f"the pool died:\n{pool.output()}"
                assert time.monotonic() < deadline, f"no replacement:\n{pool.output()}"
                await asyncio.sleep(0.02)
            served_alone = sum(killed_at < t < replaced_at for t in load.ack_times)

            # The new pool of two carries on under the same load.
            await load.acks_reach(len(load.ack_times) + 200)
        finally:
            load.stop.set()
            await asyncio.gather(*senders)

    assert not load.refused, load.refused[:3]
    assert _alive(survivor) and not _alive(victim)
    assert sorted(_workers(pool.proc.pid)) == sorted([survivor, fresh[0]])
    assert served_alone > 0, "nothing was acknowledged while one worker was down"

    sent = sum(load.expected.values())
    counted = {who: await _page_views(redis, who) for who in load.expected}
    assert counted == dict(load.expected)  # every acknowledged event, exactly once
    print(
        f"{len(load.ack_times)} batches ({sent} events) acknowledged, {served_alone} by the "
        f"survivor alone while its peer was replaced, {load.resends} re-sends"
    )
    pool.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(pool.proc.wait, 30) == 0, pool.output()
