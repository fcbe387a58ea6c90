"""Login throttling per user name and per client address, shared by all workers.

Password guessing is cheap for the guesser and dear for us (each guess is an scrypt
hash, ~50-100 ms of CPU), so attempts are counted BEFORE hashing and a caller over
the limit gets 429 + Retry-After without costing any scrypt time.

Two fixed windows, both in Valkey so every worker sees the same counts:
- per user name (default 10 attempts per 15 min): stops guessing one agent's
  password from many addresses. A successful sign-in clears it, so an agent who
  mistyped a few times is not locked out later. The cost: anyone can lock an agent
  out for one window by guessing wrong; that is the usual trade, and a lock-out is
  noisy where silent guessing is not.
- per client address (default 30 attempts per minute): stops one address from
  guessing many user names. A successful sign-in gives its attempt back, so a
  call center behind one NAT address can start a shift.

An attempt is counted when it starts (INCR, then compare), not when it fails, so
a burst of concurrent guesses cannot all slip past the check before the first one
finishes hashing. Loopback is NOT exempt (unlike the ingest flood guard): behind a
local proxy every caller is loopback, and exempting it would exempt everyone. The
address is the one `engine.http.security.client_ip` trusts (X-Forwarded-For only from
a configured trusted proxy); IPv6 addresses count per /64, the block one
subscriber gets, so rotating through it buys nothing.

Hashing itself is bounded too: at most `max_hashing` scrypt runs at once per worker
(each in a thread, never on the loop), and past `max_waiting` callers queued for one,
the answer is 429 at once: a flood of distinct user names from distinct addresses
costs us a bounded amount of CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from engine.core.errors import RateLimited
from engine.http.security import TrustedProxies, client_ip
from engine.valkey.keys import login_address_key, login_user_key
from engine.valkey.store import Store

__all__ = ["LoginAttempt", "LoginThrottle"]

# A guarded DECR: give back an address attempt, but never create a key without a
# TTL if the window ended while the password was being checked.
_GIVE_BACK = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end return 0"
)


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """One counted attempt: the keys it was counted under, to settle it afterwards."""

    user_key: str
    address_key: str


class LoginThrottle:
    """Counts sign-in attempts in Valkey and refuses callers over their limit.

    Parameters (defaults in brackets):
        trusted_proxies      networks whose X-Forwarded-For is believed [()]
        user_attempts        attempts per user name per user window [10]
        user_window_s        the user window [900, 15 min]
        address_attempts     attempts per client address per address window [30]
        address_window_s     the address window [60]
        max_hashing          password checks running at once in this worker [2]
        max_waiting          callers queued for one before 429 [32]
    """

    def __init__(
        self,
        *,
        trusted_proxies: tuple[str, ...] = (),
        user_attempts: int = 10,
        user_window_s: int = 900,
        address_attempts: int = 30,
        address_window_s: int = 60,
        max_hashing: int = 2,
        max_waiting: int = 32,
    ) -> None:
        self.trusted = TrustedProxies(trusted_proxies)
        self._hashing = asyncio.Semaphore(max_hashing)
        self._waiting = 0
        self._max_waiting = max_waiting
        self.user_attempts = user_attempts
        self.user_window_s = user_window_s
        self.address_attempts = address_attempts
        self.address_window_s = address_window_s

    async def begin(self, store: Store, request: web.Request, user: str) -> LoginAttempt:
        """Count this attempt; raise RateLimited (before any hashing) if over a limit."""
        attempt = LoginAttempt(login_user_key(user), login_address_key(self._address(request)))
        # Queued in one loop tick, so the store sends them as one pipeline. SET NX EX
        # starts a window (and its TTL) only if none is open; INCR keeps the TTL.
        u, a = attempt.user_key, attempt.address_key
        futures = [
            store.call("SET", u, 0, "EX", self.user_window_s, "NX", writes=True),
            store.call("INCR", u, writes=True),
            store.call("PTTL", u),
            store.call("SET", a, 0, "EX", self.address_window_s, "NX", writes=True),
            store.call("INCR", a, writes=True),
            store.call("PTTL", a),
        ]
        results = await asyncio.gather(*futures)
        user_count, user_ttl_ms = int(results[1]), int(results[2])
        address_count, address_ttl_ms = int(results[4]), int(results[5])
        waits_ms: list[int] = []
        if user_count > self.user_attempts:
            waits_ms.append(_ttl_or(user_ttl_ms, self.user_window_s))
        if address_count > self.address_attempts:
            waits_ms.append(_ttl_or(address_ttl_ms, self.address_window_s))
        if waits_ms:
            raise RateLimited(
                "too many sign-in attempts; try again later",
                retry_after_s=math.ceil(max(waits_ms) / 1000),
            )
        return attempt

    async def succeeded(self, store: Store, attempt: LoginAttempt) -> None:
        """A right password: forget the user's failures, give the address its attempt back."""
        await store.call("DEL", attempt.user_key, writes=True)
        await store.call("EVAL", _GIVE_BACK, 1, attempt.address_key, writes=True)

    @property
    def waiting(self) -> int:
        """Sign-ins queued for a password-check slot right now."""
        return self._waiting

    @contextlib.asynccontextmanager
    async def hashing_slot(self) -> AsyncIterator[None]:
        """Hold one of the worker's password-check slots; 429 if too many wait."""
        if self._hashing.locked() and self._waiting >= self._max_waiting:
            raise RateLimited("sign-in is busy; try again shortly", retry_after_s=1)
        self._waiting += 1
        try:
            await self._hashing.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._hashing.release()

    def _address(self, request: web.Request) -> str:
        return address_group(client_ip(request, self.trusted) or "unknown")


def address_group(ip: str) -> str:
    """What one caller controls: an IPv4 address, or an IPv6 /64.

    >>> address_group("203.0.113.9"), address_group("2001:db8:1:2:aaaa::1")
    ('203.0.113.9', '2001:db8:1:2::/64')
    >>> address_group("::ffff:203.0.113.9"), address_group("unknown")
    ('203.0.113.9', 'unknown')
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return ip


def _ttl_or(ttl_ms: int, window_s: int) -> int:
    """PTTL is -2 (gone) or -1 (no TTL) only in races; then assume a whole window."""
    return ttl_ms if ttl_ms > 0 else window_s * 1000
