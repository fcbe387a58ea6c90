"""Triggers for agents: claim, complete, outcomes, and the live WebSocket queue.

Claiming is one server-side call on the trigger's own slot (`rb_claim`): exactly one
agent wins; the others get 409 with who took it, and every dashboard hears about it
at once because the claim is published on the trigger's shard stream, which every
worker's gateway follows with XREAD. Outcomes go to the outcomes stream (for the
learner) and to the customer's contact history (for the next agent and the rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import orjson
from aiohttp import WSMsgType, web

from engine import keys, refs, streams
from engine.agents import Principal, authenticate
from engine.appkeys import METRICS, SETTINGS, STORE
from engine.bodies import read_json_body
from engine.capacity import dequeue, is_phone_work
from engine.deliver import decode_fields, index_entry, publish_event, read_audit
from engine.errors import BadRequest, ClientError, Forbidden, NotFound
from engine.http_errors import json_response
from engine.metrics import Metrics
from engine.policy import ANONYMOUS_HISTORY_TTL_S, HISTORY_MAX
from engine.presence import PresenceWatcher
from engine.security import is_own_origin
from engine.store import Store
from engine.tasks import finish

__all__ = ["Gateway", "handle_claim", "handle_complete", "handle_outcome", "handle_ws"]

log = logging.getLogger("ringback.triggers")

T = TypeVar("T")

OUTCOMES = ("connected", "no_answer", "converted", "not_interested")
OUTCOMES_MAXLEN = 1_000_000  # and trimmed by age (refs.STREAM_KEEP_MS)
TRIGGER_ID_RE = r"^[0-9a-f]{24}$"


class Conflict(ClientError):
    status = 409


class Gone(ClientError):
    status = 410


class OutcomeBody(msgspec.Struct, forbid_unknown_fields=True):
    decision_id: str
    outcome: Literal[
        "connected", "no_answer", "converted", "not_interested", "clicked", "dismissed", "applied"
    ]
    value: float | None = None


class CompleteBody(msgspec.Struct, forbid_unknown_fields=True):
    outcome: Literal["connected", "no_answer", "converted", "not_interested"]
    value: float | None = None
    note: Annotated[str, msgspec.Meta(max_length=500)] | None = None


async def _read_json(request: web.Request) -> bytes:
    """The body, inflated if compressed, size- and depth-capped (engine.bodies)."""
    return await read_json_body(request, request.app[SETTINGS].limits.max_body_bytes)


def _decode_body(raw: bytes, kind: type[T]) -> T:
    """Typed JSON body; errors carry the JSON path, like event batches."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `")
        raise BadRequest("invalid_outcome", message or str(exc), where.rstrip("`") or "$") from exc
    except msgspec.DecodeError as exc:
        raise BadRequest("invalid_json", str(exc), "$") from exc


def _trigger_id(request: web.Request) -> str:
    trigger_id = request.match_info["trigger_id"]
    if len(trigger_id) != 24 or not all(c in "0123456789abcdef" for c in trigger_id):
        raise BadRequest("invalid_trigger_id", "trigger ids are 24 hex digits", "$.trigger_id")
    return trigger_id


async def handle_claim(request: web.Request) -> web.Response:
    principal = await authenticate(request, state_changing=True)
    trigger_id = _trigger_id(request)
    store = request.app[STORE]
    now_ms = int(time.time() * 1000)
    # Only phone work is claimable: an e-mail/SMS notification (a do-not-call
    # customer's "call me") must never reach an agent's phone.
    created = await store.call("HGET", keys.trigger_record(trigger_id), "data")
    if created is not None and not is_phone_work(orjson.loads(created)):
        raise Conflict("not_claimable", "this is an e-mail/SMS notification, not a callback")
    res = await store.fcall("rb_claim", [keys.trigger_record(trigger_id)], [principal.name, now_ms])
    if res[0] == "unknown":
        raise NotFound("not_found", "no such trigger")
    if res[0] == "expired":
        raise Gone("expired", "this callback has expired and was withdrawn")
    if res[0] == "taken":
        raise Conflict("already_claimed", f"already claimed by {res[1]}")
    shard = int(await store.call("HGET", keys.trigger_record(trigger_id), "shard") or 0)
    await dequeue(store, trigger_id)
    with contextlib.suppress(ValueError, TypeError, AttributeError, orjson.JSONDecodeError):
        created_ms = int(orjson.loads(created).get("created_ms") or 0)
        if created_ms:
            request.app[METRICS].trigger_to_claim_seconds.observe(
                max(0.0, (now_ms - created_ms) / 1000)
            )
    await publish_event(
        store,
        shard,
        {"kind": "claimed", "trigger_id": trigger_id, "by": principal.name, "at_ms": now_ms},
    )
    return json_response({"trigger_id": trigger_id, "claimed_by": principal.name})


