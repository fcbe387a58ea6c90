"""`ringback serve` as an operator meets it: a real process, real signals, real ports.

Every test starts the console script as a child process (in its own session, so a
test can Ctrl-C it like a terminal would) and looks at it from the outside: its
output, its exit code, its files, /proc, and what clients on the socket see.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import REPO, StoreTarget, calc, event, now_ms

from engine.ingest.identity import mint_token
from engine.profile import layout
from engine.valkey.embedded import free_port

pytestmark = pytest.mark.slow

RINGBACK = Path(sys.executable).with_name("ringback")  # the console script
_serial = itertools.count()


# -- the process under test ------------------------------------------------------------


class Serve:
    """One `ringback serve` child; its stdout+stderr go to a log file."""

    def __init__(self, tmp: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{next(_serial)}.log"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(RINGBACK), "serve", "--port", str(self.port), *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like a shell job
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text()

    async def ready(self, timeout_s: float = 30) -> None:
        """/readyz answers 200 and the startup banner (printed once all workers serve) is out."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"serve exited early:\n{self.output()}"
                try:
                    async with s.get(f"{self.url}/readyz") as r:
                        if r.status == 200 and "Ringback serving on" in self.output():
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"not ready in {timeout_s}s:\n{self.output()}")

    async def wait(self, timeout_s: float = 30) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout_s)

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        self.proc.send_signal(sig)
        return await self.wait(timeout_s)


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    """Every Serve a test starts; whatever a failed test left running is killed by PID,
    descendants (workers, valkey-server) included."""
    started: list[Serve] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            family = _descendants(s.pid)
            s.proc.kill()
            s.proc.wait(10)
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# -- looking from the outside -----------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited


async def _until_dead(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    for child in _children(pid):
        out += [child, *_descendants(child)]
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing spawn children, no helpers)."""
    return sorted(
        p
        for p in _children(supervisor)
        if b"spawn_main" in _cmdline(p) and b"resource_tracker" not in _cmdline(p)
    )


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def _tcp_rows() -> list[list[str]]:
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        rows += [line.split() for line in lines]
    return rows


def _listening(port: int) -> bool:
    """Is anything listening on this TCP port (any address)?"""
    return any(int(r[1].rsplit(":", 1)[1], 16) == port and r[3] == "0A" for r in _tcp_rows())


def _accepted_sockets(port: int) -> set[int]:
    """Inodes of established server-side sockets of connections to `port`."""
    return {
        int(r[9]) for r in _tcp_rows() if int(r[1].rsplit(":", 1)[1], 16) == port and r[3] == "01"
    }


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued in the backlog as the listener closed
        return False


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} missing from /metrics:\n{text[:3000]}"
    return float(m.group(1))


def _promtool(text: str) -> None:
    """The exposition passes Prometheus' own linter (make test installs promtool)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs Debian's prometheus package"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, text=True, capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with session.post(
        f"{url}/v1/events", data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    ) as r:
        return r.status, orjson.loads(await r.read())


async def _get(url: str, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(f"{url}{path}", headers=headers) as r:
        raw = await r.read()
        if r.content_type == "application/json":
            return r.status, orjson.loads(raw)
        return r.status, raw.decode()


def _page_views(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "site": "demo-bank",
            "anonymous_id": f"anon-{tag}-{i:04d}",
            "events": [event("page_view", id=f"{tag}-{i}", page="/loans/personal")],
        }
        for i in range(n)
    ]


# -- 1. first run, credentials, restart ----------------------------------------------------


