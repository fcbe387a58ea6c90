"""Load a rules directory (YAML) into an immutable, compiled `RuleSet`.

Files may hold any of the top-level keys `offers`, `rules`, `calendars`, `levers`.
Every problem is reported as `file:line:col: message` (positions from PyYAML's node
marks; expression errors point inside the `when` text), all problems at once, and
a set with any problem is rejected whole: hot reload keeps the previous set.

Rule files come from analysts and deploy pipelines, so the loader assumes nothing
about their size or shape before it has checked them: a file over `MAX_FILE_BYTES`
(256 KB; the largest shipped pack is a few KB) is refused before it is read, and
YAML anchors and aliases are refused before anything is built from the document (a
1 KB "billion laughs" file expands into gigabytes wherever a value is copied or
printed), as is nesting deeper than `MAX_DEPTH`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from engine.decisions.calendar import DAYS, Calendar
from engine.decisions.expr import Expression, ExpressionError, compile_expression

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "Offer",
    "Rule",
    "RuleError",
    "RuleSet",
    "RuleSetError",
    "load_rules",
]

ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ACTIONS = ("offer", "callback", "notify")
CHANNELS = ("web", "callback", "email", "sms")
OUTSIDE_HOURS = ("schedule", "fallback", "drop")
MAX_FILE_BYTES = 256 * 1024  # per rules file; checked before the file is read
MAX_DEPTH = 32  # nested mappings/lists; real packs use 5


class RuleError(Exception):
    def __init__(self, file: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{file}:{line}:{col}: {message}")
        self.file, self.line, self.col, self.message = file, line, col, message


class RuleSetError(Exception):
    """Every error of a rejected rule set, one `file:line:col: message` per line."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True)
class Offer:
    id: str
    title: str
    text: str
    cta_url: str
    cta_label: str
    product: str
    value: float
    channels: tuple[str, ...]

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "text": self.text,
            "cta_url": self.cta_url,
            "cta_label": self.cta_label,
            "product": self.product,
        }


@dataclass(frozen=True)
class Policy:
    cooldown_s: int = 0
    channel_cooldown_s: int = 0
    max_per_day: int = 0
    calendar: str | None = None
    expires_s: int = 600
    outside_hours: str = "drop"
    max_queue_per_agent: int = 0  # 0 = don't look at contact-center capacity


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    when: Expression
    action: str  # offer | callback | notify
    offer: str | None
    slot: str
    channel: str
    fallback: str | None
    priority: int
    value: float
    policy: Policy
    holdout_pct: float
    enabled_from: dt.date | None
    enabled_until: dt.date | None
    source: str  # file:line

    def enabled(self, now_ms: int) -> bool:
        return self.enabled_on(dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).date())

    def enabled_on(self, today: dt.date) -> bool:
        return (self.enabled_from is None or today >= self.enabled_from) and (
            self.enabled_until is None or today < self.enabled_until
        )


@dataclass(frozen=True)
class RuleSet:
    version: str
    loaded_at: float
    rules: tuple[Rule, ...]
    offers: dict[str, Offer]
    calendars: dict[str, Calendar]
    levers: dict[str, float] = field(default_factory=dict)


class _Collector:
    def __init__(self) -> None:
        self.errors: list[RuleError] = []

    def add(self, file: str, node: yaml.Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        col = node.start_mark.column + 1 if node is not None else 1
        self.errors.append(RuleError(file, line, col, message))


class _Map:
    """A YAML mapping node with typed, position-aware access."""

    def __init__(self, file: str, node: yaml.Node, errs: _Collector, what: str) -> None:
        self.file, self.mapping, self.errs = file, node, errs
        self.items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        if not isinstance(node, yaml.MappingNode):
            errs.add(file, node, f"{what} must be a mapping")
            return
        for k, v in node.value:
            key = str(k.value)
            if key in self.items:
                errs.add(file, k, f"duplicate key {key!r}")
            self.items[key] = (k, v)

    def check_keys(self, allowed: set[str]) -> None:
        for key, (k, _) in self.items.items():
            if key not in allowed:
                self.errs.add(
                    self.file, k, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})"
                )

    def node(self, key: str) -> yaml.Node | None:
        return self.items[key][1] if key in self.items else None

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False
    ) -> Any:
        n = self.node(key)
        if n is None:
            if required:
                self.errs.add(self.file, self.node_self(), f"missing required key {key!r}")
            return default
        try:
            value = yaml.safe_load(yaml.serialize(n))
        except yaml.YAMLError as exc:  # e.g. a !!python/... tag: not plain data
            self.errs.add(self.file, n, f"{key}: {getattr(exc, 'problem', None) or exc}")
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.errs.add(self.file, n, f"{key}: expected {names}, got {type(value).__name__}")
            return default
        return value

    def node_self(self) -> yaml.Node:
        return self.mapping


