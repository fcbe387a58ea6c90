"""Declared campaigns (engine/decisions/loader.py `CampaignSpec`): when a rule set lists
the bank's campaigns, reports count a decision's last-touch utm_campaign under its
declared id (any case) and any other name as "(other)", so names made up in page URLs
cannot push the real campaigns out of a day's report; with none declared, every name is
reported as the link said it. The loader refuses bad and duplicate ids with their
file:line:col, and `ringback rules check` counts them."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineClient, event, write_pack

from engine.core.settings import Settings
from engine.decisions.loader import MAX_CAMPAIGNS, RuleSetError, load_rules
from engine.decisions.plan import OTHER_CAMPAIGN
from engine.delivery.reports import dims_of
from engine.delivery.uplift import MAX_DIM_VALUES, OTHER, day_of
from engine.http.state import STORE
from engine.valkey import keys

REPO = Path(__file__).resolve().parent.parent

RULES = """
rules:
  - id: adviser_call
    when: 'event.type == "interest" and event.props.product == "mortgage"'
    action: {type: callback, channel: callback}
"""
CAMPAIGNS = """
campaigns:
  - {id: spring_mortgage, product: mortgage, description: Spring mortgage push}
  - {id: card_switch_2026, product: credit_card}
"""
# customer -> the utm_campaign of the link they came by (None: typed the address)
VISITS = {
    "v0": "Spring_MORTGAGE",  # the declared one, in another case
    "v1": "spring_mortgage",
    "v2": "made_up_1",
    "v3": "made_up_2",
    "v4": None,
}


async def _ask_for_a_call(engine: EngineClient, customer: str, campaign: str | None) -> str:
    props: dict[str, Any] = {"utm_campaign": campaign, "utm_source": "news"} if campaign else {}
    events = [
        event("page_view", page="/mortgage", props=props),
        event("interest", page="/mortgage", props={"product": "mortgage", "call_me": True}),
    ]
    status, reply, _ = await engine.post_events(
        engine.batch(events, identity=engine.token(customer))
    )
    assert status == 200, reply
    [callback] = [d for d in reply["decisions"] if d["action"] == "callback"]
    return str(callback["id"])


async def _drive(
    make_engine: Any, settings: Settings, tmp_path: Path, pack: str
) -> tuple[EngineClient, dict[str, str]]:
    """Every visitor asks for a call; v0 (declared) and v2 (made up) then convert."""
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, pack))
    )
    decisions = {c: await _ask_for_a_call(engine, c, campaign) for c, campaign in VISITS.items()}
    for customer in ("v0", "v2"):
        async with engine.session.post(
            f"{engine.url}/v1/outcomes",
            json={"decision_id": decisions[customer], "outcome": "converted"},
            headers=engine.api_headers,
        ) as r:
            assert r.status == 200, await r.text()
    return engine, decisions


async def _by_campaign(engine: EngineClient) -> tuple[dict[str, int], dict[str, int]]:
    """Per campaign name: callbacks fired (funnel), conversions (conversions report)."""
    status, funnel = await engine.get_json(
        "/v1/reports/funnel?by=campaign", headers=engine.api_headers
    )
    assert status == 200, funnel
    status, conv = await engine.get_json(
        "/v1/reports/conversions?by=campaign", headers=engine.api_headers
    )
    assert status == 200, conv
    fired = {r["name"]: r["fired"] for r in funnel["rows"]}
    converted = {r["name"]: r["treated"]["conversions"] for r in conv["rows"]}
    return fired, converted


async def test_declared_campaigns_are_reported_by_id_and_the_rest_as_other(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine, decisions = await _drive(make_engine, settings, tmp_path, RULES + CAMPAIGNS)
    fired, converted = await _by_campaign(engine)
    assert fired == {"spring_mortgage": 2, "(other)": 2, "(direct)": 1}
    # Conversions are counted later, from the records (`dims_of`): same names.
    assert converted == {"spring_mortgage": 1, "(other)": 1, "(direct)": 0}
    # The made-up names never reach the day's list of campaign names.
    store = engine.extra["app"][STORE]
    day = day_of(int(time.time() * 1000))
    listed = await store.call("SMEMBERS", keys.uplift_dim_values(day, "campaign"))
    assert set(listed) <= {"spring_mortgage", "(other)", "(direct)"}
    # The audit record keeps the name as the link said it, and what was reported.
    status, audit = await engine.get_json(
        f"/v1/decisions/{decisions['v2']}", headers=engine.api_headers
    )
    assert status == 200, audit
    assert audit["attribution"]["campaign"] == "made_up_1"
    assert audit["attribution"]["reported_campaign"] == "(other)"
    assert ("campaign", "(other)") in dims_of(audit)


async def test_without_declared_campaigns_every_name_is_reported_as_sent(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine, decisions = await _drive(make_engine, settings, tmp_path, RULES)
    fired, converted = await _by_campaign(engine)
    assert fired == {"spring_mortgage": 2, "made_up_1": 1, "made_up_2": 1, "(direct)": 1}
    assert converted == {"spring_mortgage": 1, "made_up_1": 1, "made_up_2": 0, "(direct)": 0}
    status, audit = await engine.get_json(
        f"/v1/decisions/{decisions['v2']}", headers=engine.api_headers
    )
    assert status == 200, audit
    assert "reported_campaign" not in audit["attribution"]


def test_a_record_counts_under_the_campaign_its_decision_reported() -> None:
    # A conversion after the declared list changed still counts where its decision did.
    record = {"attribution": {"campaign": "Spring_Mortgage", "reported_campaign": "(other)"}}
    assert dims_of(record)[0] == ("campaign", "(other)")
    assert dims_of({"attribution": {"referrer": "www.google.com"}})[0] == (
        "campaign",
        "(referral)",
    )


def test_declared_campaigns_and_the_pooled_names_fit_in_a_days_names() -> None:
    assert OTHER_CAMPAIGN == OTHER
    assert MAX_CAMPAIGNS + len(("(other)", "(referral)", "(direct)")) <= MAX_DIM_VALUES


def test_campaigns_load_with_product_optional(tmp_path: Path) -> None:
    rs = load_rules(write_pack(tmp_path, RULES + CAMPAIGNS + "  - {id: summer_savings}\n"))
    assert list(rs.campaigns) == ["spring_mortgage", "card_switch_2026", "summer_savings"]
    assert rs.campaigns["summer_savings"].product == ""
    assert rs.campaigns["spring_mortgage"].product == "mortgage"
    (tmp_path / "none").mkdir()
    assert load_rules(write_pack(tmp_path / "none", RULES)).campaigns == {}


def _errors(d: Path) -> list[str]:
    with pytest.raises(RuleSetError) as info:
        load_rules(d)
    return [str(e).removeprefix(f"{d}/") for e in info.value.errors]


def test_bad_and_duplicate_campaign_ids_are_refused_where_they_are(tmp_path: Path) -> None:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "a.yaml").write_text(RULES + CAMPAIGNS)
    (d / "b.yaml").write_text(
        "campaigns:\n"
        "  - {id: Spring-Mortgage}\n"
        "  - {id: spring_mortgage, product: mortgage}\n"
        "  - {id: autumn, colour: red}\n"
    )
    assert _errors(d) == [
        "b.yaml:2:10: id 'Spring-Mortgage': lowercase letters, digits, '_' (max 64, "
        "starting with a letter)",
        "b.yaml:3:5: duplicate campaign id 'spring_mortgage'",
        "b.yaml:4:18: unknown key 'colour' (allowed: description, id, product)",
    ]


def test_a_rule_set_declares_at_most_max_campaigns(tmp_path: Path) -> None:
    lines = [f"  - {{id: c{i}}}" for i in range(MAX_CAMPAIGNS + 1)]
    d = write_pack(tmp_path, RULES + "campaigns:\n" + "\n".join(lines) + "\n")
    assert _errors(d) == [
        f"pack.yaml:{7 + MAX_CAMPAIGNS}:5: a rule set may declare at most {MAX_CAMPAIGNS} campaigns"
    ]


def test_rules_check_counts_the_campaigns(tmp_path: Path) -> None:
    d = write_pack(tmp_path, RULES + CAMPAIGNS)
    out = subprocess.run(
        [sys.executable, "-m", "engine", "rules", "check", str(d)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 segments, 2 campaigns" in out.stdout
    assert "campaigns: spring_mortgage, card_switch_2026" in out.stdout
