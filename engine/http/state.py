"""Typed application state (`web.AppKey`): what handlers may reach, and nothing else.

Every key lives here, so this file is the list of what a request can touch. Types of
state defined by modules that themselves import this one are named for the type
checker only (no import cycle at run time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from engine.contact_center.capacity import CapacityMonitor
from engine.contact_center.gateway import Gateway
from engine.core.metrics import Metrics
from engine.core.reloader import Reloadable
from engine.core.settings import Settings
from engine.decisions.inputs import Decider
from engine.http.login_throttle import LoginThrottle
from engine.http.security import IpRateLimiter
from engine.ingest.identity import IdentityVerifier
from engine.models.registry import ModelRegistry
from engine.privacy.erasure import Eraser
from engine.profile.profiles import ProfileStore
from engine.valkey.store import Store

if TYPE_CHECKING:
    from engine.http.app import InFlight
    from engine.http.assets import DemoSite, SdkAsset
    from engine.http.dashboard import FunnelCache

__all__ = [
    "CAPACITY",
    "DECIDER",
    "DEMO",
    "ERASER",
    "FUNNEL_CACHE",
    "GATEWAY",
    "INFLIGHT",
    "IP_LIMITER",
    "LOGIN_THROTTLE",
    "METRICS",
    "METRICS_LISTENER",
    "MODELS",
    "PROFILES",
    "RULES",
    "SDK",
    "SETTINGS",
    "STORE",
    "VERIFIER",
]

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
PROFILES = web.AppKey("profiles", ProfileStore)
ERASER = web.AppKey("eraser", Eraser)
VERIFIER = web.AppKey("verifier", IdentityVerifier)
DECIDER = web.AppKey("decider", Decider)
RULES = web.AppKey("rules", Reloadable)
IP_LIMITER = web.AppKey("ip_limiter", IpRateLimiter)
LOGIN_THROTTLE = web.AppKey("login_throttle", LoginThrottle)
CAPACITY = web.AppKey("capacity", CapacityMonitor)
GATEWAY = web.AppKey("gateway", Gateway)
MODELS = web.AppKey("models", ModelRegistry)  # published model snapshots, polled
METRICS_LISTENER = web.AppKey("metrics_listener", bool)  # /metrics has its own listener
INFLIGHT: web.AppKey[InFlight] = web.AppKey("inflight")
SDK: web.AppKey[SdkAsset] = web.AppKey("sdk_asset")
DEMO: web.AppKey[DemoSite] = web.AppKey("demo_site")
FUNNEL_CACHE: web.AppKey[FunnelCache] = web.AppKey("funnel_cache")
