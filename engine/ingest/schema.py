"""The wire format of `POST /v1/events`, as typed msgspec structs.

This module is the server's half of the contract whose browser half is
`sdk-js/index.d.ts`; change both together. Decoding is validation: msgspec
rejects a wrong type or an out-of-range value with the JSON path at fault
(`$.events[3].props.amount`), which `ingest` passes to the client as is.

Each event type carries its own typed `props`, selected by the `type` tag, so
a `calc` event cannot arrive without a numeric amount and a `form` event has
nowhere to put a field's value.

Unknown fields are ignored (a newer snippet may send more), but a body may nest
at most `engine.ingest.bodies.MAX_JSON_DEPTH` (32) levels of objects and arrays; deeper
is `400 too_deeply_nested` at the path where the cap is passed. A batch itself
needs five: batch, events, event, props, custom data.

>>> batch = decode_batch(b'{"site":"demo-bank","anonymous_id":"a1234567",'
...     b'"events":[{"id":"e1","type":"page_view","ts":1700000000000,"page":"/loans"}]}')
>>> batch.events[0].page
'/loans'
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from engine.core.vocabulary import EVENT_TYPES

__all__ = [
    "EVENT_TYPES",
    "MAX_EVENTS_PER_BATCH",
    "Batch",
    "CalcEvent",
    "CalcProps",
    "ClickEvent",
    "CustomEvent",
    "Event",
    "FormEvent",
    "HeartbeatEvent",
    "InterestEvent",
    "PageViewEvent",
    "ScrollEvent",
    "decode_batch",
    "event_type",
]

MAX_EVENTS_PER_BATCH = 100

# Identifiers: short, and free of characters that could break a Valkey hash tag.
EventId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
ANONYMOUS_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
AnonymousIdPattern = re.compile(ANONYMOUS_ID_PATTERN)
AnonymousId = Annotated[str, Meta(pattern=ANONYMOUS_ID_PATTERN)]
SiteKey = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Product = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]
TsMs = Annotated[int, Meta(ge=0, le=10**14)]
Page = Annotated[str, Meta(max_length=2048)]
ShortText = Annotated[str, Meta(max_length=256)]
Name = Annotated[str, Meta(min_length=1, max_length=64)]
Token = Annotated[str, Meta(min_length=1, max_length=4096)]

Scalar = ShortText | int | float | bool | None

# Documents a field the engine fills in (OpenAPI `readOnly`): a client need not send it.
_ENGINE_SET = {"readOnly": True, "description": "set by the engine; ignored if sent"}


class PageViewProps(Struct, forbid_unknown_fields=False, omit_defaults=True, frozen=True):
    """A page load or SPA route change; campaign parameters measure where intent comes from."""

    title: ShortText | None = None
    referrer: Page | None = None
    utm_source: ShortText | None = None
    utm_medium: ShortText | None = None
    utm_campaign: ShortText | None = None
    utm_term: ShortText | None = None
    utm_content: ShortText | None = None


class ClickProps(Struct, forbid_unknown_fields=False, omit_defaults=True, frozen=True):
    text: ShortText | None = None
    href: Page | None = None
    element_id: ShortText | None = None


class ScrollProps(Struct, forbid_unknown_fields=False, frozen=True):
    depth: Literal[25, 50, 75, 100]


class HeartbeatProps(Struct, forbid_unknown_fields=False, omit_defaults=True, frozen=True):
    # Visible time on the page since the previous heartbeat, so dwell adds up exactly.
    dwell_ms: Annotated[int, Meta(ge=0, le=3_600_000)] = 0


class CalcProps(Struct, forbid_unknown_fields=False, omit_defaults=True, frozen=True):
    """Loan-calculator state: the strongest intent signal a bank website has."""

    product: Product
    amount: Annotated[float, Meta(ge=0, le=1e10)]
    term_months: Annotated[int, Meta(ge=1, le=600)]
    rate: Annotated[float, Meta(ge=0, le=100)] | None = None
    monthly_payment: Annotated[float, Meta(ge=0, le=1e9)] | None = None


class FormProps(Struct, forbid_unknown_fields=True, frozen=True):
    """Field interaction by name only; there is deliberately no place for a value."""

    field: Name
    action: Literal["focus", "abandon", "submit"]
    form: Name | None = None


class InterestProps(Struct, forbid_unknown_fields=False, omit_defaults=True, frozen=True):
    product: Product
    # True when the visitor explicitly asked to be called back.
    call_me: bool = False


class CustomProps(Struct, forbid_unknown_fields=False, omit_defaults=True, frozen=True):
    name: Name
    data: Annotated[dict[Name, Scalar], Meta(max_length=20)] = {}


class _EventBase(
    Struct, tag_field="type", forbid_unknown_fields=False, omit_defaults=True, kw_only=True
):
    id: EventId
    # After `engine.ingest.parse`: the server-clock time (the client's stamp shifted by
    # the batch's clock offset when it sent `sent_at`); `ts_raw` is then the client's
    # stamp. `ts_raw` is the engine's, not the wire's: parsing overwrites what a client
    # sends in it, and it stays None for a batch without `sent_at`.
    ts: TsMs
    page: Page | None = None
    ts_raw: Annotated[TsMs | None, Meta(extra_json_schema=_ENGINE_SET)] = None


class PageViewEvent(_EventBase, tag="page_view"):
    props: PageViewProps = PageViewProps()


class ClickEvent(_EventBase, tag="click"):
    props: ClickProps = ClickProps()


class ScrollEvent(_EventBase, tag="scroll"):
    props: ScrollProps


class HeartbeatEvent(_EventBase, tag="heartbeat"):
    props: HeartbeatProps = HeartbeatProps()


class CalcEvent(_EventBase, tag="calc"):
    props: CalcProps


class FormEvent(_EventBase, tag="form"):
    props: FormProps


class InterestEvent(_EventBase, tag="interest"):
    props: InterestProps


class CustomEvent(_EventBase, tag="custom"):
    props: CustomProps


Event = (
    PageViewEvent
    | ClickEvent
    | ScrollEvent
    | HeartbeatEvent
    | CalcEvent
    | FormEvent
    | InterestEvent
    | CustomEvent
)


class Batch(Struct, forbid_unknown_fields=False):
    """One `POST /v1/events` body: what the snippet flushes every second or 20 events."""

    site: SiteKey
    anonymous_id: AnonymousId
    events: Annotated[list[Event], Meta(min_length=1, max_length=MAX_EVENTS_PER_BATCH)]
    identity: Token | None = None
    # The sender's clock (ms) when it sent the batch: event times are corrected by its
    # offset to the server's receive time (`engine.ingest.parse`).
    sent_at: Annotated[TsMs | None, Meta(description="sender's clock at send time, ms")] = None


_decoder = msgspec.json.Decoder(Batch)


def decode_batch(body: bytes) -> Batch:
    """Decode and validate a batch; raises `msgspec.ValidationError`/`DecodeError`."""
    return _decoder.decode(body)


# Tagged structs carry their tag in the class, not the instance: look it up once.
_TYPE_OF: dict[type, str] = {
    cls: cls.__struct_config__.tag  # type: ignore[misc]
    for cls in (
        PageViewEvent,
        ClickEvent,
        ScrollEvent,
        HeartbeatEvent,
        CalcEvent,
        FormEvent,
        InterestEvent,
        CustomEvent,
    )
}


def event_type(event: Event) -> str:
    """The wire `type` of an event (`'calc'`, `'page_view'`, ...)."""
    return _TYPE_OF[type(event)]
