"""Valkey memory per visitor: profiles loaded through the real ingest path, measured
with `INFO memory` (issue 12: <= 1 KB per visitor with its dedupe state, <= 1.6 KB with
the audit record of the page offer it was shown and its feature snapshot).

Each visitor is one anonymous session of ten events, the mix `../shared/perf/wrk_events.lua`
sends (page views on the mortgage journey and three calculator uses), with the ids
the snippet makes (12 base-36 characters per event, 25 per visitor). They go through
`ProfileStore.ingest` (the function the HTTP handler calls: delta, `rb_ingest`,
dedupe), in concurrent groups so the store coalesces them as under load. Then the
demo rules decide for a sample of the visitors through the real `RulesDecider`, which
writes the audit records, and their size is measured the same way.

Bytes per visitor = (used_memory after - before) / visitors, on a fresh Valkey with
nothing else in it; `MEMORY USAGE` of one visitor's keys splits it (profile JSON,
dedupe set, the key overhead `INFO` sees and `MEMORY USAGE` does not).

`--pack bank` decides with a bank's own pack instead of the shipped demo (`rules/`):
the same rules, offers and segments renamed and reworded in invented words that none of
the audit dictionaries' frozen parts hold (`bank_pack`), as a bank's pack would be; its
records are deflated against the rule set's own dictionary (audit_codec format 3).

    python -m benchmarks.memory_bench [--visitors 100000] [--visitors 1000000] [--no-write]
        [--pack demo|bank]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import targets
from benchmarks.results import write_section
from engine.core.metrics import Metrics
from engine.core.settings import load_settings
from engine.decisions.inputs import decision_input
from engine.decisions.loader import load_rules
from engine.delivery import audit_codec
from engine.delivery.executor import RulesDecider
from engine.ingest.schema import CalcEvent, CalcProps, Event, PageViewEvent
from engine.profile.profiles import ProfileStore
from engine.valkey import keys
from engine.valkey.embedded import EmbeddedValkey
from engine.valkey.store import Store

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("/", "/mortgages", "/mortgages/fixed-rate", "/mortgages/calculator")
GROUP = 500  # visitors in flight at once
AUDIT_SAMPLE = 2_000  # visitors the rules decide for (audit records measured on these)
B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


# The bank pack: the demo's ids in a made-up bank's words (same lengths, roughly).
BANK_IDS = {
    "mortgage_adviser_call": "harbour_home_loan_chat",
    "personal_loan_finish": "quickcash_resume_form",
    "card_cashback": "platinum_rewards_card",
    "advisor_appointment": "wealth_planner_meeting",
    "retention_call": "loyalty_outreach_team",
    "savings_rate_for_customers": "bonus_saver_for_members",
    "call_me_requested": "ring_back_on_request",
    "card_comparison_offer": "rewards_card_browsing_banner",
    "fund_comparison_appointment": "portfolio_browsing_meeting",
    "mortgage_calculator_callback": "home_loan_estimator_phone",
    "mortgage_adviser_offer": "home_loan_specialist_banner",
    "personal_loan_abandoned": "quickcash_form_dropout",
    "personal_loan_resume_offer": "quickcash_form_comeback_banner",
    "churn_risk_retention_call": "attrition_signal_phone",
    "churn_risk_help_offer": "attrition_signal_banner",
    "returning_customer_savings": "member_comeback_bonus_saver",
    "mortgage_researchers": "home_buyer_planners",
    "high_value_digital": "premier_online_members",
    "returning_after_price_check": "back_after_rate_lookup",
}
BANK_OFFERS = """
offers:
  - id: harbour_home_loan_chat
    title: Speak with a Harbour home-loan specialist
    text: Our lending team will walk through your deposit, repayments and timeline together.
    cta_url: /home-loans/specialist
    cta_label: Arrange a chat
    product: mortgage
    value: 900
    channels: [web, callback]
  - id: quickcash_resume_form
    title: Pick up your QuickCash request
    text: We kept everything you entered. Complete the last steps now or ask us to phone.
    cta_url: /quickcash/resume
    cta_label: Resume request
    product: loans
    value: 300
    channels: [web, callback, email]
  - id: platinum_rewards_card
    title: Earn Harbour points on every purchase
    text: The Platinum Rewards card waives its yearly charge for twelve months after joining.
    cta_url: /rewards-cards/platinum
    cta_label: View card details
    product: cards
    value: 120
    channels: [web]
  - id: wealth_planner_meeting
    title: Sit down with a wealth planner
    text: A planner reviews your portfolio mix in person or online, without charge or obligation.
    cta_url: /wealth/planner-meeting
    cta_label: Reserve a slot
    product: investments
    value: 500
    channels: [web, email]
  - id: loyalty_outreach_team
    title: Something bothering you?
    text: Tell us what prompted your visit. Our member care desk may resolve it on the spot.
    cta_url: /member-care/reach-us
    cta_label: Reach member care
    product: retention
    value: 700
    channels: [web, callback]
  - id: bonus_saver_for_members
    title: A members-only Bonus Saver rate
    text: Members may lock in a boosted twelve-month Bonus Saver rate within a few clicks.
    cta_url: /saving/bonus-saver
    cta_label: Check my rate
    product: savings
    value: 150
    channels: [web]

