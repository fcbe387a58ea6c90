"""Snowplow tracker protocol events, read as Ringback events (no I/O here).

Banks already run Snowplow's trackers; pointed at the engine, they send
`POST /com.snowplowanalytics.snowplow/tp2` (a `payload_data` 1-0-x body: many events)
or `GET /i` (one event in the query string) unchanged. This module is the pure half
of those routes (engine/http/snowplow.py is the other): decode and validate, then map
each event by `[snowplow]` config to what `POST /v1/events` would have carried,
grouped by site and visitor.

- `e=pv` -> `page_view` (path from `url`, title `page`, referrer `refr`, `utm_*` from
  the URL's query); `e=pp` (page ping) -> `heartbeat` when configured.
- `e=se` (structured) -> the event type its (`se_ca`, `se_ac`) maps to, props read from
  `se_la`/`se_pr`/`se_va`; unmapped, a `custom` event (or ignored, by config).
- `e=ue` (self-describing, `ue_pr` JSON or `ue_px` base64url) -> the event type its
  schema URI maps to, props read from its `data`; unmapped, ignored (or `custom`).
- A mapping may also read a context entity (`co` JSON or `cx` base64url) by
  `vendor/name:path` (`com.bank/loan:amount`); contexts are decoded only then.
- Other events (transactions, ad impressions, ...) are ignored.
- `eid` is the event id (hashed when it does not fit Ringback's id pattern), so a
  tracker's retry counts once: the profile drops ids it has seen.
- Times: `ttm` (the true timestamp) as is; else `dtm` shifted by the device clock's
  offset when `stm` (sent time) is given, as `sentAt` does for Segment; an undated
  event is dated by its arrival.

Trust: `aid` names the app, and the app its site. A browser app's `aid` is public, so
its `uid` is only a hint and never links a profile; a server app's events are only
taken with its secret key (checked by the caller, passed here as `key_app`), and its
`uid` is the customer. `duid` (or `nuid`) is the anonymous id.

Every refusal is a `BadRequest` (or `Unauthorized`) with a stable code and the JSON
path at fault (`$.data[3].se_va`), and nothing is returned unless every event passed.

>>> from engine.core.settings import SnowplowApp, SnowplowConfig
>>> sp = SnowplowConfig(apps={"web": SnowplowApp("web", "bank", False)}, structured={},
...     self_describing={})
>>> body = (b'{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",'
...     b'"data":[{"e":"pv","eid":"e-1","aid":"web","duid":"a1234567",'
...     b'"url":"https://bank.example/loans?utm_source=news","dtm":"1767225600000"}]}')
>>> out = translate(body, sp, key_app=None, receive_ms=1767225600000, max_age_s=86400,
...     max_future_s=600)
>>> visit = out.visits[0]
>>> (visit.site, visit.anonymous_id, visit.events[0].page, visit.events[0].props.utm_source)
('bank', 'a1234567', '/loans', 'news')
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args
from urllib.parse import parse_qs, urlsplit

import msgspec
from msgspec import Meta, Struct

from engine.core.errors import BadRequest, Unauthorized
from engine.core.settings import SnowplowApp, SnowplowConfig, TrackMapping
from engine.core.vocabulary import EventType
from engine.ingest.bodies import nesting_overflow, too_deeply_nested, validation_error
from engine.ingest.identity import CUSTOMER_ID_RE
from engine.ingest.parse import MAX_CLOCK_OFFSET_S
from engine.ingest.schema import AnonymousIdPattern, Event
from engine.ingest.vendor_mapping import MISSING, lookup, props_path

__all__ = [
    "PAYLOAD_DATA_SCHEMA",
    "PIXEL_VALUE_MAX",
    "PayloadData",
    "PixelEvent",
    "TrackerEvent",
    "Translated",
    "Translator",
    "Visit",
    "anonymous_id_of",
    "query_event",
    "split_body",
    "translate",
]

PAYLOAD_DATA_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
# Every 1-0-x payload_data is the same array of events for what Ringback reads.
_PAYLOAD_DATA_PREFIX = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-"
_UNSTRUCT_PREFIX = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-"
_CONTEXTS_PREFIX = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-"
# A mapping's source in a context entity: `com.bank/loan:amount`.
_CONTEXT_SOURCE = re.compile(r"^([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+):(.+)$")
_SCHEMA_URI = re.compile(
    r"^iglu:([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/jsonschema/([1-9][0-9]*)-[0-9]+-[0-9]+$"
)

_EVENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NOT_PRODUCT = re.compile(r"[^a-z0-9_]+")
_UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")

Text = Annotated[str, Meta(max_length=65_536)]
Stamp = Annotated[str, Meta(max_length=20)] | int


# -- The wire format (the fields Ringback reads; everything else is ignored) ------------


class TrackerEvent(Struct, forbid_unknown_fields=False, frozen=True):
    """One event of the tracker protocol: what `GET /i` carries in its query string and
    each item of a `tp2` body's `data` (all values strings, as the protocol says)."""

    e: Annotated[str, Meta(min_length=1, max_length=8)]  # pv, pp, se, ue, tr, ti, ...
    eid: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    aid: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    tv: Text | None = None  # tracker version, e.g. py-1.1.0
    p: Text | None = None  # platform: web, srv, mob, ...
    dtm: Stamp | None = None  # device created time, ms
    stm: Stamp | None = None  # device sent time, ms
    ttm: Stamp | None = None  # true time, ms (set by the caller)
    duid: Text | None = None  # domain user id: the anonymous id
    nuid: Text | None = None  # network user id: the anonymous id without duid
    sid: Text | None = None  # session id (not read)
    uid: Text | None = None  # user id: the customer (server apps), a hint (browser)
    url: Text | None = None
    refr: Text | None = None
    page: Text | None = None
    se_ca: Text | None = None
    se_ac: Text | None = None
    se_la: Text | None = None
    se_pr: Text | None = None
    se_va: Text | None = None
    ue_pr: Text | None = None
    ue_px: Text | None = None
    co: Text | None = None  # contexts (not read)
    cx: Text | None = None


