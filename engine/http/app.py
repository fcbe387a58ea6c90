"""Assemble the aiohttp application: state, routes, middleware, lifecycle.

Connections and background work start and stop in `cleanup_ctx`, so a test, a
worker process and `ringback rules test` all build the very same app.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from engine.contact_center.capacity import CapacityMonitor
from engine.contact_center.gateway import Gateway
from engine.core.errors import ConfigError, StoreUnavailable
from engine.core.metrics import Metrics
from engine.core.reloader import Reloadable
from engine.core.settings import Settings, WebhookConfig
from engine.decisions.inputs import Decider, NoDecisions
from engine.decisions.loader import RuleSet, RuleSetError, load_rules
from engine.delivery.executor import RulesDecider
from engine.delivery.webhooks import Dispatcher, WebhookTarget
from engine.http import assets, dashboard
from engine.http.cors import cors_middleware
from engine.http.errors import make_error_middleware
from engine.http.login_throttle import LoginThrottle
from engine.http.route_limits import RouteLimits
from engine.http.routes import ROUTES
from engine.http.security import IpRateLimiter
from engine.http.state import (
    CAPACITY,
    DECIDER,
    ERASER,
    GATEWAY,
    INFLIGHT,
    IP_LIMITER,
    LOGIN_THROTTLE,
    METRICS,
    MODELS,
    PROFILES,
    RULES,
    SETTINGS,
    STORE,
    VERIFIER,
)
from engine.ingest.identity import IdentityVerifier
from engine.learning.learner import Learner
from engine.models.registry import ModelRegistry
from engine.privacy.erasure import Eraser
from engine.profile.profiles import ProfileStore
from engine.valkey.janitor import StreamJanitor
from engine.valkey.store import Store

__all__ = ["build_app", "webhook_target"]


def webhook_target(w: WebhookConfig) -> WebhookTarget:
    return WebhookTarget(
        name=w.name,
        url=w.url,
        secrets=tuple(s.reveal() for s in w.secrets),
        kinds=w.kinds,
        channels=w.channels,
        timeout_s=w.timeout_s,
        max_attempts=w.max_attempts,
    )


log = logging.getLogger("ringback.app")


class InFlight:
    """Requests being handled right now, so shutdown can wait for them to finish.

    aiohttp's own graceful shutdown cut off requests whose body was still arriving
    (measured: 20 of 20 slow uploads reset on SIGTERM), so draining is explicit.
    Counted by `RequestCounter`'s middleware (one layer less on every request).
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        if self.count == 1:
            self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class RequestCounter:
    """`ringback_http_requests_total{route, status}`: every answer, by route template
    (`/v1/profiles/{customer_id}`, never the id itself: bounded label values) and
    status class (2xx, 4xx, 5xx). Outermost, so it counts the answer the client got,
    error answers included. The labelled child is bound once per pair (`.labels()`
    costs ~1 us). It also keeps `inflight`'s count: one middleware layer, not two."""

    def __init__(self, metrics: Metrics, inflight: InFlight) -> None:
        self._counter = metrics.http_requests
        self._children: dict[tuple[str, int], Any] = {}
        self._inflight = inflight

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        status = 500
        self._inflight.enter()
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self._inflight.leave()
            route = request.match_info.route.resource
            path = route.canonical if route is not None else "unmatched"
            key = (path, status // 100)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._counter.labels(path, f"{status // 100}xx")
            child.inc()


def offer_decision_key(settings: Settings) -> bytes:
    """The key of page-offer decision ids, the same in every worker and across restarts:
    derived from the config's secrets (API token hashes, per-site identity secrets)."""
    h = hashlib.blake2b(digest_size=16, person=b"rb-offer-ids")
    for token in sorted(t.sha256 for t in settings.api_tokens):
        h.update(token.encode() + b"\0")
    for key in sorted(settings.sites):
        site = settings.sites[key]
        h.update(key.encode() + b"\0" + (site.identity_secret or "").encode() + b"\0")
    return h.digest()


def load_rule_holder(path: Path, metrics: Metrics) -> Reloadable[RuleSet]:
    """Load the rule set now (a broken set at startup is a config error), reload later."""
    try:
        holder: Reloadable[RuleSet] = Reloadable(
            path,
            load_rules,
            errors=metrics.rules_load_errors,
            version=metrics.rule_set_loaded_at,
            on_loaded=lambda rs: metrics.rules_loaded.set(len(rs.rules)),
        )
    except RuleSetError as exc:
        raise ConfigError(str(path), "rules", f"rule set rejected:\n{exc}") from exc
    except OSError as exc:
        raise ConfigError(str(path), "rules", f"cannot read: {exc}") from exc
    return holder


def build_app(
    settings: Settings,
    store_url: str,
    *,
    metrics: Metrics | None = None,
    decider: Decider | None = None,
) -> web.Application:
    """Build the engine's web app for `settings`, talking to Valkey at `store_url`."""
    metrics = metrics or Metrics()
    inflight = InFlight()
    app = web.Application(
        middlewares=[
            RequestCounter(metrics, inflight).middleware,  # and the in-flight count
            cors_middleware,  # outside the error middleware: error answers get CORS too
            make_error_middleware(lambda code: metrics.rejected.labels(code).inc()),
            RouteLimits(settings).middleware,  # inside: its 429s become JSON answers
        ],
        client_max_size=max(settings.limits.max_body_bytes, 1024 * 1024),
    )
    app[INFLIGHT] = inflight
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[VERIFIER] = IdentityVerifier()
    app[DECIDER] = decider or NoDecisions()
    if settings.rules_dir is not None:
        app[RULES] = load_rule_holder(settings.rules_dir, metrics)
    app[LOGIN_THROTTLE] = LoginThrottle(
        trusted_proxies=settings.trusted_proxies,
        user_attempts=settings.limits.login_attempts_per_user,
        user_window_s=settings.limits.login_user_window_s,
        address_attempts=settings.limits.login_attempts_per_address,
        address_window_s=settings.limits.login_address_window_s,
        max_hashing=settings.limits.login_concurrent_checks,
        max_waiting=settings.limits.login_queue,
    )
    app[IP_LIMITER] = IpRateLimiter(
        settings.limits.batches_per_minute_per_ip,
        settings.trusted_proxies,
        settings.limits.limit_loopback,
    )

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = Store(
            store_url,
            metrics,
            fsync=settings.durability == "fsync",
            cluster=settings.redis_cluster,
            replica_acks=settings.replica_acks,
        )
        try:
            await store.load_library()
        except StoreUnavailable as exc:
            # Serve anyway: ingest answers 503 until Valkey is back, then the library
            # is loaded on the first call that misses it.
            log.warning("Valkey unavailable at startup (%s); serving 503 until it returns", exc)
        policy = await store.eviction_policy()
        if policy is not None and policy != "noeviction":
            log.warning(
                "Valkey's maxmemory-policy is %s: when it fills up it will evict profiles, "
                "dedupe state, open callbacks and audit dictionaries; set noeviction "
                "(ops/README.md#valkey-memory)",
                policy,
            )
        app[STORE] = store
        app[PROFILES] = ProfileStore(store, settings)
        app[ERASER] = Eraser(store, settings)
        gateway = Gateway(store, metrics=metrics, settings=settings)  # with call guides
        app[GATEWAY] = gateway
        await gateway.start()
        monitor = CapacityMonitor(store, lambda: len(gateway.sockets), metrics=metrics)
        app[CAPACITY] = monitor
        monitor.start()
        janitor = StreamJanitor(store, [w.name for w in settings.webhooks], metrics=metrics)
        janitor.start()
        models = ModelRegistry(store, metrics)
        app[MODELS] = models
        models.start()
        # Every worker competes for the learner's lease; the holder learns (no request
        # handler ever does). `[learning] learner = false` leaves it to `ringback learn`.
        learner = Learner(store, metrics) if settings.learning.learner else None
        if learner is not None:
            learner.start()
        holder = app.get(RULES)
        if holder is not None and decider is None:
            app[DECIDER] = RulesDecider(
                lambda: holder.current,
                store,
                metrics,
                app[PROFILES].classifier.category,
                capacity=lambda: monitor.current,
                offer_key=offer_decision_key(settings),
                models=lambda: models.current,
            )
            holder.start()
        dispatcher = None
        if settings.webhooks:
            dispatcher = Dispatcher(store, [webhook_target(w) for w in settings.webhooks], metrics)
            try:
                await dispatcher.start()
            except (StoreUnavailable, RedisError, OSError):
                log.warning("webhook dispatcher not started: Valkey unavailable")
                dispatcher = None
        yield
        # Rule hits still pending (counted once a second) are counted before the worker
        # exits: a stopped worker's counters stay in the multiprocess aggregate.
        flush_hits = getattr(app[DECIDER], "flush_hits", None)
        if flush_hits is not None:
            flush_hits()
        # Each step is bounded: a stuck stop must never keep a worker from exiting.
        steps = [janitor.stop(), models.stop(), monitor.stop(), gateway.stop(), app[ERASER].close()]
        if learner is not None:
            steps.append(learner.stop())
        if dispatcher is not None:
            steps.insert(0, dispatcher.stop())
        if holder is not None:
            steps.append(holder.stop())
        steps.append(store.close())
        for step in steps:
            try:
                await asyncio.wait_for(step, 5.0)
            except TimeoutError:
                log.error("shutdown step %s took over 5 s; moving on", step)

    app.cleanup_ctx.append(store_ctx)
    add_routes(app)
    return app


def add_routes(app: web.Application) -> None:
    """Register every route of the table (engine/http/routes.py), and the state its
    handlers read that is set before the app starts."""
    dashboard.add_state(app)
    assets.add_asset_state(app)
    for route in ROUTES:
        if route.method == "GET":
            app.router.add_get(route.path, route.handler)  # and HEAD, as aiohttp does
        else:
            app.router.add_route(route.method, route.path, route.handler)
