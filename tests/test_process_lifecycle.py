"""`ringback serve` as ops run it: embedded Valkey, restarts, workers, graceful stop."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import REPO, now_ms

from engine.embedded import EmbeddedValkey, free_port
from engine.identity import mint_token

pytestmark = pytest.mark.slow


class Serve:
    """One `python -m engine serve` child with its output captured to a file."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "engine", "serve", "--port", str(self.port), *args]
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text()

    async def ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.output()
                try:
                    async with s.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"not ready: {self.output()}")

    async def stop(self, timeout_s: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout_s)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too.
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]


def _valkey_pids(port: int) -> list[int]:
    """valkey-server retitles itself "valkey-server 127.0.0.1:<port>"."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"valkey-server" in cmd and f":{port}".encode() in cmd:
                pids.append(int(d.name))
    return pids


def _worker_pids(supervisor: int) -> list[int]:
    """The supervisor's spawned worker processes (not multiprocessing's helpers)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(p) for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


async def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{url}/v1/events",
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        ) as r:
            return r.status, await r.json()


async def _get(url: str, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}{path}", headers=headers) as r:
            body = await r.read()
            return r.status, (
                orjson.loads(body) if r.content_type == "application/json" else body.decode()
            )


async def test_serve_with_embedded_valkey_keeps_profiles_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Serve(tmp_path, "--data-dir", str(data))
    await first.ready()
    out = first.output()
    assert f"Ringback serving on {first.url}" in out
    assert f"{first.url}/dashboard" in out and f"{first.url}/metrics" in out
    creds_path = data / "demo-credentials.json"
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
    creds = orjson.loads(creds_path.read_bytes())
    assert creds["api_token"] in out  # printed for the person who started it
    m = re.search(r"embedded valkey-server on 127\.0\.0\.1:(\d+)", out)
    assert m, out
    valkey_pids = _valkey_pids(int(m.group(1)))
    assert len(valkey_pids) == 1

    token = mint_token(creds["identity_secret"], "demo-bank", "cust-restart")
    status, _ = await _post(
        first.url,
        {
            "site": "demo-bank",
            "anonymous_id": "anon-restart-1",
            "identity": token,
            "events": [
                {
                    "id": "r1",
                    "type": "calc",
                    "ts": now_ms(),
                    "props": {"product": "mortgage", "amount": 300000, "term_months": 300},
                }
            ],
        },
    )
    assert status == 200
    assert await first.stop() == 0
    assert not _pid_alive(valkey_pids[0])  # the embedded Valkey stopped with it
    assert "embedded valkey-server stopped" in first.output()

    second = Serve(tmp_path, "--data-dir", str(data))
    await second.ready()
    try:
        assert orjson.loads(creds_path.read_bytes()) == creds  # generated once
        status, body = await _get(second.url, "/v1/profiles/cust-restart", creds["api_token"])
        assert status == 200
        assert body["profile"]["calc"]["mortgage"]["amount"] == 300000
    finally:
        assert await second.stop() == 0


async def test_two_workers_share_the_port_and_metrics_add_up(
    valkey: EmbeddedValkey, redis: Any, tmp_path: Path
) -> None:
    serve = Serve(
        tmp_path, "--workers", "2", "--redis", valkey.url, "--data-dir", str(tmp_path / "data")
    )
    await serve.ready()
    try:
        workers = _worker_pids(serve.proc.pid)
        assert len(workers) == 2
        n = 120
        results = await asyncio.gather(
            *[
                _post(
                    serve.url,
                    {
                        "site": "demo-bank",
                        "anonymous_id": f"anon-workers-{i:04d}",
                        "events": [
                            {"id": f"w{i}", "type": "page_view", "ts": now_ms(), "page": "/"}
                        ],
                    },
                )
                for i in range(n)
            ]
        )
        assert all(status == 200 for status, _ in results)
        for _ in range(3):  # whichever worker answers, the totals are the same
            status, text = await _get(serve.url, "/metrics")
            assert status == 200
            m = re.search(r'^ringback_events_total\{type="page_view"\} (\S+)$', text, re.M)
            assert m and float(m.group(1)) == n, text[:2000]
        assert shutil.which("promtool"), "promtool missing: make test installs it"
        check = await asyncio.to_thread(
            subprocess.run,
            ["promtool", "check", "metrics"],
            input=text,
            text=True,
            capture_output=True,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        assert await serve.stop() == 0
    assert all(not _pid_alive(p) for p in workers)


async def test_sigterm_lets_in_flight_requests_finish(
    valkey: EmbeddedValkey, redis: Any, tmp_path: Path
) -> None:
    serve = Serve(tmp_path, "--redis", valkey.url, "--data-dir", str(tmp_path / "data"))
    await serve.ready()
    big = [
        {"id": f"e{j}", "type": "click", "ts": now_ms(), "props": {"text": "x" * 200}}
        for j in range(100)
    ]

    async def slow_client(i: int) -> int:
        # Send the body slowly so the request is still in flight when SIGTERM arrives.
        body = orjson.dumps(
            {"site": "demo-bank", "anonymous_id": f"anon-drain-{i:04d}", "events": big}
        )

        async def trickle():  # type: ignore[no-untyped-def]
            for k in range(0, len(body), 1024):  # ~1.3 s per request
                yield body[k : k + 1024]
                await asyncio.sleep(0.05)

        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"{serve.url}/v1/events",
                data=trickle(),
                headers={"Content-Type": "application/json"},
            ) as r:
                return r.status

    tasks = [asyncio.create_task(slow_client(i)) for i in range(20)]
    await asyncio.sleep(0.6)  # every request accepted and mid-body
    serve.proc.send_signal(signal.SIGTERM)
    statuses = await asyncio.gather(*tasks)
    assert statuses == [200] * 20
    assert await asyncio.to_thread(serve.proc.wait, 30) == 0
    with pytest.raises(aiohttp.ClientError):
        await _get(serve.url, "/healthz")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nport = 'eighty'\n", "server.port"),
        ("[limits]\nmax_body = 1\n", "limits.max_body"),
        (
            '[[sites]]\nkey = "b"\nidentity = { algorithms = ["HS256"] }\n',
            "sites[0].identity.secret",
        ),
    ],
)
def test_config_errors_exit_2_with_file_and_key(tmp_path: Path, toml: str, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--config",
            str(cfg),
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert f"{cfg}: {key}:" in run.stderr
    assert "Traceback" not in run.stderr


def test_token_for_an_unknown_site_exits_2(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "token",
            "--site",
            "nope",
            "--customer",
            "c1",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "unknown site" in run.stderr


def test_token_prints_a_verifiable_token_as_its_last_word(tmp_path: Path) -> None:
    import jwt

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "token",
            "--site",
            "demo-bank",
            "--customer",
            "cust-7",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0
    token = run.stdout.split()[-1]
    secret = orjson.loads((tmp_path / "demo-credentials.json").read_bytes())["identity_secret"]
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="demo-bank")
    assert claims["sub"] == "cust-7"
