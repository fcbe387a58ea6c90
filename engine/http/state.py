"""Typed application state (`web.AppKey`): what handlers may reach, and nothing else."""

from __future__ import annotations

from aiohttp import web

from engine.contact_center.capacity import CapacityMonitor
from engine.contact_center.gateway import Gateway
from engine.core.metrics import Metrics
from engine.core.settings import Settings
from engine.decisions.inputs import Decider
from engine.http.security import IpRateLimiter
from engine.ingest.identity import IdentityVerifier
from engine.privacy.erasure import Eraser
from engine.profile.profiles import ProfileStore
from engine.valkey.store import Store

__all__ = [
    "CAPACITY",
    "DECIDER",
    "ERASER",
    "GATEWAY",
    "IP_LIMITER",
    "METRICS",
    "PROFILES",
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
IP_LIMITER = web.AppKey("ip_limiter", IpRateLimiter)
CAPACITY = web.AppKey("capacity", CapacityMonitor)
GATEWAY = web.AppKey("gateway", Gateway)
