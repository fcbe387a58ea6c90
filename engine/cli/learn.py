"""`ringback learn`: run the learner on its own until SIGTERM/SIGINT.

The process takes part in the learner lease like any worker would: it learns while
it holds the lease and waits while another learner (a `serve` worker, another host)
does. Handy where learning should run apart from the serving hosts.
"""

from __future__ import annotations

import argparse

from engine.cli.command_valkey import add_cluster_option

__all__ = ["register"]


def register(sub: argparse._SubParsersAction, name: str) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        name,
        help="learn propensity models from outcomes (one active learner across hosts)",
    )
    p.add_argument(
        "--redis",
        help="Valkey URL (default: REDIS_URL, or the data dir's embedded Valkey)",
    )
    add_cluster_option(p)
    p.add_argument("--config")
    p.add_argument("--data-dir", default=".ringback")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    import uvloop

    from engine.cli.command_valkey import Target, command_valkey
    from engine.core.metrics import Metrics
    from engine.learning.learner import Learner
    from engine.valkey.store import Store

    async def run(target: Target) -> None:
        metrics = Metrics()
        # Model snapshots and label bookkeeping as durable as the workers' writes.
        store = Store(target.url, metrics, cluster=target.cluster, replica_acks=target.replica_acks)
        learner = Learner(store, metrics)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        learner.start()
        try:
            await stop.wait()
        finally:
            await learner.stop()  # publishes what it learned and hands the lease on
            await store.close()

    with command_valkey(args) as target:
        uvloop.run(run(target))
    return 0