levers:
  mortgage: 1.2
  retention: 1.5
"""


def bank_pack(dest: Path) -> Path:
    """The demo pack as a bank would write its own: the same rules, segments and
    offers (so the bench's visitors match the same ones) under other ids and in other
    words, which none of the audit dictionaries' frozen parts hold."""
    dest.mkdir(parents=True, exist_ok=True)
    ids = re.compile(r"\b(" + "|".join(map(re.escape, BANK_IDS)) + r")\b")
    for src in (ROOT / "rules").glob("*.yaml"):
        text = BANK_OFFERS if src.name == "offers.yaml" else src.read_text()
        (dest / src.name).write_text(ids.sub(lambda m: BANK_IDS[m[1]], text))
    return dest


def _rid(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(B36) for _ in range(n))


def session(rng: random.Random, now_ms: int) -> list[Event]:
    """Ten events: seven page views along the journey, three calculator uses."""
    out: list[Event] = []
    for i in range(10):
        ts = now_ms - (10 - i) * 4_000
        eid = _rid(rng, 12)
        if i % 3 == 2:
            props = CalcProps(
                product="mortgage", amount=200_000.0 + rng.randrange(50) * 1_000, term_months=300
            )
            out.append(CalcEvent(id=eid, ts=ts, page="/mortgages/calculator", props=props))
        else:
            out.append(PageViewEvent(id=eid, ts=ts, page=PAGES[min(i, len(PAGES) - 1)]))
    return out


async def used_memory(store: Store) -> int:
    info: dict[str, Any] = await store.client.info("memory")
    return int(info["used_memory"])


async def measure(visitors: int, seed: int = 1, pack: str = "demo") -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "valkey")
        valkey.start()
        try:
            settings = load_settings(None, data_dir=Path(tmp) / "data")
            store = Store(valkey.url, Metrics())
            await store.load_library()
            profiles = ProfileStore(store, settings)
            before = await used_memory(store)
            now_ms = int(time.time() * 1000)
            aids = [_rid(rng, 25) for _ in range(visitors)]
            t0 = time.perf_counter()
            kept: list[tuple[str, dict[str, Any], list[Event]]] = []  # the audit sample
            for start in range(0, visitors, GROUP):
                group = aids[start : start + GROUP]
                batches = [session(rng, now_ms) for _ in group]
                results = await asyncio.gather(
                    *(
                        profiles.ingest("demo-bank", aid, None, evs, now_ms)
                        for aid, evs in zip(group, batches, strict=True)
                    )
                )
                for aid, evs, (result, _) in zip(group, batches, results, strict=True):
                    if len(kept) < AUDIT_SAMPLE:
                        kept.append((aid, result.fields, evs))
            load_s = time.perf_counter() - t0
            after = await used_memory(store)

            prefix = keys.anonymous_prefix("demo-bank", aids[0])
            p_key, seen_key = keys.profile_keys(prefix)[:2]
            usage = {
                "profile": await store.client.memory_usage(p_key, samples=0) or 0,
                "dedupe": await store.client.memory_usage(seen_key, samples=0) or 0,
            }
            profile_json = await store.client.get(p_key) or b""

            # Audit records: the pack's rules decide for a sample, as after a batch.
            rules_dir = bank_pack(Path(tmp) / "bank") if pack == "bank" else ROOT / "rules"
            rules = load_rules(rules_dir)
            decider = RulesDecider(lambda: rules, store, Metrics(), profiles.classifier.category)
            sample = kept
            before_audit = await used_memory(store)
            audits = 0
            offers = 0
            first_ids: list[str] = []  # the decisions of aids[0], whose keys are split
            for aid, fields, evs in sample:
                inp = decision_input(
                    fields,
                    site="demo-bank",
                    anonymous_id=aid,
                    customer_id=None,
                    now_ms=now_ms,
                    intent_half_life_s=settings.profile.intent_half_life_s,
                    events=evs,
                )
                answer = await decider.decide(inp)
                audits += len(answer)
                if aid == aids[0]:
                    first_ids = [str(d["id"]) for d in answer if d.get("id")]
                offers += sum(1 for d in answer if d.get("action") == "offer")
            after_audit = await used_memory(store)
            # The audit phase's split, for the same visitor: its record, the profile's
            # index of data in other slots (new with its first record), and its
            # profile, which the decision grew (segment membership).
            audit_key = keys.decision_key(first_ids[0]) if first_ids else ""
            usage["audit_record"] = (
                await store.client.memory_usage(audit_key, samples=0) or 0 if audit_key else 0
            )
            usage["audit_value"] = await store.client.strlen(audit_key) if audit_key else 0
            # The same record under v2 (the frozen dictionary; what a bank's pack wrote
            # before format 3) and as it is stored (format byte).
            stored = await store.call("GET", audit_key, raw=True) if audit_key else None
            usage["audit_format"] = stored[0] if stored else 0
            usage["audit_value_v2"] = (
                len(audit_codec.encode(audit_codec.decode(stored))) if stored else 0
            )
            refs_key = keys.profile_refs(prefix)
            usage["refs"] = await store.client.memory_usage(refs_key, samples=0) or 0
            usage["profile_decided"] = await store.client.memory_usage(p_key, samples=0) or 0
            await store.close()
        finally:
            valkey.stop()
    return {
        "visitors": visitors,
        "pack": pack,
        "bytes_per_visitor": (after - before) / visitors,
        "usage": usage,
        "profile_json_bytes": len(profile_json),
        "load_per_s": visitors / load_s,
        "audits": audits,
        "offers": offers,
        "sample": len(sample),
        "audit_bytes_per_visitor": (after_audit - before_audit) / len(sample),
        "audit_bytes_per_record": (after_audit - before_audit) / max(audits, 1),
    }


