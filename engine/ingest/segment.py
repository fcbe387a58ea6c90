"""Segment's HTTP Tracking API messages, read as Ringback events (no I/O here).

Banks already run Segment's libraries; pointed at the engine, the server libraries
send `POST /v1/batch` (and `/v1/track`, `/v1/page`, `/v1/identify`, `/v1/alias`)
unchanged. This module is the pure half of that route (engine/http/segment.py is
the other): decode and validate a body, then map each message by `[segment]` config
to what `POST /v1/events` would have carried, grouped by visitor.

- `page` -> `page_view` (path from `properties.path`, `context.page.path` or the URL;
  campaign from `context.campaign`); `screen` likewise when configured.
- `track` -> the event type its name maps to (`"Loan Calculated"` -> `calc`), props
  taken from Segment properties by the mapping, defaults filling the gaps; an
  unmapped name becomes a `custom` event (or is ignored, by config).
- `identify` / `alias` carry no event; from a trusted source they link an anonymous
  id to a customer.
- `messageId` is the event id (hashed when it does not fit Ringback's id pattern), so
  a retried batch counts once: the profile drops ids it has seen.
- Times: `timestamp` (or `originalTimestamp`), shifted by the sender's clock offset
  when `sentAt` is given, as `engine.ingest.parse` does; an undated message is dated
  by its arrival (Segment's `receivedAt`).

Trust: a browser source's write key is public, so its `userId` is only a hint and
never links a profile; a server source's secret key makes its `userId` the customer.

Every refusal is a `BadRequest` with a stable code and the JSON path at fault
(`$.batch[3].properties.amount`), and nothing is returned unless every message passed.

>>> from engine.core.settings import TrackMapping
>>> calc = TrackMapping("Mortgage Calculated", EventType.CALC,
...     (("amount", "amount"), ("term_months", "term_months")), (("product", "mortgage"),))
>>> seg = SegmentConfig(sources={}, tracks={calc.event: calc})
>>> body = (b'{"batch":[{"type":"track","event":"Mortgage Calculated","messageId":"m-1",'
...     b'"anonymousId":"a1234567","timestamp":"2026-01-01T00:00:00Z",'
...     b'"properties":{"amount":250000,"term_months":300}}]}')
>>> out = translate(body, "batch", seg, trusted=False, receive_ms=1767225600000,
...     max_age_s=86400, max_future_s=600)
>>> ev = out.visits[0].events[0]
>>> (ev.id, ev.props.product, ev.props.amount, out.visits[0].anonymous_id)
('m-1', 'mortgage', 250000.0, 'a1234567')
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

from engine.core.errors import BadRequest
from engine.core.settings import SegmentConfig, TrackMapping
from engine.core.vocabulary import EventType
from engine.ingest.bodies import validation_error
from engine.ingest.identity import CUSTOMER_ID_RE
from engine.ingest.parse import MAX_CLOCK_OFFSET_S
from engine.ingest.schema import AnonymousIdPattern, Event
from engine.ingest.vendor_mapping import MISSING, lookup, props_path

__all__ = [
    "KINDS",
    "Alias",
    "BatchBody",
    "Identify",
    "Link",
    "Page",
    "Track",
    "Translated",
    "Translator",
    "Visit",
    "split_body",
    "translate",
]

Kind = Literal["batch", "track", "page", "identify", "alias"]
KINDS: tuple[Kind, ...] = ("batch", "track", "page", "identify", "alias")

_EVENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_NOT_PRODUCT = re.compile(r"[^a-z0-9_]+")

# Segment's own limits on a field; longer text is cut to Ringback's, not refused.
Id = Annotated[str, Meta(min_length=1, max_length=200)] | int
Text = Annotated[str, Meta(max_length=8192)]


# -- The wire format (the fields Ringback reads; everything else is ignored) ------------


class PageContext(Struct, forbid_unknown_fields=False, frozen=True):
    path: Text | None = None
    url: Text | None = None
    title: Text | None = None
    referrer: Text | None = None


class Campaign(Struct, forbid_unknown_fields=False, frozen=True):
    name: Text | None = None
    source: Text | None = None
    medium: Text | None = None
    term: Text | None = None
    content: Text | None = None


class Context(Struct, forbid_unknown_fields=False, frozen=True):
    page: PageContext | None = None
    campaign: Campaign | None = None


class _Message(Struct, tag_field="type", forbid_unknown_fields=False, kw_only=True):
    messageId: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    anonymousId: Id | None = None
    userId: Id | None = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    context: Context = Context()


class Track(_Message, tag="track"):
    event: Annotated[str, Meta(min_length=1, max_length=200)]
    properties: dict[str, Any] = {}


class Page(_Message, tag="page"):
    name: Text | None = None
    properties: dict[str, Any] = {}


class Screen(_Message, tag="screen"):
    name: Text | None = None
    properties: dict[str, Any] = {}


class Identify(_Message, tag="identify"):
    traits: dict[str, Any] = {}


class Alias(_Message, tag="alias"):
    previousId: Id
    userId: Id


class Group(_Message, tag="group"):
    groupId: Id | None = None


Message = Track | Page | Screen | Identify | Alias | Group


class BatchBody(Struct, forbid_unknown_fields=False):
    """`POST /v1/batch` as Segment's libraries send it (documentation: decoding reads
    `_RawBatch` first, to check each message's size)."""

    batch: Annotated[list[Message], Meta(min_length=1, max_length=2500)]
    sentAt: datetime | None = None
    writeKey: str | None = None


