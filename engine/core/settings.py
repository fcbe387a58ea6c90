"""Configuration: read once, into frozen objects, passed explicitly.

One TOML file holds sites, API tokens, agents, limits and profile tuning. This is
the only module that reads environment variables (`REDIS_URL`). Every error names
the file and the key, so an operator never has to guess which line is wrong.

With the built-in demo config, secrets are generated on first start into
`<data-dir>/demo-credentials.json` (mode 0600) and reused afterwards; nothing
secret is hard-coded anywhere.

Secrets never print: every config object that holds one shows `'***'` in its repr
(a `Settings` dumped into a log or a traceback leaks nothing), and `serve` prints
where the credentials file is, not what it holds.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from fnmatch import translate
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from engine.core.errors import ConfigError

__all__ = [
    "DEMO_CREDENTIALS_FILE",
    "ApiToken",
    "Limits",
    "MetricsConfig",
    "ProfileTuning",
    "Secret",
    "Settings",
    "SiteConfig",
    "load_settings",
]

DEMO_CREDENTIALS_FILE = "demo-credentials.json"
SITE_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MASK = "'***'"
# An identity token older-to-newer than this is refused unless the site allows more:
# a leaked long-lived token would link a profile for as long as it claims to be valid.
DEFAULT_MAX_TOKEN_LIFETIME_S = 86400


class Secret:
    """A string that does not print itself (logs, reprs, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return MASK

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


def _redacted_repr(obj: Any, redact: dict[str, Callable[[Any], str]]) -> str:
    """A dataclass repr with some fields shown through `redact` (by field name)."""
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        shown = redact[f.name](value) if f.name in redact else repr(value)
        parts.append(f"{f.name}={shown}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def _mask(_value: Any) -> str:
    return MASK


def _url_without_password(url: str) -> str:
    """`redis://user:pw@host` -> `redis://user:***@host` (a store URL may carry a password)."""
    return repr(re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url))


class Credentials(dict[str, str]):
    """The demo's generated credentials: a plain dict whose repr shows only the user."""

    def __repr__(self) -> str:
        return repr({k: (v if k == "agent_user" else "***") for k, v in self.items()})

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """How a site's identity tokens are verified: an algorithm allow-list and its keys."""

    algorithms: tuple[str, ...]
    secret: Secret | None = None  # HS256 (demo, or banks that prefer shared secrets)
    public_key: str | None = None  # PEM, for ES256/RS256: the engine never holds the private key
    # Longest lifetime a token may claim (exp - iat, and exp - now): longer ones are refused.
    max_lifetime_s: int = DEFAULT_MAX_TOKEN_LIFETIME_S


@dataclass(frozen=True, slots=True)
class SiteConfig:
    key: str
    allowed_origins: tuple[str, ...]
    consent: Literal["required", "implied"]
    honor_gpc: bool
    identity: IdentityConfig
    demo: bool = False

    @property
    def identity_secret(self) -> str | None:
        s = self.identity.secret
        return s.reveal() if s else None


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An API token, stored as its SHA-256 so config files need not hold the token."""

    name: str
    sha256: str

    def __repr__(self) -> str:
        return _redacted_repr(self, {"sha256": _mask})

    def matches(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode()).hexdigest()
        return hmac.compare_digest(digest, self.sha256)


@dataclass(frozen=True, slots=True)
class Agent:
    user: str
    password_hash: str  # scrypt$<salt hex>$<hash hex>
    role: Literal["agent", "supervisor"] = "agent"

    def __repr__(self) -> str:
        return _redacted_repr(self, {"password_hash": _mask})


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """A webhook target; secrets are Standard Webhooks `whsec_` keys (several = rotation)."""

    name: str
    url: str
    secrets: tuple[Secret, ...]
    kinds: tuple[str, ...] = ("callback", "notify")
    channels: tuple[str, ...] = ()  # empty: every channel
    timeout_s: float = 5.0
    max_attempts: int = 8


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Who may read /metrics, and where.

    `token`: when set, every /metrics answer needs `Authorization: Bearer <token>`.
    `port`: when set, /metrics is served only on `host:port` (an internal interface),
    no longer on the main port. Without either, /metrics is open only while the engine
    binds a loopback address; on any other bind it is refused (403 `metrics_closed`).
    """

    token: Secret | None = None
    host: str = "127.0.0.1"
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 65536
    max_events_per_batch: int = 100
    max_event_age_s: int = 7 * 86400
    max_event_future_s: int = 600
    batches_per_minute_per_visitor: int = 240
    batches_per_minute_per_ip: int = 1200
    limit_loopback: bool = False
    # Agent sign-in, counted in Valkey before any password is hashed (login_throttle.py).
    login_attempts_per_user: int = 10
    login_user_window_s: int = 900
    login_attempts_per_address: int = 30
    login_address_window_s: int = 60
    login_concurrent_checks: int = 2  # scrypt runs at once per worker (in threads)
    login_queue: int = 32  # sign-ins waiting for one before 429


@dataclass(frozen=True, slots=True)
class ProfileTuning:
    anonymous_ttl_s: int = 30 * 86400
    dedupe_window_s: int = 25 * 3600
    intent_half_life_s: int = 86400
    session_gap_s: int = 1800
    presence_ttl_s: int = 45


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the engine needs to know, resolved and validated."""

    source: str
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    # The origin `self` means in a site's allowed_origins (scheme://host[:port]). Empty:
    # the address the connection reached (see engine.http.security.self_origins), never the
    # Host header, which any client (or a DNS-rebinding page) picks.
    public_url: str = ""
    workers: int = 1
    trusted_proxies: tuple[str, ...] = ()
    shutdown_timeout_s: float = 10.0
    redis_url: str = ""
    durability: Literal["aof", "fsync"] = "aof"
    rules_dir: Path | None = None
    sites: dict[str, SiteConfig] = field(default_factory=dict)
    api_tokens: tuple[ApiToken, ...] = ()
    agents: tuple[Agent, ...] = ()
    limits: Limits = field(default_factory=Limits)
    profile: ProfileTuning = field(default_factory=ProfileTuning)
    intent_weights: dict[str, float] = field(default_factory=dict)
    # (category, compiled pattern) in priority order.
    categories: tuple[tuple[str, re.Pattern[str]], ...] = ()
    demo_credentials: dict[str, str] | None = None
    webhooks: tuple[WebhookConfig, ...] = ()
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __repr__(self) -> str:
        # demo_credentials is a Credentials (masked repr); secrets in sites/webhooks are
        # Secret; a store URL may carry a password.
        return _redacted_repr(self, {"redis_url": _url_without_password})

    @property
    def embedded_store(self) -> bool:
        return not self.redis_url


def hash_password(password: str, salt: bytes | None = None) -> str:
    """scrypt, so a leaked config does not leak agent passwords."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), n=2**14, r=8, p=1)
    return hmac.compare_digest(digest.hex(), digest_hex)


class _Reader:
    """Typed access to a TOML table that names the file and key in every error."""

    def __init__(self, source: str, table: dict[str, Any], prefix: str = "") -> None:
        self.source = source
        self.table = table
        self.prefix = prefix

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source, self._key(name), message)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if name not in self.table:
            return default
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool) and kind is not bool and bool not in _as_tuple(kind):
            raise self.fail(name, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(name, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def positive_int(self, name: str, default: int) -> int:
        value = self.get(name, int, default)
        if value <= 0:
            raise self.fail(name, "must be a positive integer")
        return int(value)

    def sub(self, name: str) -> _Reader:
        value = self.get(name, dict, {})
        return _Reader(self.source, value, f"{self._key(name)}.")

    def check_known(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                raise self.fail(key, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        int: "integer",
        float: "number",
        str: "string",
        bool: "boolean",
        list: "array",
        dict: "table",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _demo_credentials(data_dir: Path) -> dict[str, str]:
    """Load, or generate once, the demo's secrets; the file is private to the user."""
    path = data_dir / DEMO_CREDENTIALS_FILE
    if path.exists():
        try:
            creds = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ConfigError(str(path), "(file)", f"not valid JSON: {exc}") from exc
        needed = {"identity_secret", "api_token", "agent_user", "agent_password"}
        if not isinstance(creds, dict) or not needed <= set(creds):
            raise ConfigError(str(path), "(file)", f"must hold {sorted(needed)}")
        return Credentials({k: str(v) for k, v in creds.items()})
    data_dir.mkdir(parents=True, exist_ok=True)
    creds = {
        "identity_secret": secrets.token_urlsafe(32),
        "api_token": "rb_" + secrets.token_urlsafe(32),
        "agent_user": "agent",
        "agent_password": secrets.token_urlsafe(12),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(creds, option=orjson.OPT_INDENT_2))
    return Credentials(creds)


def _secret(r: _Reader, name: str) -> Secret | None:
    """A secret given inline, by environment variable (`<name>_env`) or file (`<name>_file`)."""
    inline = r.get(name, str, None)
    env_name = r.get(f"{name}_env", str, None)
    file_name = r.get(f"{name}_file", str, None)
    if inline is not None:
        return Secret(inline)
    if env_name is not None:
        value = os.environ.get(env_name)
        if not value:
            raise r.fail(f"{name}_env", f"environment variable {env_name} is not set")
        return Secret(value)
    if file_name is not None:
        try:
            return Secret(Path(file_name).read_text().strip())
        except OSError as exc:
            raise r.fail(f"{name}_file", f"cannot read {file_name}: {exc.strerror}") from exc
    return None


_ALLOWED_ALGS = {"HS256", "HS384", "HS512", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256"}


def _site(r: _Reader, demo_creds: dict[str, str] | None) -> SiteConfig:
    r.check_known({"key", "allowed_origins", "consent", "honor_gpc", "demo", "identity"})
    key = r.get("key", str, None)
    if key is None or not SITE_KEY_RE.match(key):
        raise r.fail("key", "required; lowercase letters, digits, '-' or '_' (max 64)")
    origins = r.get("allowed_origins", list, [])
    for i, origin in enumerate(origins):
        if not isinstance(origin, str) or not (origin == "self" or re.match(r"^https?://", origin)):
            raise r.fail(f"allowed_origins[{i}]", "must be 'self' or an http(s) origin")
    consent = r.get("consent", str, "implied")
    if consent not in ("required", "implied"):
        raise r.fail("consent", "must be 'required' or 'implied'")
    demo = r.get("demo", bool, False)
    ir = r.sub("identity")
    ir.check_known(
        {
            "algorithms",
            "secret",
            "secret_env",
            "secret_file",
            "public_key",
            "public_key_file",
            "max_lifetime_s",
        }
    )
    algorithms = tuple(ir.get("algorithms", list, ["HS256"]))
    for i, alg in enumerate(algorithms):
        if alg not in _ALLOWED_ALGS:
            raise ir.fail(f"algorithms[{i}]", f"{alg!r} is not allowed ('none' never is)")
    secret = _secret(ir, "secret")
    if secret is None and demo and demo_creds is not None:
        secret = Secret(demo_creds["identity_secret"])
    public_key = ir.get("public_key", str, None)
    pk_file = ir.get("public_key_file", str, None)
    if pk_file:
        try:
            public_key = Path(pk_file).read_text()
        except OSError as exc:
            raise ir.fail("public_key_file", f"cannot read {pk_file}: {exc.strerror}") from exc
    if any(a.startswith("HS") for a in algorithms) and secret is None:
        raise ir.fail(
            "secret", "an HS* algorithm needs a secret (secret, secret_env or secret_file)"
        )
    if any(not a.startswith("HS") for a in algorithms) and public_key is None:
        raise ir.fail("public_key", "ES*/RS*/PS* algorithms need public_key or public_key_file")
    return SiteConfig(
        key=key,
        allowed_origins=tuple(origins),
        consent=consent,
        honor_gpc=r.get("honor_gpc", bool, True),
        identity=IdentityConfig(
            algorithms=algorithms,
            secret=secret,
            public_key=public_key,
            max_lifetime_s=ir.positive_int("max_lifetime_s", DEFAULT_MAX_TOKEN_LIFETIME_S),
        ),
        demo=demo,
    )


def public_origin(url: str) -> str | None:
    """`https://Bank.example:443/` -> `https://bank.example`: the form browsers send as
    Origin (lowercase, no default port, no path). None if `url` is not such a URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _metrics(r: _Reader) -> MetricsConfig:
    r.check_known({"token", "token_env", "token_file", "host", "port"})
    port = r.get("port", int, None)
    if port is not None and not 1 <= port <= 65535:
        raise r.fail("port", "must be a port number (1-65535)")
    if "host" in r.table and port is None:
        raise r.fail("host", "needs metrics.port too (the address to serve /metrics on)")
    return MetricsConfig(token=_secret(r, "token"), host=r.get("host", str, "127.0.0.1"), port=port)


def _categories(r: _Reader) -> tuple[tuple[str, re.Pattern[str]], ...]:
    out = []
    for name, patterns in r.table.items():
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise r.fail(name, "must be an array of URL path patterns")
        if not re.match(r"^[a-z][a-z0-9_]{0,31}$", name):
            raise r.fail(name, "category names are lowercase identifiers")
        regex = "|".join(f"(?:{translate(p)})" for p in patterns) or "(?!)"
        out.append((name, re.compile(regex)))
    return tuple(out)


WEBHOOK_CHANNELS = ("callback", "email", "sms")  # web offers go in the HTTP answer


def _channels(wr: _Reader) -> tuple[str, ...]:
    channels = wr.get("channels", list, [])
    for j, c in enumerate(channels):
        if c not in WEBHOOK_CHANNELS:
            raise wr.fail(f"channels[{j}]", f"one of {', '.join(WEBHOOK_CHANNELS)}")
    return tuple(channels)


def load_settings(
    config_file: str | Path | None = None,
    *,
    data_dir: str | Path = ".ringback",
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Read the config file (or the built-in demo) and apply CLI overrides.

    `overrides` keys: host, port, public_url, workers, redis_url, rules_dir, durability.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if config_file is None:
        source = "<built-in demo config>"
        text = resources.files("engine").joinpath("demo_config.toml").read_text()
    else:
        source = str(config_file)
        try:
            text = Path(config_file).read_text()
        except OSError as exc:
            raise ConfigError(source, "(file)", f"cannot read: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(syntax)", str(exc)) from exc

    root = _Reader(source, raw)
    root.check_known(
        {
            "demo_credentials",
            "server",
            "store",
            "limits",
            "profile",
            "intent_weights",
            "categories",
            "sites",
            "api_tokens",
            "agents",
            "rules",
            "webhooks",
            "metrics",
        }
    )
    ddir = Path(data_dir).resolve()
    demo_creds = _demo_credentials(ddir) if root.get("demo_credentials", bool, False) else None

    server = root.sub("server")
    server.check_known(
        {"host", "port", "public_url", "workers", "trusted_proxies", "shutdown_timeout_s"}
    )
    public_url = ""
    raw_public_url = overrides.get("public_url") or server.get("public_url", str, "")
    if raw_public_url:
        origin = public_origin(raw_public_url)
        if origin is None:
            raise server.fail(
                "public_url", "must be an http(s) URL without a path, e.g. https://bank.example"
            )
        public_url = origin
    store = root.sub("store")
    store.check_known({"redis_url", "durability"})
    durability = overrides.get("durability") or store.get("durability", str, "aof")
    if durability not in ("aof", "fsync"):
        raise store.fail("durability", "must be 'aof' or 'fsync'")

    lim = root.sub("limits")
    lim.check_known(set(Limits.__dataclass_fields__))
    limits = Limits(
        **{
            name: (
                lim.get(name, bool, f.default)
                if isinstance(f.default, bool)
                else lim.positive_int(name, int(f.default))  # type: ignore[arg-type]
            )
            for name, f in Limits.__dataclass_fields__.items()
        }
    )
    if limits.max_events_per_batch > 100:
        raise lim.fail("max_events_per_batch", "the wire format allows at most 100")
    prof = root.sub("profile")
    prof.check_known(set(ProfileTuning.__dataclass_fields__))
    tuning = ProfileTuning(
        **{
            name: prof.positive_int(name, f.default)  # type: ignore[arg-type]
            for name, f in ProfileTuning.__dataclass_fields__.items()
        }
    )
    weights_r = root.sub("intent_weights")
    weights = {k: float(weights_r.get(k, float, 0.0)) for k in weights_r.table}

    sites: dict[str, SiteConfig] = {}
    site_list = root.get("sites", list, [])
    for i, table in enumerate(site_list):
        if not isinstance(table, dict):
            raise root.fail(f"sites[{i}]", "must be a table")
        site = _site(_Reader(source, table, f"sites[{i}]."), demo_creds)
        if site.key in sites:
            raise root.fail(f"sites[{i}].key", f"duplicate site {site.key!r}")
        sites[site.key] = site

    tokens: list[ApiToken] = []
    for i, table in enumerate(root.get("api_tokens", list, [])):
        tr = _Reader(source, table, f"api_tokens[{i}].")
        tr.check_known({"name", "token", "token_env", "token_file", "sha256"})
        digest = tr.get("sha256", str, None)
        if digest is None:
            tok = _secret(tr, "token")
            if tok is None:
                raise tr.fail("sha256", "give sha256, token, token_env or token_file")
            digest = hashlib.sha256(tok.reveal().encode()).hexdigest()
        tokens.append(ApiToken(name=tr.get("name", str, f"token{i}"), sha256=digest))
    agents: list[Agent] = []
    for i, table in enumerate(root.get("agents", list, [])):
        ar = _Reader(source, table, f"agents[{i}].")
        ar.check_known({"user", "password_hash", "role"})
        user = ar.get("user", str, None)
        pw = ar.get("password_hash", str, None)
        if not user or not pw or not pw.startswith("scrypt$"):
            raise ar.fail("password_hash", "agents need user and an scrypt password_hash")
        agents.append(Agent(user=user, password_hash=pw, role=ar.get("role", str, "agent")))
    if demo_creds is not None:
        tokens.append(
            ApiToken("demo-admin", hashlib.sha256(demo_creds["api_token"].encode()).hexdigest())
        )
        agents.append(
            Agent(
                demo_creds["agent_user"],
                hash_password(demo_creds["agent_password"]),
                role="supervisor",
            )
        )

    webhooks: list[WebhookConfig] = []
    for i, table in enumerate(root.get("webhooks", list, [])):
        wr = _Reader(source, table, f"webhooks[{i}].")
        wr.check_known(
            {
                "name",
                "url",
                "secrets",
                "secrets_env",
                "kinds",
                "channels",
                "timeout_s",
                "max_attempts",
            }
        )
        name = wr.get("name", str, None)
        if not name or not re.match(r"^[a-z0-9][a-z0-9_-]{0,31}$", name):
            raise wr.fail("name", "required; lowercase letters, digits, '-' or '_'")
        url = wr.get("url", str, None)
        if not url or not re.match(r"^https?://", url):
            raise wr.fail("url", "required; an http(s) URL")
        raw_secrets = wr.get("secrets", list, [])
        env_name = wr.get("secrets_env", str, None)
        if env_name:
            raw_secrets = [x for x in os.environ.get(env_name, "").split() if x]
        if not raw_secrets:
            raise wr.fail("secrets", "at least one whsec_ secret (secrets or secrets_env)")
        for j, sec in enumerate(raw_secrets):
            if not isinstance(sec, str) or not sec.startswith("whsec_"):
                raise wr.fail(f"secrets[{j}]", "Standard Webhooks secrets start with whsec_")
        webhooks.append(
            WebhookConfig(
                name=name,
                url=url,
                secrets=tuple(Secret(x) for x in raw_secrets),
                kinds=tuple(wr.get("kinds", list, ["callback", "notify"])),
                channels=_channels(wr),
                timeout_s=float(wr.get("timeout_s", float, 5.0)),
                max_attempts=wr.positive_int("max_attempts", 8),
            )
        )

    redis_url = (
        overrides.get("redis_url") or os.environ.get("REDIS_URL") or store.get("redis_url", str, "")
    )
    rules_dir = overrides.get("rules_dir") or root.sub("rules").get("dir", str, None)
    workers = int(overrides.get("workers") or server.positive_int("workers", 1))
    return Settings(
        source=source,
        data_dir=ddir,
        host=overrides.get("host") or server.get("host", str, "127.0.0.1"),
        port=int(overrides["port"]) if "port" in overrides else server.get("port", int, 8080),
        public_url=public_url,
        workers=workers,
        trusted_proxies=tuple(server.get("trusted_proxies", list, [])),
        shutdown_timeout_s=float(server.get("shutdown_timeout_s", float, 10.0)),
        redis_url=redis_url,
        durability=durability,
        rules_dir=Path(rules_dir) if rules_dir else None,
        sites=sites,
        api_tokens=tuple(tokens),
        agents=tuple(agents),
        limits=limits,
        profile=tuning,
        intent_weights=weights,
        categories=_categories(root.sub("categories")),
        demo_credentials=demo_creds,
        webhooks=tuple(webhooks),
        metrics=_metrics(root.sub("metrics")),
    )
