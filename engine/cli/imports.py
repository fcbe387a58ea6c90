"""`ringback import FILE.jsonl`: CRM attributes in bulk, every line checked first."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.command_valkey import add_cluster_option
from engine.profile.attributes import import_file, validate_import
from engine.valkey.store import Store

__all__ = ["register"]


def register(sub: argparse._SubParsersAction, name: str) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        name,
        help='load CRM attributes from JSONL ({"customer_id": ..., "attributes": {...}} per line)',
    )
    p.add_argument("file", type=Path)
    p.add_argument(
        "--redis",
        help="Valkey URL (default: REDIS_URL, or the data dir's "
        "embedded Valkey started for the import)",
    )
    add_cluster_option(p)
    p.add_argument("--config")
    p.add_argument("--data-dir", default=".ringback")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import uvloop

    from engine.cli.command_valkey import command_valkey
    from engine.core.metrics import Metrics

    lines, errors = validate_import(args.file)
    if errors:
        for e in errors[:50]:
            print(e, file=sys.stderr)
        print(
            f"ringback import: {len(errors)} invalid line(s); nothing was imported", file=sys.stderr
        )
        return 1

    async def run(url: str, cluster: bool) -> int:
        store = Store(url, Metrics(), cluster=cluster)
        try:
            await store.load_library()
            return await import_file(store, lines)
        finally:
            await store.close()

    with command_valkey(args) as (url, cluster):
        count = uvloop.run(run(url, cluster))
    print(f"imported attributes of {count} customer(s)")
    return 0
