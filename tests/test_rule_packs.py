"""Every shipped rule pack, replayed through the real engine on a throwaway Valkey."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import REPO, RULES_DIR

from engine.cli.rules import replay
from engine.core.settings import Settings, load_settings
from engine.decisions.loader import load_rules
from engine.ingest.identity import mint_token

HOUR = 3_600_000


def _ev(etype: str, page: str | None = None, ts: int | None = None, **props: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "id": uuid.uuid4().hex[:12],
        "type": etype,
        "ts": ts or int(time.time() * 1000),
    }
    if page:
        e["page"] = page
    if props:
        e["props"] = props
    return e


class Scenario:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lines: list[bytes] = []

    def attrs(self, customer: str, **attributes: Any) -> Scenario:
        self.lines.append(orjson.dumps({"customer_id": customer, "attributes": attributes}))
        return self

    def batch(
        self,
        events: list[dict[str, Any]],
        customer: str | None = None,
        anon: str = "anon-scenario-1",
    ) -> Scenario:
        body: dict[str, Any] = {"site": "demo-bank", "anonymous_id": anon, "events": events}
        if customer:
            secret = (self.settings.demo_credentials or {})["identity_secret"]
            body["identity"] = mint_token(secret, "demo-bank", customer)
        self.lines.append(orjson.dumps(body))
        return self

    async def decisions(self) -> list[dict[str, Any]]:
        results = await replay(RULES_DIR, self.lines, self.settings)
        assert all(status == 200 for _, _, status in results), results
        return [d for _, ds, _ in results for d in ds]


@pytest.fixture
def scenario(tmp_path: Path) -> Scenario:
    return Scenario(load_settings(None, data_dir=tmp_path / "data"))


def _by_rule(decisions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["rule"]: d for d in decisions}


def _calcs(n: int, amount: int = 250_000) -> list[dict[str, Any]]:
    return [
        _ev("calc", "/mortgages/calculator", product="mortgage", amount=amount + i, term_months=300)
        for i in range(n)
    ]


async def test_mortgage_pack_calls_consenting_customers_and_offers_to_others(
    scenario: Scenario,
) -> None:
    scenario.attrs("m-1", consent_call=True, products_held=["current_account"])
    scenario.batch(_calcs(3), customer="m-1")
    scenario.batch(_calcs(3), anon="anon-mortgage-2")
    decided = await scenario.decisions()
    called = [d for d in decided if d["rule"] == "mortgage_calculator_callback"]
    # 5 % holdout: this customer is not in it (stable hash), so the call is placed
    # now or scheduled for the next opening of the contact center.
    assert len(called) == 1 and called[0]["channel"] == "callback"
    offers = [d for d in decided if d["rule"] == "mortgage_adviser_offer"]
    assert offers and all(d["offer"]["id"] == "mortgage_adviser_call" for d in offers)


async def test_mortgage_holders_are_not_offered_a_mortgage(scenario: Scenario) -> None:
    scenario.attrs("m-2", consent_call=True, products_held=["mortgage"])
    scenario.batch(_calcs(4), customer="m-2")
    assert "mortgage" not in {d.get("offer", {}).get("product") for d in await scenario.decisions()}


async def test_abandoned_loan_application_falls_back_to_email_without_consent(
    scenario: Scenario,
) -> None:
    scenario.batch(
        [
            _ev("page_view", "/personal-loan/apply"),
            _ev(
                "form",
                "/personal-loan/apply",
                field="amount",
                action="focus",
                form="personal-loan-application",
            ),
            _ev(
                "form",
                "/personal-loan/apply",
                field="amount",
                action="abandon",
                form="personal-loan-application",
            ),
        ],
        customer="l-1",
    )
    rules = _by_rule(await scenario.decisions())
    assert rules["personal_loan_abandoned"]["channel"] == "email"
    assert rules["personal_loan_resume_offer"]["offer"]["id"] == "personal_loan_finish"


async def test_asking_for_a_call_is_consent_for_that_call_but_not_past_do_not_call(
    scenario: Scenario,
) -> None:
    call_me = _ev("interest", "/mortgages", product="mortgage", call_me=True)
    scenario.batch([call_me], customer="c-1")  # no CRM consent on file
    scenario.attrs("c-2", do_not_call=True)
    scenario.batch([dict(call_me, id="cm-2")], customer="c-2")
    scenario.batch([dict(call_me, id="cm-3")], anon="anon-call-me")  # nobody to call
    scenario.batch([_ev("interest", "/mortgages", product="mortgage")], customer="c-4")
    results = await replay(RULES_DIR, scenario.lines, scenario.settings)
    contacts = [(who, d["rule"], d["channel"]) for who, ds, _ in results for d in ds]
    assert [c for c in contacts if c[2] != "web"] == [
        ("customer c-1", "call_me_requested", "callback"),
        # The bank's do-not-call list wins: an e-mail answers instead.
        ("customer c-2", "call_me_requested", "email"),
    ]


async def test_card_comparison_gets_the_cashback_card(scenario: Scenario) -> None:
    scenario.batch([_ev("page_view", "/cards"), _ev("page_view", "/cards/compare")])
    assert (
        _by_rule(await scenario.decisions())["card_comparison_offer"]["offer"]["id"]
        == "card_cashback"
    )


async def test_fund_comparison_gets_an_advisor_appointment(scenario: Scenario) -> None:
    scenario.batch([_ev("page_view", "/funds"), _ev("page_view", "/funds/compare")])
    rules = _by_rule(await scenario.decisions())
    assert rules["fund_comparison_appointment"]["offer"]["id"] == "advisor_appointment"


async def test_repeated_fees_pages_trigger_a_retention_call(scenario: Scenario) -> None:
    scenario.attrs("r-1", consent_call=True, value_tier="vip")
    scenario.batch(
        [_ev("page_view", p) for p in ("/fees", "/complaints", "/close-account")], customer="r-1"
    )
    rules = _by_rule(await scenario.decisions())
    assert rules["churn_risk_retention_call"]["channel"] == "callback"


async def test_returning_customer_sees_the_loyalty_rate(scenario: Scenario) -> None:
    now = int(time.time() * 1000)
    scenario.attrs("s-1", products_held=["current_account"])
    scenario.batch([_ev("page_view", "/", ts=now - 3 * HOUR)], customer="s-1")
    scenario.batch([_ev("page_view", "/", ts=now)], customer="s-1")
    rules = _by_rule(await scenario.decisions())
    assert rules["returning_customer_savings"]["offer"]["id"] == "savings_rate_for_customers"


def test_every_shipped_pack_loads_and_documents_itself() -> None:
    rs = load_rules(RULES_DIR)
    assert len(rs.rules) >= 6
    for f in RULES_DIR.glob("*.yaml"):
        assert f.read_text().startswith("#"), f"{f.name} needs a leading comment"
    for rule in rs.rules:
        assert rule.description, rule.id


def test_rules_test_cli_prints_decisions_and_diffs(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data")
    events = tmp_path / "events.jsonl"
    s = Scenario(settings).batch([_ev("page_view", "/cards"), _ev("page_view", "/cards/x")])
    events.write_bytes(b"\n".join(s.lines) + b"\n")
    other = tmp_path / "other"
    other.mkdir()
    for f in RULES_DIR.glob("*.yaml"):
        (other / f.name).write_text(
            f.read_text().replace("profile.categories.cards >= 2", "profile.categories.cards >= 5")
        )
    base = [
        sys.executable,
        "-m",
        "engine",
        "rules",
        "test",
        str(RULES_DIR),
        "--events",
        str(events),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    run = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (
        "batch 1 for anonymous anon-scenario-1: offer via web by rule "
        "card_comparison_offer (offer card_cashback)" in run.stdout
    )
    diff = subprocess.run(
        [*base, "--against", str(other)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert diff.returncode == 0, diff.stderr
    assert "- offer via web by rule card_comparison_offer" in diff.stdout
    assert "1 of 1 batch(es) decide differently" in diff.stdout
