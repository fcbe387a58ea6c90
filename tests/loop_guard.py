"""A guard that fails a test when the engine blocks its event loop.

The engine serves every request of a worker on one event loop: a handler that
blocks it (a CPU-heavy hash, a synchronous call) stalls everyone else. While an
in-process engine is serving (`make_engine` in conftest.py starts the guard), every
loop callback is timed, and one that keeps the loop from running others for more
than 50 ms is recorded, with its stack sampled by a watchdog thread while it ran, so
a failure names the blocking code.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent

# Why not plain asyncio debug mode (`slow_callback_duration`): it times wall clock,
# and on a loaded machine (load 7 on 2 cores here) a 2 ms callback that the OS
# preempts "takes" 70-280 ms. So the time the loop thread spent waiting for a CPU
# (Linux schedstat) is subtracted: what remains is time the callback ran or sat
# blocked (sleep, synchronous I/O), i.e. time it alone kept the loop from others.
#
# Callbacks that ran the engine's code fail the test, and so do those that ran only
# aiohttp's: the server's socket-read callback parses (and, before engine.bodies,
# inflated) request bodies with no engine frame on the stack, and a stall there
# stalls the engine as surely as one in a handler. Blocking in test code (fixture
# setup, a test body hashing a password) is the test's business and is reported as a
# warning, as is a slow `Thread.start()`. Opt out with @pytest.mark.allow_loop_blocking.

ENGINE_DIR = str(REPO / "engine") + os.sep
TESTS_DIR = str(REPO / "tests") + os.sep
AIOHTTP_DIR = str(Path(aiohttp.__file__).resolve().parent) + os.sep
LOOP_BLOCK_LIMIT_S = 0.05


class LoopBlockedWarning(UserWarning):
    """Test code (not the engine) blocked the event loop past the limit."""


@dataclass
class SlowCallback:
    """One loop callback that blocked the loop past the limit."""

    callback: str  # the handle's repr (a task's step shows its coroutine)
    blocked_s: float  # wall time minus time spent waiting for a CPU or collecting garbage
    wall_s: float
    cpu_s: float  # CPU time of the loop thread during the callback
    gc_s: float  # time in the cyclic garbage collector (not the callback's doing)
    stack: list[traceback.FrameSummary]  # the callback's frames, outermost first

    @property
    def culprit(self) -> str | None:
        """Whose code the callback ran: "engine", "tests", "thread start" or None.

        The first engine or tests frame (outermost first) decides: a test body that
        calls into the engine or aiohttp's client is the test's. With neither on the
        stack, aiohttp's frames count as the engine's: it is the server the engine
        runs in (the culprit is then named "engine" so every caller that fails on
        "engine" fails on it; `describe` says it was aiohttp).

        "thread start": the loop thread sat in `Thread.start()` waiting for the new
        thread (e.g. `asyncio.to_thread` growing its pool) to be scheduled. On an idle
        machine that takes ~0.1 ms; past 50 ms it measures the machine's load."""
        if any(f.name == "start" and f.filename == threading.__file__ for f in self.stack):
            return "thread start"
        for frame in self.stack:
            if frame.filename.startswith(ENGINE_DIR):
                return "engine"
            if frame.filename.startswith(TESTS_DIR):
                return "tests"
        if self.in_aiohttp:
            return "engine"
        if ENGINE_DIR in self.callback or "RequestHandler" in self.callback:
            return "engine"
        if TESTS_DIR in self.callback:
            return "tests"
        return None

    @property
    def in_aiohttp(self) -> bool:
        """Ran aiohttp's code and neither the engine's nor the tests'."""
        in_project = (ENGINE_DIR, TESTS_DIR)
        if any(f.filename.startswith(in_project) for f in self.stack):
            return False
        return any(f.filename.startswith(AIOHTTP_DIR) for f in self.stack) or (
            not self.stack and AIOHTTP_DIR in self.callback
        )

    def describe(self) -> str:
        frames = "".join(traceback.format_list(self.stack[-12:])) or "    (no stack sampled)\n"
        where = " (in aiohttp, serving the engine)" if self.in_aiohttp else ""
        return (
            f"blocked {self.blocked_s * 1000:.0f} ms (wall {self.wall_s * 1000:.0f} ms, "
            f"cpu {self.cpu_s * 1000:.0f} ms, gc {self.gc_s * 1000:.0f} ms){where} "
            f"in {self.callback[:400]}\n"
            f"  sampled while it ran (innermost last):\n{frames}"
        )


