"""Configuration: read once, into frozen objects, passed explicitly.

One TOML file holds sites, API tokens, agents, limits and profile tuning. Its shape is
declared once, as the msgspec Structs under "The config file's shape" below: msgspec
checks every type, range and pattern and refuses unknown keys, and its `$.sites[0].key`
paths become the config's own `sites[0].key`. What follows decoding is explicit code:
secrets read from `*_env`/`*_file`, tokens hashed, origins normalised, sections
checked against each other. This is the only module that reads environment variables
(`REDIS_URL`, `RINGBACK_LEARNER`). Every error names the file and the key, so an
operator never has to guess which line is wrong.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from fnmatch import translate
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import orjson
from msgspec import Meta, Struct

from engine.core.errors import ConfigError
from engine.core.vocabulary import EventType, TriggerKind

__all__ = [
    "DEMO_CREDENTIALS_FILE",
    "PHONE_KEY_FILE",
    "ApiToken",
    "ConfigFile",
    "Learning",
    "Limits",
    "MetricsConfig",
    "ProfileTuning",
    "QuoteConfig",
    "Secret",
    "SegmentConfig",
    "SegmentSource",
    "Settings",
    "SiteConfig",
    "SnowplowApp",
    "SnowplowConfig",
    "TrackMapping",
    "load_settings",
]

DEMO_CREDENTIALS_FILE = "demo-credentials.json"
# The key of phone-number hashes when `[privacy]` names none: generated once (0600).
PHONE_KEY_FILE = "phone-hash.key"
PHONE_KEY_MIN_CHARS = 32
MASK = "'***'"
# An identity token older-to-newer than this is refused unless the site allows more:
# a leaked long-lived token would link a profile for as long as it claims to be valid.
DEFAULT_MAX_TOKEN_LIFETIME_S = 86400

# Constrained types: msgspec checks them while decoding and names the key that fails.
PositiveInt = Annotated[int, Meta(gt=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
SiteKey = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
TargetName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
CategoryName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
AllowedOrigin = Annotated[str, Meta(pattern=r"^(?:self$|https?://)")]
HttpUrl = Annotated[str, Meta(pattern=r"^https?://")]
WebhookSecret = Annotated[str, Meta(pattern=r"^whsec_")]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
ScryptHash = Annotated[str, Meta(pattern=r"^scrypt\$")]
# 'none' never is: an unsigned token would let anyone claim any customer.
Algorithm = Literal["HS256", "HS384", "HS512", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256"]
WebhookChannel = Literal["callback", "email", "sms"]  # web offers go in the HTTP answer
# A BCP 47 language tag as browsers' Intl takes it (`en-GB`, `de-DE`, `fr-CH`), and an
# ISO 4217 currency code: the call guide formats the bank's quote with them.
Locale = Annotated[
    str,
    Meta(max_length=35, pattern=r"^[a-zA-Z]{2,3}(?:-[A-Za-z]{4})?(?:-(?:[A-Za-z]{2}|[0-9]{3}))?$"),
]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
ProductName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]  # as events' `product`
TermMonths = Annotated[int, Meta(ge=1, le=600)]  # as events' `term_months`


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


# -- What the engine runs with ------------------------------------------------------
# Dataclasses, not Structs: callers derive variants with `dataclasses.replace`. Their
# defaults live in the file's shape below; only Limits and ProfileTuning, read as they
# are, are decoded straight into (their Annotated fields carry the ranges).


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """How a site's identity tokens are verified: an algorithm allow-list and its keys."""

    algorithms: tuple[str, ...]
    secret: Secret | None  # HS256 (demo, or banks that prefer shared secrets)
    public_key: str | None  # PEM, for ES256/RS256: the engine never holds the private key
    # Longest lifetime a token may claim (exp - iat, and exp - now): longer ones are refused.
    max_lifetime_s: int


@dataclass(frozen=True, slots=True)
class SiteConfig:
    key: str
    allowed_origins: tuple[str, ...]
    consent: Literal["required", "implied"]
    honor_gpc: bool
    identity: IdentityConfig
    demo: bool
    locale: str = "en-GB"  # how the call guide formats the site's money (BCP 47)
    currency: str = "EUR"  # ISO 4217
    # The bank's other hosts that run no snippet (online banking, a payment page): a
    # referrer from one is no campaign touch. Lower-cased; "*.x.example": its subdomains.
    internal_hosts: tuple[str, ...] = ()

    @property
    def identity_secret(self) -> str | None:
        s = self.identity.secret
        return s.reveal() if s else None


@dataclass(frozen=True, slots=True)
class QuoteConfig:
    """`[quotes.<product>]`: the bank's rate for a calculator product, which the agent's
    call guide quotes (engine/contact_center/quote.py). `rate_pct` is the nominal
    yearly rate in percent; a visitor's term outside the bank's range is quoted at the
    nearest term the bank offers."""

    product: str
    rate_pct: float
    label: str
    min_term_months: int | None = None
    max_term_months: int | None = None


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
    max_body_bytes: PositiveInt = 65536
    max_events_per_batch: Annotated[int, Meta(gt=0, le=100)] = 100  # the wire format's cap
    max_event_age_s: PositiveInt = 7 * 86400
    max_event_future_s: PositiveInt = 600
    batches_per_minute_per_visitor: PositiveInt = 240
    batches_per_minute_per_ip: PositiveInt = 1200
    limit_loopback: bool = False
    # Agent sign-in, counted in Valkey before any password is hashed (login_throttle.py).
    login_attempts_per_user: PositiveInt = 10
    login_user_window_s: PositiveInt = 900
    login_attempts_per_address: PositiveInt = 30
    login_address_window_s: PositiveInt = 60
    login_concurrent_checks: PositiveInt = 2  # scrypt runs at once per worker (in threads)
    login_queue: PositiveInt = 32  # sign-ins waiting for one before 429


