"""Agent sign-in and request authentication for the contact-center API.

Agents sign in with credentials from config (scrypt hashes). A session is a random
id in an HttpOnly, SameSite=Strict cookie, stored in Valkey (any worker can serve
the agent) with an expiry; its CSRF token is returned at sign-in and must come back
in `X-CSRF-Token` on every state-changing call. Bank systems use API tokens
(`Authorization: Bearer`) instead; they need no CSRF token (no ambient credentials).

Sign-in is throttled per user name and per client address (engine.http.login_throttle)
before any hashing, and the scrypt check runs in a thread: a flood of guesses must
neither find passwords nor stall the event loop every other request shares. The
cookie is Secure when the browser is on https, told by our TLS or a trusted proxy.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

import msgspec
import orjson
from aiohttp import web

from engine.core.errors import Forbidden, Unauthorized
from engine.core.settings import Agent, verify_password
from engine.http.errors import json_response
from engine.http.login_throttle import LoginThrottle
from engine.http.security import TrustedProxies
from engine.http.state import LOGIN_THROTTLE, SETTINGS, STORE
from engine.ingest.bodies import read_typed_body
from engine.valkey import keys
from engine.valkey.store import Store

__all__ = [
    "LoginBody",
    "Principal",
    "authenticate",
    "handle_login",
    "handle_logout",
    "handle_me",
    "is_https",
]

SESSION_COOKIE = "rb_session"
SESSION_TTL_S = 12 * 3600  # one shift


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/agents/login`."""

    user: Annotated[str, msgspec.Meta(max_length=256)]
    password: Annotated[str, msgspec.Meta(max_length=1024)]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an agent (session) or a bank system (API token)."""

    name: str
    role: str  # "agent" | "supervisor" | "system"
    via: str  # "session" | "token"


def _session_key(session_id: str) -> str:
    return keys.agent_session(session_id)


async def _load_session(store: Store, session_id: str) -> dict[str, str] | None:
    raw = await store.call("GET", _session_key(session_id))
    return None if raw is None else orjson.loads(raw)


async def authenticate(request: web.Request, *, state_changing: bool = False) -> Principal:
    """Bearer API token, or agent session cookie (+ CSRF token when changing state)."""
    settings = request.app[SETTINGS]
    header = request.headers.get("Authorization")
    if header:
        from engine.http.security import require_api_token

        return Principal(require_api_token(settings, request), "system", "token")
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        raise Unauthorized("missing_credentials", "sign in or send an API token")
    session = await _load_session(request.app[STORE], session_id)
    if session is None:
        raise Unauthorized("invalid_credentials", "session expired; sign in again")
    if state_changing:
        sent = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent, session["csrf"]):
            raise Forbidden("csrf_failed", "missing or wrong X-CSRF-Token")
    return Principal(session["user"], session["role"], "session")


async def handle_login(request: web.Request) -> web.Response:
    """Sign an agent in: throttle first, then check the password off the event loop."""
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    body = await read_typed_body(
        request, LoginBody, "invalid_login", settings.limits.max_body_bytes, "invalid_login"
    )
    user, password = body.user, body.password
    throttle = _throttle(request)
    attempt = await throttle.begin(store, request, user)  # 429 here costs no scrypt time
    agent = next((a for a in settings.agents if a.user == user), None)
    # scrypt takes ~50-100 ms of CPU: in a thread, so other requests keep being served.
    async with throttle.hashing_slot():
        ok = await asyncio.to_thread(_password_matches, password, agent)
    if not ok or agent is None:
        raise Unauthorized("invalid_credentials", "wrong user or password")
    await throttle.succeeded(store, attempt)
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    session = {
        "user": agent.user,
        "role": agent.role,
        "csrf": csrf,
        "created_ms": int(time.time() * 1000),
    }
    await store.call(
        "SET", _session_key(session_id), orjson.dumps(session), "EX", SESSION_TTL_S, writes=True
    )
    resp = json_response({"user": agent.user, "role": agent.role, "csrf_token": csrf})
    resp.set_cookie(
        SESSION_COOKIE,
        session_id,
        httponly=True,
        samesite="Strict",
        secure=is_https(request, settings.trusted_proxies),
        max_age=SESSION_TTL_S,
        path="/",
    )
    return resp


def _throttle(request: web.Request) -> LoginThrottle:
    """The app's throttle, or one with default limits (it keeps no state of its own)."""
    throttle = request.app.get(LOGIN_THROTTLE)
    if throttle is None:
        throttle = LoginThrottle(trusted_proxies=request.app[SETTINGS].trusted_proxies)
    return throttle


def _password_matches(password: str, agent: Agent | None) -> bool:
    """Runs in a worker thread. Unknown users are checked against a dummy hash, so the
    answer takes as long either way: no timing oracle for user names."""
    stored = agent.password_hash if agent else settings_dummy_hash()
    return verify_password(password, stored)


def is_https(request: web.Request, trusted_proxies: tuple[str, ...]) -> bool:
    """Whether the client reached us over https: our own TLS, or a trusted proxy's
    `X-Forwarded-Proto`. Anyone else's claim is ignored: a Secure cookie set over
    plain http is dropped by the browser, so believing it would break sign-in."""
    if request.secure:
        return True
    trusted = TrustedProxies(trusted_proxies)
    if not trusted.networks or (request.remote or "") not in trusted:
        return False
    # Proxies append: "https, http" is a client's https edge proxy in front of
    # an http hop. The edge (left-most) is what the browser sees.
    protos = [p.strip().lower() for p in request.headers.get("X-Forwarded-Proto", "").split(",")]
    return bool(protos) and protos[0] == "https"


async def handle_logout(request: web.Request) -> web.Response:
    await authenticate(request, state_changing=True)
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        await request.app[STORE].call("DEL", _session_key(session_id), writes=True)
    resp = json_response({"signed_out": True})
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


async def handle_me(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    body: dict[str, str] = {"user": principal.name, "role": principal.role}
    session_id = request.cookies.get(SESSION_COOKIE)
    if principal.via == "session" and session_id:
        session = await _load_session(request.app[STORE], session_id)
        if session:
            body["csrf_token"] = session["csrf"]  # so a reloaded page can act again
    return json_response(body)


@functools.cache
def settings_dummy_hash() -> str:
    """A hash nobody knows the password of, computed once."""
    from engine.core.settings import hash_password

    return hash_password(secrets.token_urlsafe(16))