class _RawBatch(Struct, forbid_unknown_fields=False):
    """`/v1/batch`: messages kept raw first, so each one's size can be checked."""

    batch: Annotated[list[msgspec.Raw], Meta(min_length=1)]
    sentAt: datetime | None = None


_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "batch": msgspec.json.Decoder(Message),
    "track": msgspec.json.Decoder(Track),
    "page": msgspec.json.Decoder(Page),
    "identify": msgspec.json.Decoder(Identify),
    "alias": msgspec.json.Decoder(Alias),
}
_RAW_BATCH = msgspec.json.Decoder(_RawBatch)
_EVENT_CLASSES: dict[str, type[Any]] = {cls.__struct_config__.tag: cls for cls in get_args(Event)}


# -- What comes out ------------------------------------------------------------------


@dataclass(slots=True)
class Visit:
    """One visitor's events, in the order sent: one `ingest_batch` (or a few)."""

    anonymous_id: str
    customer_id: str | None
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Link:
    """A trusted `identify`/`alias`: this anonymous id is this customer."""

    anonymous_id: str
    customer_id: str


@dataclass(slots=True)
class Translated:
    visits: list[Visit]
    links: list[Link]
    messages: int  # in the body
    ignored: int  # that carry nothing for Ringback (group, screen, unmapped, ...)
    hints: int  # browser userIds not used as identity


# -- Decoding ------------------------------------------------------------------------


def split_body(body: bytes, kind: Kind, seg: SegmentConfig) -> tuple[list[bytes], int | None]:
    """The messages of a body, still encoded (each within the size limit), and its
    batch-level `sentAt` (ms). Cheap: the messages are decoded by `Translator.add`."""
    if kind != "batch":
        if len(body) > seg.max_message_bytes:
            raise _message_too_large("$", seg.max_message_bytes)
        return [body], None
    raw = _decode(_RAW_BATCH, body, "$")
    if len(raw.batch) > seg.max_messages_per_batch:
        raise BadRequest(
            "too_many_messages",
            f"at most {seg.max_messages_per_batch} messages per batch",
            "$.batch",
        )
    for i, item in enumerate(raw.batch):
        if len(item) > seg.max_message_bytes:
            raise _message_too_large(f"$.batch[{i}]", seg.max_message_bytes)
    return [bytes(item) for item in raw.batch], None if raw.sentAt is None else _ms(raw.sentAt)


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes | msgspec.Raw, where: str) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message, path = validation_error(exc)
        raise BadRequest("invalid_message", message, where + path[1:]) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest("invalid_json", f"body is not valid JSON: {exc}", where) from exc


def _message_too_large(where: str, limit: int) -> BadRequest:
    return BadRequest("message_too_large", f"a message may be at most {limit} bytes", where)


