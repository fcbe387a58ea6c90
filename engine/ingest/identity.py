"""Identity tokens: who a visitor is, proven by the bank, never claimed by the browser.

The bank's backend mints a JWT (`sub` = customer id, `aud` = site, `exp`, `iat`) with
its private key (ES256/RS256: the engine only holds public keys) or, for the demo, an
HS256 per-site secret. We verify with PyJWT against the site's algorithm allow-list,
so an unsigned (`alg: none`), expired, other-site or forged token never links a
profile. A token may also not claim a longer life than the site allows
(`identity.max_lifetime_s`, default 24 h, checked as `exp - iat` and as `exp - now`):
a leaked token valid for a century would otherwise link whoever holds it for ever.
Verified tokens are cached until they expire: the snippet sends the same token with
every batch and an ES256 verification costs ~100 µs.

>>> tok = mint_token("s3cret-s3cret-s3cret-s3cret-s3cret", "demo-bank", "c-42", ttl_s=60)
>>> isinstance(tok, str)
True
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from typing import Any

import jwt

from engine.core.errors import BadRequest, Forbidden, Unauthorized
from engine.core.settings import SiteConfig

__all__ = ["CUSTOMER_ID_RE", "IdentityVerifier", "mint_token"]

# Customer ids become part of Valkey hash tags: no braces, no spaces, bounded.
CUSTOMER_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_LEEWAY_S = 30


def customer_id_from_path(request: Any) -> str:
    """The `{customer_id}` of a route, validated like a token subject (400 otherwise)."""
    customer_id = str(request.match_info["customer_id"])
    if not CUSTOMER_ID_RE.match(customer_id):
        raise BadRequest(
            "invalid_customer_id",
            "customer ids are 1-128 letters, digits, '_', '.', ':' or '-'",
            "$.customer_id",
        )
    return customer_id


def mint_token(secret: str, site: str, customer_id: str, ttl_s: int = 3600) -> str:
    """Mint an HS256 identity token the way a bank backend would (demo and tests)."""
    now = int(time.time())
    claims = {"sub": customer_id, "aud": site, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")


class IdentityVerifier:
    """Verify identity tokens for a site; a small LRU remembers recent good ones."""

    def __init__(self, cache_size: int = 10_000) -> None:
        self._cache: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, site: SiteConfig, token: str, now_s: float | None = None) -> str:
        """Return the customer id, or raise Unauthorized/Forbidden with a stable code."""
        now_s = time.time() if now_s is None else now_s
        key = (site.key, token)
        hit = self._cache.get(key)
        if hit is not None:
            customer_id, exp = hit
            if now_s < exp + _LEEWAY_S:
                self._cache.move_to_end(key)
                return customer_id
            del self._cache[key]
        customer_id, exp = self._decode(site, token, now_s)
        self._cache[key] = (customer_id, exp)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return customer_id

    def _decode(self, site: SiteConfig, token: str, now_s: float) -> tuple[str, float]:
        algorithms = list(site.identity.algorithms)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(
                "invalid_identity", f"identity token is malformed: {exc}", "$.identity"
            ) from exc
        alg = header.get("alg")
        if alg not in algorithms:
            raise Unauthorized(
                "invalid_identity",
                f"identity token algorithm {alg!r} is not allowed for this site",
                "$.identity",
            )
        key = site.identity_secret if str(alg).startswith("HS") else site.identity.public_key
        if not key:
            raise Unauthorized(
                "invalid_identity", "no key configured for this algorithm", "$.identity"
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=site.key,
                leeway=_LEEWAY_S,
                # Expiry is checked below against `now_s`, not PyJWT's own clock, so
                # `rules test` can verify a recording's tokens at the recorded time.
                options={"require": ["exp", "iat", "sub", "aud"], "verify_exp": False},
            )
        except jwt.InvalidAudienceError as exc:
            raise Forbidden(
                "identity_site_mismatch", "identity token was issued for another site", "$.identity"
            ) from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(
                "invalid_identity", f"identity token rejected: {exc}", "$.identity"
            ) from exc
        _check_expiry(claims, now_s)
        _check_lifetime(site, claims, now_s)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not CUSTOMER_ID_RE.match(sub):
            raise Unauthorized(
                "invalid_identity",
                "identity token subject must be a customer id of 1-128 "
                "letters, digits, '_', '.', ':' or '-'",
                "$.identity",
            )
        return sub, float(claims["exp"])


def _check_expiry(claims: dict[str, Any], now_s: float) -> None:
    """PyJWT's expiry check (integer `exp`, expired once `exp <= now - leeway`) at `now_s`."""
    try:
        exp = int(claims["exp"])
    except (TypeError, ValueError) as exc:
        raise Unauthorized(
            "invalid_identity",
            "identity token rejected: Expiration Time claim (exp) must be an integer.",
            "$.identity",
        ) from exc
    if exp <= now_s - _LEEWAY_S:
        raise Unauthorized("identity_expired", "identity token has expired", "$.identity")


def _check_lifetime(site: SiteConfig, claims: dict[str, Any], now_s: float) -> None:
    """Refuse tokens that claim more life than the site allows (PyJWT checked the types)."""
    max_s = site.identity.max_lifetime_s
    exp = float(claims["exp"])
    lifetime_s = max(exp - float(claims["iat"]), exp - now_s - _LEEWAY_S)
    if lifetime_s > max_s:
        raise Unauthorized(
            "invalid_identity",
            f"identity token lifetime of {int(lifetime_s)} s exceeds this site's maximum "
            f"of {max_s} s (identity.max_lifetime_s); mint shorter-lived tokens",
            "$.identity",
        )
