"""Parsing a `POST /v1/events` body: decode, validate, date each event by the server clock.

The ingest stage's first step, with no HTTP in it, so the live handler
(`engine.http.ingest`) and replay (`ringback rules test`) parse a body the same way,
each passing the time the body arrived (`receive_ms`: the wall clock live, the
recorded `received_at` in a replay).

Event time you can trust. A browser's clock is often seconds, sometimes hours, off;
an event stamped even 300 ms in the future fails a rule's `within()` window. So, as
Segment does, a batch may say when it was sent by the same clock that stamped its
events (`sent_at`, ms); the difference to the server's receive time is the clock's
offset, and every event's `ts` is shifted by it (network latency is counted as skew,
so a corrected time is at most the receive time, never in the future). The raw
stamp is kept in `ts_raw`. Everything after parsing - profile, sessions, decisions -
reads the corrected `ev.ts`. The age and future limits apply to the corrected time,
so a clock 2 h off still sends fine. A `sent_at` more than `MAX_CLOCK_OFFSET_S` (a
year) from the receive time is no clock error but a value in the wrong unit (seconds
land ~55 years off) or made up: `400 sent_at_out_of_range` at `$.sent_at`, rather
than a `timestamp_out_of_range` at every event. Without `sent_at` (older snippets,
server-side sources) nothing is shifted and `ts_raw` stays None.
"""

from __future__ import annotations

import msgspec

from engine.core.errors import BadRequest
from engine.ingest.bodies import (
    MAX_JSON_DEPTH,
    nesting_overflow,
    too_deeply_nested,
    validation_error,
)
from engine.ingest.schema import Batch, decode_batch

__all__ = ["MAX_CLOCK_OFFSET_S", "parse_batch"]

# A clock wrong by a time zone, a day or a mistyped year is corrected; further off,
# `sent_at` is refused (see the module docstring).
MAX_CLOCK_OFFSET_S = 366 * 86_400


def parse_batch(
    body: bytes, receive_ms: int, max_age_s: int, max_future_s: int, max_events: int = 100
) -> Batch:
    """Decode, validate and date a batch by the server clock; every error names its
    JSON path. Event times come back corrected by the batch's `sent_at`, if any."""
    try:
        batch = decode_batch(body)
    except RecursionError as exc:  # msgspec skips unknown fields recursively: ~1000 deep
        raise too_deeply_nested(nesting_overflow(body) or "$") from exc
    except msgspec.ValidationError as exc:
        _check_nesting(body, 0)  # too deep is the answer for a body that is also invalid
        message, path = validation_error(exc)
        raise BadRequest("invalid_event", message, path) from exc
    except msgspec.DecodeError as exc:
        _check_nesting(body, 0)
        raise BadRequest("invalid_json", f"body is not valid JSON: {exc}", "$") from exc
    _check_nesting(body, len(batch.events))
    if len(batch.events) > max_events:
        raise BadRequest("too_many_events", f"at most {max_events} events per batch", "$.events")
    _date_events(batch, receive_ms, max_age_s, max_future_s)
    return batch


def _date_events(batch: Batch, receive_ms: int, max_age_s: int, max_future_s: int) -> None:
    """Shift each event by the client clock's offset, then check the corrected time.

    Nothing is changed unless every event passes, though a refused batch is thrown
    away anyway. `ts_raw` is the engine's to set: whatever a client sent in it is
    overwritten (None without `sent_at`)."""
    sent_at = batch.sent_at
    offset_ms = 0 if sent_at is None else receive_ms - sent_at
    if abs(offset_ms) > MAX_CLOCK_OFFSET_S * 1000:
        raise BadRequest(
            "sent_at_out_of_range",
            f"sent_at must be the client's clock at send time in ms since the epoch, "
            f"within {MAX_CLOCK_OFFSET_S // 86_400} days of the server clock",
            "$.sent_at",
        )
    oldest = receive_ms - max_age_s * 1000
    newest = receive_ms + max_future_s * 1000
    for i, ev in enumerate(batch.events):
        if not oldest <= ev.ts + offset_ms <= newest:
            corrected = "" if sent_at is None else f" (corrected by sent_at: {offset_ms:+d} ms)"
            raise BadRequest(
                "timestamp_out_of_range",
                f"event timestamp{corrected} must be within {max_age_s}s in the past and "
                f"{max_future_s}s in the future of the server clock",
                f"$.events[{i}].ts",
            )
    if sent_at is None:  # the common server-side case: reading is 10x cheaper than writing
        for ev in batch.events:
            if ev.ts_raw is not None:
                ev.ts_raw = None
        return
    for ev in batch.events:
        ev.ts_raw = ev.ts
        ev.ts += offset_ms


def _check_nesting(body: bytes, n_events: int) -> None:
    """Refuse a decoded batch nested deeper than `MAX_JSON_DEPTH` (unknown fields can).

    Cheap for ordinary batches: the batch, its events list and each event are
    containers at depths 1-3, and only what nests inside ONE event adds depth; every
    other event's `props` and `data` (at most two per event on the deepest chain) sit
    beside it. So a body is at most `openers + 1 - n_events - max(0, keys - 2)` deep,
    where `keys` counts `"props"` and `"data"`; only past the cap is it scanned. A hostile body can
    fake those keys inside strings to slip under the estimate: it then decodes
    (msgspec skips what it does not know) or ends in msgspec's RecursionError, which
    `parse_batch` answers with the same 400.
    """
    openers = body.count(b"{") + body.count(b"[")
    siblings = body.count(b'"props"') + body.count(b'"data"')
    if openers + 1 - n_events - max(0, siblings - 2) > MAX_JSON_DEPTH:
        path = nesting_overflow(body, MAX_JSON_DEPTH)
        if path is not None:
            raise too_deeply_nested(path, MAX_JSON_DEPTH)
