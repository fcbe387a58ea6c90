"""Request-level security: origins and CORS, API tokens, client IPs, IP rate limits.

Origins: a browser always sends `Origin` on a cross-origin POST; if it names an
origin the site did not allow, the batch is refused (403). `self` in a site's
allowed origins stands for the engine's own origin (the built-in /demo page).
Requests without `Origin` (server-to-server) are accepted: origin checks protect
against other web pages, and identity is proven by signed tokens, not by headers.

Client IPs come from X-Forwarded-For only when the direct peer is a configured
trusted proxy; otherwise a client could pick its own IP and dodge its limit.
"""

from __future__ import annotations

import ipaddress
import time

from aiohttp import web

from engine.errors import Forbidden, RateLimited, Unauthorized
from engine.settings import Settings, SiteConfig

__all__ = [
    "IpRateLimiter",
    "check_origin",
    "client_ip",
    "cors_headers",
    "require_api_token",
]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def origin_allowed(site: SiteConfig, origin: str, request: web.Request) -> bool:
    for allowed in site.allowed_origins:
        if allowed == origin or (allowed == "self" and origin == own_origin(request)):
            return True
    return False


def check_origin(site: SiteConfig, request: web.Request) -> str | None:
    """Return the Origin to echo in CORS headers, or raise 403 if it is not allowed."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if not origin_allowed(site, origin, request):
        raise Forbidden(
            "origin_not_allowed", f"origin {origin!r} may not send to this site", "$.site"
        )
    return origin


def cors_headers(origin: str | None) -> dict[str, str]:
    if origin is None:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        "Access-Control-Expose-Headers": "Retry-After",
    }


def preflight_origin_allowed(settings: Settings, request: web.Request) -> str | None:
    """A preflight does not say which site it is for: allow origins of any site."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    for site in settings.sites.values():
        if origin_allowed(site, origin, request):
            return origin
    return None


def require_api_token(settings: Settings, request: web.Request) -> str:
    """Check `Authorization: Bearer <token>`; return the token's name."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized(
            "missing_credentials",
            "this endpoint needs an API token (Authorization: Bearer <token>)",
        )
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("invalid_credentials", "use Authorization: Bearer <token>")
    for candidate in settings.api_tokens:
        if candidate.matches(token.strip()):
            return candidate.name
    raise Unauthorized("invalid_credentials", "API token not recognised")


class TrustedProxies:
    def __init__(self, specs: tuple[str, ...]) -> None:
        self.networks: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(s, strict=False) for s in specs
        )

    def __contains__(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)


def client_ip(request: web.Request, trusted: TrustedProxies) -> str:
    """The client's IP: the peer, or the right-most untrusted X-Forwarded-For hop."""
    peer = request.remote or ""
    if not trusted.networks or peer not in trusted:
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return peer


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class IpRateLimiter:
    """Fixed one-minute windows per client IP, in this worker's memory.

    Per worker on purpose: it is a flood guard in front of Valkey, checked before any
    round trip. The per-visitor limit, which must hold across workers, lives in Valkey
    (inside rb_ingest). With W workers an IP can send up to W x the limit.
    """

    def __init__(
        self,
        per_minute: int,
        trusted_proxies: tuple[str, ...],
        limit_loopback: bool,
        max_tracked: int = 100_000,
    ) -> None:
        self.per_minute = per_minute
        self.trusted = TrustedProxies(trusted_proxies)
        self.limit_loopback = limit_loopback
        self._window = -1
        self._counts: dict[str, int] = {}
        self._max_tracked = max_tracked

    def check(self, request: web.Request, now_s: float | None = None) -> None:
        now_s = time.time() if now_s is None else now_s
        ip = client_ip(request, self.trusted)
        if not self.limit_loopback and is_loopback(ip):
            return
        window = int(now_s // 60)
        if window != self._window or len(self._counts) > self._max_tracked:
            self._window = window
            self._counts = {}
        count = self._counts.get(ip, 0) + 1
        self._counts[ip] = count
        if count > self.per_minute:
            raise RateLimited(
                "too many requests from this address", retry_after_s=int(60 - now_s % 60) + 1
            )