async def test_first_serve_prints_urls_and_where_the_credentials_are_never_the_secrets(
    tmp_path: Path, serves: list[Serve]
) -> None:
    assert RINGBACK.exists(), "the `ringback` console script is not installed"
    data = tmp_path / "data"
    first = Serve(tmp_path, "--data-dir", str(data))
    serves.append(first)
    await first.ready()
    out = first.output()

    # It says where it serves...
    assert f"Ringback serving on {first.url}" in out
    for path in ("/v1/events", "/demo", "/dashboard", "/metrics", "/openapi.json"):
        assert f"{first.url}{path}" in out, out
    # ...and where the generated demo credentials are, never the secrets themselves:
    # stdout and stderr (both in `out`) end up in log shippers.
    creds_file = data / "demo-credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    assert str(creds_file) in out, out
    creds_bytes = creds_file.read_bytes()
    creds = orjson.loads(creds_bytes)
    assert {"identity_secret", "api_token", "agent_user", "agent_password"} <= set(creds)
    for key in ("identity_secret", "api_token", "agent_password"):
        assert len(creds[key]) >= 5 and creds[key] not in out, key

    # The embedded Valkey: the pid and port it announced are a live valkey-server child.
    m = re.search(r"embedded valkey-server on 127\.0\.0\.1:(\d+) \(pid (\d+)", out)
    assert m, out
    valkey_port, valkey_pid = int(m.group(1)), int(m.group(2))
    assert valkey_pid in _children(first.pid)
    assert b"valkey-server" in _cmdline(valkey_pid)
    assert _listening(valkey_port)

    # A known customer's batch, then read back with the admin token.
    token = mint_token(creds["identity_secret"], "demo-bank", "cust-first-run")
    batch = {
        "site": "demo-bank",
        "anonymous_id": "anon-first-run",
        "identity": token,
        "events": [
            event("page_view", id="fr-1", page="/mortgage/rates"),
            event("page_view", id="fr-2", page="/mortgage/calculator"),
            calc("mortgage", 320_000, 300, id="fr-3"),
        ],
    }
    async with aiohttp.ClientSession() as s:
        status, body = await _post(s, first.url, batch)
    assert status == 200, body
    assert (body["accepted"], body["duplicates"]) == (3, 0)
    assert (await _get(first.url, "/v1/profiles/cust-first-run"))[0] == 401
    status, prof = await _get(first.url, "/v1/profiles/cust-first-run", creds["api_token"])
    assert status == 200, prof
    assert prof["profile"]["counts"]["page_view"] == 2
    assert prof["profile"]["calc"]["mortgage"]["amount"] == 320_000

    status, metrics = await _get(first.url, "/metrics")
    assert status == 200
    assert _metric(metrics, "ringback_events_total", '{type="page_view"}') == 2
    _promtool(metrics)  # one worker

    # SIGTERM: a clean exit that takes its Valkey with it.
    assert await first.stop() == 0, first.output()
    assert "embedded valkey-server stopped" in first.output()
    assert await _until_dead(valkey_pid, 5), "valkey-server outlived the engine"
    assert not _listening(valkey_port)
    assert _refused(first.port)

    # Same data dir: same credentials, same profile, and the dedupe window survived too.
    second = Serve(tmp_path, "--data-dir", str(data))
    serves.append(second)
    await second.ready()
    assert creds_file.read_bytes() == creds_bytes
    assert str(creds_file) in second.output()
    for key in ("identity_secret", "api_token", "agent_password"):
        assert creds[key] not in second.output(), key
    status, prof = await _get(second.url, "/v1/profiles/cust-first-run", creds["api_token"])
    assert status == 200, prof
    assert prof["profile"]["counts"]["page_view"] == 2
    assert prof["profile"]["calc"]["mortgage"]["amount"] == 320_000
    async with aiohttp.ClientSession() as s:
        status, body = await _post(s, second.url, batch)  # the snippet retrying
    assert status == 200 and (body["accepted"], body["duplicates"]) == (0, 3), body
    assert await second.stop() == 0, second.output()
    for log in (first.output(), second.output()):  # nor were they logged later on
        assert not any(creds[k] in log for k in ("identity_secret", "api_token", "agent_password"))


