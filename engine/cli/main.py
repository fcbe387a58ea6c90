"""The `ringback` command line (also `python -m engine`).

    ringback serve [--host] [--port] [--public-url URL] [--workers N] [--rules DIR]
                   [--redis URL[,URL...] [--cluster]] [--data-dir DIR] [--config FILE]
                   [--durability aof|fsync]
    ringback token --site SITE --customer ID [--data-dir DIR] [--config FILE]
    ringback rules check PATH | rules test PATH --events FILE.jsonl [--against PATH]
    ringback simulate --url URL [--rate N] [--duration S] [--speed X]
    ringback import FILE.jsonl [--redis URL [--cluster]] [--data-dir DIR]
    ringback learn [--redis URL [--cluster]] [--data-dir DIR]
    ringback webhooks dead-letters --target NAME [--replay] --redis URL [--cluster]

Errors a user can fix (a bad config key, an unknown site) print one line and exit 2;
they never print a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from engine import __version__
from engine.core.errors import ConfigError
from engine.core.settings import Settings, load_settings

__all__ = ["main"]

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default: the built-in demo config)")
    p.add_argument(
        "--data-dir",
        default=".ringback",
        help="where the embedded Valkey and demo credentials live (default: ./.ringback)",
    )


def _cluster_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        action="store_true",
        help="--redis lists seed nodes of a Valkey Cluster (redis://H:P[,redis://H:P...]); "
        "also REDIS_CLUSTER=1 or [store] cluster = true",
    )


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    return load_settings(args.config, data_dir=args.data_dir, overrides=overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringback", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"ringback {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the engine (embedded Valkey unless --redis)")
    _common(p)
    p.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    p.add_argument(
        "--public-url",
        help="the engine's public origin, what 'self' in allowed_origins means "
        "(default from config; else the address a connection reached)",
    )
    p.add_argument("--workers", type=int, help="worker processes sharing the port")
    p.add_argument("--rules", help="rules directory (hot-reloaded)")
    p.add_argument("--redis", help="Valkey/Redis URL (default: REDIS_URL or embedded)")
    _cluster_option(p)
    p.add_argument(
        "--durability",
        choices=["aof", "fsync"],
        help="aof: ack after Valkey appended it; fsync: after it reached disk",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("token", help="mint a signed identity token (dev aid)")
    _common(p)
    p.add_argument("--site", required=True)
    p.add_argument("--customer", required=True)
    p.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    p.set_defaults(func=_cmd_token)

    for name, register in _extensions():
        register(sub, name)
    return parser


def _cmd_serve(args: argparse.Namespace) -> int:
    from engine.cli.server import serve

    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        workers=args.workers,
        rules_dir=args.rules,
        redis_url=args.redis,
        redis_cluster=args.cluster or None,
        durability=args.durability,
    )
    return serve(settings)


def _cmd_token(args: argparse.Namespace) -> int:
    from engine.ingest.identity import CUSTOMER_ID_RE, mint_token

    settings = _settings(args)
    site = settings.sites.get(args.site)
    if site is None:
        print(
            f"ringback: unknown site {args.site!r} (configured: "
            f"{', '.join(settings.sites) or 'none'})",
            file=sys.stderr,
        )
        return 2
    secret = site.identity_secret
    if secret is None:
        print(
            f"ringback: site {args.site!r} verifies ES/RS tokens; mint them with the "
            "bank's private key",
            file=sys.stderr,
        )
        return 2
    if not CUSTOMER_ID_RE.match(args.customer):
        print(
            "ringback: customer ids are 1-128 letters, digits, '_', '.', ':' or '-'",
            file=sys.stderr,
        )
        return 2
    if not 0 < args.ttl <= site.identity.max_lifetime_s:
        print(
            f"ringback: --ttl must be 1-{site.identity.max_lifetime_s} s: site {site.key!r} "
            "refuses longer-lived tokens (identity.max_lifetime_s)",
            file=sys.stderr,
        )
        return 2
    token = mint_token(secret, site.key, args.customer, ttl_s=args.ttl)
    print(f"identity token for customer {args.customer} on {site.key}, valid {args.ttl}s:")
    print(token)
    return 0


def _extensions() -> list[
    tuple[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser], str], None]]
]:
    """Subcommands that live with the code they drive (imported lazily)."""
    from engine.cli import imports, learn, simulate
    from engine.cli import rules as rules_cli
    from engine.delivery import webhooks

    return [
        ("rules", rules_cli.register),
        ("simulate", simulate.register),
        ("import", imports.register),
        ("learn", learn.register),
        ("webhooks", webhooks.register),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"ringback: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
