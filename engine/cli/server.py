"""`ringback serve`: embedded Valkey, worker processes, graceful shutdown.

One worker runs in this process. With `--workers N` this process becomes a small
supervisor: it starts the embedded Valkey, then N worker processes that each bind
the same port with SO_REUSEPORT (the kernel spreads connections), and forwards
SIGTERM/SIGINT (stop) and SIGHUP (reload rules) to them. Each worker drains in-flight
requests before it exits. SIGHUP never stops the engine, rules or not.
A worker that dies while serving is replaced (state lives in Valkey, so any worker
can serve any request); one that dies before it ever served stops the whole pool,
since its replacement would die the same way. Metrics from all workers (dead ones
included: their counts happened) are aggregated through PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from engine.cli.runtime import GcPauseRecorder, LoopLagRecorder, freeze_startup_objects
from engine.core.errors import ConfigError
from engine.core.settings import DEMO_CREDENTIALS_FILE, Settings
from engine.valkey.embedded import (
    DataDirInUse,
    EmbeddedValkey,
    Watchdog,
    die_with_parent,
    free_port,
)

__all__ = ["serve"]

log = logging.getLogger("ringback.server")

# Exit code of a worker that could not start for a reason the user can fix.
_EXIT_USAGE = 2
# Respawn budget: more deaths than this within the window means something is wrong
# that a restart will not fix; stop the pool rather than crash-loop.
_MAX_RESPAWNS = 5
_RESPAWN_WINDOW_S = 60.0
# Signals a worker handles only once its event loop runs; blocked (kept pending) until then.
_HANDLED_LATE = {signal.SIGHUP, signal.SIGINT}


def _print(msg: str) -> None:
    print(msg, flush=True)


def _fail(msg: str) -> None:
    print(f"ringback: {msg}", file=sys.stderr, flush=True)


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; return the exit code."""
    # SIGHUP's default action is to terminate, and a rules deploy may send it while we
    # boot: it stays pending (blocked, in this thread and every thread and child started
    # from here) until a handler is in place (the worker's loop, or the supervisor's).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    if settings.workers > 1:
        # Check what every worker would trip over once, here, before starting anything:
        # one clear line instead of one traceback per worker.
        _check_rules(settings)
        if settings.port == 0:
            settings = replace(settings, port=free_port(settings.host))
        problem = _port_problem(settings.host, settings.port)
        if problem is None and settings.metrics.port is not None:
            problem = _port_problem(settings.metrics.host, settings.metrics.port)
        if problem:
            _fail(problem)
            return _EXIT_USAGE
    embedded: EmbeddedValkey | None = None
    watchdog: Watchdog | None = None
    url = settings.redis_url
    if not url:
        # fsync mode: Valkey fsyncs once per event-loop turn (its own group commit), so
        # WAITAOF confirms at once; under `everysec` it waited ~100 ms (measured).
        embedded = EmbeddedValkey(
            settings.data_dir / "valkey",
            appendfsync="always" if settings.durability == "fsync" else "everysec",
            die_with_parent=True,  # a SIGKILLed engine must not leave Valkey behind
        )
        try:
            url = embedded.start()
        except DataDirInUse as exc:
            raise ConfigError(str(settings.data_dir), "--data-dir", str(exc)) from exc
        _print(
            f"embedded valkey-server on 127.0.0.1:{embedded.port} "
            f"(pid {embedded.pid}, AOF in {embedded.data_dir})"
        )
        watchdog = Watchdog(embedded, say=_print)
        watchdog.start()  # inherits SIGHUP blocked: the kernel hands it to this thread
    try:
        if settings.workers <= 1:
            return _run_worker(settings, url, reuse_port=False, announce=True)
        return _supervise(settings, url)
    finally:
        if watchdog is not None:
            watchdog.stop()  # stops the server too, whichever thread started it
            _print("embedded valkey-server stopped")


def _check_rules(settings: Settings) -> None:
    if settings.rules_dir is None:
        return
    from engine.core.metrics import Metrics
    from engine.http.app import load_rule_holder

    load_rule_holder(settings.rules_dir, Metrics())  # raises ConfigError


