"""The Grafana dashboard and the Prometheus rules in ops/ watch what the engine serves.

promtool checks the rules and runs their unit tests (every alert fires on one series
and not on another). Then a real engine takes a batch and is scraped: every metric
name, label matcher, grouping label and histogram bound in a panel or a rule must be
one that /metrics really has, so a misspelt or renamed metric fails here instead of
leaving an empty panel or an alert that can never fire.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from conftest import REPO, RULES_DIR, EngineClient, calc, event
from prometheus_client.metrics import MetricWrapperBase

from engine.core.metrics import Metrics

OPS = REPO / "ops"
RULES = OPS / "prometheus" / "ringback.rules.yml"
RULES_TEST = OPS / "prometheus" / "ringback.rules.test.yml"
DASHBOARD = OPS / "grafana" / "ringback-dashboard.json"
README = OPS / "README.md"

# Series Prometheus makes itself, not the engine.
PROMETHEUS_SERIES = frozenset({"up"})
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"offset", "bool", "inf", "nan", "atan2"}
)


# --- promtool -----------------------------------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: make test installs Debian's prometheus package"
    return subprocess.run(
        [promtool, *args], cwd=RULES.parent, text=True, capture_output=True, timeout=120
    )


def test_promtool_accepts_the_rules() -> None:
    check = _promtool("check", "rules", RULES.name)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    run = _promtool("test", "rules", RULES_TEST.name)
    assert run.returncode == 0, run.stdout + run.stderr


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_is_tested_and_says_how_bad_what_and_what_to_do() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])}
    fired = {
        t["alertname"]
        for case in tests
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    readme = README.read_text()
    alerts = [r for r in _rules() if "alert" in r]
    assert len(alerts) >= 10
    for rule in alerts:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert set(rule["annotations"]) >= {"summary", "description", "runbook"}, name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name} has no `for`"
        assert name in fired, f"no promtool test fires {name}"
        assert name in tested
        # The runbook link lands on a heading of ops/README.md that names an alert.
        anchor = rule["annotations"]["runbook"].removeprefix("ops/README.md#")
        headings = {h.lower() for h in re.findall(r"^#+ (\w+)\s*$", readme, re.M)}
        assert anchor in headings, f"{name}: runbook #{anchor} is not a heading of ops/README.md"
        assert f"`{name}`" in readme, f"{name} is not in the README's alert table"


# --- what the panels and rules ask for -------------------------------------------------


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in doc["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def dashboard_expressions(doc: dict[str, Any]) -> list[str]:
    """Every PromQL expression the dashboard runs: panel targets and variable queries."""
    exprs = [t["expr"] for p in _panels(doc) for t in p.get("targets", []) if t.get("expr")]
    for var in doc["templating"]["list"]:
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        if m := re.fullmatch(r"label_values\((.*),\s*\w+\)", text):
            exprs.append(m.group(1))
    return exprs


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    doc = _dashboard()
    assert doc["schemaVersion"] >= 39 and doc["uid"] and doc["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    for title in ("Ingest", "Decisions", "Callbacks", "Webhooks", "Valkey", "Models", "Process"):
        assert any(title in row for row in rows), f"no {title} row"
    panels = [p for p in _panels(doc) if p["type"] != "row"]
    assert len({p["id"] for p in _panels(doc)}) == len(_panels(doc)), "panel ids repeat"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every query follows the job and instance pickers.
            assert '$job"' in target["expr"] and '$instance"' in target["expr"], panel["title"]


def rule_expressions() -> tuple[list[str], dict[str, frozenset[str]]]:
    """The rules' expressions, and the series the recording rules make with the labels
    they keep (their `by` labels)."""
    rules = _rules()
    recorded = {
        r["record"]: frozenset(
            label.strip() for group in _GROUPING.findall(r["expr"]) for label in group.split(",")
        )
        - {"le"}
        for r in rules
        if "record" in r
    }
    return [str(r["expr"]) for r in rules], recorded


_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_MATCHER_NAMES = re.compile(r'(\w+)="')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (not functions, keywords or labels).

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{x="y z"}[5m])) / b offset 1d'))
    ['a_bucket', 'b']
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings may hold anything
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)  # grouping labels
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        if m.group(2) is None and m.group(1).lower() not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


@dataclass
class Served:
    """What one scrape of /metrics offers: sample names (a family with no samples yet
    still lists its # TYPE, from which its sample names follow), each name's labels,
    and the bucket bounds of each histogram."""

    labels: dict[str, frozenset[str]]
    bounds: dict[str, set[str]]

    @classmethod
    def parse(cls, text: str, metrics: Metrics) -> Served:
        declared = {
            w._name: frozenset(w._labelnames)
            for w in vars(metrics).values()
            if isinstance(w, MetricWrapperBase)
        }
        labels: dict[str, frozenset[str]] = {}
        for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
            base = family.removesuffix("_total")
            own = declared.get(base, declared.get(family, frozenset()))
            if kind == "counter":
                labels[f"{base}_total"] = own
            elif kind == "histogram":
                labels[f"{family}_bucket"] = own | {"le"}
                labels[f"{family}_sum"] = labels[f"{family}_count"] = own
            elif kind == "summary":
                labels[family] = own | {"quantile"}
                labels[f"{family}_sum"] = labels[f"{family}_count"] = own
            else:
                labels[family] = own
        for name, body in re.findall(r"^(\w+)\{([^}]*)\}", text, re.M):  # labels seen
            labels[name] = labels.get(name, frozenset()) | set(_MATCHER_NAMES.findall(body))
        bounds: dict[str, set[str]] = {}
        for name, le in re.findall(r'^(\w+_bucket)\{(?:[^}]*,)?le="([^"]+)"', text, re.M):
            bounds.setdefault(name, set()).add(le)
        return cls(labels, bounds)


def problems(exprs: list[str], served: Served, recorded: dict[str, frozenset[str]]) -> list[str]:
    """What in `exprs` the engine does not serve: names, label matchers, grouping
    labels, histogram bounds. Empty when every panel or rule can show data."""
    out = []
    for expr in exprs:
        known_labels = set(TARGET_LABELS)
        for name in sorted(metric_names(expr)):
            if name in served.labels:
                known_labels |= served.labels[name]
            elif name in recorded:
                known_labels |= recorded[name]
            elif name not in PROMETHEUS_SERIES:
                out.append(f"{name}: not served on /metrics (in {expr!r})")
        for name, body in _SELECTOR.findall(re.sub(r"\[[^\]]*\]", "", expr)):
            own = served.labels.get(name, recorded.get(name))
            if own is None:
                continue
            for label, value in _MATCHER.findall(body):
                if label not in own | TARGET_LABELS:
                    out.append(f"{name}: has no label {label!r} (in {expr!r})")
                if label == "le" and value not in served.bounds.get(name, set()):
                    out.append(f"{name}: no bucket le={value!r} (in {expr!r})")
        for group in _GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                if label not in known_labels:
                    out.append(f"grouping by {label!r}: no such label (in {expr!r})")
    return out


# --- against a real engine -------------------------------------------------------------


@pytest.fixture
async def served(make_engine: Any) -> Served:
    """A real engine with the shipped rules takes one batch (so labelled series exist:
    events by type, batches, decisions), then answers a scrape of /metrics."""
    engine: EngineClient = await make_engine(rules_dir=RULES_DIR)
    status, body, _ = await engine.post_events(
        engine.batch([event("page_view", page="/mortgages"), calc()])
    )
    assert status == 200, body
    await engine.post_events(b"{", content_type="application/json")  # a refusal by code
    async with engine.session.get(f"{engine.url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    assert 'ringback_batches_total{result="accepted"} 1.0' in text
    assert engine.metrics is not None
    return Served.parse(text, engine.metrics)


async def test_the_dashboard_asks_only_for_what_the_engine_serves(served: Served) -> None:
    exprs = dashboard_expressions(_dashboard())
    assert len(exprs) >= 40
    _, recorded = rule_expressions()
    assert problems(exprs, served, recorded) == []


async def test_the_rules_ask_only_for_what_the_engine_serves(served: Served) -> None:
    exprs, recorded = rule_expressions()
    assert problems(exprs, served, recorded) == []
    # And the alert tests feed the rules the series names the engine serves.
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fed = [s["series"] for case in tests for s in case["input_series"]]
    assert problems(fed, served, recorded) == []


async def test_a_misspelt_metric_label_or_bound_in_the_dashboard_is_caught(
    served: Served,
) -> None:
    doc = _dashboard()
    _, recorded = rule_expressions()
    for good, bad in (
        ("ringback_events_total{", "ringback_evnts_total{"),
        ("sum by (action)", "sum by (acton)"),
        ('reason="holdout"', 'raison="holdout"'),
        ('le="300.0"', 'le="300"'),
    ):
        text = json.dumps(doc).replace(good.replace('"', '\\"'), bad.replace('"', '\\"'), 1)
        assert text != json.dumps(doc), good
        found = problems(dashboard_expressions(json.loads(text)), served, recorded)
        assert len(found) == 1, (bad, found)


def test_the_metric_name_reader_skips_functions_keywords_and_labels() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (job, le) ("
        'rate(ringback_ingest_seconds_bucket{job=~"$job"}[$__rate_interval]))) > 0.1'
        " and on (job) (ringback_model_auc offset 1d) - up"
    )
    assert metric_names(expr) == {"ringback_ingest_seconds_bucket", "ringback_model_auc", "up"}


async def test_every_answer_is_counted_by_route_template_and_status_class(
    make_engine: Any,
) -> None:
    """`ringback_http_requests_total`: what a 5xx-ratio alert on any route reads. Ids
    in the path never become label values (the route's template does)."""
    engine: EngineClient = await make_engine()
    assert (await engine.post_events(engine.batch([event("page_view", page="/")])))[0] == 200
    assert (await engine.post_events(b"{", content_type="application/json"))[0] == 400
    status, _ = await engine.get_json("/v1/profiles/cust-42")  # no token
    assert status == 401
    status, _ = await engine.get_json("/no/such/route")
    assert status == 404
    assert engine.metrics is not None
    value = engine.metrics.registry.get_sample_value
    counted = {
        (route, cls): value("ringback_http_requests_total", {"route": route, "status": cls})
        for route, cls in (
            ("/v1/events", "2xx"),
            ("/v1/events", "4xx"),
            ("/v1/profiles/{customer_id}", "4xx"),
            ("unmatched", "4xx"),
        )
    }
    assert counted == {
        ("/v1/events", "2xx"): 1.0,
        ("/v1/events", "4xx"): 1.0,
        ("/v1/profiles/{customer_id}", "4xx"): 1.0,
        ("unmatched", "4xx"): 1.0,
    }
