"""`ringback rules check PATH` and `ringback rules test PATH --events FILE.jsonl`.

`check` validates a rules directory (or one file) and prints `file:line:col: message`
for every problem; exit 1 on any. `test` replays recorded batches (one
`POST /v1/events` body per line, optionally with `received_at` ms; a line
`{"customer_id", "attributes"}` sets CRM attributes) through the real parse,
identity, profile, decision and contact-policy code on a throwaway embedded Valkey,
each batch at its own recorded time (no HTTP app, no wall clock: a recording a month
old decides as it did then), and prints each decision and each suppression (rule and
reason) with whom it was for; `--against OTHER` replays the same batches with another
rule set and prints the differences, suppressions included, so an analyst sees what a
change would do before it ships.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import orjson

__all__ = ["Replayed", "batch_time_ms", "register", "replay", "replay_traced"]


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
    segments = [s.id for s in rs.segments.segments]
    print(
        f"ok: {len(rs.rules)} rules, {len(rs.offers)} offers, {len(rs.calendars)} "
        f"calendars, {len(segments)} segments, {len(rs.campaigns)} campaigns "
        f"(version {rs.version})"
    )
    if segments:
        print(f"segments: {', '.join(segments)}")
    if rs.campaigns:
        print(f"campaigns: {', '.join(rs.campaigns)}")
    return 0


class Replayed(NamedTuple):
    """One recorded line, replayed: whom it was for, what was decided, what was not.

    `suppressed` holds (rule, reason) for every rule whose condition held but which
    eligibility, holdout, the slot or contact policy held back (`cooldown_rule`, ...).
    """

    who: str
    decisions: list[dict[str, Any]]
    status: int
    suppressed: list[tuple[str, str]]
    now_ms: int


def batch_time_ms(body: dict[str, Any]) -> int:
    """The clock a recorded batch is replayed at: its `received_at` (ms) when the
    recording kept it, else its `sent_at`, else its newest event's timestamp (the
    engine decided within moments of the last event, and a recording without arrival
    times has nothing closer). 0 when the line has none (parsing then refuses it).

    Parsing takes this as the receive time, so a recorded `sent_at` shifts the events
    by `received_at - sent_at`, the offset the live engine applied; without
    `received_at` the offset is unknowable and `sent_at` makes it zero."""
    for field in ("received_at", "sent_at"):
        at = body.get(field)
        if isinstance(at, int) and not isinstance(at, bool) and at > 0:
            return at
    events = body.get("events")
    if not isinstance(events, list):
        return 0
    stamps = [e.get("ts") for e in events if isinstance(e, dict)]
    ints = [t for t in stamps if isinstance(t, int) and not isinstance(t, bool)]
    return max(ints, default=0)


async def replay(
    rules_dir: Path,
    batches: list[bytes],
    settings: Any,
) -> list[tuple[str, list[dict[str, Any]], int]]:
    """(who, decisions, status) per recorded line; see `replay_traced`."""
    return [
        (r.who, r.decisions, r.status) for r in await replay_traced(rules_dir, batches, settings)
    ]


async def replay_traced(
    rules_dir: Path, batches: list[bytes], settings: Any, *, progress: bool = False
) -> list[Replayed]:
    """Replay recorded lines through the real parse, identity, profile, decision and
    contact-policy code on a throwaway embedded Valkey, each batch at its own time.

    No HTTP app: the time is an input everywhere, so each batch is parsed, its identity
    token verified, its profile updated and its decisions made and reserved at
    `batch_time_ms` - calendars, cooldowns, daily caps, holdout and expiry follow the
    recording's clock, and a recording older than the ingest age limit replays as it
    was decided then. Deliveries (trigger records, callback queue, audit records) are
    not written: they change no later decision, and they expire at absolute times
    (PEXPIREAT), which for an old recording are already past on Valkey's real clock.
    The TTLs replay does set are relative (anonymous profile and history, dedupe set,
    policy state: days from now on the real clock), so they outlast any replay.
    Lines `{"customer_id", "attributes"}` set CRM attributes, as `ringback import` does.
    With `progress`, a day of recordings shows done/total, rate and time left on stderr.
    """
    import msgspec

    from engine.core.errors import ClientError, NotFound
    from engine.core.metrics import Metrics
    from engine.core.progress import Progress
    from engine.decisions.inputs import Capacity, DecisionInput
    from engine.decisions.loader import load_rules
    from engine.decisions.plan import Contact, decide, settle
    from engine.http.app import offer_decision_key
    from engine.ingest.identity import IdentityVerifier
    from engine.ingest.parse import parse_batch
    from engine.profile.attributes import ImportLine, store_attributes
    from engine.profile.contact_history import reserve
    from engine.profile.profiles import ProfileStore, customer_attributes, decode_profile
    from engine.valkey.embedded import EmbeddedValkey
    from engine.valkey.store import Store

    rules = load_rules(rules_dir)
    limits = settings.limits
    offer_key = offer_decision_key(settings)
    capacity = Capacity()  # no floor is measured in a replay: never overloaded
    verifier = IdentityVerifier()
    out: list[Replayed] = []
    shown = Progress(f"replaying through {rules_dir}", len(batches), unit="batches")
    with tempfile.TemporaryDirectory(prefix="ringback-replay-") as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "valkey")
        valkey.start()
        store = Store(valkey.url, Metrics())
        try:
            await store.load_library()
            profiles = ProfileStore(store, replace(settings, rules_dir=rules_dir))
            for raw in batches:
                if progress:
                    shown.advance()
                body = orjson.loads(raw)
                if "attributes" in body and "customer_id" in body:
                    who = f"customer {body['customer_id']}"
                    try:
                        line = msgspec.json.decode(raw, type=ImportLine)
                    except msgspec.ValidationError as exc:
                        err: dict[str, Any] = {
                            "code": "invalid_attributes",
                            "message": str(exc),
                            "path": "$",
                        }
                        out.append(Replayed(who, [{"error": err}], 400, [], 0))
                        continue
                    await store_attributes(store, line.customer_id, line.attributes)
                    out.append(Replayed(who, [], 200, [], 0))
                    continue
                now_ms = batch_time_ms(body)
                who = f"anonymous {body.get('anonymous_id')}"
                try:
                    batch = parse_batch(
                        raw,
                        now_ms,
                        limits.max_event_age_s,
                        limits.max_event_future_s,
                        limits.max_events_per_batch,
                    )
                    who = f"anonymous {batch.anonymous_id}"
                    site = settings.sites.get(batch.site)
                    if site is None:
                        raise NotFound(
                            "unknown_site", f"site {batch.site!r} is not configured", "$.site"
                        )
                    customer_id = None
                    if batch.identity is not None:
                        customer_id = verifier.verify(site, batch.identity, now_ms / 1000)
                        who = f"customer {customer_id}"
                    result, _ = await profiles.ingest(
                        site.key, batch.anonymous_id, customer_id, batch.events, now_ms
                    )
                except ClientError as exc:
                    err = {"code": exc.code, "message": exc.message, "path": exc.path or "$"}
                    out.append(Replayed(who, [{"error": err}], exc.status, [], now_ms))
                    continue
                if not result.accepted:  # every event a duplicate: nothing to decide
                    out.append(Replayed(who, [], 200, [], now_ms))
                    continue
                fields = result.fields
                inp = DecisionInput(
                    site=site.key,
                    anonymous_id=batch.anonymous_id,
                    customer_id=customer_id,
                    profile=decode_profile(
                        fields,
                        now_ms,
                        settings.profile.intent_half_life_s,
                        known=customer_id is not None,
                    ),
                    customer=customer_attributes(fields),
                    events=list(batch.events),
                    now_ms=now_ms,
                )
                plan = decide(rules, inp, now_ms, capacity, offer_key, profiles.classifier.category)
                # The same contact policy as `RulesDecider`: best-ranked first, the
                # first contact policy allows is the batch's one contact.
                refused: list[tuple[Contact, str]] = []
                taken: Contact | None = None
                for contact in plan.contacts:
                    why = await reserve(
                        store, plan.prefix, contact.reservation, contact.history, now_ms
                    )
                    if why is None:
                        taken = contact
                        break
                    refused.append((contact, why))
                outcome = settle(plan, refused, taken)
                decisions: list[dict[str, Any]] = []
                for d in outcome.decisions:
                    wire = d.wire()
                    if taken is not None and d is taken.decision and taken.trigger.scheduled_for:
                        wire["scheduled_for"] = taken.trigger.scheduled_for
                    decisions.append(wire)
                suppressed = [
                    (t["rule"], str(t.get("why")))
                    for t in outcome.trace.values()
                    if t.get("result") == "suppressed"
                ]
                out.append(Replayed(who, decisions, 200, suppressed, now_ms))
        finally:
            await store.close()
            valkey.stop()
            if progress:
                shown.close()
    return out


def _describe(d: dict[str, Any]) -> str:
    if "error" in d:
        e = d["error"] or {}
        return f"refused: {e.get('code')} {e.get('message')} at {e.get('path')}"
    offer = (d.get("offer") or {}).get("id", "-")
    line = f"{d.get('action')} via {d.get('channel')} by rule {d.get('rule')} (offer {offer})"
    if d.get("scheduled_for"):
        at = dt.datetime.fromtimestamp(int(d["scheduled_for"]) / 1000, tz=dt.UTC)
        line += f" scheduled for {at:%Y-%m-%d %H:%M} UTC"
    return line


def _lines(r: Replayed) -> list[str]:
    """What one replayed batch did: its decisions, then what was suppressed and why."""
    out = [_describe(d) for d in r.decisions]
    out += [f"suppressed rule {rule}: {why}" for rule, why in r.suppressed]
    return out


def _test(args: argparse.Namespace) -> int:
    import uvloop

    from engine.core.settings import load_settings
    from engine.decisions.loader import RuleSetError, load_rules

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
        first = uvloop.run(replay_traced(args.path, batches, settings, progress=True))
        second = (
            uvloop.run(replay_traced(args.against, batches, settings, progress=True))
            if args.against
            else None
        )
    changed = 0
    for i, r in enumerate(first, start=1):
        if second is None:
            for line in _lines(r) or ["no decision"]:
                print(f"batch {i} for {r.who}: {line}")
            continue
        a = sorted(_lines(r))
        b = sorted(_lines(second[i - 1]))
        if a != b:
            changed += 1
            print(f"batch {i} for {r.who}:")
            for line in a:
                if line not in b:
                    print(f"  - {line}   ({args.path})")
            for line in b:
                if line not in a:
                    print(f"  + {line}   ({args.against})")
    if second is not None:
        print(f"{changed} of {len(first)} batch(es) decide differently")
    return 0
