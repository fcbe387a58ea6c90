"""The Valkey a one-off command (`ringback import`, `ringback learn`) talks to."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

__all__ = ["command_valkey"]


@contextlib.contextmanager
def command_valkey(args: argparse.Namespace) -> Iterator[str]:
    """`--redis`, `REDIS_URL` or the config's store URL; without one, the data dir's
    embedded valkey-server, started for the command and stopped when it ends (the
    same files `serve` uses, so a command run beside a stopped engine sees its data)."""
    from engine.core.settings import load_settings
    from engine.valkey.embedded import EmbeddedValkey

    settings = load_settings(
        args.config, data_dir=args.data_dir, overrides={"redis_url": args.redis}
    )
    if settings.redis_url:
        yield settings.redis_url
        return
    embedded = EmbeddedValkey(settings.data_dir / "valkey")
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()