class LoopBlockGuard:
    """Records callbacks that block `loop` for more than `limit_s` while started.

    Times `asyncio.events.Handle._run` (every callback and task step of the pure
    asyncio loop the tests run on; uvloop's handles are compiled and not covered)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit_s: float = LOOP_BLOCK_LIMIT_S):
        self.loop = loop
        self.limit_s = limit_s
        self.slow: list[SlowCallback] = []
        self._reported = 0
        self._loop_thread = 0
        self._current: object = None
        self._since = 0.0
        self._sample: list[traceback.FrameSummary] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schedstat = -1
        self._original_run: Any = None
        self._gc_s = 0.0  # total time in gc on the loop thread since start
        self._gc_started = 0.0

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Call from the loop's thread. Idempotent."""
        if self._thread is not None:
            return
        self._loop_thread = threading.get_ident()
        try:
            self._schedstat = os.open(
                f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY
            )
        except OSError:
            self._schedstat = -1  # no schedstat: wall clock only
        self._original_run = asyncio.events.Handle._run
        original, guard = self._original_run, self

        def timed_run(handle: asyncio.Handle) -> None:
            if threading.get_ident() != guard._loop_thread:
                return original(handle)  # type: ignore[no-any-return]
            return guard._timed(original, handle)

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]
        gc.callbacks.append(self._on_gc)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="loop-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        asyncio.events.Handle._run = self._original_run  # type: ignore[method-assign]
        gc.callbacks.remove(self._on_gc)
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._schedstat >= 0:
            os.close(self._schedstat)
            self._schedstat = -1

    def engine_blocks(self) -> list[SlowCallback]:
        return [s for s in self.slow if s.culprit == "engine"]

    def take_new(self) -> list[SlowCallback]:
        """Slow callbacks not yet reported (each is reported once)."""
        new, self._reported = self.slow[self._reported :], len(self.slow)
        return new

    def _run_queue_wait_s(self) -> float:
        if self._schedstat < 0:
            return 0.0
        return int(os.pread(self._schedstat, 64, 0).split()[1]) / 1e9

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self._loop_thread:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self._gc_s += time.perf_counter() - self._gc_started
            self._gc_started = 0.0

    def _timed(self, original: Any, handle: asyncio.Handle) -> None:
        outer = self._current, self._since, self._sample  # callbacks do not nest, but be safe
        wait0, cpu0, gc0 = self._run_queue_wait_s(), time.thread_time(), self._gc_s
        self._sample = []
        self._since = started = time.perf_counter()
        self._current = handle
        try:
            original(handle)
        finally:
            wall = time.perf_counter() - started
            if wall >= self.limit_s:
                gc_s = self._gc_s - gc0
                blocked = wall - (self._run_queue_wait_s() - wait0) - gc_s
                if blocked >= self.limit_s:
                    cpu = time.thread_time() - cpu0
                    self.slow.append(
                        SlowCallback(
                            _describe_handle(handle), blocked, wall, cpu, gc_s, self._sample
                        )
                    )
            self._current, self._since, self._sample = outer

    def _watch(self) -> None:
        """Sample the loop thread's stack once per callback that runs past half the limit.
        (It cannot while the loop thread holds the GIL off-CPU; then there is no sample.)"""
        sampled: object = None
        while not self._stop.wait(0.005):
            current = self._current
            if current is None or current is sampled:
                continue
            if time.perf_counter() - self._since >= self.limit_s / 2:
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None and self._current is current:
                    self._sample = _callback_frames(traceback.extract_stack(frame))
                sampled = current


def _describe_handle(handle: asyncio.Handle) -> str:
    """A task step's handle shows only a wrapper: name the task (and its coroutine)."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    return f"step of {task!r}" if isinstance(task, asyncio.Task) else repr(handle)


def _callback_frames(stack: traceback.StackSummary) -> list[traceback.FrameSummary]:
    """The frames inside the callback: everything after the guard's timed `_run`."""
    frames = list(stack)
    for i in range(len(frames) - 1, -1, -1):
        if frames[i].name == "_timed" and frames[i].filename == __file__:
            return frames[i + 2 :]  # skip `_timed` and asyncio's own `Handle._run`
    return frames
