"""Typed application state (`web.AppKey`): what handlers may reach, and nothing else."""

from __future__ import annotations

from aiohttp import web

from engine.capacity import CapacityMonitor
from engine.decide import Decider
from engine.identity import IdentityVerifier
from engine.metrics import Metrics
from engine.profile import ProfileStore
from engine.security import IpRateLimiter
from engine.settings import Settings
from engine.store import Store

__all__ = [
    "CAPACITY",
    "DECIDER",
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
VERIFIER = web.AppKey("verifier", IdentityVerifier)
DECIDER = web.AppKey("decider", Decider)
IP_LIMITER = web.AppKey("ip_limiter", IpRateLimiter)
CAPACITY = web.AppKey("capacity", CapacityMonitor)