class PayloadData(Struct, forbid_unknown_fields=False):
    """`POST /com.snowplowanalytics.snowplow/tp2` as the trackers send it
    (documentation: decoding reads `_RawPayload` first, to check each event's size)."""

    schema: str
    data: Annotated[list[TrackerEvent], Meta(min_length=1)]


class _RawPayload(Struct, forbid_unknown_fields=False):
    schema: str
    data: Annotated[list[msgspec.Raw], Meta(min_length=1)]


class _Inner(Struct, forbid_unknown_fields=False):
    schema: Annotated[str, Meta(max_length=512)]
    data: dict[str, Any]


class _Unstruct(Struct, forbid_unknown_fields=False):
    """`ue_pr`: `{"schema": "iglu:.../unstruct_event/...", "data": {schema, data}}`."""

    schema: str
    data: _Inner


class _Contexts(Struct, forbid_unknown_fields=False):
    """`co`: `{"schema": "iglu:.../contexts/...", "data": [{schema, data}, ...]}`."""

    schema: str
    data: Annotated[list[_Inner], Meta(max_length=100)]


_EVENT = msgspec.json.Decoder(TrackerEvent)
_RAW = msgspec.json.Decoder(_RawPayload)
_UNSTRUCT = msgspec.json.Decoder(_Unstruct)
_CONTEXTS = msgspec.json.Decoder(_Contexts)
_EVENT_CLASSES: dict[str, type[Any]] = {cls.__struct_config__.tag: cls for cls in get_args(Event)}


# -- What comes out ------------------------------------------------------------------


@dataclass(slots=True)
class Visit:
    """One visitor's events on one site, in the order sent: one `ingest_batch`."""

    site: str
    anonymous_id: str
    customer_id: str | None
    events: list[Event] = field(default_factory=list)


