"""`ringback rules check PATH` and `ringback rules test PATH --events FILE.jsonl`.

`check` validates a rules directory (or one file) and prints `file:line:col: message`
for every problem; exit 1 on any. `test` replays recorded batches (one
`POST /v1/events` body per line; a line `{"customer_id", "attributes"}` sets CRM
attributes first) through the real ingest, profile and decision code
on a throwaway embedded Valkey and prints each decision with whom it was for;
`--against OTHER` replays the same batches with another rule set and prints the
differences, so an analyst sees what a change would do before it ships.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

__all__ = ["register", "replay"]


def register(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="check or test rule packs")
    rsub = p.add_subparsers(dest="rules_command", required=True)
    c = rsub.add_parser("check", help="validate rules; file:line:col: message per problem")
    c.add_argument("path", type=Path)
    c.set_defaults(func=_check)
    t = rsub.add_parser("test", help="replay recorded batches through the real engine")
    t.add_argument("path", type=Path)
    t.add_argument(
        "--events", type=Path, required=True, help="JSONL: one POST /v1/events body per line"
    )
    t.add_argument("--against", type=Path, help="another rules directory to compare with")
    t.add_argument("--config", help="engine config (default: the built-in demo config)")
    t.add_argument(
        "--data-dir",
        type=Path,
        help="data dir whose demo credentials signed the recorded identity "
        "tokens (default: a fresh one)",
    )
    t.set_defaults(func=_test)


def _check(args: argparse.Namespace) -> int:
    from engine.decisions.loader import RuleSetError, load_rules

    try:
        rs = load_rules(args.path)
    except RuleSetError as exc:
        for e in exc.errors:
            print(e)
        print(f"{len(exc.errors)} problem(s); rule set rejected", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.path}: {exc.strerror}")
        return 1
    print(
        f"ok: {len(rs.rules)} rules, {len(rs.offers)} offers, {len(rs.calendars)} "
        f"calendars (version {rs.version})"
    )
    return 0


async def replay(
    rules_dir: Path,
    batches: list[bytes],
    settings: Any,
) -> list[tuple[str, list[dict[str, Any]], int]]:
    """Run each batch through a fresh engine app on a throwaway Valkey.

    Returns (who, decisions, status) per batch; `who` is the customer or anonymous id.
    """
    from aiohttp.test_utils import TestClient, TestServer

    from engine.app import build_app
    from engine.embedded import EmbeddedValkey
    from engine.identity import IdentityVerifier

    with tempfile.TemporaryDirectory(prefix="ringback-replay-") as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "valkey")
        valkey.start()
        try:
            s = replace(settings, rules_dir=rules_dir, redis_url=valkey.url)
            app = build_app(s, valkey.url)
            out: list[tuple[str, list[dict[str, Any]], int]] = []
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                verifier = IdentityVerifier()
                token = (s.demo_credentials or {}).get("api_token")
                for raw in batches:
                    body = orjson.loads(raw)
                    if "attributes" in body and "customer_id" in body:
                        # Recorded CRM state: {"customer_id": ..., "attributes": {...}}
                        r = await client.put(
                            f"/v1/profiles/{body['customer_id']}/attributes",
                            data=orjson.dumps(body["attributes"]),
                            headers={
                                "Content-Type": "application/json",
                                "Authorization": f"Bearer {token}",
                            },
                        )
                        out.append((f"customer {body['customer_id']}", [], r.status))
                        continue
                    who = f"anonymous {body.get('anonymous_id')}"
                    if body.get("identity") and body.get("site") in s.sites:
                        try:
                            who = "customer " + verifier.verify(
                                s.sites[body["site"]], body["identity"]
                            )
                        except Exception:
                            pass
                    r = await client.post(
                        "/v1/events", data=raw, headers={"Content-Type": "application/json"}
                    )
                    resp = await r.json()
                    out.append(
                        (
                            who,
                            resp.get("decisions", [])
                            if r.status == 200
                            else [{"error": resp.get("error")}],
                            r.status,
                        )
                    )
            return out
        finally:
            valkey.stop()


def _describe(d: dict[str, Any]) -> str:
    if "error" in d:
        e = d["error"] or {}
        return f"refused: {e.get('code')} {e.get('message')} at {e.get('path')}"
    offer = (d.get("offer") or {}).get("id", "-")
    return f"{d.get('action')} via {d.get('channel')} by rule {d.get('rule')} (offer {offer})"


def _test(args: argparse.Namespace) -> int:
    import uvloop

    from engine.decisions.loader import RuleSetError, load_rules
    from engine.settings import load_settings

    for path in [args.path, *([args.against] if args.against else [])]:
        try:
            load_rules(path)
        except RuleSetError as exc:
            print(exc)
            return 1
    batches = [ln for ln in args.events.read_bytes().splitlines() if ln.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        # Recorded identity tokens verify only with the secret that signed them: give
        # the recording engine's --data-dir (demo) or --config (production keys).
        settings = load_settings(args.config, data_dir=args.data_dir or tmp)
        first = uvloop.run(replay(args.path, batches, settings))
        second = uvloop.run(replay(args.against, batches, settings)) if args.against else None
    changed = 0
    for i, (who, decisions, _) in enumerate(first, start=1):
        if second is None:
            for d in decisions or [{}]:
                print(f"batch {i} for {who}: {_describe(d) if d else 'no decision'}")
            continue
        a = sorted(_describe(d) for d in decisions)
        b = sorted(_describe(d) for d in second[i - 1][1])
        if a != b:
            changed += 1
            print(f"batch {i} for {who}:")
            for line in a:
                if line not in b:
                    print(f"  - {line}   ({args.path})")
            for line in b:
                if line not in a:
                    print(f"  + {line}   ({args.against})")
    if second is not None:
        print(f"{changed} of {len(first)} batch(es) decide differently")
    return 0