def report(results: list[dict[str, Any]], command: str) -> str:
    pack = "demo" if results[-1].get("pack", "demo") == "demo" else "bank's own (`--pack bank`)"
    lines = [
        "## Memory: Valkey bytes per visitor",
        "",
        f"Command: `{command}`. Each visitor: one anonymous session of 10 events (7 page "
        "views on the mortgage journey, 3 calculator uses; snippet-sized ids) through "
        "`ProfileStore.ingest` (the handler's path: delta, `rb_ingest`, dedupe), 500 in "
        f"flight; then the {pack} rules decide for 2,000 of them through the real "
        "`RulesDecider` (audit records with their feature snapshots). Bytes = `INFO "
        "memory` used_memory after - before, on a fresh Valkey. Issue 12's targets: "
        "<= 1,024 B per visitor with dedupe; <= 1,638 B with the audit record. "
        f"Measured {time.strftime('%Y-%m-%d')}.",
        "",
        "| visitors | B / visitor (profile + dedupe) | MEMORY USAGE profile / dedupe | "
        "profile JSON | audit B / visitor | audit B / record | total with audit | "
        "loaded / s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        total = r["bytes_per_visitor"] + r["audit_bytes_per_visitor"]
        lines.append(
            f"| {r['visitors']:,} | {r['bytes_per_visitor']:,.0f} | "
            f"{r['usage']['profile']} / {r['usage']['dedupe']} | "
            f"{r['profile_json_bytes']} | {r['audit_bytes_per_visitor']:,.0f} | "
            f"{r['audit_bytes_per_record']:,.0f} | {total:,.0f} | {r['load_per_s']:,.0f} |"
        )
    last = results[-1]
    u = last["usage"]
    total = last["bytes_per_visitor"] + last["audit_bytes_per_visitor"]
    verdict = "meets" if last["bytes_per_visitor"] <= 1024 else "misses"
    verdict2 = "meets" if total <= 1638 else "misses"
    lines += [
        "",
        f"- Profile + dedupe: {last['bytes_per_visitor']:,.0f} B, {verdict} <= 1 KB.",
        f"- With the audit record: {total:,.0f} B, {verdict2} <= 1.6 KB "
        f"({last['offers']} offers in {last['audits']} decisions for "
        f"{last['sample']:,} visitors).",
        f"- The audit phase, per visitor (MEMORY USAGE): its record {u['audit_record']} B "
        f"({u['audit_value']} B stored as format {u['audit_format']}; "
        f"{u['audit_value_v2']} B under v2), the profile's index of other-slot data "
        f"{u['refs']} B (new with its first record), its profile {u['profile']} -> "
        f"{u['profile_decided']} B (segment membership); the rest is the keyspace's "
        "entries and TTLs.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--visitors", type=int, action="append", help="repeatable")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--pack",
        choices=("demo", "bank"),
        default="demo",
        help="the rules that decide: the shipped demo, or a bank's own (other words)",
    )
    args = ap.parse_args(argv)
    sizes = args.visitors or [100_000]
    results = []
    for n in sizes:
        r = asyncio.run(measure(n, pack=args.pack))
        print(r, flush=True)
        results.append(r)
    command = "python -m benchmarks.memory_bench" + "".join(f" --visitors {n}" for n in sizes)
    if args.pack != "demo":
        command += f" --pack {args.pack}"
    text = report(results, command)
    print(text)
    if not args.no_write:
        last = results[-1]
        total = last["bytes_per_visitor"] + last["audit_bytes_per_visitor"]
        if args.pack == "demo":
            write_section("memory", text)
            targets.record(
                "memory_visitor_b",
                last["bytes_per_visitor"],
                "before issue 12: 1,203 B",
                command,
            )
            targets.record(
                "memory_visitor_audit_b",
                total,
                "before issue 12: 1,203 B + a 1,119 B record",
                command,
            )
        else:  # a section of its own: the demo's stays
            write_section("memory-bank", text.replace("## Memory:", "## Memory, a bank's pack:"))
            u = last["usage"]
            targets.record(
                "memory_visitor_audit_bank_b",
                total,
                f"its record {u['audit_value']} B as format {u['audit_format']}, "
                f"{u['audit_value_v2']} B under v2 (same run)",
                command,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