def _ms(when: datetime) -> int:
    if when.tzinfo is None:  # Segment's times are UTC unless they say otherwise
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


# -- Identity ------------------------------------------------------------------------


def _digest(kind: str, value: str) -> str:
    return hashlib.blake2b(f"{kind}\0{value}".encode(), digest_size=16).hexdigest()


def anonymous_id_of(value: str | int) -> str:
    """Segment's anonymousId as Ringback's: itself when it fits `[A-Za-z0-9_-]{8,64}`
    (analytics.js's UUIDs do), else a stable hash of it.

    >>> anonymous_id_of("4f0c1c52-7f8e-4b8b-9a3d-0c9f6d1e2a11")
    '4f0c1c52-7f8e-4b8b-9a3d-0c9f6d1e2a11'
    >>> anonymous_id_of(42) == anonymous_id_of("42") != "42"
    True
    """
    text = str(value)
    return text if AnonymousIdPattern.match(text) else "seg-" + _digest("anon", text)


def _user_anonymous_id(customer_id: str) -> str:
    """The anonymous id of a trusted message that names only its user: stable per user,
    so the user's server-side events form one visit linked to the customer."""
    return "seg-user-" + _digest("user", customer_id)[:24]


def _customer_id(value: str | int, where: str) -> str:
    text = str(value)
    if not CUSTOMER_ID_RE.match(text):
        raise BadRequest(
            "invalid_user_id",
            "a userId is 1-128 letters, digits, '_', '.', ':' or '-'",
            where,
        )
    return text


# -- Mapping -------------------------------------------------------------------------


def _event_id(msg: _Message, arrival: str) -> str:
    """`messageId` when it fits Ringback's id pattern, else its hash. A message without
    one (Segment's libraries always send one) is known by its content and time: an
    identical retry of a stamped message counts once; unstamped ones get `arrival`
    (receive time and position), so two such page views stay two, as at Segment."""
    if msg.messageId is not None:
        if _EVENT_ID.match(msg.messageId):
            return msg.messageId
        return "seg-" + _digest("message", msg.messageId)
    content = msgspec.json.encode(msg).decode()
    if msg.timestamp is None and msg.originalTimestamp is None:
        content += arrival
    return "seg-" + _digest("content", content)