@dataclass(slots=True)
class Translated:
    visits: list[Visit]
    sites: set[str]  # of every event's app, mapped or not: each checks the Origin
    received: int  # events in the request
    ignored: int  # that carry nothing for Ringback (unmapped, transactions, ...)
    hints: int  # browser `uid`s not used as identity


# -- Decoding ------------------------------------------------------------------------


def split_body(body: bytes, sp: SnowplowConfig) -> list[bytes]:
    """The events of a `tp2` body, still encoded (each within the size limit).
    Cheap: the events are decoded by `Translator.add`."""
    raw = _decode(_RAW, body, "$")
    if not raw.schema.startswith(_PAYLOAD_DATA_PREFIX):
        raise BadRequest(
            "invalid_schema", f"the body must be a {PAYLOAD_DATA_SCHEMA} payload", "$.schema"
        )
    if len(raw.data) > sp.max_events_per_request:
        raise BadRequest(
            "too_many_events", f"at most {sp.max_events_per_request} events a request", "$.data"
        )
    for i, item in enumerate(raw.data):
        if len(item) > sp.max_event_bytes:
            raise BadRequest(
                "event_too_large",
                f"an event may be at most {sp.max_event_bytes} bytes",
                f"$.data[{i}]",
            )
    return [bytes(item) for item in raw.data]


# `GET /i` carries an event in a URL: each text value at most this many characters, so
# a whole event's request line stays under the server's 64 KB even percent-encoded (26
# fields x 800 x 3). Longer events go by POST, as the trackers do by themselves past
# their own GET limit.
PIXEL_VALUE_MAX = 800
_PixelText = Annotated[str, Meta(max_length=PIXEL_VALUE_MAX)]

# `TrackerEvent` with every free-text field bounded as above: made from its fields, so
# the two cannot drift apart (and `GET /i`'s OpenAPI query says the same).
PixelEvent: type[Struct] = msgspec.defstruct(
    "PixelEvent",
    [
        (f.name, _PixelText | None if f.type == (Text | None) else f.type, f.default)
        for f in msgspec.structs.fields(TrackerEvent)
    ],
    forbid_unknown_fields=False,
    frozen=True,
)


def query_event(query: Mapping[str, str]) -> TrackerEvent:
    """`GET /i`'s query string as one event (its fields at `$.<name>`)."""
    try:
        checked = msgspec.convert(dict(query), PixelEvent)
        return msgspec.convert(msgspec.structs.asdict(checked), TrackerEvent)
    except msgspec.ValidationError as exc:
        message, path = validation_error(exc)
        raise BadRequest("invalid_event", message, path) from exc


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes, where: str) -> Any:
    """Decode `raw` at `where`; JSON inside a field (ue_pr, co, ...) is nested no deeper
    than a body may be."""
    if where != "$" and (deep := nesting_overflow(raw)) is not None:
        raise too_deeply_nested(where + deep[1:])
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message, path = validation_error(exc)
        code = "invalid_payload" if where == "$" else "invalid_event"
        raise BadRequest(code, message, where + path[1:]) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest("invalid_json", f"not valid JSON: {exc}", where) from exc


# -- Identity ------------------------------------------------------------------------


def _digest(kind: str, value: str) -> str:
    return hashlib.blake2b(f"{kind}\0{value}".encode(), digest_size=16).hexdigest()


def anonymous_id_of(value: str) -> str:
    """A tracker's `duid` as Ringback's anonymous id: itself when it fits
    `[A-Za-z0-9_-]{8,64}` (the JS tracker's UUIDs do), else a stable hash of it.

    >>> anonymous_id_of("4f0c1c52-7f8e-4b8b-9a3d-0c9f6d1e2a11")
    '4f0c1c52-7f8e-4b8b-9a3d-0c9f6d1e2a11'
    >>> anonymous_id_of("short")[:3]
    'sp-'
    """
    return value if AnonymousIdPattern.match(value) else "sp-" + _digest("anon", value)