async def test_one_data_dir_one_valkey_even_after_the_engine_is_killed(
    tmp_path: Path, serves: list[Serve]
) -> None:
    data = tmp_path / "data"
    first = Serve(tmp_path, "--data-dir", str(data))
    serves.append(first)
    await first.ready()
    m = re.search(r"embedded valkey-server on 127\.0\.0\.1:(\d+) \(pid (\d+)", first.output())
    assert m, first.output()
    valkey_port, valkey_pid = int(m.group(1)), int(m.group(2))

    # A second engine on the same data dir would run a second Valkey on the same AOF.
    second = Serve(tmp_path, "--data-dir", str(data))
    serves.append(second)
    assert await second.wait(30) == 2, second.output()
    lines = [line for line in second.output().splitlines() if line.strip()]
    assert len(lines) == 1 and str(data) in lines[0] and "in use" in lines[0], lines
    assert "Traceback" not in second.output()

    creds = orjson.loads((data / "demo-credentials.json").read_bytes())
    token = mint_token(creds["identity_secret"], "demo-bank", "cust-crash")
    async with aiohttp.ClientSession() as s:
        status, _ = await _post(
            s,
            first.url,
            {
                "site": "demo-bank",
                "anonymous_id": "anon-crash",
                "identity": token,
                "events": [event("interest", id="crash-1", props={"product": "loans"})],
            },
        )
    assert status == 200

    # kill -9 of the engine: its Valkey goes too (no orphan holding the AOF)...
    first.proc.kill()
    first.proc.wait(10)
    assert await _until_dead(valkey_pid, 10), "orphaned valkey-server after kill -9"
    assert not _listening(valkey_port)
    # ...and the next start finds the acknowledged batch.
    third = Serve(tmp_path, "--data-dir", str(data))
    serves.append(third)
    await third.ready()
    status, prof = await _get(third.url, "/v1/profiles/cust-crash", creds["api_token"])
    assert status == 200, prof
    assert prof["profile"]["counts"]["interest"] == 1
    assert await third.stop() == 0


# -- 2. workers --------------------------------------------------------------------------


async def _two_worker_pool(
    store_target: StoreTarget, tmp_path: Path, serves: list[Serve]
) -> tuple[Serve, list[int]]:
    """`serve --workers 2` on a shared valkey, ready, and its two worker pids."""
    pool = Serve(
        tmp_path, "--workers", "2", *store_target.cli_args, "--data-dir", str(tmp_path / "d")
    )
    serves.append(pool)
    await pool.ready()
    workers = _workers(pool.pid)
    assert len(workers) == 2, workers
    return pool, workers


async def test_two_workers_both_serve_and_metrics_add_up_across_them(
    store_target: StoreTarget, redis: Any, tmp_path: Path, serves: list[Serve]
) -> None:
    pool, workers = await _two_worker_pool(store_target, tmp_path, serves)
    metrics_dirs = {_environ(w).get("PROMETHEUS_MULTIPROC_DIR") for w in workers}
    assert len(metrics_dirs) == 1 and None not in metrics_dirs

    n = 120
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=60)) as s:
        results = await asyncio.gather(*[_post(s, pool.url, b) for b in _page_views(n, "wk")])
        assert [st for st, _ in results] == [200] * n
        # The pool's 60 kept-alive connections: the kernel spread them over both workers.
        accepted = _accepted_sockets(pool.port)
        held = {w: len(_socket_inodes(w) & accepted) for w in workers}
        assert sum(held.values()) >= 30 and all(held.values()), held

    async def scrape() -> str:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(f"{pool.url}/metrics") as r,
        ):
            assert r.status == 200
            return await r.text()

    # GC pauses reach the histogram within a second of happening: wait for the first.
    gc_count = re.compile(r'^ringback_gc_pause_seconds_count\{generation="0"\} [1-9]', re.M)
    deadline = time.monotonic() + 10
    while not gc_count.search(await scrape()):
        assert time.monotonic() < deadline, "no GC pause ever reached /metrics"
        await asyncio.sleep(0.1)
    # Whichever worker answers /metrics, it reports the pool's totals.
    texts = [await scrape() for _ in range(8)]
    for text in texts:
        assert _metric(text, "ringback_events_total", '{type="page_view"}') == n
        assert _metric(text, "ringback_batches_total", '{result="accepted"}') == n
        assert _metric(text, "ringback_ingest_seconds_count") == n
        assert _metric(text, "ringback_gc_pause_seconds_count", '{generation="0"}') > 0
        assert _metric(text, "ringback_event_loop_lag_seconds_count") > 0
    _promtool(texts[-1])  # two workers

    assert await pool.stop() == 0, pool.output()
    for w in workers:
        assert await _until_dead(w, 5)
    assert _refused(pool.port)
    assert not _exists(next(iter(metrics_dirs)) or "/nonexistent")  # no temp dir left


