"""The Valkey a one-off command (`ringback import`, `ringback learn`) talks to."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["Target", "add_cluster_option", "command_valkey"]


def add_cluster_option(p: argparse.ArgumentParser) -> None:
    """`--cluster`: the URL lists seed nodes of a Valkey Cluster (as for `serve`)."""
    p.add_argument(
        "--cluster",
        action="store_true",
        help="--redis lists seed nodes of a Valkey Cluster (also REDIS_CLUSTER=1)",
    )


class Target(NamedTuple):
    """Where a one-off command's Store points, and how durable its writes must be."""

    url: str
    cluster: bool
    replica_acks: int  # as `serve` would use (1 on a cluster by default)


@contextlib.contextmanager
def command_valkey(args: argparse.Namespace) -> Iterator[Target]:
    """`--redis`, `REDIS_URL` or the config's store URL, whether it names a Valkey
    Cluster (`--cluster`, `REDIS_CLUSTER=1`, `[store] cluster`) and the replicas a write
    waits for (`[store] replica_acks`); without a URL, the data dir's embedded
    valkey-server, started for the command and stopped when it ends (the same files
    `serve` uses, so a command run beside a stopped engine sees its data)."""
    from engine.core.settings import load_settings
    from engine.valkey.embedded import EmbeddedValkey

    settings = load_settings(
        args.config,
        data_dir=args.data_dir,
        overrides={"redis_url": args.redis, "redis_cluster": getattr(args, "cluster", None)},
    )
    if settings.redis_url:
        yield Target(settings.redis_url, settings.redis_cluster, settings.replica_acks)
        return
    embedded = EmbeddedValkey(settings.data_dir / "valkey")
    url = embedded.start()
    try:
        yield Target(url, False, 0)
    finally:
        embedded.stop()
