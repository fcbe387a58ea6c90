"""`ringback import FILE.jsonl`: CRM attributes in bulk, every line checked first."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.command_valkey import add_cluster_option
from engine.profile.attributes import (
    check_import,
    file_digest,
    import_file,
    read_import,
    resume_point,
)
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
    p.add_argument(
        "--restart",
        action="store_true",
        help="start from the first line even if an earlier import of this file was "
        "interrupted (default: resume where it stopped)",
    )
    p.add_argument("--config")
    p.add_argument("--data-dir", default=".ringback")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import uvloop

    from engine.cli.command_valkey import Target, command_valkey
    from engine.core.metrics import Metrics
    from engine.core.progress import Progress, duration

    checking = Progress("checking", unit="lines")
    valid, errors = check_import(args.file, on_line=checking.advance)
    checking.close(f"checked {checking.done:,} line(s) in {duration(checking.elapsed_s)}")
    if errors:
        for e in errors[:50]:
            print(e, file=sys.stderr)
        print(
            f"ringback import: {len(errors)} invalid line(s); nothing was imported", file=sys.stderr
        )
        return 1
    digest = file_digest(args.file)
    # Phone numbers are indexed by their keyed hash, with the key `serve` derives.
    from engine.core.settings import load_settings
    from engine.profile.phones import phone_hash_key

    phone_key = phone_hash_key(load_settings(args.config, data_dir=args.data_dir))

    async def run(target: Target) -> tuple[int, int]:
        store = Store(
            target.url, Metrics(), cluster=target.cluster, replica_acks=target.replica_acks
        )
        try:
            await store.load_library()
            start = 0 if args.restart else await resume_point(store, digest)
            if start:
                print(
                    f"resuming an interrupted import of this file at line {start + 1:,} "
                    f"of {valid:,} (--restart to start over)",
                    file=sys.stderr,
                )
            progress = Progress("importing", valid - start, unit="customers")
            try:
                written = await import_file(
                    store,
                    read_import(args.file),
                    digest=digest,
                    start=start,
                    on_progress=progress.advance,
                    phone_key=phone_key,
                )
            finally:
                progress.close(
                    f"wrote {progress.done:,} customer(s) in {duration(progress.elapsed_s)}"
                    f" ({progress.done / max(progress.elapsed_s, 1e-9):,.0f}/s)"
                )
            return start, written
        finally:
            await store.close()

    with command_valkey(args) as target:
        start, count = uvloop.run(run(target))
    resumed = f" ({start:,} written before the interruption)" if start else ""
    print(f"imported attributes of {start + count} customer(s){resumed}")
    return 0