async def handle_complete(request: web.Request) -> web.Response:
    principal = await authenticate(request, state_changing=True)
    trigger_id = _trigger_id(request)
    body = _decode_body(await _read_json(request), CompleteBody)
    store = request.app[STORE]
    now_ms = int(time.time() * 1000)
    override = "1" if principal.role in ("supervisor", "system") else "0"
    res = await store.fcall(
        "rb_complete",
        [keys.trigger_record(trigger_id)],
        [principal.name, body.outcome, now_ms, override],
    )
    if res[0] == "unknown":
        raise NotFound("not_found", "no such trigger")
    if res[0] == "not_claimed":
        raise Conflict("not_claimed", "claim the callback before completing it")
    if res[0] == "not_yours":
        raise Forbidden("not_yours", f"claimed by {res[1]}")
    if res[0] == "done":
        raise Conflict("already_completed", f"already completed: {res[1]}")
    trigger = orjson.loads(res[1])
    shard_s, prefix = await store.call("HMGET", keys.trigger_record(trigger_id), "shard", "prefix")
    prefix = prefix or str(trigger.get("prefix") or "")  # the record knows whose it is
    trigger["prefix"] = prefix
    shard = int(shard_s) if shard_s is not None else keys.trigger_shard(prefix or trigger_id)
    try:
        if shard_s is None:  # the record went right after rb_complete: erased
            raise refs.Erased(trigger_id)
        await record_outcome(
            store, trigger, body.outcome, body.value, principal, now_ms, note=body.note
        )
    except refs.Erased:
        # The customer was erased while this completion ran: nothing of it is kept, the
        # dashboards drop the callback, and the agent hears it no longer exists.
        await publish_event(
            store, shard, {"kind": "withdrawn", "trigger_id": trigger_id, "reason": "erased"}
        )
        raise NotFound("not_found", "no such trigger") from None
    await publish_event(
        store,
        shard,
        {
            "kind": "completed",
            "trigger_id": trigger_id,
            "by": principal.name,
            "outcome": body.outcome,
            "at_ms": now_ms,
        },
    )
    return json_response({"trigger_id": trigger_id, "outcome": body.outcome})


def born_ms(record: dict[str, Any]) -> int:
    """When a trigger (`created_ms`) or decision (`at_ms`) was made: what the erasure
    marker is compared with. 0 when unknown, so an erasure always wins.

    >>> born_ms({"created_ms": 5}), born_ms({"at_ms": "7"}), born_ms({})
    (5, 7, 0)
    """
    for name in ("created_ms", "at_ms"):
        value = record.get(name)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
    return 0


async def record_outcome(
    store: Store,
    trigger: dict[str, Any],
    outcome: str,
    value: float | None,
    principal: Principal,
    now_ms: int,
    *,
    note: str | None = None,
) -> None:
    """Outcomes stream (learning) + the customer's contact history (context).

    The agent's note goes to both, so the next agent reads it and erasure removes it
    with the customer: the outcome entry is recorded in the profile's index. Raises
    `refs.Erased` (having deleted what it wrote) when the customer was erased after
    the trigger or decision was made: an erasure running alongside cannot see this
    write, so the write checks the erasure marker itself (`rb_refs`, `rb_history`).
    """
    prefix = str(trigger.get("prefix") or "")
    born = born_ms(trigger)
    entry: dict[str, Any] = {
        "kind": "outcome",
        "decision_id": trigger.get("id", ""),
        "rule": trigger.get("rule", ""),
        "channel": trigger.get("channel", "callback"),
        "outcome": outcome,
        "by": principal.name,
        "ts": now_ms,
    }
    if value is not None:
        entry["value"] = value
    if note:
        entry["note"] = note
    stream = keys.outcome_stream(keys.trigger_shard(prefix or str(trigger.get("id"))))
    add = store.call(
        "XADD",
        stream,
        "MAXLEN",
        "~",
        OUTCOMES_MAXLEN,
        "*",
        *[x for kv in entry.items() for x in (kv[0], str(kv[1]))],
        writes=True,
    )
    entry_id, _ = await asyncio.gather(add, refs.stream_trim(store, stream, now_ms))
    if prefix:
        indexed, kept = await asyncio.gather(
            index_entry(store, prefix, stream, str(entry_id), born),
            _append_history(store, prefix, entry, born),
        )
        if not (indexed and kept):
            await store.call("XDEL", stream, entry_id, writes=True)
            raise refs.Erased(prefix)


