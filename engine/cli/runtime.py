"""Process tuning for a latency-sensitive worker: the garbage collector.

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

__all__ = ["GcPauseRecorder", "freeze_startup_objects"]


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