@dataclass(frozen=True, slots=True)
class ProfileTuning:
    anonymous_ttl_s: PositiveInt = 30 * 86400
    dedupe_window_s: PositiveInt = 25 * 3600
    intent_half_life_s: PositiveInt = 86400
    session_gap_s: PositiveInt = 1800
    presence_ttl_s: PositiveInt = 45


class Learning(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`[learning]`, the label windows: how long a decision's outcome may take to count
    (engine/learning/labels.py). Read as it is: a frozen Struct, decoded straight into."""

    # An impression with no click within this is a negative label (`ignored`).
    click_window_s: PositiveInt = 1800
    # A conversion is attributed to the customer's latest decision for the same product
    # made within this before it (last touch).
    conversion_window_s: PositiveInt = 30 * 86400
    # Every `serve` worker competes for the learner's lease (one learns at a time);
    # false leaves learning to `ringback learn` elsewhere, or off.
    learner: bool = True


@dataclass(frozen=True, slots=True)
class SegmentSource:
    """A Segment-compatible source (README "Connect your existing tracking").

    `trusted` is a server source: its write key is a secret held by the bank's
    backend, so the `userId` it sends is the customer (profiles link and merge). A
    browser source's write key is public (it ships in every page), so its `userId` is
    only a hint and never links a profile. The key is held as its SHA-256."""

    name: str
    site: str
    trusted: bool
    key_sha256: str

    def __repr__(self) -> str:
        return _redacted_repr(self, {"key_sha256": _mask})


TrackValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class TrackMapping:
    """A Segment `track` event name -> a Ringback event of `type`.

    `properties`: (Ringback prop, Segment property path such as `loan.amount`);
    `defaults`: (Ringback prop, value) used when the Segment property is absent."""

    event: str
    type: EventType
    properties: tuple[tuple[str, str], ...] = ()
    defaults: tuple[tuple[str, TrackValue], ...] = ()


@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """`[segment]`: who may send Segment's HTTP Tracking API calls and how they map."""

    # SHA-256 of the write key -> source: a lookup never compares keys byte by byte.
    sources: dict[str, SegmentSource]
    tracks: dict[str, TrackMapping]  # by Segment event name
    page: Literal["page_view", "ignore"] = "page_view"
    screen: Literal["page_view", "ignore"] = "ignore"
    unmapped_tracks: Literal["custom", "ignore"] = "custom"
    max_body_bytes: int = 512_000
    max_message_bytes: int = 32_768
    max_messages_per_batch: int = 2500

    def __repr__(self) -> str:
        return _redacted_repr(self, {"sources": lambda d: repr(list(d.values()))})

    def source_for(self, write_key: str) -> SegmentSource | None:
        """The source whose write key this is, if any."""
        return self.sources.get(hashlib.sha256(write_key.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class SnowplowApp:
    """A Snowplow app id (the trackers' `aid`) and the site its events land on.

    Snowplow's protocol has no write key: `aid` is public, so a `browser` app's `uid`
    is only a hint and never links a profile. A `server` app also has a secret key the
    bank's backend sends as `Authorization: Bearer <key>` (the Python tracker through a
    `requests.Session`, the JS and Java trackers as custom headers); only with it are its
    events taken, and its `uid` is the customer. The key is held as its SHA-256."""

    app_id: str
    site: str
    trusted: bool
    key_sha256: str | None = None

    def __repr__(self) -> str:
        return _redacted_repr(self, {"key_sha256": _mask})


@dataclass(frozen=True, slots=True)
class SnowplowConfig:
    """`[snowplow]`: which app ids may send Snowplow tracker protocol events, and how
    page views, structured and self-describing events map to Ringback's."""

    apps: dict[str, SnowplowApp]  # by app id
    # (category, action) -> mapping; its `properties` read `label`, `property`, `value`
    # (or a context entity's data, `vendor/name:path`).
    structured: dict[tuple[str, str], TrackMapping]
    # Schema URI (`iglu:vendor/name/jsonschema/1-0-0`, or `1-*-*` for any 1-x-x) ->
    # mapping; its `properties` are paths into the event's `data` (or `vendor/name:path`
    # into a context entity's).
    self_describing: dict[str, TrackMapping]
    page_views: Literal["page_view", "ignore"] = "page_view"
    page_pings: Literal["heartbeat", "ignore"] = "ignore"
    page_ping_interval_s: int = 10
    unmapped_structured: Literal["custom", "ignore"] = "custom"
    unmapped_self_describing: Literal["custom", "ignore"] = "ignore"
    max_body_bytes: int = 1_000_000
    max_event_bytes: int = 65_536
    max_events_per_request: int = 500

    def __repr__(self) -> str:
        return _redacted_repr(self, {"apps": lambda d: repr(list(d.values()))})

    def app_for_key(self, key: str) -> SnowplowApp | None:
        """The server app whose secret key this is, if any."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        for app in self.apps.values():
            if app.key_sha256 is not None and hmac.compare_digest(app.key_sha256, digest):
                return app
        return None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the engine needs to know, resolved and validated."""

    source: str
    data_dir: Path
    host: str
    port: int
    # The origin `self` means in a site's allowed_origins (scheme://host[:port]). Empty:
    # the address the connection reached (see engine.http.security.self_origins), never the
    # Host header, which any client (or a DNS-rebinding page) picks.
    public_url: str
    workers: int
    trusted_proxies: tuple[str, ...]
    shutdown_timeout_s: float
    redis_url: str  # empty: the embedded valkey-server
    durability: Literal["aof", "fsync"]
    redis_cluster: bool  # redis_url names seed nodes of a Valkey Cluster
    replica_acks: int  # replicas a write must reach before it is acknowledged
    rules_dir: Path | None
    sites: dict[str, SiteConfig]
    api_tokens: tuple[ApiToken, ...]
    agents: tuple[Agent, ...]
    limits: Limits
    profile: ProfileTuning
    intent_weights: dict[str, float]
    # (category, compiled pattern) in priority order.
    categories: tuple[tuple[str, re.Pattern[str]], ...]
    demo_credentials: dict[str, str] | None
    webhooks: tuple[WebhookConfig, ...]
    metrics: MetricsConfig
    learning: Learning
    segment: SegmentConfig
    snowplow: SnowplowConfig
    quotes: dict[str, QuoteConfig] = field(default_factory=dict)  # by calculator product
    # The key of the phone-number index's hashes (engine/profile/phones.py): its own
    # secret, so rotating API tokens or identity secrets leaves the index readable.
    phone_key: Secret | None = None

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


# -- The config file's shape (README "Configuration"; engine/demo_config.toml) ------------


class _Table(Struct, forbid_unknown_fields=True, kw_only=True):
    """A TOML table: every key it may hold is declared; any other key is refused."""


class ServerTable(_Table):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080  # 0: any free port
    public_url: str = ""
    workers: PositiveInt = 1
    trusted_proxies: tuple[str, ...] = ()
    shutdown_timeout_s: Annotated[float, Meta(ge=0)] = 10.0


class StoreTable(_Table):
    redis_url: str = ""  # empty: start the embedded valkey-server under --data-dir
    durability: Literal["aof", "fsync"] = "aof"
    # redis_url lists seed nodes of a Valkey Cluster ("redis://a:7000,redis://b:7000")
    cluster: bool = False
    # Replicas that must have a write before it is acknowledged (WAIT on the write's
    # connection). Unset: 1 on a cluster (a failover loses nothing acknowledged), 0 on
    # one node. 0 on a cluster acknowledges sooner and may lose the last writes of a
    # primary that dies: weaker, and said so in the README.
    replica_acks: Annotated[int, Meta(ge=0, le=5)] | None = None


class RulesTable(_Table):
    dir: str | None = None


class PrivacyTable(_Table):
    # The key of phone-number hashes (engine/profile/phones.py). Unset: generated once
    # into <data-dir>/phone-hash.key. Several hosts sharing one Valkey need the same
    # key: give it here. Changing it means re-importing the numbers.
    phone_key: str | None = None
    phone_key_env: str | None = None
    phone_key_file: str | None = None


class MetricsTable(_Table):
    token: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    host: str | None = None
    port: Annotated[int, Meta(ge=1, le=65535)] | None = None


class IdentityTable(_Table):
    algorithms: tuple[Algorithm, ...] = ("HS256",)
    secret: str | None = None
    secret_env: str | None = None
    secret_file: str | None = None
    public_key: str | None = None
    public_key_file: str | None = None
    max_lifetime_s: PositiveInt = DEFAULT_MAX_TOKEN_LIFETIME_S


class SiteTable(_Table):
    key: SiteKey
    allowed_origins: tuple[AllowedOrigin, ...] = ()
    consent: Literal["required", "implied"] = "implied"
    honor_gpc: bool = True
    demo: bool = False  # an HS* site without a secret uses the demo's generated one
    identity: IdentityTable = msgspec.field(default_factory=IdentityTable)
    locale: Locale = "en-GB"  # the call guide's number and currency format
    currency: Currency = "EUR"
    # Host names (no scheme or port), "*.bank.example" for every subdomain: checked in
    # _site, to say what a host name is rather than quote a regex.
    internal_hosts: tuple[Annotated[str, Meta(max_length=253)], ...] = ()


class QuoteTable(_Table):
    rate: Annotated[float, Meta(gt=0, lt=100)]  # % a year, nominal
    label: Annotated[str, Meta(min_length=1, max_length=80)] | None = None
    min_term_months: TermMonths | None = None
    max_term_months: TermMonths | None = None


class ApiTokenTable(_Table):
    name: str | None = None  # default: token<index>
    sha256: Sha256Hex | None = None
    token: str | None = None
    token_env: str | None = None
    token_file: str | None = None


class AgentTable(_Table):
    user: Annotated[str, Meta(min_length=1)]
    password_hash: ScryptHash
    role: Literal["agent", "supervisor"] = "agent"


class WebhookTable(_Table):
    name: TargetName
    url: HttpUrl
    secrets: tuple[WebhookSecret, ...] = ()
    secrets_env: str | None = None  # whitespace-separated; replaces `secrets`
    kinds: tuple[TriggerKind, ...] = (TriggerKind.CALLBACK, TriggerKind.NOTIFY)
    channels: tuple[WebhookChannel, ...] = ()
    timeout_s: PositiveFloat = 5.0
    max_attempts: PositiveInt = 8


SegmentPropName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
SegmentPropPath = Annotated[str, Meta(min_length=1, max_length=128)]


class SegmentSourceTable(_Table):
    name: TargetName
    site: SiteKey
    # browser: a public write key (it ships in pages), userId only a hint; server: a secret
    # key held by the bank's backend, userId is the customer.
    trust: Literal["browser", "server"]
    write_key: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    write_key_env: str | None = None
    write_key_file: str | None = None
    demo: bool = False  # server: the key generated into demo-credentials.json


class SegmentTrackTable(_Table):
    event: Annotated[str, Meta(min_length=1, max_length=200)]
    type: EventType
    properties: dict[SegmentPropName, SegmentPropPath] = {}
    defaults: dict[SegmentPropName, TrackValue] = {}


def _default_tracks() -> tuple[SegmentTrackTable, ...]:
    """Calculator events as banks commonly name them (README "Connect your existing
    tracking"); a config's own `[[segment.tracks]]` replace these."""
    calc = {"amount": "amount", "term_months": "term_months", "rate": "rate"}
    return (
        SegmentTrackTable(
            event="Loan Calculated",
            type=EventType.CALC,
            properties={"product": "product", **calc},
            defaults={"product": "personal_loan"},
        ),
        SegmentTrackTable(
            event="Mortgage Calculated",
            type=EventType.CALC,
            properties=calc,
            defaults={"product": "mortgage"},
        ),
    )


class SegmentTable(_Table):
    page: Literal["page_view", "ignore"] = "page_view"
    screen: Literal["page_view", "ignore"] = "ignore"
    unmapped_tracks: Literal["custom", "ignore"] = "custom"
    max_body_bytes: PositiveInt = 512_000  # Segment's batch limit (500 KB)
    max_message_bytes: PositiveInt = 32_768  # and per message (32 KB)
    max_messages_per_batch: Annotated[int, Meta(gt=0, le=2500)] = 2500
    sources: tuple[SegmentSourceTable, ...] = ()
    tracks: tuple[SegmentTrackTable, ...] = msgspec.field(default_factory=_default_tracks)


SnowplowSchema = Annotated[
    str,
    Meta(
        pattern=r"^iglu:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/jsonschema/"
        r"[1-9][0-9]*-(?:[0-9]+-[0-9]+|\*-\*)$"
    ),
]
SnowplowText = Annotated[str, Meta(min_length=1, max_length=255)]
# Where a structured event's props come from: se_ca, se_ac, se_la, se_pr, se_va, or a
# context entity's data, `vendor/name:path` (`com.bank/loan:amount`).
StructuredSource = Annotated[
    str,
    Meta(
        pattern=r"^(?:category|action|label|property|value|"
        r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+:[A-Za-z0-9_.]{1,100})$"
    ),
]


class SnowplowAppTable(_Table):
    app_id: SnowplowText
    site: SiteKey
    # browser: `aid` ships in pages, `uid` only a hint; server: requests must also carry
    # `Authorization: Bearer <key>`, a secret of the bank's backend; `uid` is the customer.
    trust: Literal["browser", "server"]
    key: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    key_env: str | None = None
    key_file: str | None = None
    # server: the demo's generated server key (segment_server_write_key, demo-credentials.json)
    demo: bool = False


class SnowplowStructuredTable(_Table):
    category: SnowplowText
    action: SnowplowText
    type: EventType
    properties: dict[SegmentPropName, StructuredSource] = {}
    defaults: dict[SegmentPropName, TrackValue] = {}


class SnowplowSelfDescribingTable(_Table):
    schema: SnowplowSchema
    type: EventType
    properties: dict[SegmentPropName, SegmentPropPath] = {}
    defaults: dict[SegmentPropName, TrackValue] = {}


def _default_self_describing() -> tuple[SnowplowSelfDescribingTable, ...]:
    """The JS tracker's link clicks as Ringback clicks; a config's own
    `[[snowplow.self_describing]]` replace these."""
    return (
        SnowplowSelfDescribingTable(
            schema="iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-*-*",
            type=EventType.CLICK,
            properties={"href": "targetUrl", "element_id": "elementId", "text": "elementContent"},
        ),
    )


class SnowplowTable(_Table):
    page_views: Literal["page_view", "ignore"] = "page_view"
    page_pings: Literal["heartbeat", "ignore"] = "ignore"
    # The JS tracker's heartbeatDelay: each page ping is this much visible dwell time.
    page_ping_interval_s: Annotated[int, Meta(gt=0, le=3600)] = 10
    unmapped_structured: Literal["custom", "ignore"] = "custom"
    unmapped_self_describing: Literal["custom", "ignore"] = "ignore"
    max_body_bytes: PositiveInt = 1_000_000  # the Snowplow collector's default record cap
    max_event_bytes: PositiveInt = 65_536
    max_events_per_request: Annotated[int, Meta(gt=0, le=5000)] = 500
    apps: tuple[SnowplowAppTable, ...] = ()
    structured: tuple[SnowplowStructuredTable, ...] = ()
    self_describing: tuple[SnowplowSelfDescribingTable, ...] = msgspec.field(
        default_factory=_default_self_describing
    )


class ConfigFile(_Table):
    demo_credentials: bool = False
    server: ServerTable = msgspec.field(default_factory=ServerTable)
    store: StoreTable = msgspec.field(default_factory=StoreTable)
    rules: RulesTable = msgspec.field(default_factory=RulesTable)
    privacy: PrivacyTable = msgspec.field(default_factory=PrivacyTable)
    metrics: MetricsTable = msgspec.field(default_factory=MetricsTable)
    limits: Limits = msgspec.field(default_factory=Limits)
    profile: ProfileTuning = msgspec.field(default_factory=ProfileTuning)
    learning: Learning = msgspec.field(default_factory=Learning)
    intent_weights: dict[str, float] = {}
    # URL path patterns (shell-style) per page category, first match wins.
    categories: dict[CategoryName, tuple[str, ...]] = {}
    sites: tuple[SiteTable, ...] = ()
    api_tokens: tuple[ApiTokenTable, ...] = ()
    agents: tuple[AgentTable, ...] = ()
    webhooks: tuple[WebhookTable, ...] = ()
    segment: SegmentTable = msgspec.field(default_factory=SegmentTable)
    snowplow: SnowplowTable = msgspec.field(default_factory=SnowplowTable)
    quotes: dict[ProductName, QuoteTable] = {}


# msgspec refuses unknown keys in Structs only; these tables decode into dataclasses.
_DATACLASS_TABLES: dict[str, type[Any]] = {"limits": Limits, "profile": ProfileTuning}


class _Invalid(Exception):
    """A config problem at `key` (the config's own path); load_settings adds the file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message


def _decode(raw: dict[str, Any]) -> ConfigFile:
    for section, shape in _DATACLASS_TABLES.items():
        table = raw.get(section)
        unknown = (
            sorted(set(table) - {f.name for f in fields(shape)}) if isinstance(table, dict) else []
        )
        if unknown:
            raise _Invalid(f"{section}.{unknown[0]}", "unknown key")
    try:
        return msgspec.convert(raw, ConfigFile)
    except msgspec.ValidationError as exc:
        raise _Invalid(*_where(raw, str(exc))) from None


_FIELD_PROBLEM = re.compile(r"Object (contains unknown|missing required) field `([^`]+)`")
_PATH_PART = re.compile(r"[^.\[\]]+|\[(\d+)\]")


def _where(raw: dict[str, Any], error: str) -> tuple[str, str]:
    """msgspec's `problem - at `$.sites[0].identity`` as (config key path, problem)."""
    message, _, at = error.partition(" - at `")
    at = at.rstrip("`")
    if at.startswith("key` in `$"):  # a map's key is wrong, not its value
        at = at.removeprefix("key` in `") + "[...]"
    path = at.removeprefix("$").removeprefix(".")
    if "[...]" in path:  # msgspec does not say which entry of a map: find it
        section = path.partition("[...]")[0]
        entry = _failing_entry(raw, section)
        if entry is not None:
            path = path.replace("[...]", f".{entry}", 1)
    if problem := _FIELD_PROBLEM.fullmatch(message):
        path = f"{path}.{problem[2]}" if path else problem[2]
        message = "unknown key" if problem[1] == "contains unknown" else "required"
    message = message.replace("`", "")
    value = _lookup(raw, path)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if message.startswith("Expected") and "got" not in message and number:
        message += f", got {value}"  # numbers only: a string here might be a secret
    return path, message


def _failing_entry(raw: dict[str, Any], section: str) -> str | None:
    """The first entry of the top-level map `section` that fails to decode on its own."""
    table = raw.get(section)
    for name, value in table.items() if isinstance(table, dict) else ():
        try:
            msgspec.convert({section: {name: value}}, ConfigFile)
        except msgspec.ValidationError:
            return str(name)
    return None


def _lookup(raw: Any, path: str) -> Any:
    """The raw value at `path` (`sites[0].identity.max_lifetime_s`), None if absent."""
    for part in _PATH_PART.finditer(path):
        index = part[1]
        if index is not None and isinstance(raw, list) and int(index) < len(raw):
            raw = raw[int(index)]
        elif index is None and isinstance(raw, dict) and part[0] in raw:
            raw = raw[part[0]]
        else:
            return None
    return raw


# -- After decoding: secrets, derived values, checks across keys -------------------------


def _secret(table: Any, name: str, path: str) -> Secret | None:
    """A secret given inline, by environment variable (`<name>_env`) or file (`<name>_file`)."""
    inline: str | None = getattr(table, name)
    env_name: str | None = getattr(table, f"{name}_env")
    file_name: str | None = getattr(table, f"{name}_file")
    if inline is not None:
        return Secret(inline)
    if env_name is not None:
        if value := os.environ.get(env_name):
            return Secret(value)
        raise _Invalid(f"{path}.{name}_env", f"environment variable {env_name} is not set")
    if file_name is not None:
        return Secret(_read_file(file_name, f"{path}.{name}_file").strip())
    return None


def _read_file(name: str, key: str) -> str:
    try:
        return Path(name).read_text()
    except OSError as exc:
        raise _Invalid(key, f"cannot read {name}: {exc.strerror}") from exc


def _site(table: SiteTable, path: str, demo_creds: dict[str, str] | None) -> SiteConfig:
    ident, where = table.identity, f"{path}.identity"
    secret = _secret(ident, "secret", where)
    if secret is None and table.demo and demo_creds is not None:
        secret = Secret(demo_creds["identity_secret"])
    public_key = ident.public_key
    if ident.public_key_file:
        public_key = _read_file(ident.public_key_file, f"{where}.public_key_file")
    if any(a.startswith("HS") for a in ident.algorithms) and secret is None:
        raise _Invalid(
            f"{where}.secret", "an HS* algorithm needs a secret (secret, secret_env or secret_file)"
        )
    if any(not a.startswith("HS") for a in ident.algorithms) and public_key is None:
        raise _Invalid(
            f"{where}.public_key", "ES*/RS*/PS* algorithms need public_key or public_key_file"
        )
    identity = IdentityConfig(ident.algorithms, secret, public_key, ident.max_lifetime_s)
    return SiteConfig(
        table.key,
        table.allowed_origins,
        table.consent,
        table.honor_gpc,
        identity,
        table.demo,
        locale=table.locale,
        currency=table.currency,
        internal_hosts=_internal_hosts(table.internal_hosts, f"{path}.internal_hosts"),
    )


_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# A host name; a wildcard covers the subdomains of a name of two labels or more, so
# "*.example" (a whole top-level domain) is refused.
_INTERNAL_HOST = re.compile(
    rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\*\.{_HOST_LABEL}(?:\.{_HOST_LABEL})+"
)


def _internal_hosts(hosts: tuple[str, ...], path: str) -> tuple[str, ...]:
    """`internal_hosts`, lower-cased and without a trailing dot, as referrers are compared."""
    out: list[str] = []
    for i, raw in enumerate(hosts):
        host = raw.strip().lower().rstrip(".")
        if not _INTERNAL_HOST.fullmatch(host):
            raise _Invalid(
                f"{path}[{i}]",
                "must be a host name without scheme, port or path, e.g. netbank.bank.example,"
                " or *.bank.example for its subdomains",
            )
        out.append(host)
    return tuple(out)


def _quotes(tables: dict[str, QuoteTable]) -> dict[str, QuoteConfig]:
    out: dict[str, QuoteConfig] = {}
    for product, t in tables.items():
        low, high = t.min_term_months, t.max_term_months
        if low is not None and high is not None and low > high:
            raise _Invalid(
                f"quotes.{product}.max_term_months", f"{high} is below min_term_months ({low})"
            )
        label = t.label or product.replace("_", " ").capitalize()
        out[product] = QuoteConfig(product, t.rate, label, low, high)
    return out


def _api_token(table: ApiTokenTable, i: int) -> ApiToken:
    digest = table.sha256
    if digest is None:
        token = _secret(table, "token", f"api_tokens[{i}]")
        if token is None:
            raise _Invalid(f"api_tokens[{i}].sha256", "give sha256, token, token_env or token_file")
        digest = hashlib.sha256(token.reveal().encode()).hexdigest()
    return ApiToken(name=f"token{i}" if table.name is None else table.name, sha256=digest)


def _webhook(table: WebhookTable, path: str) -> WebhookConfig:
    values = table.secrets
    if table.secrets_env:
        values = tuple(os.environ.get(table.secrets_env, "").split())
        for j, value in enumerate(values):
            if not value.startswith("whsec_"):
                raise _Invalid(
                    f"{path}.secrets[{j}]", "Standard Webhooks secrets start with whsec_"
                )
    if not values:
        raise _Invalid(f"{path}.secrets", "at least one whsec_ secret (secrets or secrets_env)")
    return WebhookConfig(
        name=table.name,
        url=table.url,
        secrets=tuple(Secret(v) for v in values),
        kinds=table.kinds,
        channels=table.channels,
        timeout_s=table.timeout_s,
        max_attempts=table.max_attempts,
    )


def _segment(
    table: SegmentTable, sites: dict[str, SiteConfig], demo_creds: dict[str, str] | None
) -> SegmentConfig:
    sources: dict[str, SegmentSource] = {}
    names: set[str] = set()
    for i, src in enumerate(table.sources):
        path = f"segment.sources[{i}]"
        if src.name in names:
            raise _Invalid(f"{path}.name", f"duplicate source {src.name!r}")
        names.add(src.name)
        if src.site not in sites:
            raise _Invalid(f"{path}.site", f"no site {src.site!r} in [[sites]]")
        key = _secret(src, "write_key", path)
        if key is None and src.demo and src.trust == "server" and demo_creds is not None:
            key = Secret(demo_creds["segment_server_write_key"])
        if key is None:
            raise _Invalid(f"{path}.write_key", "give write_key, write_key_env or write_key_file")
        if src.trust == "server" and len(key.reveal()) < 16:
            raise _Invalid(
                f"{path}.write_key", "a server source's key is a secret: at least 16 characters"
            )
        digest = hashlib.sha256(key.reveal().encode()).hexdigest()
        if digest in sources:
            raise _Invalid(f"{path}.write_key", "the same write key as another source")
        sources[digest] = SegmentSource(src.name, src.site, src.trust == "server", digest)
    tracks: dict[str, TrackMapping] = {}
    for i, t in enumerate(table.tracks):
        if t.event in tracks:
            raise _Invalid(f"segment.tracks[{i}].event", f"duplicate event {t.event!r}")
        tracks[t.event] = TrackMapping(
            t.event, t.type, tuple(t.properties.items()), tuple(t.defaults.items())
        )
    return SegmentConfig(
        sources=sources,
        tracks=tracks,
        page=table.page,
        screen=table.screen,
        unmapped_tracks=table.unmapped_tracks,
        max_body_bytes=table.max_body_bytes,
        max_message_bytes=table.max_message_bytes,
        max_messages_per_batch=table.max_messages_per_batch,
    )


def _snowplow(
    table: SnowplowTable, sites: dict[str, SiteConfig], demo_creds: dict[str, str] | None
) -> SnowplowConfig:
    apps: dict[str, SnowplowApp] = {}
    digests: set[str] = set()
    for i, app in enumerate(table.apps):
        path = f"snowplow.apps[{i}]"
        if app.app_id in apps:
            raise _Invalid(f"{path}.app_id", f"duplicate app id {app.app_id!r}")
        if app.site not in sites:
            raise _Invalid(f"{path}.site", f"no site {app.site!r} in [[sites]]")
        key = _secret(app, "key", path)
        if key is None and app.demo and app.trust == "server" and demo_creds is not None:
            # The demo backend's one generated secret serves Segment and Snowplow alike.
            key = Secret(demo_creds["segment_server_write_key"])
        digest = None
        if app.trust == "browser" and key is not None:
            raise _Invalid(f"{path}.key", "a browser app has no key: its pages are public")
        if app.trust == "server":
            if key is None:
                raise _Invalid(f"{path}.key", "a server app needs key, key_env or key_file")
            if len(key.reveal()) < 16:
                raise _Invalid(f"{path}.key", "a server app's key is a secret: 16+ characters")
            digest = hashlib.sha256(key.reveal().encode()).hexdigest()
            if digest in digests:
                raise _Invalid(f"{path}.key", "the same key as another app")
            digests.add(digest)
        apps[app.app_id] = SnowplowApp(app.app_id, app.site, app.trust == "server", digest)
    structured: dict[tuple[str, str], TrackMapping] = {}
    for i, st in enumerate(table.structured):
        if (st.category, st.action) in structured:
            raise _Invalid(f"snowplow.structured[{i}].action", "duplicate category and action")
        structured[(st.category, st.action)] = TrackMapping(
            f"{st.category}/{st.action}",
            st.type,
            tuple(st.properties.items()),
            tuple(st.defaults.items()),
        )
    described: dict[str, TrackMapping] = {}
    for i, sd in enumerate(table.self_describing):
        if sd.schema in described:
            raise _Invalid(f"snowplow.self_describing[{i}].schema", f"duplicate {sd.schema!r}")
        described[sd.schema] = TrackMapping(
            sd.schema, sd.type, tuple(sd.properties.items()), tuple(sd.defaults.items())
        )
    return SnowplowConfig(
        apps=apps,
        structured=structured,
        self_describing=described,
        page_views=table.page_views,
        page_pings=table.page_pings,
        page_ping_interval_s=table.page_ping_interval_s,
        unmapped_structured=table.unmapped_structured,
        unmapped_self_describing=table.unmapped_self_describing,
        max_body_bytes=table.max_body_bytes,
        max_event_bytes=table.max_event_bytes,
        max_events_per_request=table.max_events_per_request,
    )


def _metrics(table: MetricsTable) -> MetricsConfig:
    if table.host is not None and table.port is None:
        raise _Invalid("metrics.host", "needs metrics.port too (the address to serve /metrics on)")
    token = _secret(table, "token", "metrics")
    host = "127.0.0.1" if table.host is None else table.host
    return MetricsConfig(token=token, host=host, port=table.port)


def _categories(table: dict[str, tuple[str, ...]]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple(
        (name, re.compile("|".join(f"(?:{translate(p)})" for p in patterns) or "(?!)"))
        for name, patterns in table.items()
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
        if "segment_server_write_key" not in creds:  # a file from before [segment]
            creds["segment_server_write_key"] = _segment_write_key()
            _write_private(path, creds, replace=True)
        return Credentials({k: str(v) for k, v in creds.items()})
    data_dir.mkdir(parents=True, exist_ok=True)
    creds = {
        "identity_secret": secrets.token_urlsafe(32),
        "api_token": "rb_" + secrets.token_urlsafe(32),
        "agent_user": "agent",
        "agent_password": secrets.token_urlsafe(12),
        "segment_server_write_key": _segment_write_key(),
    }
    _write_private(path, creds, replace=False)
    return Credentials(creds)


def _phone_key(table: PrivacyTable, data_dir: Path) -> Secret:
    """The configured key of phone hashes, or the one generated once into the data dir.

    A random key rather than one derived from other secrets: phone numbers are few
    enough to enumerate, so their hash is only as strong as its key, and rotating an
    API token must not silently change it. Workers starting together race to create
    the file; it appears whole (written aside, then hard-linked), and the loser reads it."""
    key = _secret(table, "phone_key", "privacy")
    if key is not None:
        if len(key.reveal()) < PHONE_KEY_MIN_CHARS:
            raise _Invalid("privacy.phone_key", f"at least {PHONE_KEY_MIN_CHARS} characters")
        return key
    path = data_dir / PHONE_KEY_FILE
    try:
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            aside = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # another worker's key won: use it
            finally:
                aside.unlink()
        value = path.read_text().strip()
    except OSError as exc:
        raise _Invalid("privacy.phone_key_file", f"cannot create or read {path}: {exc}") from exc
    if len(value) < PHONE_KEY_MIN_CHARS:
        raise _Invalid(
            "privacy.phone_key_file", f"{path} holds fewer than {PHONE_KEY_MIN_CHARS} characters"
        )
    return Secret(value)


def _segment_write_key() -> str:
    return "rbseg_" + secrets.token_urlsafe(24)


def _write_private(path: Path, data: dict[str, Any], *, replace: bool) -> None:
    """Write `data` as JSON readable by this user only; `replace` swaps it in atomically."""
    target = path.with_name(path.name + ".tmp") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    if replace:
        os.replace(target, path)


def _learning(table: Learning) -> Learning:
    """`RINGBACK_LEARNER=0|1` overrides `[learning] learner` for this host: an operator
    keeps learning off the web hosts (or a test suite off its shared Valkey) without
    editing the config. Anything else in the variable is a config error."""
    value = os.environ.get("RINGBACK_LEARNER")
    if value is None or value == "":
        return table
    if value.lower() in ("0", "false", "off", "no"):
        return msgspec.structs.replace(table, learner=False)
    if value.lower() in ("1", "true", "on", "yes"):
        return msgspec.structs.replace(table, learner=True)
    raise ConfigError("RINGBACK_LEARNER", "value", f"expected 0 or 1, got {value!r}")


def _cluster_flag(
    overrides: Mapping[str, Any], store: StoreTable, redis_url: str, source: str
) -> bool:
    """`--cluster`, `REDIS_CLUSTER=1` or `[store] cluster = true`: the URL lists seed
    nodes of a Valkey Cluster. There is no embedded cluster, so it needs a URL."""
    env = os.environ.get("REDIS_CLUSTER", "").strip().lower()
    cluster = bool(overrides.get("redis_cluster")) or env in ("1", "true", "yes") or store.cluster
    if cluster and not redis_url:
        raise ConfigError(
            source,
            "store.cluster",
            "a Valkey Cluster needs its seed nodes: give --redis (or REDIS_URL, or "
            "[store] redis_url) as redis://HOST:PORT[,redis://HOST:PORT...]",
        )
    return cluster


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
    try:
        return _settings(source, _decode(raw), Path(data_dir).resolve(), overrides)
    except _Invalid as exc:
        raise ConfigError(source, exc.key, exc.message) from None


def _settings(source: str, file: ConfigFile, data_dir: Path, overrides: dict[str, Any]) -> Settings:
    demo_creds = _demo_credentials(data_dir) if file.demo_credentials else None
    public_url = overrides.get("public_url") or file.server.public_url
    if public_url:
        origin = public_origin(public_url)
        if origin is None:
            raise _Invalid(
                "server.public_url",
                "must be an http(s) URL without a path, e.g. https://bank.example",
            )
        public_url = origin
    sites: dict[str, SiteConfig] = {}
    for i, table in enumerate(file.sites):
        if table.key in sites:
            raise _Invalid(f"sites[{i}].key", f"duplicate site {table.key!r}")
        sites[table.key] = _site(table, f"sites[{i}]", demo_creds)
    tokens = [_api_token(table, i) for i, table in enumerate(file.api_tokens)]
    agents = [Agent(a.user, a.password_hash, a.role) for a in file.agents]
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
    rules_dir = overrides.get("rules_dir") or file.rules.dir
    redis_url = str(
        overrides.get("redis_url") or os.environ.get("REDIS_URL") or file.store.redis_url
    )
    cluster = _cluster_flag(overrides, file.store, redis_url, source)
    return Settings(
        source=source,
        data_dir=data_dir,
        host=overrides.get("host") or file.server.host,
        port=int(overrides["port"]) if "port" in overrides else file.server.port,
        public_url=public_url,
        workers=int(overrides.get("workers") or file.server.workers),
        trusted_proxies=file.server.trusted_proxies,
        shutdown_timeout_s=file.server.shutdown_timeout_s,
        redis_url=redis_url,
        durability=overrides.get("durability") or file.store.durability,
        redis_cluster=cluster,
        replica_acks=(
            file.store.replica_acks
            if file.store.replica_acks is not None
            else (1 if cluster else 0)
        ),
        rules_dir=Path(rules_dir) if rules_dir else None,
        sites=sites,
        api_tokens=tuple(tokens),
        agents=tuple(agents),
        limits=file.limits,
        profile=file.profile,
        intent_weights=file.intent_weights,
        categories=_categories(file.categories),
        demo_credentials=demo_creds,
        webhooks=tuple(_webhook(table, f"webhooks[{i}]") for i, table in enumerate(file.webhooks)),
        metrics=_metrics(file.metrics),
        learning=_learning(file.learning),
        segment=_segment(file.segment, sites, demo_creds),
        snowplow=_snowplow(file.snowplow, sites, demo_creds),
        quotes=_quotes(file.quotes),
        phone_key=_phone_key(file.privacy, data_dir),
    )