def _map(file: str, node: yaml.Node, errs: _Collector, what: str) -> _Map:
    return _Map(file, node, errs, what)


def _hours(text: str) -> list[tuple[int, int]]:
    """'08:00-12:00, 13:00-20:00' -> minutes after midnight."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", part)
        if not m:
            raise ValueError(f"expected HH:MM-HH:MM, got {part.strip()!r}")
        a, b = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
        if not (0 <= a <= 1440 and 0 <= b <= 1440):
            raise ValueError(f"hours out of range in {part.strip()!r}")
        out.append((a, b))
    return out


def _expr_error_position(node: yaml.ScalarNode, exc: ExpressionError) -> tuple[int, int]:
    """Map a position inside the expression onto the YAML file (1-based line, col)."""
    start = node.start_mark
    style = getattr(node, "style", None)
    value_lines = str(node.value).strip().split("\n")
    # The offending character's offset in the expression as parsed.
    offset = sum(len(ln) + 1 for ln in value_lines[: exc.line - 1]) + exc.col - 1
    if style in ("|", ">") and start.buffer is not None:
        raw = start.buffer[start.index : node.end_mark.index].split("\n")[1:]
        for i, line in enumerate(raw):
            content = line.strip()
            if not content:
                continue
            if offset <= len(content):
                indent = len(line) - len(line.lstrip())
                return start.line + 2 + i, indent + offset + 1
            offset -= len(content) + 1  # folded or literal: one separator per line
        return start.line + 2, start.column + 1
    quote = 1 if style in ("'", '"') else 0
    return start.line + exc.line, start.column + quote + offset + 1


def load_rules(
    path: str | Path, functions_for: Callable[[dict[str, Calendar]], dict[str, Any]] | None = None
) -> RuleSet:
    """Load every *.yaml under `path`; raise RuleSetError listing all problems."""
    root = Path(path)
    errs = _Collector()
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml")) if root.is_dir() else [root]
    if not files:
        raise RuleSetError([RuleError(str(root), 1, 1, "no .yaml files found")])
    digest = hashlib.sha256()
    docs: list[tuple[str, _Map]] = []
    for f in files:
        text = _read_capped(f, errs)
        if text is None:
            continue
        digest.update(f.name.encode() + b"\0" + text.encode())
        try:
            problem = _unsafe_structure(text)
            node = None if problem else yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            errs.errors.append(
                RuleError(
                    str(f),
                    (mark.line + 1) if mark else 1,
                    (mark.column + 1) if mark else 1,
                    f"YAML syntax: {getattr(exc, 'problem', exc)}",
                )
            )
            continue
        if problem:
            mark, message = problem
            errs.errors.append(RuleError(str(f), mark.line + 1, mark.column + 1, message))
            continue
        if node is None:
            continue
        doc = _map(str(f), node, errs, "a rules file")
        doc.check_keys({"offers", "rules", "calendars", "levers"})
        docs.append((str(f), doc))

    calendars: dict[str, Calendar] = {}
    offers: dict[str, Offer] = {}
    levers: dict[str, float] = {}
    for file, doc in docs:
        for item in _seq(file, doc.node("calendars"), errs):
            cal = _calendar(file, item, errs)
            if cal and cal.name in calendars:
                errs.add(file, item, f"duplicate calendar {cal.name!r}")
            elif cal:
                calendars[cal.name] = cal
        for item in _seq(file, doc.node("offers"), errs):
            offer = _offer(file, item, errs)
            if offer and offer.id in offers:
                errs.add(file, item, f"duplicate offer id {offer.id!r}")
            elif offer:
                offers[offer.id] = offer
        lv = doc.node("levers")
        if lv is not None:
            lm = _map(file, lv, errs, "levers")
            for key in lm.items:
                levers[key] = float(lm.get(key, float, 1.0))

    functions = functions_for(calendars) if functions_for else default_functions(calendars)
    rules: list[Rule] = []
    for file, doc in docs:
        for item in _seq(file, doc.node("rules"), errs):
            rule = _rule(file, item, errs, offers, calendars, functions)
            if rule and any(r.id == rule.id for r in rules):
                errs.add(file, item, f"duplicate rule id {rule.id!r}")
            elif rule:
                rules.append(rule)
    if errs.errors:
        raise RuleSetError(errs.errors)
    return RuleSet(
        version=digest.hexdigest()[:12],
        loaded_at=time.time(),
        rules=tuple(rules),
        offers=offers,
        calendars=calendars,
        levers=levers,
    )


def _read_capped(f: Path, errs: _Collector) -> str | None:
    """The file's text, or None (and an error) if it is too big or not UTF-8.

    The size is checked on the open file before reading, so a huge (or growing)
    file costs one stat and at most `MAX_FILE_BYTES` + 1 bytes of memory."""
    with f.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(MAX_FILE_BYTES + 1) if size <= MAX_FILE_BYTES else b""
    if size > MAX_FILE_BYTES or len(raw) > MAX_FILE_BYTES:
        errs.errors.append(
            RuleError(
                str(f),
                1,
                1,
                f"file is {max(size, len(raw))} bytes; a rules file may be at most "
                f"{MAX_FILE_BYTES} bytes (split it into several files)",
            )
        )
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        errs.errors.append(RuleError(str(f), 1, 1, f"not UTF-8 text (byte {exc.start})"))
        return None


def _unsafe_structure(text: str) -> tuple[yaml.Mark, str] | None:
    """The first anchor, alias or too-deep collection in `text`, from the event stream.

    Parsing events builds nothing: an alias is one event however much it would
    expand to, so this is linear in the file's size. Raises yaml.YAMLError on
    syntax errors (reported like the composer's)."""
    depth = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
            return ev.start_mark, "anchors and aliases are not allowed"
        if isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return ev.start_mark, f"nested more than {MAX_DEPTH} levels deep"
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1
    return None


def default_functions(calendars: dict[str, Calendar]) -> dict[str, Callable[..., Any]]:
    """The fixed function table rules may call (time windows, business hours)."""

    def business_hours(name: str, now_ms: int) -> bool:
        return calendars[name].is_open(now_ms)

    def within(ts_ms: float, seconds: float, now_ms: int) -> bool:
        return 0 <= now_ms - ts_ms <= seconds * 1000

    def days_since(ts_ms: float, now_ms: int) -> float:
        return (now_ms - ts_ms) / 86_400_000

    return {
        "business_hours": business_hours,
        "within": within,
        "days_since": days_since,
        "min": min,
        "max": max,
        "abs": abs,
        "lower": lambda s: str(s).lower(),
        "contains": lambda seq, item: item in seq,
        "count": lambda seq: len(seq),
    }


def _seq(file: str, node: yaml.Node | None, errs: _Collector) -> list[yaml.Node]:
    if node is None:
        return []
    if not isinstance(node, yaml.SequenceNode):
        errs.add(file, node, "expected a list")
        return []
    return list(node.value)


def _id(m: _Map, key: str = "id") -> str | None:
    value = m.get(key, str, required=True)
    if value is not None and not ID_RE.match(value):
        m.errs.add(
            m.file,
            m.node(key),
            f"{key} {value!r}: lowercase letters, digits, '_' (max 64, starting with a letter)",
        )
        return None
    return value  # type: ignore[no-any-return]


def _calendar(file: str, node: yaml.Node, errs: _Collector) -> Calendar | None:
    m = _map(file, node, errs, "a calendar")
    m.check_keys({"name", "timezone", "hours", "quiet_hours", "holidays", "closed"})
    name = _id(m, "name")
    tz = m.get("timezone", str, required=True)
    try:
        ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        errs.add(file, m.node("timezone"), f"unknown time zone {tz!r}")
    hours: dict[int, list[tuple[int, int]]] = {}
    hn = m.node("hours")
    if hn is not None:
        hm = _map(file, hn, errs, "hours")
        hm.check_keys(set(DAYS))
        for day, (_, vnode) in hm.items.items():
            if day in DAYS:
                try:
                    hours[DAYS.index(day)] = _hours(str(vnode.value))
                except ValueError as exc:
                    errs.add(file, vnode, str(exc))
    quiet: list[tuple[int, int]] = []
    if m.node("quiet_hours") is not None:
        try:
            quiet = _hours(str(m.get("quiet_hours", str, "")))
        except ValueError as exc:
            errs.add(file, m.node("quiet_hours"), str(exc))
    country = subdiv = None
    if m.node("holidays") is not None:
        hol = _map(file, m.node("holidays"), errs, "holidays")
        hol.check_keys({"country", "subdiv"})
        country = hol.get("country", str, required=True)
        subdiv = hol.get("subdiv", str)
        try:
            import holidays

            holidays.country_holidays(country or "", subdiv=subdiv, years=2026)
        except (NotImplementedError, KeyError) as exc:
            errs.add(file, hol.node("country"), f"holidays: {exc}")
    closed = set()
    for d in _seq(file, m.node("closed"), errs):
        try:
            closed.add(dt.date.fromisoformat(str(d.value)))
        except ValueError:
            errs.add(file, d, f"closure dates are YYYY-MM-DD, got {d.value!r}")
    if name is None or tz is None:
        return None
    return Calendar(name, tz, hours, quiet, country, subdiv, frozenset(closed))


def _offer(file: str, node: yaml.Node, errs: _Collector) -> Offer | None:
    m = _map(file, node, errs, "an offer")
    m.check_keys({"id", "title", "text", "cta_url", "cta_label", "product", "value", "channels"})
    oid = _id(m)
    channels = m.get("channels", list, ["web"])
    for c in channels:
        if c not in CHANNELS:
            errs.add(
                file, m.node("channels"), f"unknown channel {c!r} (channels: {', '.join(CHANNELS)})"
            )
    title = m.get("title", str, required=True)
    if oid is None or title is None:
        return None
    return Offer(
        oid,
        title,
        m.get("text", str, ""),
        m.get("cta_url", str, ""),
        m.get("cta_label", str, "Learn more"),
        m.get("product", str, ""),
        float(m.get("value", float, 0.0)),
        tuple(channels),
    )


def _rule(
    file: str,
    node: yaml.Node,
    errs: _Collector,
    offers: dict[str, Offer],
    calendars: dict[str, Calendar],
    functions: dict[str, Any],
) -> Rule | None:
    m = _map(file, node, errs, "a rule")
    m.check_keys(
        {
            "id",
            "description",
            "when",
            "action",
            "priority",
            "value",
            "policy",
            "holdout_pct",
            "enabled",
        }
    )
    rid = _id(m)
    when_node = m.node("when")
    when_text = m.get("when", str, required=True)
    expr = None
    if when_text is not None and when_node is not None:
        try:
            expr = compile_expression(when_text, functions)
        except ExpressionError as exc:
            line, col = _expr_error_position(when_node, exc)
            errs.errors.append(RuleError(file, line, col, exc.message))
    an = m.node("action")
    action, offer, slot, channel, fallback = "offer", None, "main", "web", None
    if an is None:
        errs.add(file, node, "missing required key 'action'")
    else:
        am = _map(file, an, errs, "an action")
        am.check_keys({"type", "offer", "slot", "channel", "fallback"})
        action = am.get("type", str, "offer")
        if action not in ACTIONS:
            errs.add(file, am.node("type"), f"action type must be one of {', '.join(ACTIONS)}")
        offer = am.get("offer", str)
        if offer is not None and offer not in offers:
            errs.add(file, am.node("offer"), f"unknown offer {offer!r}")
        slot = am.get("slot", str, "main")
        default_channel = {"offer": "web", "callback": "callback", "notify": "email"}.get(
            action, "web"
        )
        channel = am.get("channel", str, default_channel)
        if channel not in CHANNELS:
            errs.add(file, am.node("channel"), f"unknown channel {channel!r}")
        fallback = am.get("fallback", str)
        if fallback is not None and fallback not in CHANNELS:
            errs.add(file, am.node("fallback"), f"unknown fallback channel {fallback!r}")
        if action == "offer" and offer is None:
            errs.add(file, an, "an offer action needs 'offer'")
    policy = Policy()
    pn = m.node("policy")
    if pn is not None:
        pm = _map(file, pn, errs, "a policy")
        pm.check_keys(
            {
                "cooldown_s",
                "channel_cooldown_s",
                "max_per_day",
                "calendar",
                "expires_s",
                "outside_hours",
                "max_queue_per_agent",
            }
        )
        cal = pm.get("calendar", str)
        if cal is not None and cal not in calendars:
            errs.add(file, pm.node("calendar"), f"unknown calendar {cal!r}")
        outside = pm.get("outside_hours", str, "drop")
        if outside not in OUTSIDE_HOURS:
            errs.add(
                file,
                pm.node("outside_hours"),
                f"outside_hours must be one of {', '.join(OUTSIDE_HOURS)}",
            )
        policy = Policy(
            int(pm.get("cooldown_s", int, 0)),
            int(pm.get("channel_cooldown_s", int, 0)),
            int(pm.get("max_per_day", int, 0)),
            cal,
            int(pm.get("expires_s", int, 600)),
            outside,
            int(pm.get("max_queue_per_agent", int, 0)),
        )
    holdout = float(m.get("holdout_pct", float, 0.0))
    if not 0 <= holdout <= 100:
        errs.add(file, m.node("holdout_pct"), "holdout_pct is a percentage (0-100)")
    en_from = en_until = None
    if m.node("enabled") is not None:
        em = _map(file, m.node("enabled"), errs, "enabled")
        em.check_keys({"from", "until"})
        en_from = em.get("from", dt.date)
        en_until = em.get("until", dt.date)
    if rid is None or expr is None:
        return None
    return Rule(
        rid,
        m.get("description", str, ""),
        expr,
        action,
        offer,
        slot,
        channel,
        fallback,
        int(m.get("priority", int, 0)),
        float(m.get("value", float, 0.0)),
        policy,
        holdout,
        en_from,
        en_until,
        f"{file}:{node.start_mark.line + 1}",
    )
