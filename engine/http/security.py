"""Request-level security: origins and CORS, API tokens, client IPs, IP rate limits.

Origins: a browser always sends `Origin` on a cross-origin POST; if it names an
origin the site did not allow, the batch is refused (403). `self` in a site's
allowed origins stands for the engine's own origin (the built-in /demo page): the
configured `server.public_url`, or else the address the connection reached. Never
the `Host` header: a DNS-rebinding page (evil.example resolving to the engine's IP)
sends `Host: evil.example:8080` and `Origin: http://evil.example:8080`, which match.
Requests without `Origin` (server-to-server) are accepted: origin checks protect
against other web pages, and identity is proven by signed tokens, not by headers.

Client IPs come from X-Forwarded-For only when the direct peer is a configured
trusted proxy; otherwise a client could pick its own IP and dodge its limit.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time

from aiohttp import web

from engine.core.errors import Forbidden, RateLimited, Unauthorized
from engine.core.settings import Settings, SiteConfig

__all__ = [
    "IpRateLimiter",
    "check_origin",
    "client_ip",
    "cors_headers",
    "is_loopback_host",
    "is_own_origin",
    "require_api_token",
    "require_bearer",
    "self_origins",
]

log = logging.getLogger("ringback.security")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def self_origins(settings: Settings, request: web.Request) -> tuple[str, ...]:
    """The origins `self` stands for: `public_url`, or else the address this connection
    reached (`http://<local ip>:<port>`, plus `http://localhost:<port>` on loopback).

    The local address is the engine's own socket, which no client can choose; with a
    DNS name, a TLS proxy or a port map in front, set `server.public_url`.
    """
    if settings.public_url:
        return (settings.public_url,)
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname or not isinstance(sockname, tuple):
        return ()
    ip, port = str(sockname[0]), int(sockname[1])
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ()
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    scheme = request.scheme
    suffix = "" if port == (443 if scheme == "https" else 80) else f":{port}"
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    origins = [f"{scheme}://{host}{suffix}"]
    if addr.is_loopback:
        origins.append(f"{scheme}://localhost{suffix}")
    return tuple(origins)


def is_own_origin(settings: Settings, origin: str, request: web.Request) -> bool:
    """Is `origin` the engine's own (same-origin pages: /demo, the dashboard's socket)?"""
    return origin in self_origins(settings, request)


def _settings(request: web.Request) -> Settings:
    from engine.http.state import SETTINGS  # appkeys imports this module

    return request.app[SETTINGS]


def origin_allowed(site: SiteConfig, origin: str, request: web.Request) -> bool:
    for allowed in site.allowed_origins:
        if allowed == origin:
            return True
        if allowed == "self" and is_own_origin(_settings(request), origin, request):
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


def require_bearer(request: web.Request, secret: str, what: str) -> None:
    """Check `Authorization: Bearer <secret>` in constant time (401 otherwise)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized(
            "missing_credentials", f"{what} needs a token (Authorization: Bearer <token>)"
        )
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("invalid_credentials", "use Authorization: Bearer <token>")
    if not hmac.compare_digest(token.strip().encode(), secret.encode()):
        raise Unauthorized("invalid_credentials", f"token not recognised for {what}")


def is_loopback_host(host: str) -> bool:
    """Does binding `host` keep the port on this machine (127.0.0.0/8, ::1, localhost)?"""
    return host == "localhost" or is_loopback(host)


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


_FORWARDED_HEADERS = frozenset({"X-Forwarded-For", "Forwarded", "X-Real-IP"})


def _loopback(ip: str) -> bool:
    """`is_loopback` without parsing: this runs on every request.

    >>> _loopback("127.0.0.1"), _loopback("::1"), _loopback("::ffff:127.0.0.2")
    (True, True, True)
    >>> _loopback("10.0.0.1"), _loopback("1270::1")
    (False, False)
    """
    return ip.startswith(("127.", "::ffff:127.")) or ip == "::1"


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
        self._warned = False

    def _warn_untrusted_proxy(self, ip: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "requests from %s carry X-Forwarded-For but it is not in trusted_proxies: "
                "per-address limits count every client behind it as one; add the proxy to "
                "trusted_proxies",
                ip,
            )

    def check(self, request: web.Request, now_s: float | None = None) -> None:
        now_s = time.time() if now_s is None else now_s
        ip = client_ip(request, self.trusted)
        if not self.limit_loopback and _loopback(ip):
            if not _FORWARDED_HEADERS & request.headers.keys():
                return  # the machine itself (tests, a local tool): not a stranger
            # A local reverse proxy that is not in trusted_proxies: every client looks
            # like 127.0.0.1. Exempting that would exempt everyone, so they share its
            # budget, and the operator is told how to tell them apart.
            self._warn_untrusted_proxy(ip)
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