def _cut(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


def _page_path(properties: Mapping[str, Any], context: Context) -> str | None:
    page = context.page
    path = properties.get("path")
    if not isinstance(path, str) or not path:
        path = page.path if page is not None else None
    if not path:
        url = properties.get("url")
        if not isinstance(url, str):
            url = page.url if page is not None else None
        if url:
            try:
                path = urlsplit(url).path or "/"
            except ValueError:
                path = None
    return _cut(path, 2048)


def _page_view(msg: Page | Screen, event_id: str, ts: int) -> dict[str, Any]:
    props = msg.properties
    page, campaign = msg.context.page, msg.context.campaign or Campaign()
    title = props.get("title")
    referrer = props.get("referrer")
    return {
        "type": EventType.PAGE_VIEW.value,
        "id": event_id,
        "ts": ts,
        "page": _page_path(props, msg.context),
        "props": {
            "title": _cut(title if isinstance(title, str) else msg.name, 256),
            "referrer": _cut(
                referrer
                if isinstance(referrer, str)
                else (page.referrer if page is not None else None),
                2048,
            ),
            "utm_source": _cut(campaign.source, 256),
            "utm_medium": _cut(campaign.medium, 256),
            "utm_campaign": _cut(campaign.name, 256),
            "utm_term": _cut(campaign.term, 256),
            "utm_content": _cut(campaign.content, 256),
        },
    }


def _mapped(msg: Track, mapping: TrackMapping, event_id: str, ts: int) -> dict[str, Any]:
    props: dict[str, Any] = dict(mapping.defaults)
    for name, path in mapping.properties:
        value = lookup(msg.properties, path)
        if value is not MISSING:
            props[name] = value
    if isinstance(props.get("product"), str):  # "Personal Loan" -> personal_loan
        props["product"] = _NOT_PRODUCT.sub("_", props["product"].strip().lower()).strip("_")
    if mapping.type == EventType.CUSTOM:
        props.setdefault("name", msg.event[:64])
    page = msg.context.page
    return {
        "type": mapping.type.value,
        "id": event_id,
        "ts": ts,
        "page": _cut(page.path if page is not None else None, 2048),
        "props": props,
    }


def _custom(msg: Track, event_id: str, ts: int) -> dict[str, Any]:
    """An unmapped `track`: its name and up to 20 scalar properties, cut to size."""
    data: dict[str, Any] = {}
    for key, value in msg.properties.items():
        if len(data) == 20:
            break
        if not 1 <= len(key) <= 64:
            continue
        if isinstance(value, str):
            data[key] = value[:256]
        elif value is None or isinstance(value, bool | int | float):
            data[key] = value
    page = msg.context.page
    return {
        "type": EventType.CUSTOM.value,
        "id": event_id,
        "ts": ts,
        "page": _cut(page.path if page is not None else None, 2048),
        "props": {"name": msg.event[:64], "data": data},
    }


def _event(shape: dict[str, Any], mapping: TrackMapping | None, where: str) -> Event:
    """Validate a mapped event as `/v1/events` would; a refusal names the Segment field."""
    shape["props"] = {k: v for k, v in shape["props"].items() if v is not None}
    try:
        event: Event = msgspec.convert(shape, _EVENT_CLASSES[shape["type"]], strict=False)
        return event
    except msgspec.ValidationError as exc:
        message, path = validation_error(exc)
        raise BadRequest(
            "invalid_event", message, _segment_path(message, path, mapping, where)
        ) from exc


def _segment_path(message: str, path: str, mapping: TrackMapping | None, where: str) -> str:
    """`$.props.amount` of the mapped event (or `$.props` missing `amount`) -> where the
    Segment message should have had it: `$.batch[3].properties.amount`."""
    path = props_path(message, path)
    if not path.startswith("$.props"):
        return where
    prop = path.removeprefix("$.props.").partition(".")[0]
    source = dict(mapping.properties).get(prop) if mapping is not None else None
    if source is not None:
        return f"{where}.properties.{source}"
    if mapping is not None and path != "$.props":
        return f"{where}.event"  # a prop the mapping does not supply: its config is short
    return f"{where}.properties"


# -- Dating --------------------------------------------------------------------------


def _event_time(
    msg: _Message,
    batch_sent_at: int | None,
    receive_ms: int,
    max_age_s: int,
    max_future_s: int,
    where: str,
) -> tuple[int, int | None]:
    """(server-clock time, the sender's raw stamp or None), as `engine.ingest.parse`
    dates `/v1/events`: shifted by the sender clock's offset when it sent `sentAt`."""
    sent_at = _ms(msg.sentAt) if msg.sentAt is not None else batch_sent_at
    offset = 0 if sent_at is None else receive_ms - sent_at
    if abs(offset) > MAX_CLOCK_OFFSET_S * 1000:
        raise BadRequest(
            "sent_at_out_of_range",
            f"sentAt must be the sender's clock at send time, within "
            f"{MAX_CLOCK_OFFSET_S // 86_400} days of the server clock",
            f"{where}.sentAt" if msg.sentAt is not None else "$.sentAt",
        )
    stamp = msg.timestamp or msg.originalTimestamp
    if stamp is None:  # undated: it happened when it arrived (Segment's receivedAt)
        return receive_ms, None
    raw = _ms(stamp)
    ts = raw + offset
    if not receive_ms - max_age_s * 1000 <= ts <= receive_ms + max_future_s * 1000:
        raise BadRequest(
            "timestamp_out_of_range",
            f"the event time must be within {max_age_s}s in the past and {max_future_s}s "
            "in the future of the server clock",
            f"{where}.timestamp",
        )
    return ts, (raw if sent_at is not None else None)


# -- The whole body ------------------------------------------------------------------


class Translator:
    """Messages -> visits and links, a slice at a time (`add`), so the HTTP handler can
    let other requests run between slices of a 2500-message batch; `result` when all
    are in. Raises `BadRequest` naming the first message at fault."""

    def __init__(
        self,
        kind: Kind,
        seg: SegmentConfig,
        *,
        trusted: bool,
        receive_ms: int,
        max_age_s: int,
        max_future_s: int,
        sent_at_ms: int | None = None,
    ) -> None:
        self.kind, self.seg, self.trusted = kind, seg, trusted
        self.receive_ms, self.max_age_s, self.max_future_s = receive_ms, max_age_s, max_future_s
        self.sent_at_ms = sent_at_ms
        self.decoder = _DECODERS[kind]
        self.visits: dict[tuple[str, str | None], Visit] = {}
        self.links: list[Link] = []
        self.messages = self.ignored = self.hints = 0

    def add(self, raw_messages: list[bytes], first_index: int = 0) -> None:
        for i, raw in enumerate(raw_messages, first_index):
            where = "$" if self.kind != "batch" else f"$.batch[{i}]"
            self._one(_decode(self.decoder, raw, where), i, where)
            self.messages += 1

    def result(self) -> Translated:
        return Translated(
            list(self.visits.values()), self.links, self.messages, self.ignored, self.hints
        )

    def _one(self, msg: Message, i: int, where: str) -> None:
        seg = self.seg
        customer_id = None
        if msg.userId is not None:
            if self.trusted:
                customer_id = _customer_id(msg.userId, f"{where}.userId")
            else:
                self.hints += 1
        if isinstance(msg, Alias):
            if customer_id is not None:
                self.links.append(Link(anonymous_id_of(msg.previousId), customer_id))
            else:
                self.ignored += 1
            return
        if msg.anonymousId is not None:
            anonymous_id = anonymous_id_of(msg.anonymousId)
        elif customer_id is not None:
            anonymous_id = _user_anonymous_id(customer_id)
        elif msg.userId is not None:
            raise BadRequest(
                "anonymous_id_required",
                "a browser source's userId is only a hint: send anonymousId",
                f"{where}.anonymousId",
            )
        else:
            raise BadRequest(
                "no_user_anon_id", "every message needs a userId or an anonymousId", where
            )
        if isinstance(msg, Identify):
            if customer_id is not None and msg.anonymousId is not None:
                self.links.append(Link(anonymous_id, customer_id))
            else:
                self.ignored += 1
            return
        mapping: TrackMapping | None = None
        if isinstance(msg, Track):
            mapping = seg.tracks.get(msg.event)
            wanted = mapping is not None or seg.unmapped_tracks == "custom"
        elif isinstance(msg, Page):
            wanted = seg.page == "page_view"
        elif isinstance(msg, Screen):
            wanted = seg.screen == "page_view"
        else:  # group: accounts are not a Ringback concept
            wanted = False
        if not wanted:
            self.ignored += 1
            return
        assert isinstance(msg, Track | Page | Screen)
        ts, ts_raw = _event_time(
            msg, self.sent_at_ms, self.receive_ms, self.max_age_s, self.max_future_s, where
        )
        event_id = _event_id(msg, f"\0{self.receive_ms}:{i}")
        if isinstance(msg, Track):
            shape = (
                _custom(msg, event_id, ts)
                if mapping is None
                else _mapped(msg, mapping, event_id, ts)
            )
        else:
            shape = _page_view(msg, event_id, ts)
        ev = _event(shape, mapping, where)
        ev.ts_raw = ts_raw
        visit = self.visits.get((anonymous_id, customer_id))
        if visit is None:
            visit = self.visits[(anonymous_id, customer_id)] = Visit(anonymous_id, customer_id)
        visit.events.append(ev)


def translate(
    body: bytes,
    kind: Kind,
    seg: SegmentConfig,
    *,
    trusted: bool,
    receive_ms: int,
    max_age_s: int,
    max_future_s: int,
) -> Translated:
    """A whole Segment body (`kind`: the route it came to) as visits and links at once."""
    messages, sent_at_ms = split_body(body, kind, seg)
    translator = Translator(
        kind,
        seg,
        trusted=trusted,
        receive_ms=receive_ms,
        max_age_s=max_age_s,
        max_future_s=max_future_s,
        sent_at_ms=sent_at_ms,
    )
    translator.add(messages)
    return translator.result()