def _port_problem(host: str, port: int) -> str | None:
    """Is the port free? Workers bind with SO_REUSEPORT and would silently share a
    port with any other SO_REUSEPORT server of this user (another `ringback serve`
    included), splitting its traffic; a plain bind fails on any listener."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


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
        if path == "/metrics" and settings.metrics.port is not None:
            metrics_host = settings.metrics.host
            if ":" in metrics_host:
                metrics_host = f"[{metrics_host}]"
            _print(f"  {what:<26} http://{metrics_host}:{settings.metrics.port}{path}")
            continue
        _print(f"  {what:<26} {base}{path}")
    if settings.demo_credentials:
        # Only where they are: stdout ends up in log shippers, secrets must not.
        _print(
            "demo credentials (admin API token, agent login, identity secret): "
            f"{settings.data_dir / DEMO_CREDENTIALS_FILE} (mode 0600)"
        )


def _run_worker(
    settings: Settings, url: str, *, reuse_port: bool, announce: bool, ready: Any = None
) -> int:
    import uvloop

    # SIGHUP arrives blocked (by `serve`, or for a pool's worker by `_Worker.start`) and
    # is unblocked once the loop's handler is in place.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(
            _serve_async(settings, url, reuse_port=reuse_port, announce=announce, ready=ready)
        )


async def _serve_async(
    settings: Settings, url: str, *, reuse_port: bool, announce: bool, ready: Any = None
) -> int:
    from engine.http.app import build_app
    from engine.http.ops import build_metrics_app
    from engine.http.state import INFLIGHT, METRICS, RULES

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    app = build_app(settings, url)
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        holder = app.get(RULES)
        if holder is None:
            log.info("SIGHUP: no rules directory to reload")
            return
        task = asyncio.ensure_future(holder.reload("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_LATE)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s,
        auto_decompress=False,  # engine.ingest.bodies inflates request bodies, capped and in steps
        # Snowplow's GET /i carries a whole event in its query string (up to the 64 KB
        # `[snowplow] max_event_bytes`); aiohttp's default request line is 8 KB, past
        # which its own parser answers a plain-text 400 no client can read as ours.
        max_line_size=65_536,
    )
    # From the app's startup on its background tasks run: whatever happens, clean them up,
    # or the event loop's shutdown waits on them forever (seen: a busy port hung `serve`).
    gc_pauses = GcPauseRecorder(app[METRICS])
    gc_pauses.start()
    loop_lag = LoopLagRecorder(app[METRICS])
    loop_lag.start()
    metrics_runner: web.AppRunner | None = None
    try:
        await runner.setup()
        freeze_startup_objects()  # after startup: what exists now lives as long as we do
        site = web.TCPSite(
            runner, settings.host, settings.port, reuse_port=reuse_port, backlog=2048
        )
        try:
            await site.start()
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            _fail(f"cannot listen on {settings.host}:{settings.port}: {reason or exc}")
            return _EXIT_USAGE
        if settings.metrics.port is not None:
            # /metrics on its own listener, in every worker like the main port: the
            # numbers are aggregated across workers, so any worker answers for the pool.
            metrics_runner = web.AppRunner(
                build_metrics_app(settings, app[METRICS]),
                handle_signals=False,
                access_log=None,
                shutdown_timeout=settings.shutdown_timeout_s,
            )
            await metrics_runner.setup()
            metrics_site = web.TCPSite(
                metrics_runner,
                settings.metrics.host,
                settings.metrics.port,
                reuse_port=reuse_port,
            )
            try:
                await metrics_site.start()
            except OSError as exc:
                reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                _fail(
                    f"cannot listen on {settings.metrics.host}:{settings.metrics.port} "
                    f"(metrics): {reason or exc}"
                )
                return _EXIT_USAGE
        port = settings.port
        sockets = getattr(site._server, "sockets", None)  # port 0: the one it picked
        if sockets:
            port = sockets[0].getsockname()[1]
        if announce:
            _announce(settings, port)
        if ready is not None:
            ready.set()  # tell the supervisor this worker serves
        await stop.wait()
        # Stop accepting (new connections are refused), let in-flight requests finish
        # (up to shutdown_timeout), then close.
        await site.stop()
        if not await app[INFLIGHT].wait_idle(settings.shutdown_timeout_s):
            log.warning(
                "%d requests still running after %.0f s; closing anyway",
                app[INFLIGHT].count,
                settings.shutdown_timeout_s,
            )
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
        gc_pauses.stop()
        loop_lag.stop()
    return 0


def _worker_entry(settings: Settings, url: str, ready: Any, supervisor: int) -> None:
    # A SIGKILLed supervisor must not leave workers serving on its port without it.
    die_with_parent(supervisor)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s [worker {os.getpid()}] %(message)s",
    )
    try:
        code = _run_worker(settings, url, reuse_port=True, announce=False, ready=ready)
    except ConfigError as exc:
        _fail(f"config error: {exc}")
        code = _EXIT_USAGE
    sys.exit(code)


class _Worker:
    def __init__(self, ctx: Any, settings: Settings, url: str) -> None:
        self.ready = ctx.Event()
        self.process = ctx.Process(
            target=_worker_entry, args=(settings, url, self.ready, os.getpid()), daemon=False
        )
        self.started = False

    def start(self) -> None:
        # The child inherits these blocked: a reload forwarded, or the terminal's Ctrl-C,
        # while it boots waits for its handlers instead of killing it with a traceback
        # (our SIGTERM stops it). Ours are delivered on unblock.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_LATE)
        try:
            self.process.start()
            self.started = True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    @property
    def pid(self) -> int | None:
        pid = self.process.pid
        return int(pid) if pid is not None else None

    def alive(self) -> bool:
        return self.started and self.process.is_alive()

    def signal(self, sig: int) -> None:
        if self.alive() and self.pid:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def _supervise(settings: Settings, url: str) -> int:
    from prometheus_client import multiprocess

    metrics_dir = tempfile.mkdtemp(prefix="ringback-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    workers = [_Worker(ctx, settings, url) for _ in range(settings.workers)]
    stopping = False
    respawns: list[float] = []
    told: set[int] = set()  # workers already sent SIGTERM

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for w in workers:
            if w.pid not in told and w.alive():
                told.add(w.pid)  # type: ignore[arg-type]
                w.signal(signal.SIGTERM)

    def reload_rules(signum: int, _frame: object) -> None:
        for w in workers:
            w.signal(signal.SIGHUP)

    def reap(w: _Worker) -> None:
        if w.started and not w.process.is_alive() and w.pid:
            multiprocess.mark_process_dead(w.pid, metrics_dir)

    signal.signal(signal.SIGHUP, reload_rules)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked since serve()
    try:
        for w in workers:
            if stopping:
                break
            w.start()
        if stopping:  # a signal raced the start: reach the workers it missed
            forward(signal.SIGTERM, None)
        # Announce only when every worker serves, so "ready" means the whole pool.
        deadline = time.monotonic() + 60
        failed: _Worker | None = None
        while not stopping and not all(w.ready.is_set() for w in workers):
            # One that served and then died is replaced below, like any later death.
            failed = next((w for w in workers if not w.alive() and not w.ready.is_set()), None)
            if failed is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not stopping and all(w.ready.is_set() for w in workers):
            _announce(settings, settings.port)
        elif not stopping:
            # A worker that never served would fail the same way again: stop the pool.
            log.error("worker did not start (exit code %s); stopping", _exitcode(failed))
            forward(signal.SIGTERM, None)
            _wait_all(workers, settings, reap)
            return _EXIT_USAGE if _exitcode(failed) == _EXIT_USAGE else 1

        while not stopping:
            for i, w in enumerate(workers):
                w.process.join(timeout=0.2 / len(workers))
                if stopping or w.alive():
                    continue
                reap(w)
                now = time.monotonic()
                respawns[:] = [t for t in respawns if now - t < _RESPAWN_WINDOW_S]
                if len(respawns) >= _MAX_RESPAWNS:
                    log.error(
                        "%d workers died within %.0f s; stopping",
                        len(respawns) + 1,
                        _RESPAWN_WINDOW_S,
                    )
                    forward(signal.SIGTERM, None)
                    _wait_all(workers, settings, reap)
                    return 1
                respawns.append(now)
                log.error(
                    "worker %s exited unexpectedly (code %s); starting a replacement",
                    w.pid,
                    _exitcode(w),
                )
                workers[i] = _Worker(ctx, settings, url)
                workers[i].start()
        forward(signal.SIGTERM, None)  # reach a replacement started as the signal came
        if not _wait_all(workers, settings, reap):
            return 1
        # A worker still booting when we asked everyone to stop dies of that SIGTERM
        # (-15) before it could install its handler: that is a clean stop too.
        codes = [w.process.exitcode for w in workers if w.started]
        if any(code not in (0, -signal.SIGTERM) for code in codes):
            log.error("worker exit codes: %s", codes)
            return 1
        return 0
    finally:
        for w in workers:  # never leave a worker behind, whatever happened above
            if w.alive():
                w.process.kill()
                w.process.join(5)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _exitcode(w: _Worker | None) -> int | None:
    if w is None or not w.started or w.process.exitcode is None:
        return None
    return int(w.process.exitcode)


def _wait_all(workers: list[_Worker], settings: Settings, reap: Any) -> bool:
    """Wait for every worker to exit after SIGTERM; SIGKILL the ones that hang."""
    # Draining takes up to shutdown_timeout_s; each cleanup step is bounded to 5 s.
    deadline = time.monotonic() + settings.shutdown_timeout_s + 30
    while any(w.alive() for w in workers) and time.monotonic() < deadline:
        for w in workers:
            w.process.join(timeout=0.1)
            reap(w)
    hung = [w for w in workers if w.alive()]
    for w in hung:
        log.error("worker %s did not stop in time; killing it", w.pid)
        w.process.kill()
        w.process.join(5)
        reap(w)
    return not hung
