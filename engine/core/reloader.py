"""Hot reload of a directory of files (rules), without a restart.

A `Reloadable` holds the current loaded value and swaps it atomically: a request
that already took `.current` keeps deciding with it, the next one sees the new one.
A load that raises keeps the previous value serving; the error (file:line:col from
the loader) goes to the log and to metrics. Reloads happen when the directory's
files change (polled: no extra dependency, works on every filesystem), on SIGHUP,
and through the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

__all__ = ["Reloadable", "directory_fingerprint"]

log = logging.getLogger("ringback.reload")

T = TypeVar("T")


def directory_fingerprint(path: Path) -> str:
    """Names, sizes and mtimes of every file: changes when anything is edited."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class Reloadable(Generic[T]):
    """The current value loaded from `path`, replaced only by a load that succeeds."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        *,
        errors: Counter,
        version: Gauge,
        poll_s: float = 1.0,
        on_loaded: Callable[[T], None] | None = None,
    ) -> None:
        self.path = path
        self._load = load
        self._errors = errors
        self._version = version
        self.poll_s = poll_s
        self.current: T = load(path)  # a broken set at startup is fatal: fail loudly
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self._fingerprint = directory_fingerprint(path)
        self._version.set(self.loaded_at)
        # Told of every value that starts serving (metrics such as the rule count), at
        # startup and after each reload, whatever triggered it.
        self._on_loaded = on_loaded
        if on_loaded is not None:
            on_loaded(self.current)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def reload(self, reason: str) -> bool:
        """Try to load; True if the new value now serves."""
        async with self._lock:
            # File system work off the event loop: a slow or networked disk must not
            # stall ingest.
            self._fingerprint = await asyncio.to_thread(directory_fingerprint, self.path)
            try:
                value = await asyncio.to_thread(self._load, self.path)
            except Exception as exc:
                self.last_error = str(exc)
                self._errors.inc()
                log.error(
                    "rules reload (%s) rejected, previous rules keep serving:\n%s", reason, exc
                )
                return False
            self.current = value
            self.loaded_at = time.time()
            self.last_error = None
            self._version.set(self.loaded_at)
            if self._on_loaded is not None:
                self._on_loaded(value)
            log.info("rules reloaded (%s) from %s", reason, self.path)
            return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                fingerprint = await asyncio.to_thread(directory_fingerprint, self.path)
                if fingerprint != self._fingerprint:
                    await self.reload("files changed")
            except OSError as exc:
                log.warning("cannot read %s: %s", self.path, exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self.watch(), name="rules-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
