"""The rules file shape (the msgspec structs in engine/decisions/loader.py): what it
refuses, where it says so (`file:line:col`), and that every pack we ship fits it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from engine.core.vocabulary import Action, Channel
from engine.decisions.loader import RuleSetError, load_rules

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "rules"

OFFER = "offers:\n  - {id: o, title: T}\n"


def _errors(tmp_path: Path, text: str) -> list[str]:
    """The loader's problems for one file, with the directory stripped."""
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RuleSetError) as info:
        load_rules(tmp_path)
    return [str(e).removeprefix(f"{tmp_path}/") for e in info.value.errors]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            OFFER + "colour: red\n",
            "r.yaml:3:1: unknown key 'colour' (allowed: arbitration, calendars, campaigns, "
            "customer_value, levers, offers, rules, segments)",
        ),
        (
            "offers:\n  - {id: o, title: T, colour: red}\n",
            "r.yaml:2:23: unknown key 'colour' (allowed: channels, cta_label, cta_url, id, "
            "product, text, title, value)",
        ),
        (
            OFFER + "rules:\n  - id: r\n    when: 'true'\n"
            "    action: {type: offer, offer: o, chanel: web}\n",
            "r.yaml:6:37: unknown key 'chanel' (allowed: channel, fallback, offer, slot, type)",
        ),
        (
            "calendars:\n  - name: cc\n    timezone: UTC\n    hours: {funday: '08:00-20:00'}\n",
            "r.yaml:4:13: unknown key 'funday' (allowed: fri, mon, sat, sun, thu, tue, wed)",
        ),
        (
            OFFER + "rules:\n  - id: r\n    when: 'true'\n    action: {type: offer, offer: o}\n"
            "    policy:\n      cooldown_s: 60\n      max_per_dya: 1\n",
            "r.yaml:9:7: unknown key 'max_per_dya' (allowed: calendar, channel_cooldown_s, "
            "cooldown_s, expires_s, max_per_day, max_queue_per_agent, outside_hours)",
        ),
    ],
    ids=["file", "offer", "action", "calendar_hours", "policy"],
)
def test_unknown_keys_are_refused_at_every_level_with_their_position(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert _errors(tmp_path, text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("offers:\n  - {id: o, title: 5}\n", "r.yaml:2:20: title: expected str, got int"),
        (
            OFFER + "rules:\n  - id: r\n    when: 'true'\n    action: {type: offer, offer: o}\n"
            "    priority: high\n",
            "r.yaml:7:15: priority: expected int, got str",
        ),
        (
            OFFER + "rules:\n  - id: r\n    when: 'true'\n    action: offer\n",
            "r.yaml:6:13: action: expected mapping, got str",
        ),
        ("rules: {id: r}\n", "r.yaml:1:8: rules: expected list, got mapping"),
        (
            OFFER + "rules:\n  - id: r\n    when: 'true'\n    action: {type: offer, offer: o}\n"
            "    holdout_pct: 150\n",
            "r.yaml:7:18: holdout_pct: expected float <= 100.0",
        ),
        (
            "offers:\n  - {id: Offer-1, title: T}\n",
            "r.yaml:2:10: id 'Offer-1': lowercase letters, digits, '_' (max 64, starting with "
            "a letter)",
        ),
        ("offers:\n  - {id: o}\n", "r.yaml:2:5: missing required key 'title'"),
    ],
    ids=["str", "int", "mapping", "list", "range", "id_pattern", "required"],
)
def test_wrong_types_are_refused_with_the_key_and_its_position(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert _errors(tmp_path, text) == [expected]


def test_an_action_outside_the_vocabulary_lists_the_allowed_actions(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "rules:\n  - id: r\n    when: 'true'\n    action: {type: sms}\n")
    allowed = ", ".join(Action)
    assert errors == [f"r.yaml:4:20: type: 'sms' is not one of {allowed}"]
    assert allowed == "offer, callback, notify"


@pytest.mark.parametrize(
    ("action", "col"),
    [
        ("{type: callback, channel: pigeon}", 39),
        ("{type: callback, fallback: pigeon}", 40),
    ],
)
def test_a_channel_outside_the_vocabulary_lists_the_allowed_channels(
    tmp_path: Path, action: str, col: int
) -> None:
    errors = _errors(tmp_path, f"rules:\n  - id: r\n    when: 'true'\n    action: {action}\n")
    key = "channel" if "channel:" in action else "fallback"
    assert errors == [f"r.yaml:4:{col}: {key}: 'pigeon' is not one of {', '.join(Channel)}"]


def test_an_offer_channel_outside_the_vocabulary_points_at_the_entry(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "offers:\n  - {id: o, title: T, channels: [web, fax]}\n")
    assert errors == ["r.yaml:2:39: channels: 'fax' is not one of web, callback, email, sms"]


def test_every_problem_is_reported_at_once_structural_and_semantic(tmp_path: Path) -> None:
    # msgspec stops at the first error; the loader takes the bad key (or item) out and
    # decodes again, so one run lists every problem, and the rules that still decode
    # get the cross-checks (expressions, unknown offers) in the same run.
    errors = _errors(
        tmp_path,
        OFFER + "rules:\n"
        "  - {id: a, when: 'true', action: {type: fax}}\n"
        "  - {id: b, when: 'profile.x >', action: {type: offer, offer: o}}\n"
        "  - {id: c, when: 'true', action: {type: offer, offer: o}, priority: x, colour: 1}\n"
        "  - {id: d, when: 'true', action: {type: offer, offer: nope}}\n"
        "  - id: e\n"
        "    when: 'true'\n"
        "    action: {type: callback, channel: pigeon, fallback: email}\n"
        "    policy: {cooldown_s: -5, outside_hours: later, calendar: nocal}\n"
        "    enabled: {from: soon}\n"
        "  - {id: Bad-Id, when: 'true', action: {type: notify}}\n",
    )
    assert errors == [
        "r.yaml:4:42: type: 'fax' is not one of offer, callback, notify",
        "r.yaml:5:20: syntax error: invalid syntax",
        "r.yaml:6:70: priority: expected int, got str",
        "r.yaml:6:73: unknown key 'colour' (allowed: action, customer_value_weight, "
        "description, enabled, holdout_pct, id, policy, priority, value, when)",
        "r.yaml:7:56: unknown offer 'nope'",
        "r.yaml:10:39: channel: 'pigeon' is not one of web, callback, email, sms",
        "r.yaml:11:26: cooldown_s: expected int >= 0",
        "r.yaml:11:45: outside_hours: 'later' is not one of schedule, fallback, drop",
        "r.yaml:11:62: unknown calendar 'nocal'",
        "r.yaml:12:21: from: invalid RFC3339 encoded date",
        "r.yaml:13:10: id 'Bad-Id': lowercase letters, digits, '_' (max 64, starting "
        "with a letter)",
    ]


def test_an_omitted_channel_is_the_actions_default_channel(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        OFFER + "rules:\n"
        "  - {id: a, when: 'true', action: {type: offer, offer: o}}\n"
        "  - {id: b, when: 'true', action: {type: callback}}\n"
        "  - {id: c, when: 'true', action: {type: notify, channel: sms}}\n"
    )
    rs = load_rules(tmp_path)
    assert [(r.action, r.channel) for r in rs.rules] == [
        (Action.OFFER, Channel.WEB),
        (Action.CALLBACK, Channel.CALLBACK),
        (Action.NOTIFY, Channel.SMS),
    ]
    assert rs.offers["o"].channels == (Channel.WEB,)
    assert rs.rules[0].policy.expires_s == 600 and rs.rules[0].policy.outside_hours == "drop"


def test_every_shipped_rule_pack_loads() -> None:
    packs = sorted(RULES_DIR.glob("*.y*ml"))
    assert packs, "no rule packs under rules/"
    rs = load_rules(RULES_DIR)
    assert len(rs.rules) >= len(packs) - 2  # offers.yaml and calendars.yaml hold no rules
    for pack in packs:  # each file also fits the shape on its own (its structure at least)
        try:
            load_rules(pack)
        except RuleSetError as exc:  # only references to the other files may be missing
            assert all(re.search(r"unknown (offer|calendar) '", e.message) for e in exc.errors)


def test_the_readme_rule_example_loads_with_the_shipped_catalog(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    assert blocks, "README has no yaml example"
    for name in ("offers.yaml", "calendars.yaml"):
        shutil.copy(RULES_DIR / name, tmp_path / name)
    for i, block in enumerate(blocks):
        (tmp_path / f"readme_{i}.yaml").write_text(block)
    rs = load_rules(tmp_path)
    assert [r.id for r in rs.rules] == ["mortgage_calculator_callback"]