async def _append_history(store: Store, prefix: str, entry: dict[str, Any], born: int) -> bool:
    """`policy.append_history`, refused (False, nothing written) when the profile was
    erased at or after `born`: the function also gets the erasure marker (KEYS[8])."""
    arg = {"entry": entry, "max": HISTORY_MAX, "born": born}
    fn_keys = [*keys.profile_keys(prefix), keys.profile_erased(prefix)]
    if await store.fcall("rb_history", fn_keys, [orjson.dumps(arg)]) == "erased":
        return False
    if keys.is_anonymous(prefix):  # as policy.append_history: it goes with the profile
        hist = keys.profile_keys(prefix)[4]
        await store.call("EXPIRE", hist, ANONYMOUS_HISTORY_TTL_S, writes=True)
    return True


async def handle_outcome(request: web.Request) -> web.Response:
    """`POST /v1/outcomes` from bank systems (API token): {decision_id, outcome, value?}."""
    from engine.appkeys import SETTINGS
    from engine.security import require_api_token

    name = require_api_token(request.app[SETTINGS], request)
    body = _decode_body(await _read_json(request), OutcomeBody)
    store = request.app[STORE]
    audit = await read_audit(store, body.decision_id)
    if audit is None:
        raise NotFound(
            "unknown_decision", "no decision with this id (or older than 30 days)", "$.decision_id"
        )
    try:
        await record_outcome(
            store,
            audit,
            body.outcome,
            body.value,
            Principal(name, "system", "token"),
            int(time.time() * 1000),
        )
    except refs.Erased:  # erased while this ran: as if the decision never existed
        raise NotFound(
            "unknown_decision", "no decision with this id (or older than 30 days)", "$.decision_id"
        ) from None
    return json_response({"decision_id": body.decision_id, "recorded": True})