async def test_a_killed_worker_is_replaced_and_the_pool_keeps_its_counts(
    store_target: StoreTarget, redis: Any, tmp_path: Path, serves: list[Serve]
) -> None:
    pool, workers = await _two_worker_pool(store_target, tmp_path, serves)
    batches = _page_views(60, "rep")
    async with aiohttp.ClientSession() as s:
        assert [
            st for st, _ in await asyncio.gather(*[_post(s, pool.url, b) for b in batches[:30]])
        ] == [200] * 30

    os.kill(workers[0], signal.SIGKILL)  # the OOM killer, say
    deadline = time.monotonic() + 20
    while True:
        now = _workers(pool.pid)
        if len(now) == 2 and workers[0] not in now:
            break
        assert pool.proc.poll() is None, f"the pool died with its worker:\n{pool.output()}"
        assert time.monotonic() < deadline, f"no replacement worker:\n{pool.output()}"
        await asyncio.sleep(0.1)
    await pool.ready()
    workers = now

    # SIGHUP reaches every worker, the replacement included, and kills none of them.
    pool.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not all(f"[worker {w}] rules reloaded (SIGHUP)" in pool.output() for w in workers):
        assert time.monotonic() < deadline, f"SIGHUP did not reload {workers}:\n{pool.output()}"
        await asyncio.sleep(0.05)
    assert _workers(pool.pid) == workers

    async with aiohttp.ClientSession() as s:
        assert [
            st for st, _ in await asyncio.gather(*[_post(s, pool.url, b) for b in batches[30:]])
        ] == [200] * 30
    _, text = await _get(pool.url, "/metrics")
    # The dead worker's 30-odd batches happened: they still count.
    assert _metric(text, "ringback_events_total", '{type="page_view"}') == 60
    _promtool(text)
    assert await pool.stop() == 0, pool.output()


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGINT"])
async def test_a_signal_while_the_pool_boots_kills_no_worker_and_prints_no_traceback(
    store_target: StoreTarget, redis: Any, tmp_path: Path, serves: list[Serve], sig: str
) -> None:
    """A rules deploy's `kill -HUP`, or Ctrl-C, in the second it takes workers to boot."""
    pool = Serve(
        tmp_path, "--workers", "2", *store_target.cli_args, "--data-dir", str(tmp_path / "d")
    )
    serves.append(pool)
    deadline = time.monotonic() + 20
    while len(booting := _workers(pool.pid)) < 2:
        assert pool.proc.poll() is None and time.monotonic() < deadline, pool.output()
        await asyncio.sleep(0.01)
    assert "Ringback serving" not in pool.output()  # still booting: importing takes ~1 s
    if sig == "SIGHUP":
        pool.proc.send_signal(signal.SIGHUP)
        await pool.ready()
        assert _workers(pool.pid) == booting, pool.output()  # a reload, not a crash
        deadline = time.monotonic() + 10
        while pool.output().count("rules reloaded (SIGHUP)") < 2:  # each worker, once
            assert time.monotonic() < deadline, pool.output()
            await asyncio.sleep(0.05)
        assert await pool.stop() == 0, pool.output()
    else:
        os.killpg(pool.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches every worker
        assert await pool.wait(30) == 0, pool.output()
    assert "Traceback" not in pool.output()
    for w in booting:
        assert await _until_dead(w, 5)


async def test_killing_the_supervisor_takes_its_workers_and_valkey_with_it(
    tmp_path: Path, serves: list[Serve]
) -> None:
    pool = Serve(tmp_path, "--workers", "2", "--data-dir", str(tmp_path / "d"))
    serves.append(pool)
    await pool.ready()
    m = re.search(r"\(pid (\d+),", pool.output())
    assert m, pool.output()
    workers = _workers(pool.pid)
    assert len(workers) == 2
    # Everything it started (multiprocessing's resource tracker too) must go with it.
    family = _descendants(pool.pid)
    assert {int(m.group(1)), *workers} <= set(family), family
    pool.proc.kill()
    pool.proc.wait(10)
    for pid in family:
        assert await _until_dead(pid, 10), f"{_cmdline(pid)!r} outlived its supervisor"
    assert _refused(pool.port)


async def test_a_port_in_use_is_refused_not_shared_or_hung(
    store_target: StoreTarget, redis: Any, tmp_path: Path, serves: list[Serve]
) -> None:
    pool = Serve(
        tmp_path, "--workers", "2", *store_target.cli_args, "--data-dir", str(tmp_path / "d")
    )
    serves.append(pool)
    await pool.ready()
    # Another pool (SO_REUSEPORT would let it silently take half the traffic) and a
    # single worker (used to hang, deaf to SIGTERM) on the same port both give up.
    for args in (["--workers", "2"], []):
        other = Serve(
            tmp_path,
            *args,
            *store_target.cli_args,
            "--data-dir",
            str(tmp_path / "other"),
            port=pool.port,
        )
        serves.append(other)
        try:
            code = await other.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve {args} on a busy port is still running:\n{other.output()}")
        assert code == 2, other.output()
        assert f"cannot listen on 127.0.0.1:{pool.port}" in other.output()
        assert "Traceback" not in other.output()
    # The first pool never noticed.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        results = await asyncio.gather(*[_post(s, pool.url, b) for b in _page_views(20, "busy")])
    assert [st for st, _ in results] == [200] * 20
    assert await pool.stop() == 0


# -- 3. signals: graceful drain, reload -----------------------------------------------


async def _open_in_flight(
    port: int, body: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST whose headers are in and whose body is not: the server's 100 Continue
    comes from inside request handling, so once it arrives the request is in flight."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Expect: 100-continue\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert line.startswith(b"HTTP/1.1 100"), line
    return reader, writer


async def _finish(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
) -> tuple[int, dict[str, Any]]:
    try:
        for k in range(0, len(body), 512):  # still trickling in while the server stops
            writer.write(body[k : k + 512])
            await writer.drain()
            await asyncio.sleep(0.01)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        status = int(head.split()[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        return status, orjson.loads(await reader.readexactly(length))
    finally:
        writer.close()


def _drain_batches(n: int, tag: str) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "site": "demo-bank",
                "anonymous_id": f"anon-{tag}-{i:04d}",
                "events": [
                    event("click", id=f"{tag}-{i}-{j}", props={"text": "x" * 100})
                    for j in range(20)
                ],
            }
        )
        for i in range(n)
    ]


async def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(
    store_target: StoreTarget, redis: Any, tmp_path: Path, serves: list[Serve]
) -> None:
    serve = Serve(tmp_path, *store_target.cli_args, "--data-dir", str(tmp_path / "d"))
    serves.append(serve)
    await serve.ready()
    bodies = _drain_batches(50, "drain")
    conns = await asyncio.gather(*[_open_in_flight(serve.port, b) for b in bodies])

    serve.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not _refused(serve.port):  # new connections: refused at once...
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        await asyncio.sleep(0.02)
    assert serve.proc.poll() is None  # ...while it waits for the 50 requests it has

    results = await asyncio.gather(
        *[_finish(r, w, b) for (r, w), b in zip(conns, bodies, strict=True)]
    )
    assert [st for st, _ in results] == [200] * 50, results
    assert all(body["accepted"] == 20 for _, body in results)
    assert await serve.wait(20) == 0, serve.output()
    assert _refused(serve.port)
    # Everything it said it accepted is in Valkey.
    keys = [f"rb:{{a:demo-bank:anon-drain-{i:04d}}}:seen" for i in range(50)]
    assert [await redis.zcard(k) for k in keys] == [20] * 50


async def test_ctrl_c_with_the_embedded_valkey_drains_before_valkey_stops(
    tmp_path: Path, serves: list[Serve]
) -> None:
    """Ctrl-C signals the whole foreground process group, Valkey included."""
    serve = Serve(tmp_path, "--data-dir", str(tmp_path / "d"))
    serves.append(serve)
    await serve.ready()
    m = re.search(r"\(pid (\d+),", serve.output())
    assert m, serve.output()
    valkey_pid = int(m.group(1))
    bodies = _drain_batches(20, "ctrlc")
    conns = await asyncio.gather(*[_open_in_flight(serve.port, b) for b in bodies])

    os.killpg(serve.pid, signal.SIGINT)
    await asyncio.sleep(0.3)  # long enough for a Valkey that got the SIGINT to be gone
    results = await asyncio.gather(
        *[_finish(r, w, b) for (r, w), b in zip(conns, bodies, strict=True)]
    )
    assert [st for st, _ in results] == [200] * 20, results
    assert await serve.wait(20) == 0, serve.output()
    assert await _until_dead(valkey_pid, 5)
    assert "Traceback" not in serve.output()


async def test_sighup_without_a_rules_dir_is_logged_not_fatal(
    store_target: StoreTarget, redis: Any, tmp_path: Path, serves: list[Serve]
) -> None:
    """`kill -HUP` asks for a reload; with nothing to reload it must not stop the engine
    (terminating is SIGHUP's default action)."""
    cfg = tmp_path / "no-rules.toml"
    cfg.write_text("")
    serve = Serve(
        tmp_path, "--config", str(cfg), *store_target.cli_args, "--data-dir", str(tmp_path / "d")
    )
    serves.append(serve)
    await serve.ready()
    serve.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "SIGHUP: no rules directory to reload" not in serve.output():
        assert serve.proc.poll() is None, f"SIGHUP killed the engine:\n{serve.output()}"
        assert time.monotonic() < deadline, serve.output()
        await asyncio.sleep(0.05)
    assert (await _get(serve.url, "/readyz"))[0] == 200
    assert await serve.stop() == 0, serve.output()


async def test_sighup_while_booting_with_the_embedded_valkey_is_not_fatal(
    tmp_path: Path, serves: list[Serve]
) -> None:
    """A rules deploy's `kill -HUP` may land while the engine boots: the embedded
    Valkey's watchdog thread must not be the one to take it (its default: terminate)."""
    serve = Serve(tmp_path, "--data-dir", str(tmp_path / "d"))
    serves.append(serve)
    deadline = time.monotonic() + 20
    while "embedded valkey-server on" not in serve.output():
        assert serve.proc.poll() is None and time.monotonic() < deadline, serve.output()
        await asyncio.sleep(0.01)
    sent = 0
    while "Ringback serving on" not in serve.output():  # all through the rest of the boot
        assert serve.proc.poll() is None, f"SIGHUP #{sent + 1} killed it:\n{serve.output()}"
        assert time.monotonic() < deadline, serve.output()
        serve.proc.send_signal(signal.SIGHUP)
        sent += 1
        await asyncio.sleep(0.02)
    await serve.ready()
    assert (await _get(serve.url, "/readyz"))[0] == 200
    assert await serve.stop() == 0, serve.output()


# -- 4. config errors --------------------------------------------------------------------


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run(
        [str(RINGBACK), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        pytest.param("[server]\nport = 8080\ncolour = 'blue'\n", "server.colour", id="unknown-key"),
        pytest.param("[server]\nport = 'eighty'\n", "server.port", id="wrong-type"),
        pytest.param(
            '[[sites]]\nkey = "other-bank"\nidentity = { algorithms = ["HS256"] }\n',
            "sites[0].identity.secret",
            id="hs256-without-secret",
        ),
        pytest.param(
            "[limits]\nmax_events_per_batch = 0\n", "limits.max_events_per_batch", id="bad-value"
        ),
    ],
)
def test_a_bad_config_exits_2_with_one_line_naming_file_and_key(
    tmp_path: Path, toml: str, key: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    run = _run("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert run.returncode == 2, run.stdout + run.stderr
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"{cfg}: {key}:" in lines[0], lines[0]
    assert not (tmp_path / "d" / "valkey").exists()  # refused before starting anything


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_broken_rules_dir_exits_2_without_tracebacks(tmp_path: Path, workers: str) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "broken.yaml").write_text("rules:\n  - id: Not An Id\n    when: 'nope ==='\n")
    run = _run(
        "serve",
        "--workers",
        workers,
        "--rules",
        str(rules),
        "--redis",
        f"redis://127.0.0.1:{free_port()}/0",
        "--data-dir",
        str(tmp_path / "d"),
        "--port",
        "0",
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "broken.yaml:" in run.stderr
    assert "Ringback serving" not in run.stdout


def test_token_for_an_unknown_site_exits_2(tmp_path: Path) -> None:
    run = _run("token", "--site", "nope", "--customer", "c-1", "--data-dir", str(tmp_path))
    assert run.returncode == 2
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "'nope'" in lines[0] and "demo-bank" in lines[0], lines
    assert run.stdout == ""  # nothing a script could mistake for a token


def test_token_prints_a_verifiable_token_as_its_last_word(tmp_path: Path) -> None:
    customer = f"c-{uuid.uuid4().hex[:6]}"
    run = _run("token", "--site", "demo-bank", "--customer", customer, "--data-dir", str(tmp_path))
    assert run.returncode == 0, run.stderr
    import jwt

    secret = orjson.loads((tmp_path / "demo-credentials.json").read_bytes())["identity_secret"]
    claims = jwt.decode(run.stdout.split()[-1], secret, algorithms=["HS256"], audience="demo-bank")
    assert claims["sub"] == customer
    assert claims["exp"] > now_ms() / 1000


async def test_a_crashed_embedded_valkey_is_restarted_and_nothing_acknowledged_is_lost(
    tmp_path: Path, serves: list[Serve]
) -> None:
    serve = Serve(tmp_path, "--data-dir", str(tmp_path / "d"))
    serves.append(serve)
    await serve.ready()
    m = re.search(r"embedded valkey-server on 127\.0\.0\.1:(\d+) \(pid (\d+)", serve.output())
    assert m, serve.output()
    valkey_port, valkey_pid = int(m.group(1)), int(m.group(2))

    def batch(tag: str, n: int) -> dict[str, Any]:
        events = [event("page_view", id=f"{tag}-{i}", page="/mortgages") for i in range(n)]
        return {"site": "demo-bank", "anonymous_id": "anon-watchdog-1", "events": events}

    statuses: list[int] = []
    async with aiohttp.ClientSession() as s:
        assert (await _post(s, serve.url, batch("before", 10)))[0] == 200
        os.kill(valkey_pid, signal.SIGKILL)  # the engine's own Valkey crashes
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the snippet's retries, at most 20 s of them
            status, body = await _post(s, serve.url, batch("during", 1))
            statuses.append(status)
            if status == 200:
                break
            assert status == 503 and body["error"]["code"] == "store_unavailable", body
            await asyncio.sleep(0.2)
    assert statuses[-1] == 200, (statuses, serve.output())
    # Nobody restarted it but the engine: same port, a new process, the AOF replayed.
    assert "embedded valkey-server exited" in serve.output()
    restarted = r"restarted on 127\.0\.0\.1:(\d+) \(pid (\d+)\)"
    for _ in range(50):  # the watchdog says so once the server answers: maybe just now
        if m := re.search(restarted, serve.output()):
            break
        await asyncio.sleep(0.1)
    assert m and int(m.group(1)) == valkey_port and int(m.group(2)) != valkey_pid
    assert int(m.group(2)) in _children(serve.pid)
    client = aioredis.Redis(port=valkey_port, decode_responses=True)
    try:
        profile = orjson.loads(await client.get("rb:{a:demo-bank:anon-watchdog-1}:p"))
    finally:
        await client.aclose()
    # The 10 acknowledged before the crash, and 1 after.
    assert profile[layout.count("page_view")] == 11
    # The restarted server takes SIGTERM like the first one (not killed after a timeout).
    started = time.monotonic()
    assert await serve.stop() == 0
    assert time.monotonic() - started < 5, serve.output()
    assert await _until_dead(int(m.group(2)), 5), "the restarted valkey-server outlived serve"
