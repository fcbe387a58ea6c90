"""`ringback rules test` replays a recording at its own timestamps, however old it is."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jwt
import orjson
from conftest import REPO, RULES_DIR

from engine.cli.rules import replay_traced
from engine.core.settings import Settings, load_settings
from engine.decisions.loader import load_rules

MINUTE_MS = 60_000
LONDON = ZoneInfo("Europe/London")


def _open_weekday_30_days_ago() -> dt.datetime:
    """11:00 London on the latest day at least 30 days ago the contact center was open."""
    cal = load_rules(RULES_DIR).calendars["contact_center"]
    day = dt.datetime.now(LONDON).date() - dt.timedelta(days=30)
    while True:
        at = dt.datetime.combine(day, dt.time(11, 0), tzinfo=LONDON)
        if day.weekday() < 5 and cal.is_open(int(at.timestamp() * 1000)):
            return at
        day -= dt.timedelta(days=1)


def _token(settings: Settings, customer: str, at_ms: int, ttl_s: int = 3600) -> str:
    """An identity token minted at `at_ms`, as the bank's backend did then."""
    secret = (settings.demo_credentials or {})["identity_secret"]
    iat = at_ms // 1000 - 60
    claims = {"sub": customer, "aud": "demo-bank", "iat": iat, "exp": iat + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")


def _batch(settings: Settings, customer: str, ts_ms: int, pages: list[str]) -> bytes:
    events = [
        {"id": uuid.uuid4().hex[:12], "type": "page_view", "page": p, "ts": ts_ms + i}
        for i, p in enumerate(pages)
    ]
    body: dict[str, Any] = {
        "site": "demo-bank",
        "anonymous_id": f"anon-{customer}",
        "events": events,
        "identity": _token(settings, customer, ts_ms),
    }
    return orjson.dumps(body)


def _attrs(customer: str) -> bytes:
    attributes = {"consent_call": True, "value_tier": "vip"}
    return orjson.dumps({"customer_id": customer, "attributes": attributes})


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "engine", "rules", "test", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_month_old_recording_replays_the_decisions_it_gave_then(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data")
    opened = _open_weekday_30_days_ago()
    t0 = int(opened.timestamp() * 1000)
    late = int(opened.replace(hour=22).timestamp() * 1000)  # after the 20:00 close
    churn_pages = ["/fees", "/complaints", "/close-account"]
    lines = [
        _attrs("r-1"),
        _batch(settings, "r-1", t0, churn_pages),
        # Ten minutes later: inside the rule's 7-day cooldown on the recording's clock.
        _batch(settings, "r-1", t0 + 10 * MINUTE_MS, ["/fees"]),
        _attrs("r-2"),
        _batch(settings, "r-2", late, churn_pages),
    ]
    events = tmp_path / "month-old.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    base = [str(RULES_DIR), "--events", str(events), "--data-dir", str(tmp_path / "data")]

    run = _run(*base)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "refused" not in out, out
    called = "callback via callback by rule churn_risk_retention_call (offer retention_call)"
    # During that day's opening hours: called at once, not scheduled.
    assert f"batch 2 for customer r-1: {called}\n" in out, out
    assert (
        "batch 3 for customer r-1: suppressed rule churn_risk_retention_call: cooldown_rule" in out
    )
    assert called not in "".join(ln for ln in out.splitlines(True) if ln.startswith("batch 3"))
    # That evening, after hours: scheduled for the next opening, on that day's calendar.
    after_hours = [ln for ln in out.splitlines() if ln.startswith("batch 5 for customer r-2")]
    assert any(called + " scheduled for" in ln for ln in after_hours), out

    other = tmp_path / "other"
    other.mkdir()
    for f in RULES_DIR.glob("*.yaml"):
        text = f.read_text()
        if f.name == "retention.yaml":
            text = (
                text.replace("cooldown_s: 604800", "cooldown_s: 60")
                .replace("channel_cooldown_s: 3600", "channel_cooldown_s: 60")
                .replace("max_per_day: 1", "max_per_day: 5")
            )
        (other / f.name).write_text(text)
    diff = _run(*base, "--against", str(other))
    assert diff.returncode == 0, diff.stderr
    assert "batch 3 for customer r-1:\n" in diff.stdout, diff.stdout
    assert (
        f"  - suppressed rule churn_risk_retention_call: cooldown_rule   ({RULES_DIR})"
        in diff.stdout
    )
    assert f"  + {called}   ({other})" in diff.stdout
    assert "1 of 5 batch(es) decide differently" in diff.stdout


async def test_identity_token_expired_at_its_recorded_time_is_refused(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data")
    t0 = int(_open_weekday_30_days_ago().timestamp() * 1000)
    valid_then = _batch(settings, "r-3", t0, ["/fees"])
    body = orjson.loads(_batch(settings, "r-3", t0, ["/fees"]))
    body["identity"] = _token(settings, "r-3", t0 - 2 * 3600 * 1000)  # expired an hour before
    results = await replay_traced(RULES_DIR, [valid_then, orjson.dumps(body)], settings)
    assert [(r.who, r.status) for r in results] == [
        ("customer r-3", 200),
        ("anonymous anon-r-3", 401),
    ]
    assert results[1].decisions[0]["error"]["code"] == "identity_expired"


async def test_received_at_is_the_replay_clock_when_recorded(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path / "data")
    t0 = int(_open_weekday_30_days_ago().timestamp() * 1000)
    body = orjson.loads(_batch(settings, "r-4", t0, ["/fees"]))
    body["received_at"] = t0 + 5 * MINUTE_MS
    (r,) = await replay_traced(RULES_DIR, [orjson.dumps(body)], settings)
    assert r.status == 200 and r.now_ms == t0 + 5 * MINUTE_MS
