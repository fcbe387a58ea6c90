"""Process tuning for a latency-sensitive worker: the garbage collector, and how
late the event loop runs (`LoopLagRecorder`).

Measured with `benchmarks/callback_bench.py` (RESULTS.md): full (generation 2)
collections paused the event loop for 22-63 ms, ten times in 40 s at ~1,200
batches/s, and those pauses were the p99. After startup nearly every object (modules,
the rule set, the app and its routes) lives as long as the process; `gc.freeze()`
moves them out of the collector's sight, so a full collection scans only what requests
left behind (pauses in the same run: 417 ms in all, longest 63 ms -> 102 ms, 18 ms).
`ringback_gc_pause_seconds` lets operators see what is left.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import time
from typing import Any

from engine.core.metrics import Metrics

__all__ = ["GcPauseRecorder", "LoopLagRecorder", "freeze_startup_objects"]


def freeze_startup_objects() -> None:
    """Collect once, then exempt every object alive now from future collections."""
    gc.collect()
    gc.freeze()


class GcPauseRecorder:
    """Records every collection's duration; `flush()` moves them into the histogram.

    The gc callback must not touch prometheus_client itself: in multiprocess mode every
    metric value sits behind one non-reentrant lock, and a collection can start while
    that lock is held (creating a label child allocates), so observing from the
    callback can deadlock the worker (found in review, reproduced). The callback only
    appends to a deque; the event loop flushes it once a second.
    """

    def __init__(self, metrics: Metrics, flush_s: float = 1.0) -> None:
        self._by_generation = [metrics.gc_pause.labels(str(g)) for g in range(3)]
        self._pending: collections.deque[tuple[int, float]] = collections.deque(maxlen=10_000)
        self._started = 0.0
        self.flush_s = flush_s
        self._task: asyncio.Task[None] | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = min(int(info.get("generation", 2)), 2)
            self._pending.append((generation, time.perf_counter() - self._started))

    def flush(self) -> None:
        while self._pending:
            generation, seconds = self._pending.popleft()
            self._by_generation[generation].observe(seconds)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            self.flush()

    def start(self) -> None:
        gc.callbacks.append(self._callback)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gc-pauses")

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        if self._task is not None:
            self._task.cancel()
        self.flush()


class LoopLagRecorder:
    """Observes, every `interval_s`, how late the loop ran a timer it was due to run:
    `ringback_event_loop_lag_seconds`.

    Every request of a worker waits for its one event loop, several times (the body,
    each Valkey reply, the answer): a late timer is the wait any of them had then,
    whatever held the loop (a long callback, a collection, the process not scheduled on
    a busy machine). The latency benchmarks found p99s that moved 4 -> 26 ms between
    10-second legs of the same load on a shared 2-vCPU box; this histogram tells an
    operator whether the engine's loop was late (this worker is the bottleneck: more
    workers or cores) or on time (look at Valkey or the network). A timer every 250 ms
    costs ~10 µs a second; the observation runs on the loop, so it never contends with
    a collection for prometheus_client's lock (see `GcPauseRecorder`).
    """

    def __init__(self, metrics: Metrics, interval_s: float = 0.25) -> None:
        self._lag = metrics.loop_lag
        self.interval_s = interval_s
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._lag.observe(max(0.0, now - self._due))
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