def _user_anonymous_id(customer_id: str) -> str:
    """The anonymous id of a trusted event that names only its user: stable per user."""
    return "sp-user-" + _digest("user", customer_id)[:24]


# -- Values --------------------------------------------------------------------------


def _cut(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


def _url_parts(url: str | None) -> tuple[str | None, dict[str, str]]:
    """(path, utm_* parameters) of a page URL; (None, {}) when it does not parse."""
    if not url:
        return None, {}
    try:
        parts = urlsplit(url)
    except ValueError:
        return None, {}
    try:
        query = parse_qs(parts.query, max_num_fields=100) if parts.query else {}
    except ValueError:  # a query of more than 100 fields: no campaign read from it
        query = {}
    utm = {k: v[0][:256] for k, v in query.items() if k in _UTM and v}
    return _cut(parts.path or "/", 2048), utm


def _ms(value: str | int, where: str) -> int:
    try:
        ms = int(value)
    except ValueError:
        ms = -1
    if not 0 <= ms <= 10**14:
        raise BadRequest("invalid_timestamp", "a timestamp is milliseconds since 1970", where)
    return ms


def _event_time(
    ev: TrackerEvent, receive_ms: int, max_age_s: int, max_future_s: int, where: str
) -> tuple[int, int | None]:
    """(server-clock time, the device's raw stamp or None), as Snowplow derives its
    `derived_tstamp`: `ttm` if set; else `dtm` shifted by the device clock's offset at
    `stm`. Range-checked as `/v1/events` checks its times."""
    if ev.ttm is not None:
        ts, raw, at = _ms(ev.ttm, f"{where}.ttm"), None, f"{where}.ttm"
    elif ev.dtm is not None:
        raw, at = _ms(ev.dtm, f"{where}.dtm"), f"{where}.dtm"
        offset = 0
        if ev.stm is not None:
            offset = receive_ms - _ms(ev.stm, f"{where}.stm")
            if abs(offset) > MAX_CLOCK_OFFSET_S * 1000:
                raise BadRequest(
                    "sent_at_out_of_range",
                    f"stm must be the device's clock at send time, within "
                    f"{MAX_CLOCK_OFFSET_S // 86_400} days of the server clock",
                    f"{where}.stm",
                )
        ts = raw + offset
        if ev.stm is None:
            raw = None
    else:  # undated: it happened when it arrived (the collector's timestamp)
        return receive_ms, None
    if not receive_ms - max_age_s * 1000 <= ts <= receive_ms + max_future_s * 1000:
        raise BadRequest(
            "timestamp_out_of_range",
            f"the event time must be within {max_age_s}s in the past and {max_future_s}s "
            "in the future of the server clock",
            at,
        )
    return ts, raw


def _event_id(ev: TrackerEvent, arrival: str) -> str:
    """`eid` when it fits Ringback's id pattern, else its hash. An event without one
    (every tracker sends one) is known by its content, and by `arrival` when undated."""
    if ev.eid is not None:
        return ev.eid if _EVENT_ID.match(ev.eid) else "sp-" + _digest("eid", ev.eid)
    content = msgspec.json.encode(ev).decode()
    if ev.dtm is None and ev.ttm is None:
        content += arrival
    return "sp-" + _digest("content", content)


# -- Mapping -------------------------------------------------------------------------


def _mapped(
    mapping: TrackMapping, source: Mapping[str, Any], ev: TrackerEvent, where: str
) -> dict[str, Any]:
    props: dict[str, Any] = dict(mapping.defaults)
    contexts: dict[str, Mapping[str, Any]] | None = None
    for name, path in mapping.properties:
        if ctx := _CONTEXT_SOURCE.match(path):
            if contexts is None:
                contexts = _contexts(ev, where)
            entity = contexts.get(ctx[1])
            value = MISSING if entity is None else lookup(entity, ctx[2])
        else:
            value = lookup(source, path)
        if value is not MISSING:
            props[name] = value
    if isinstance(props.get("product"), str):  # "Personal Loan" -> personal_loan
        props["product"] = _NOT_PRODUCT.sub("_", props["product"].strip().lower()).strip("_")
    return props


def _scalars(data: Mapping[str, Any]) -> dict[str, Any]:
    """Up to 20 scalar values of `data`, text cut to size: a custom event's data."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if len(out) == 20:
            break
        if not 1 <= len(key) <= 64:
            continue
        if isinstance(value, str):
            out[key] = value[:256]
        elif value is None or isinstance(value, bool | int | float):
            out[key] = value
    return out


def _structured_fields(ev: TrackerEvent) -> dict[str, Any]:
    value: Any = ev.se_va
    if value is not None:
        try:
            value = float(value)
        except ValueError:
            pass  # refused by the mapped event's type, or kept as text in a custom one
    return {
        "category": ev.se_ca,
        "action": ev.se_ac,
        "label": ev.se_la,
        "property": ev.se_pr,
        "value": value,
    }


_STRUCTURED_WIRE = {
    "category": "se_ca",
    "action": "se_ac",
    "label": "se_la",
    "property": "se_pr",
    "value": "se_va",
}


def _unstruct(ev: TrackerEvent, where: str) -> tuple[_Inner, str]:
    """The self-describing event inside `ue_px` (base64url) or `ue_pr`, and its field."""
    if ev.ue_px is not None:
        at = f"{where}.ue_px"
        raw = _base64url(ev.ue_px, at)
    elif ev.ue_pr is not None:
        at, raw = f"{where}.ue_pr", ev.ue_pr.encode()
    else:
        raise BadRequest("invalid_event", "a self-describing event needs ue_pr or ue_px", where)
    wrapper = _decode(_UNSTRUCT, raw, at)
    if not wrapper.schema.startswith(_UNSTRUCT_PREFIX):
        raise BadRequest("invalid_schema", "not an unstruct_event 1-0-x", f"{at}.schema")
    return wrapper.data, at


def _contexts(ev: TrackerEvent, where: str) -> dict[str, Mapping[str, Any]]:
    """The event's context entities by `vendor/name` (the first of each), from `cx`
    (base64url) or `co`; {} without either."""
    if ev.cx is not None:
        at, raw = f"{where}.cx", _base64url(ev.cx, f"{where}.cx")
    elif ev.co is not None:
        at, raw = f"{where}.co", ev.co.encode()
    else:
        return {}
    wrapper = _decode(_CONTEXTS, raw, at)
    if not wrapper.schema.startswith(_CONTEXTS_PREFIX):
        raise BadRequest("invalid_schema", "not a contexts 1-0-x", f"{at}.schema")
    out: dict[str, Mapping[str, Any]] = {}
    for entity in wrapper.data:
        if m := _SCHEMA_URI.match(entity.schema):
            out.setdefault(f"{m[1]}/{m[2]}", entity.data)
    return out


def _base64url(text: str, at: str) -> bytes:
    """base64url, padded or not (the JS tracker drops the padding); `+/` taken too."""
    try:
        return base64.urlsafe_b64decode(text.strip().replace("+", "-").replace("/", "_") + "==")
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("invalid_base64", "not base64url", at) from exc


def _context_wire(ev: TrackerEvent) -> str:
    return "cx" if ev.cx is not None else "co"


def _self_describing_mapping(sp: SnowplowConfig, uri: str) -> TrackMapping | None:
    """The mapping of a schema URI: configured exactly, or as `M-*-*` for its model."""
    found = sp.self_describing.get(uri)
    if found is None and (m := _SCHEMA_URI.match(uri)):
        found = sp.self_describing.get(f"iglu:{m[1]}/{m[2]}/jsonschema/{m[3]}-*-*")
    return found


def _event(shape: dict[str, Any], wire: dict[str, str], where: str) -> Event:
    """Validate a mapped event as `/v1/events` would; a refusal names the tracker field
    (`wire`: Ringback prop -> where it came from, below `where`)."""
    shape["props"] = {k: v for k, v in shape["props"].items() if v is not None}
    try:
        event: Event = msgspec.convert(shape, _EVENT_CLASSES[shape["type"]], strict=False)
        return event
    except msgspec.ValidationError as exc:
        message, path = validation_error(exc)
        path = props_path(message, path)
        prop = path.removeprefix("$.props.").partition(".")[0]
        at = where + "." + wire[prop] if path.startswith("$.props.") and prop in wire else where
        raise BadRequest("invalid_event", message, at) from exc


# -- The whole request ---------------------------------------------------------------


class Translator:
    """Events -> visits, a slice at a time (`add`), so the HTTP handler can let other
    requests run between slices of a large body; `result` when all are in. Raises
    `BadRequest` (or `Unauthorized`) naming the first event at fault.

    `key_app` is the server app whose secret key the request carried, if any: only
    its events are trusted, and a server app's events without it are refused."""

    def __init__(
        self,
        sp: SnowplowConfig,
        *,
        key_app: SnowplowApp | None,
        receive_ms: int,
        max_age_s: int,
        max_future_s: int,
    ) -> None:
        self.sp, self.key_app = sp, key_app
        self.receive_ms, self.max_age_s, self.max_future_s = receive_ms, max_age_s, max_future_s
        self.visits: dict[tuple[str, str, str | None], Visit] = {}
        self.sites: set[str] = set()
        self.received = self.ignored = self.hints = 0

    def add(self, raw_events: list[bytes], first_index: int = 0) -> None:
        for i, raw in enumerate(raw_events, first_index):
            where = f"$.data[{i}]"
            self.add_event(_decode(_EVENT, raw, where), i, where)

    def add_event(self, ev: TrackerEvent, i: int = 0, where: str = "$") -> None:
        self.received += 1
        self._one(ev, i, where)

    def result(self) -> Translated:
        return Translated(
            list(self.visits.values()), self.sites, self.received, self.ignored, self.hints
        )

    def _app(self, ev: TrackerEvent, where: str) -> SnowplowApp:
        app = self.sp.apps.get(ev.aid) if ev.aid is not None else None
        if app is None:
            raise BadRequest(
                "unknown_app_id",
                "aid (the tracker's app id) must be an app id of [[snowplow.apps]]",
                f"{where}.aid",
            )
        if app.trusted and self.key_app is not app:
            if self.key_app is None:
                raise Unauthorized(
                    "missing_credentials",
                    f"app {app.app_id!r} is a server app: send its key as "
                    "Authorization: Bearer <key>",
                    f"{where}.aid",
                )
            raise Unauthorized(
                "invalid_source_key", f"the key sent is not app {app.app_id!r}'s", f"{where}.aid"
            )
        return app

    def _one(self, ev: TrackerEvent, i: int, where: str) -> None:
        sp = self.sp
        app = self._app(ev, where)
        self.sites.add(app.site)
        customer_id = None
        if ev.uid:
            if app.trusted:
                if not CUSTOMER_ID_RE.match(ev.uid):
                    raise BadRequest(
                        "invalid_user_id",
                        "a uid is 1-128 letters, digits, '_', '.', ':' or '-'",
                        f"{where}.uid",
                    )
                customer_id = ev.uid
            else:
                self.hints += 1
        visitor = ev.duid or ev.nuid
        if visitor:
            anonymous_id = anonymous_id_of(visitor)
        elif customer_id is not None:
            anonymous_id = _user_anonymous_id(customer_id)
        elif ev.uid:
            raise BadRequest(
                "anonymous_id_required",
                "a browser app's uid is only a hint: send duid (the domain user id)",
                f"{where}.duid",
            )
        else:
            raise BadRequest(
                "no_user_id", "every event needs a duid (or, from a server app, a uid)", where
            )

        path, utm = _url_parts(ev.url)
        wire: dict[str, str] = {}
        shape: dict[str, Any] | None = None
        if ev.e == "pv" and sp.page_views == "page_view":
            props = {"title": _cut(ev.page, 256), "referrer": _cut(ev.refr, 2048), **utm}
            shape = {"type": EventType.PAGE_VIEW.value, "props": props}
        elif ev.e == "pp" and sp.page_pings == "heartbeat":
            dwell = {"dwell_ms": sp.page_ping_interval_s * 1000}
            shape = {"type": EventType.HEARTBEAT.value, "props": dwell}
        elif ev.e == "se":
            shape, wire = self._structured(ev, where)
        elif ev.e == "ue":
            shape, wire = self._self_describing(ev, where)
        if shape is None:  # unmapped, or a kind Ringback does not use (tr, ti, ad, ...)
            self.ignored += 1
            return
        ts, ts_raw = _event_time(ev, self.receive_ms, self.max_age_s, self.max_future_s, where)
        shape.update(id=_event_id(ev, f"\0{self.receive_ms}:{i}"), ts=ts, page=path)
        event = _event(shape, wire, where)
        event.ts_raw = ts_raw
        key = (app.site, anonymous_id, customer_id)
        visit = self.visits.get(key)
        if visit is None:
            visit = self.visits[key] = Visit(app.site, anonymous_id, customer_id)
        visit.events.append(event)

    def _structured(
        self, ev: TrackerEvent, where: str
    ) -> tuple[dict[str, Any] | None, dict[str, str]]:
        if not ev.se_ca or not ev.se_ac:
            missing = "se_ca" if not ev.se_ca else "se_ac"
            raise BadRequest(
                "invalid_event", "a structured event needs se_ca and se_ac", f"{where}.{missing}"
            )
        fields = _structured_fields(ev)
        mapping = self.sp.structured.get((ev.se_ca, ev.se_ac))
        if mapping is not None:
            props = _mapped(mapping, fields, ev, where)
            if mapping.type == EventType.CUSTOM:
                props.setdefault("name", f"{ev.se_ca}/{ev.se_ac}"[:64])
            wire = {
                name: _context_wire(ev) if _CONTEXT_SOURCE.match(src) else _STRUCTURED_WIRE[src]
                for name, src in mapping.properties
            }
            return {"type": mapping.type.value, "props": props}, wire
        if self.sp.unmapped_structured == "ignore":
            return None, {}
        data = _scalars({k: v for k, v in fields.items() if k not in ("category", "action")})
        props = {"name": f"{ev.se_ca}/{ev.se_ac}"[:64], "data": data}
        return {"type": EventType.CUSTOM.value, "props": props}, {"name": "se_ac"}

    def _self_describing(
        self, ev: TrackerEvent, where: str
    ) -> tuple[dict[str, Any] | None, dict[str, str]]:
        inner, at = _unstruct(ev, where)
        mapping = _self_describing_mapping(self.sp, inner.schema)
        name = inner.schema.removeprefix("iglu:").partition("/jsonschema/")[0][-64:] or "event"
        if mapping is not None:
            props = _mapped(mapping, inner.data, ev, where)
            if mapping.type == EventType.CUSTOM:
                props.setdefault("name", name)
            field = at[len(where) + 1 :]  # ue_px or ue_pr
            wire = {
                prop: _context_wire(ev)
                if _CONTEXT_SOURCE.match(src)
                else f"{field}.data.data.{src}"
                for prop, src in mapping.properties
            }
            return {"type": mapping.type.value, "props": props}, wire
        if self.sp.unmapped_self_describing == "ignore":
            return None, {}
        props = {"name": name, "data": _scalars(inner.data)}
        return {"type": EventType.CUSTOM.value, "props": props}, {}


def translate(
    body: bytes,
    sp: SnowplowConfig,
    *,
    key_app: SnowplowApp | None,
    receive_ms: int,
    max_age_s: int,
    max_future_s: int,
) -> Translated:
    """A whole `tp2` body as visits at once."""
    translator = Translator(
        sp, key_app=key_app, receive_ms=receive_ms, max_age_s=max_age_s, max_future_s=max_future_s
    )
    translator.add(split_body(body, sp))
    return translator.result()
