"""`ringback serve`: embedded Valkey, worker processes, graceful shutdown.

One worker runs in this process. With `--workers N` this process becomes a small
supervisor: it starts the embedded Valkey, then N worker processes that each bind
the same port with SO_REUSEPORT (the kernel spreads connections), and forwards
SIGTERM/SIGINT to them. Each worker drains in-flight requests before it exits.
Metrics from all workers are aggregated through PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from engine.embedded import EmbeddedValkey, free_port
from engine.settings import Settings

__all__ = ["serve"]

log = logging.getLogger("ringback.server")


def _print(msg: str) -> None:
    print(msg, flush=True)


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; return the exit code."""
    embedded: EmbeddedValkey | None = None
    url = settings.redis_url
    if not url:
        # fsync mode: Valkey fsyncs once per event-loop turn (its own group commit), so
        # WAITAOF confirms at once; under `everysec` it waited ~100 ms (measured).
        embedded = EmbeddedValkey(
            settings.data_dir / "valkey",
            appendfsync="always" if settings.durability == "fsync" else "everysec",
        )
        url = embedded.start()
        _print(f"embedded valkey-server on 127.0.0.1:{embedded.port} (AOF in {embedded.data_dir})")
    try:
        if settings.workers <= 1:
            return _run_worker(settings, url, reuse_port=False, announce=True)
        return _supervise(settings, url)
    finally:
        if embedded is not None:
            embedded.stop()
            _print("embedded valkey-server stopped")


def _announce(settings: Settings, port: int) -> None:
    base = f"http://{settings.host}:{port}"
    _print(
        f"Ringback serving on {base} (workers: {settings.workers}, "
        f"durability: {settings.durability})"
    )
    for path, what in (
        ("/v1/events", "event ingest"),
        ("/demo", "demo bank site"),
        ("/dashboard", "contact-center dashboard"),
        ("/metrics", "metrics"),
        ("/openapi.json", "API description"),
    ):
        _print(f"  {what:<26} {base}{path}")
    creds = settings.demo_credentials
    if creds:
        _print(f"demo credentials ({settings.data_dir / 'demo-credentials.json'}):")
        _print(f"  api_token       {creds['api_token']}")
        _print(f"  agent login     {creds['agent_user']} / {creds['agent_password']}")
        _print(f"  identity_secret {creds['identity_secret']}")


def _run_worker(
    settings: Settings, url: str, *, reuse_port: bool, announce: bool, ready: Any = None
) -> int:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(
            _serve_async(settings, url, reuse_port=reuse_port, announce=announce, ready=ready)
        )


async def _serve_async(
    settings: Settings, url: str, *, reuse_port: bool, announce: bool, ready: Any = None
) -> int:
    from engine.app import build_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    app = build_app(settings, url)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_timeout_s
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port, backlog=2048)
    await site.start()
    port = settings.port
    server = site._server
    if server is not None and getattr(server, "sockets", None):
        port = server.sockets[0].getsockname()[1]
    if announce:
        _announce(settings, port)
    if ready is not None:
        ready.set()  # tell the supervisor this worker serves
    from engine.app import RULES

    holder = app.get(RULES)
    if holder is not None:
        loop.add_signal_handler(
            signal.SIGHUP, lambda: asyncio.ensure_future(holder.reload("SIGHUP"))
        )
    await stop.wait()
    # Stop accepting, let in-flight requests finish (up to shutdown_timeout), then close.
    from engine.app import INFLIGHT

    await site.stop()
    if not await app[INFLIGHT].wait_idle(settings.shutdown_timeout_s):
        log.warning(
            "%d requests still running after %.0f s; closing anyway",
            app[INFLIGHT].count,
            settings.shutdown_timeout_s,
        )
    await runner.cleanup()
    return 0


def _worker_entry(settings: Settings, url: str, ready: Any) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s [worker {os.getpid()}] %(message)s",
    )
    sys.exit(_run_worker(settings, url, reuse_port=True, announce=False, ready=ready))


def _wait_for_port(host: str, port: int, alive: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _supervise(settings: Settings, url: str) -> int:
    from dataclasses import replace

    if settings.port == 0:
        settings = replace(settings, port=free_port(settings.host))
    metrics_dir = tempfile.mkdtemp(prefix="ringback-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in range(settings.workers)]
    workers = [
        ctx.Process(target=_worker_entry, args=(settings, url, ev), daemon=False) for ev in ready
    ]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for w in workers:
            if w.pid and w.is_alive():
                os.kill(w.pid, signal.SIGTERM)

    def reload_rules(signum: int, _frame: object) -> None:
        for w in workers:
            if w.pid and w.is_alive():
                os.kill(w.pid, signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload_rules)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for w in workers:
            w.start()
        # Announce only when every worker serves, so "ready" means the whole pool.
        deadline = time.monotonic() + 60
        while not stopping and time.monotonic() < deadline and not all(ev.is_set() for ev in ready):
            if any(not w.is_alive() for w in workers):
                break
            time.sleep(0.05)
        if all(ev.is_set() for ev in ready):
            _announce(settings, settings.port)
        from prometheus_client import multiprocess

        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(timeout=0.2)
                if not w.is_alive() and w.pid and w.exitcode is not None:
                    multiprocess.mark_process_dead(w.pid, metrics_dir)
            if not stopping and any(not w.is_alive() for w in workers):
                log.error("a worker exited unexpectedly; stopping the others")
                forward(signal.SIGTERM, None)
        # A worker still booting when we asked everyone to stop dies of that SIGTERM
        # (-15) before it could install its handler: that is a clean stop too.
        clean = (0, -signal.SIGTERM) if stopping else (0,)
        codes = [w.exitcode for w in workers]
        if any(code not in clean for code in codes):
            log.error("worker exit codes: %s", codes)
            return 1
        return 0
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