class Gateway:
    """Follows every triggers shard and fans entries out to this worker's WebSockets."""

    def __init__(
        self,
        store: Store,
        shards: int = keys.TRIGGER_SHARDS,
        *,
        presence_poll_s: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.streams = [keys.trigger_stream(i) for i in range(shards)]
        self.sockets: set[web.WebSocketResponse] = set()
        # "Online now" for the open triggers, polled only while an agent is connected.
        self.presence = PresenceWatcher(
            store,
            self.broadcast,
            poll_s=presence_poll_s,
            active=lambda: bool(self.sockets),
            metrics=metrics,
        )
        self.ready = asyncio.Event()  # following from known positions
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="trigger-gateway")
        await self.presence.start()

    async def stop(self) -> None:
        """Let the read loop end at its next short block rather than cancel a command
        mid-flight (cancelling redis-py inside XREAD BLOCK could hang app cleanup)."""
        self._stopping = True
        await self.presence.stop()
        await finish(self._task)
        for ws in list(self.sockets):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.close(), 2.0)

    async def _follow(self) -> None:
        # Resolve "$" once: re-sending "$" on every XREAD would miss entries added
        # between two reads of an idle stream.
        client = self.store.client
        last: dict[str, str] = {}
        while not last and not self._stopping:
            try:
                for stream in self.streams:
                    newest = await streams.xrevrange(client, stream, count=1)
                    last[stream] = newest[0][0] if newest else "0-0"
            except asyncio.CancelledError:
                raise
            except Exception:
                last = {}
                log.exception("trigger gateway cannot read the streams; retrying in 1 s")
                self._failed()
                await asyncio.sleep(1)
        # What was open before this worker started is watched too.
        with contextlib.suppress(Exception):
            for msg in await self._open_triggers():
                self.presence.observe(msg)
        self.ready.set()
        while not self._stopping:
            try:
                reply = await streams.xread(client, last, block_ms=_READ_BLOCK_MS, count=100)
                for stream, entries in reply:
                    for entry_id, fields in entries:
                        last[stream] = entry_id
                        msg = _decode(entry_id, fields)
                        if not _for_agents(msg):
                            continue  # an e-mail/SMS notification: webhooks' work, not agents'
                        self.presence.observe(msg)
                        await self.broadcast(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("trigger gateway read failed; retrying in 1 s")
                self._failed()
                await asyncio.sleep(1)

    def _failed(self) -> None:
        if self.metrics is not None:
            self.metrics.background_failures.labels("trigger_gateway").inc()

    async def broadcast(self, message: dict[str, Any]) -> None:
        data = orjson.dumps(message).decode()
        for ws in list(self.sockets):
            try:
                await ws.send_str(data)
            except (ConnectionError, RuntimeError):
                self.sockets.discard(ws)

    async def snapshot(self, limit: int = 500) -> list[dict[str, Any]]:
        """Open triggers for a newly connected dashboard, with presence as of now."""
        triggers = await self._open_triggers(limit)
        for t in triggers:
            online = self.presence.online(str(t.get("id")))
            if online is not None:
                t["online"] = online
        return triggers

    async def _open_triggers(self, limit: int = 500) -> list[dict[str, Any]]:
        """Open triggers: the recent entries of every shard, folded by trigger id."""
        client = self.store.client
        open_: dict[str, dict[str, Any]] = {}
        now_ms = int(time.time() * 1000)
        for stream in self.streams:
            for entry_id, fields in reversed(await streams.xrevrange(client, stream, count=limit)):
                msg = _decode(entry_id, fields)
                kind = msg.get("kind")
                if kind in ("callback", "notify"):
                    if is_phone_work(msg):  # only phone work is claimable
                        open_[str(msg.get("id"))] = msg
                elif kind == "claimed" and msg.get("trigger_id") in open_:
                    open_[msg["trigger_id"]]["claimed_by"] = msg.get("by")
                elif kind in ("completed", "withdrawn"):
                    open_.pop(str(msg.get("trigger_id")), None)
        return [t for t in open_.values() if int(t.get("expires_ms") or 0) > now_ms]


def _for_agents(msg: dict[str, Any]) -> bool:
    """Stream entries the dashboards get: phone callbacks and state changes, never an
    e-mail/SMS notification (a do-not-call customer's "call me" must not be claimable)."""
    return msg.get("kind") not in ("callback", "notify") or is_phone_work(msg)


# How long one XREAD waits for new triggers. Stopping waits for the read in flight to
# end (cancelling redis-py inside XREAD BLOCK could hang shutdown), so this bounds how
# long a worker's stop takes; an idle worker pays 10 cheap reads a second for it.
_READ_BLOCK_MS = 100


def _decode(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    return {"entry": entry_id, **decode_fields(fields)}


GATEWAY = web.AppKey("gateway", Gateway)


async def handle_ws(request: web.Request) -> web.WebSocketResponse:
    """`GET /v1/triggers/ws`: the live queue. Cookie or token; same-origin pages only."""
    origin = request.headers.get("Origin")
    if origin is not None and not is_own_origin(request.app[SETTINGS], origin, request):
        raise Forbidden("origin_not_allowed", "the dashboard connects from its own origin")
    principal = await authenticate(request)
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    gateway = request.app[GATEWAY]
    await ws.send_str(
        orjson.dumps(
            {"kind": "snapshot", "user": principal.name, "triggers": await gateway.snapshot()}
        ).decode()
    )
    gateway.sockets.add(ws)
    request.app[METRICS].agents_connected.inc()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        gateway.sockets.discard(ws)
        request.app[METRICS].agents_connected.dec()
    return ws
