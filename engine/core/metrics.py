"""Prometheus metrics, defined together and passed around as one object.

Names follow `ringback_<what>_<unit>`; labels only ever take values from closed sets
(event types, error codes, actions), never a customer or visitor id. With several
workers, `serve` sets PROMETHEUS_MULTIPROC_DIR before the workers start and
`/metrics` aggregates every worker's files (`MultiProcessCollector`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from engine.core.vocabulary import EVENT_TYPES

__all__ = ["Metrics", "render_metrics"]

# Sub-millisecond resolution where the hot path lives; up to seconds for outliers.
_FAST_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric Ringback exports. One instance per process (a fresh registry in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # In multiprocess mode the values live in files; the registry is only for tests.
        # `_created` series double the output and no dashboard reads them.
        disable_created_metrics()
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = r
        # Called before every render: hot-path code that counts in plain ints and adds
        # them to the metrics now and then registers its flush here, so a scrape is
        # never behind (engine/delivery/executor.py: rule hits).
        self.before_render: list[Callable[[], None]] = []
        self.events = Counter(
            "ringback_events_total", "Events accepted into profiles", ["type"], registry=r
        )
        self.duplicates = Counter(
            "ringback_duplicates_total",
            "Events dropped as already seen (client retries)",
            registry=r,
        )
        self.rejected = Counter(
            "ringback_rejected_total", "Requests refused, by error code", ["code"], registry=r
        )
        self.batches = Counter(
            "ringback_batches_total", "Event batches by result", ["result"], registry=r
        )
        self.decisions = Counter(
            "ringback_decisions_total", "Decisions made, by action", ["action"], registry=r
        )
        self.triggers = Counter(
            "ringback_triggers_total", "Triggers written, by queue", ["queue"], registry=r
        )
        self.merges = Counter(
            "ringback_merges_total",
            "Anonymous-to-known profile merges, by result",
            ["result"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "ringback_ingest_seconds",
            "Time to handle one POST /v1/events",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.decision_seconds = Histogram(
            "ringback_decision_seconds",
            "Time to decide for one batch",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.valkey_seconds = Histogram(
            "ringback_valkey_seconds",
            "Round trip of one coalesced Valkey pipeline",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.valkey_pipeline_calls = Histogram(
            "ringback_valkey_pipeline_calls",
            "Calls coalesced into one Valkey pipeline",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.valkey_errors = Counter(
            "ringback_valkey_errors_total",
            "Valkey calls that failed (unreachable or fsync timeout)",
            registry=r,
        )
        self.batch_events = Histogram(
            "ringback_batch_events",
            "Events per accepted batch",
            buckets=(1, 2, 5, 10, 20, 50, 100),
            registry=r,
        )
        self.http_requests = Counter(
            "ringback_http_requests_total",
            "HTTP requests by route and status class",
            ["route", "status"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "ringback_webhook_deliveries_total",
            "Webhook delivery attempts by target (from config) and result",
            ["target", "result"],
            registry=r,
        )
        self.webhook_dead_letters = Counter(
            "ringback_webhook_dead_letters_total",
            "Triggers given up on after max attempts, by target",
            ["target"],
            registry=r,
        )
        self.rule_triggers = Counter(
            "ringback_rule_triggers_total",
            "Triggers written, by rule (rule ids come from the loaded rule files)",
            ["rule"],
            registry=r,
        )
        self.rule_hits = Counter(
            "ringback_rule_hits_total", "Rules whose condition matched", ["rule"], registry=r
        )
        self.rule_suppressed = Counter(
            "ringback_rule_suppressed_total",
            "Matched rules that did not act, by reason (policy, consent, holdout, ...)",
            ["rule", "reason"],
            registry=r,
        )
        self.rules_loaded = Gauge(
            "ringback_rules_loaded",
            "Rules in the serving rule set",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.rule_set_loaded_at = Gauge(
            "ringback_rule_set_loaded_timestamp_seconds",
            "When the serving rule set was loaded (changes on every reload)",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.rules_load_errors = Counter(
            "ringback_rules_load_errors_total",
            "Rule set reloads rejected (the previous set kept serving)",
            registry=r,
        )
        self.event_to_trigger_seconds = Histogram(
            "ringback_event_to_trigger_seconds",
            "From receiving the triggering batch to the trigger on the stream",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.callback_round_trips = Histogram(
            "ringback_callback_round_trips",
            "Valkey round trips in sequence from a batch to its contact's trigger written:"
            " 2 when the profile update took the reservation, 3 or more when it was a call"
            " of its own (engine/decisions/precheck.py)",
            buckets=(1, 2, 3, 4, 6, 8),
            registry=r,
        )
        self.trigger_to_claim_seconds = Histogram(
            "ringback_trigger_to_claim_seconds",
            "From a callback's creation to an agent claiming it",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.callback_queue = Gauge(
            "ringback_callback_queue_depth",
            "Callbacks waiting for an agent (all workers see the same value)",
            multiprocess_mode="max",
            registry=r,
        )
        self.agents_online = Gauge(
            "ringback_agents_online",
            "Agents with the live queue open, across workers",
            multiprocess_mode="max",
            registry=r,
        )
        self.valkey_nodes = Gauge(
            "ringback_valkey_nodes",
            "Valkey Cluster nodes in this engine's last topology read, by address and role "
            "(1 = routed to); none on a single node",
            ["node", "role"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.agents_connected = Gauge(
            "ringback_agents_connected",
            "Agent dashboards connected to this engine",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.audit_unreadable = Counter(
            "ringback_audit_records_unreadable_total",
            "Audit records that exist but could not be read: the rule pack's dictionary "
            "they were deflated against is gone from Valkey (see ops/README.md, Valkey "
            "memory)",
            registry=r,
        )
        self.loop_lag = Histogram(
            "ringback_event_loop_lag_seconds",
            "How late the worker's event loop ran a timer due every 250 ms: the wait any "
            "request had for the loop then",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.gc_pause = Histogram(
            "ringback_gc_pause_seconds",
            "Garbage-collector pauses of the event loop, by generation",
            ["generation"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.background_failures = Counter(
            "ringback_background_task_failures_total",
            "Background tasks that crashed",
            ["task"],
            registry=r,
        )
        # The learner (engine/learning): one active process holds the lease; the others
        # leave these alone, so "livemostrecent" reports the holder's value.
        self.learner_lag = Gauge(
            "ringback_learner_lag_seconds",
            "Age of the newest outcome the learner has learned from",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        # The offer bandit's exploration share: explored / slots (engine/decisions/plan.py).
        self.offer_slots = Counter(
            "ringback_offer_slots_total",
            "Page slots filled with an offer",
            registry=r,
        )
        self.offer_explored = Counter(
            "ringback_offer_explored_total",
            "Offer slots whose offer under Thompson sampling differs from the one the "
            "posterior means would pick (exploration)",
            registry=r,
        )
        # Real-time segments (engine/delivery/segment_counts.py); ids come from the rule
        # set's config (at most 32), a closed set.
        self.segment_entries = Counter(
            "ringback_segment_entries_total",
            "Visitors who entered a real-time segment, by segment",
            ["segment"],
            registry=r,
        )
        self.segment_exits = Counter(
            "ringback_segment_exits_total",
            "Visitors who left a real-time segment, by segment",
            ["segment"],
            registry=r,
        )
        self.learner_outcomes = Counter(
            "ringback_learner_outcomes_total",
            "Outcome entries the learner learned from",
            registry=r,
        )
        self.learner_skipped = Counter(
            "ringback_learner_skipped_total",
            "Outcome entries the learner acked without learning, by reason",
            ["reason"],
            registry=r,
        )
        self.ready = Gauge(
            "ringback_store_up",
            "1 when Valkey answered the last readiness check",
            multiprocess_mode="liveall",
            registry=r,
        )
        # Per model (names come from rule and offer ids in config, a closed set). Every
        # worker loads the same snapshots, so the most recent live value is the value.
        self.model_auc = Gauge(
            "ringback_model_auc",
            "Rolling AUC of the serving model snapshot (progressive validation)",
            ["model"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.model_log_loss = Gauge(
            "ringback_model_log_loss",
            "Rolling log loss of the serving model snapshot",
            ["model"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        # Not `_total`: a value set from the snapshot is a gauge, and promtool refuses a
        # gauge named like a counter (a counter would sum over workers).
        self.model_samples = Gauge(
            "ringback_model_samples",
            "Outcomes the serving model snapshot has learned from",
            ["model"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        # Bind the children of closed label sets once: .labels() costs ~1 µs per call.
        self.events_by_type = {t: self.events.labels(t) for t in EVENT_TYPES}
        self.batches_by_result = {r: self.batches.labels(r) for r in ("accepted", "duplicate")}
        # Decisions by action: bound on first use (actions are a closed set).
        self.decisions_by_action: dict[str, Counter] = {}
        for code in ("invalid_json", "invalid_event", "rate_limited", "store_unavailable"):
            self.rejected.labels(code)


def render_metrics(metrics: Metrics) -> bytes:
    """Classic text format (promtool rejects OpenMetrics), aggregated across workers.
    Counts kept locally on the hot path (`Metrics.before_render`) are added first."""
    for flush in metrics.before_render:
        flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(metrics.registry)
