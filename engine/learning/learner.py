"""The learner: the one process that turns outcomes into model snapshots.

One learner is active across every worker and host: it holds a lease in Valkey
(`keys.learner_lease()`, `SET NX PX`), renewed every third of its TTL only while it
is still its own (a compare-and-set script); when it dies the lease expires and
another takes over. The others wait and try again.

The active learner reads every outcomes shard through the consumer group `learner`
(created at id 0, so outcomes recorded before the first learner ran are learned
too: they and their audit records live about as long). For each entry it takes the
label (positive: converted, applied, clicked; negative: not_interested, no_answer,
dismissed; anything else, `connected` say, is not a label), joins it to the feature
snapshot the decision's audit record took at decision time (never the profile as it
is now), and lets the decision's model learn (predict first: progressive
validation; engine/learning/model.py). A decision is learned once, from its first
label in stream order (`keys.decision_learned`): a call that was `converted` and
whose sale is credited to it days later, or an offer clicked and then signed, is one
positive, not two, so the models' rates stay calibrated (a live run learned callback
models at 0.149 against an observed 0.086 before this).

No outcome is lost, and none is learned twice: an entry is acked only after a
snapshot that includes it is published (every `publish_every` samples or
`publish_interval_s`). A learner that takes over restores every model from its last
snapshot, then learns exactly the entries left pending: its own (read again from
id 0 after a failure) and a dead learner's (`XAUTOCLAIM` once they are idle for
the lease's TTL, by when that learner's lease has expired). The one window is a
crash between a publish and its ack, which re-learns that batch.

Learning is CPU work in the serving process's loop, so entries are read in batches
and the loop is yielded to every `_YIELD_EVERY` samples; no request handler learns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from engine.core.metrics import Metrics
from engine.core.tasks import finish
from engine.core.vocabulary import Action, Outcome
from engine.decisions.features import CROSSES
from engine.delivery.records import AUDIT_TTL_S, read_audit
from engine.learning import labels
from engine.learning.model import PropensityModel
from engine.models.registry import publish
from engine.models.snapshot import decode
from engine.valkey import keys, streams
from engine.valkey.store import Store

__all__ = ["GROUP", "NEGATIVE", "POSITIVE", "Learner", "label", "model_name"]

log = logging.getLogger("ringback.learner")

GROUP = "learner"
POSITIVE: tuple[str, ...] = (Outcome.CONVERTED, Outcome.APPLIED, Outcome.CLICKED)
NEGATIVE: tuple[str, ...] = (
    Outcome.NOT_INTERESTED,
    Outcome.NO_ANSWER,
    Outcome.DISMISSED,
    Outcome.IGNORED,
)

# KEYS[1] the lease; ARGV[1] our id, ARGV[2] the TTL in ms. 1 when it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] the lease; ARGV[1] our id. Deletes it only if it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_YIELD_EVERY = 64  # samples learned between two yields to the event loop (~3 ms)


def label(outcome: str) -> bool | None:
    """The training label of an outcome; None when it is not one (yet).

    >>> label("converted"), label("no_answer"), label("connected")
    (True, False, None)
    """
    if outcome in POSITIVE:
        return True
    if outcome in NEGATIVE:
        return False
    return None


def model_name(audit: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """The model a decision's outcome trains: the one its audit record names, else by
    the contract (`offer:<offer>` for an offer, `callback:<rule>` for a contact).

    >>> model_name({"model": {"name": "offer:x"}}, {}), model_name({"action": "offer",
    ...     "offer": "o1"}, {}), model_name({"action": "callback"}, {"rule": "r1"})
    ('offer:x', 'offer:o1', 'callback:r1')
    """
    model = audit.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str) and model["name"]:
        return str(model["name"])
    if audit.get("action") == Action.OFFER:
        return f"offer:{audit['offer']}" if audit.get("offer") else None
    rule = audit.get("rule") or entry.get("rule")
    return f"callback:{rule}" if rule else None


def _features(audit: dict[str, Any]) -> dict[str, float | str] | None:
    raw = audit.get("features")
    if not isinstance(raw, dict) or not raw:
        return None
    out: dict[str, float | str] = {}
    for k, v in raw.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, int | float):  # bool too: 1.0 / 0.0
            out[k] = float(v)
    return out or None


class Learner:
    """The background learner of one process; `start()` it in every worker, and at
    most one of them learns at a time (the lease holder)."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        crosses: Iterable[Sequence[str]] | None = None,
        shards: int = keys.TRIGGER_SHARDS,
        lease_ttl_ms: int = 15_000,
        batch: int = 500,
        idle_s: float = 0.2,
        publish_every: int = 1000,
        publish_interval_s: float = 5.0,
        model_options: dict[str, Any] | None = None,
        sweep_interval_s: float = 5.0,
    ) -> None:
        if lease_ttl_ms < 100:
            raise ValueError("lease_ttl_ms must be >= 100")
        if batch < 1 or publish_every < 1:
            raise ValueError("batch and publish_every must be >= 1")
        self.store = store
        self.metrics = metrics
        self.crosses = [(str(a), str(b)) for a, b in (CROSSES if crosses is None else crosses)]
        self.streams = [keys.outcome_stream(i) for i in range(shards)]
        self.lease_ttl_ms = lease_ttl_ms
        self.renew_s = lease_ttl_ms / 3000
        self.batch = batch
        self.idle_s = idle_s
        self.publish_every = publish_every
        self.publish_interval_s = publish_interval_s
        self.model_options = model_options or {}
        # Label windows that closed (an impression never clicked) become `ignored`
        # outcomes, swept by the active learner only (engine/learning/labels.py).
        self.sweep_interval_s = sweep_interval_s
        self._swept_at = 0.0
        # Our consumer name in the group, and what the lease holds while it is ours.
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.holding = False
        self.learned = 0  # samples learned by this learner (all models)
        self.acked = 0  # entries this learner acked (XACK said so)
        self.models: dict[str, PropensityModel] = {}
        self._renew_at = 0.0
        self._reclaim_due = False
        self._reset = True  # restore from snapshots, re-read our pending entries
        self._pos: dict[str, str] = {}
        self._unacked: dict[str, list[str]] = {}
        self._pending_ids: set[tuple[str, str]] = (
            set()
        )  # (stream, entry id): ids repeat across shards
        self._dirty: set[str] = set()
        # Decisions learned since the last publish: their `decision_learned` markers are
        # written with it, before the ack (a learner that dies first leaves no marker,
        # and its successor learns them again from the pending entries).
        self._learned_decisions: set[str] = set()
        self._dirty_samples = 0
        self._published_at = time.monotonic()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="learner")

    async def stop(self) -> None:
        """Stop at the next batch: publish what was learned, ack it, hand the lease on."""
        self._stopping = True
        await finish(self._task, timeout_s=10.0)

    async def run(self) -> None:
        try:
            while not self._stopping:
                try:
                    if not await self._hold():
                        await asyncio.sleep(min(self.renew_s, 1.0))
                        continue
                    if self._reset:
                        await self._take_over()
                    elif self._reclaim_due:
                        self._reclaim_due = False
                        await self._reclaim()
                    if time.monotonic() - self._swept_at >= self.sweep_interval_s:
                        self._swept_at = time.monotonic()
                        await labels.sweep(self.store, int(time.time() * 1000))
                    learned = await self._step()
                    if self._publish_due():
                        await self._publish()
                    if not learned:
                        await asyncio.sleep(self.idle_s)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("learner failed; starting again from the snapshots in 1 s")
                    self.metrics.background_failures.labels("learner").inc()
                    self._reset = True
                    await asyncio.sleep(1.0)
            if self.holding:
                with contextlib.suppress(Exception):
                    if self._dirty or self._pending_ids:
                        await self._publish()
                    await self.store.call(
                        "EVAL", _RELEASE, 1, keys.learner_lease(), self.id, writes=True
                    )
                self.holding = False
        finally:
            self.holding = False

    # -- the lease ---------------------------------------------------------------------

    async def _hold(self) -> bool:
        """Whether we are the active learner: take the lease when it is free, renew it
        every third of its TTL while it is ours."""
        now = time.monotonic()
        if self.holding and now < self._renew_at:
            return True
        lease = keys.learner_lease()
        if self.holding:
            ours = await self.store.call(
                "EVAL", _RENEW, 1, lease, self.id, self.lease_ttl_ms, writes=True
            )
            if not ours:
                log.warning("learner lease lost; another learner is active")
                self.holding = False
                self._reset = True
                return False
        else:
            taken = await self.store.call(
                "SET", lease, self.id, "NX", "PX", self.lease_ttl_ms, writes=True
            )
            if not taken:
                return False
            log.info("learner %s is the active learner", self.id)
            self.holding = True
            self._reset = True
        self._renew_at = now + self.renew_s
        self._reclaim_due = True
        return True

    # -- reading -------------------------------------------------------------------------

    async def _take_over(self) -> None:
        """Start from what was published: every model's last snapshot; then our own
        pending entries (from id 0) and a dead learner's."""
        for stream in self.streams:
            try:
                await self.store.call(
                    "XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM", writes=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        index: dict[str, str] = await self.store.call("HGETALL", keys.MODEL_INDEX) or {}
        names = list(index)
        raws = await asyncio.gather(
            *(self.store.call("GET", keys.model_snapshot(n)) for n in names)
        )
        self.models = {}
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                continue
            try:
                snap = decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("snapshot of %s does not decode; it starts afresh", name)
                continue
            self.models[name] = PropensityModel.restore(snap, self.crosses, **self.model_options)
        self._pos = dict.fromkeys(self.streams, "0")
        self._unacked = {s: [] for s in self.streams}
        self._pending_ids = set()
        self._dirty = set()
        self._learned_decisions = set()
        self._dirty_samples = 0
        self._published_at = time.monotonic()
        self._reset = False
        self._reclaim_due = False
        await self._reclaim()

    async def _reclaim(self) -> None:
        """Take over entries another consumer read and never acked: a learner that
        died. Idle for the lease's TTL means its lease has expired by now."""
        for stream in self.streams:
            start = "0-0"
            for _ in range(100):  # bounded: the rest waits for the next renewal
                reply = await self.store.call(
                    "XAUTOCLAIM",
                    stream,
                    GROUP,
                    self.id,
                    self.lease_ttl_ms,
                    start,
                    "COUNT",
                    self.batch,
                    writes=True,
                )
                start = str(reply[0])
                await self._learn_entries(stream, reply[1])
                if start == "0-0":
                    break

    async def _step(self) -> int:
        """One read of every shard (no BLOCK: a cluster serves each shard from its own
        node, and an idle learner just sleeps) and the learning of what came back."""
        replies = await asyncio.gather(
            *(
                self.store.call(
                    "XREADGROUP",
                    "GROUP",
                    GROUP,
                    self.id,
                    "COUNT",
                    self.batch,
                    "STREAMS",
                    stream,
                    self._pos[stream],
                    writes=True,
                )
                for stream in self.streams
            )
        )
        learned = 0
        for stream, reply in zip(self.streams, replies, strict=True):
            entries: list[tuple[str, dict[str, str] | None]] = reply[0][1] if reply else []
            if self._pos[stream] != ">":
                # Re-reading our own pending entries: from the last one seen, until none.
                self._pos[stream] = entries[-1][0] if entries else ">"
            learned += await self._learn_entries(stream, entries)
        if not learned:
            self.metrics.learner_lag.set(0.0)  # caught up
        return learned

    async def _learn_entries(
        self, stream: str, entries: Sequence[tuple[str, dict[str, str] | None]]
    ) -> int:
        # Each entry once until it is acked: a claimed entry is ours to read again from
        # id 0, and our own unacked ones come back from XAUTOCLAIM once idle.
        fresh = [(eid, f) for eid, f in entries if (stream, eid) not in self._pending_ids]
        decoded = [(eid, streams.decode_fields(f) if f else None) for eid, f in fresh]
        ids = [str(d.get("decision_id") or "") if d else "" for _, d in decoded]
        named = [i for i in ids if i]
        audits, markers = await asyncio.gather(
            asyncio.gather(*(read_audit(self.store, i) for i in named)),
            asyncio.gather(*(self.store.call("EXISTS", keys.decision_learned(i)) for i in named)),
        )
        by_id = dict(zip(named, audits, strict=True))
        done = {i for i, m in zip(named, markers, strict=True) if m} | self._learned_decisions
        learned = 0
        newest_ts_ms = 0
        for (entry_id, entry), decision_id in zip(decoded, ids, strict=True):
            self._unacked.setdefault(stream, []).append(entry_id)
            self._pending_ids.add((stream, entry_id))
            if decision_id in done and entry and label(str(entry.get("outcome") or "")) is not None:
                # One label per decision: the first in stream order. A later one (the
                # sale credited to a call already `converted`) is evidence for the
                # uplift report, not a second sample.
                self.metrics.learner_skipped.labels("already_labelled").inc()
                continue
            reason = self._learn_one(entry, by_id.get(decision_id))
            if reason:
                self.metrics.learner_skipped.labels(reason).inc()
                continue
            done.add(decision_id)
            self._learned_decisions.add(decision_id)
            learned += 1
            assert entry is not None
            with contextlib.suppress(TypeError, ValueError):
                newest_ts_ms = max(newest_ts_ms, int(entry.get("ts") or 0))
            if learned % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if learned:
            self.learned += learned
            self._dirty_samples += learned
            self.metrics.learner_outcomes.inc(learned)
            if newest_ts_ms:
                lag_s = max(0.0, time.time() - newest_ts_ms / 1000)
                self.metrics.learner_lag.set(lag_s)
        return learned

    def _learn_one(self, entry: dict[str, Any] | None, audit: dict[str, Any] | None) -> str:
        """Learn from one entry; the reason it was skipped, or "" when it was learned."""
        if entry is None:
            return "deleted"
        y = label(str(entry.get("outcome") or ""))
        if y is None:
            return "not_a_label"
        if audit is None:
            return "no_audit"
        if audit.get("holdout") is True or audit.get("suppressed"):
            # Not treated: the control group's conversions prove value (uplift), but
            # nobody was shown or called, so they say nothing about who responds.
            return "not_treated"
        x = _features(audit)
        if x is None:
            return "no_features"
        name = model_name(audit, entry)
        if name is None:
            return "no_model"
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = PropensityModel(name, self.crosses, **self.model_options)
        model.learn(x, y)
        self._dirty.add(name)
        return ""

    # -- publishing ------------------------------------------------------------------------

    def _publish_due(self) -> bool:
        if self._dirty_samples >= self.publish_every:
            return True
        waited = time.monotonic() - self._published_at >= self.publish_interval_s
        return waited and bool(self._dirty or self._pending_ids)

    async def _publish(self) -> None:
        """Publish every model that learned, then ack what they learned from. The
        lease is checked first: a learner that lost it publishes nothing."""
        self._renew_at = 0.0
        if not await self._hold() or self._reset:
            return
        names = sorted(self._dirty)
        versions = await asyncio.gather(
            *(self.store.call("HGET", keys.MODEL_INDEX, n) for n in names)
        )
        now_ms = int(time.time() * 1000)
        for name, version in zip(names, versions, strict=True):
            snap = self.models[name].export(int(version or 0) + 1, now_ms)
            await publish(self.store, snap)
        await asyncio.gather(
            *(
                self.store.call(
                    "SET", keys.decision_learned(d), 1, "NX", "EX", AUDIT_TTL_S, writes=True
                )
                for d in self._learned_decisions
            )
        )
        acks = await asyncio.gather(
            *(
                self.store.call("XACK", stream, GROUP, *ids, writes=True)
                for stream, ids in self._unacked.items()
                if ids
            )
        )
        self.acked += sum(int(a) for a in acks)
        self._unacked = {s: [] for s in self.streams}
        self._pending_ids = set()
        self._dirty = set()
        self._learned_decisions = set()
        self._dirty_samples = 0
        self._published_at = time.monotonic()
