"""Load a rules directory (YAML) into an immutable, compiled `RuleSet`.

A file's shape is declared once, as the msgspec structs below (`RuleFile` and what it
holds: unknown keys refused, enums from engine/core/vocabulary.py, constrained
numbers), and decoded with `msgspec.convert` from the YAML data. What a shape cannot
say is checked afterwards, across files: offers and calendars a rule names,
expressions, hours, time zones, duplicate ids. Every problem is reported as
`file:line:col: message`: msgspec's error path (`$.rules[3].action.channel`) is looked
up in a table of YAML node positions built while the document is read (expression
errors point inside the `when` text). A set with any problem is rejected whole: hot
reload keeps the previous set.

Rule files come from analysts and deploy pipelines, so the loader assumes nothing
about their size or shape before it has checked them: a file over `MAX_FILE_BYTES`
(256 KB; the largest shipped pack is a few KB) is refused before it is read, and
YAML anchors and aliases are refused before anything is built from the document (a
1 KB "billion laughs" file expands into gigabytes wherever a value is copied or
printed), as is nesting deeper than `MAX_DEPTH`.

Besides rules, offers, calendars and levers, a file may declare `segments`
(engine/decisions/segments.py: a segment's `when` may not read `segments`; a rule that
tests `"x" in segments` must name a declared segment), and at most one file of the set
may hold the `customer_value` weights (engine/decisions/value.py) and the
`arbitration` settings (`customer_value_weight`, 0 = off: rankings as before).

A file may also declare the bank's `campaigns` (`CampaignSpec`; ids unique across the
set, at most `MAX_CAMPAIGNS`). Reports then count a decision's campaign under its
declared id, matched case-insensitively against the cleaned utm_campaign of its last
touch, and every other name as "(other)" (engine/decisions/plan.py `attribution`):
campaign names come from page URLs, which anyone can write, so without a declared list
made-up names can fill a day's names and push the real ones into "(other)". With none
declared, reports keep each name as the link said it (up to the day's cap).
"""

from __future__ import annotations

import ast
import datetime as dt
import functools
import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml
from msgspec import Meta, Struct
from msgspec import inspect as mi

from engine.core.errors import RingbackError
from engine.core.vocabulary import DEFAULT_CHANNEL, Action, Channel
from engine.decisions.calendar import DAYS, Calendar
from engine.decisions.compiled import CompiledRules, compile_rules, per_rule
from engine.decisions.expr import Expression, ExpressionError, compile_expression
from engine.decisions.segments import (
    MAX_SEGMENTS,
    NO_SEGMENTS,
    Segment,
    Segments,
    compile_segments,
)
from engine.decisions.value import CustomerValue

__all__ = [
    "MAX_CAMPAIGNS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "Arbitration",
    "CampaignSpec",
    "Offer",
    "Policy",
    "Rule",
    "RuleError",
    "RuleFacts",
    "RuleFile",
    "RuleSet",
    "RuleSetError",
    "SegmentSpec",
    "load_rules",
    "model_name",
]

MAX_FILE_BYTES = 256 * 1024  # per rules file; checked before the file is read
MAX_DEPTH = 32  # nested mappings/lists; real packs use 5
# Declared campaigns a set may hold: with "(other)", "(referral)" and "(direct)" they
# fit in the 200 names a day keeps per dimension (engine/delivery/uplift.py
# MAX_DIM_VALUES), so no declared campaign is ever pooled as "(other)".
MAX_CAMPAIGNS = 197
ID_PATTERN = "^[a-z][a-z0-9_]{0,63}$"
ID_RULE = "lowercase letters, digits, '_' (max 64, starting with a letter)"

Id = Annotated[str, Meta(pattern=ID_PATTERN)]
Count = Annotated[int, Meta(ge=0)]  # seconds, caps: never negative


class OutsideHours(StrEnum):
    """What a callback rule does when its calendar is closed."""

    SCHEDULE = "schedule"  # for the calendar's next opening
    FALLBACK = "fallback"  # to the rule's fallback channel
    DROP = "drop"


class _Shape(Struct, forbid_unknown_fields=True, frozen=True):
    """A mapping in a rules file: unknown keys are refused (subclasses inherit this;
    each repeats `frozen=True` because mypy does not see it inherited)."""


class Offer(_Shape, frozen=True):
    id: Id
    title: str
    text: str = ""
    cta_url: str = ""
    cta_label: str = "Learn more"
    product: str = ""
    value: float = 0.0
    channels: tuple[Channel, ...] = (Channel.WEB,)

    def public(self) -> dict[str, Any]:
        """What the page and the agent see (not value or channels)."""
        return {
            "id": self.id,
            "title": self.title,
            "text": self.text,
            "cta_url": self.cta_url,
            "cta_label": self.cta_label,
            "product": self.product,
        }


class Policy(_Shape, frozen=True):
    cooldown_s: Count = 0
    channel_cooldown_s: Count = 0
    max_per_day: Count = 0
    calendar: str | None = None
    expires_s: Count = 600
    outside_hours: OutsideHours = OutsideHours.DROP
    max_queue_per_agent: Count = 0  # 0 = don't look at contact-center capacity


class ActionSpec(_Shape, frozen=True):
    type: Action = Action.OFFER
    offer: str | None = None
    slot: str = "main"
    channel: Channel | None = None  # None: the action's DEFAULT_CHANNEL
    fallback: Channel | None = None


class Enabled(_Shape, frozen=True):
    from_: dt.date | None = msgspec.field(default=None, name="from")
    until: dt.date | None = None  # exclusive


class RuleSpec(_Shape, frozen=True):
    id: Id
    when: str
    action: ActionSpec
    description: str = ""
    priority: int = 0
    value: float = 0.0
    policy: Policy = msgspec.field(default_factory=Policy)
    holdout_pct: Annotated[float, Meta(ge=0, le=100)] = 0.0
    enabled: Enabled = msgspec.field(default_factory=Enabled)
    # Arbitration: this rule's score x (1 + weight x customer value / 100); unset, the
    # set's `arbitration: {customer_value_weight}` (0: off).
    customer_value_weight: Annotated[float, Meta(ge=0, le=100)] | None = None


class Hours(_Shape, frozen=True):
    """Opening hours per weekday, 'HH:MM-HH:MM[, ...]' local time; absent = closed."""

    mon: str | None = None
    tue: str | None = None
    wed: str | None = None
    thu: str | None = None
    fri: str | None = None
    sat: str | None = None
    sun: str | None = None


class Holidays(_Shape, frozen=True):
    country: str
    subdiv: str | None = None


class CalendarSpec(_Shape, frozen=True):
    name: Id
    timezone: str
    hours: Hours = msgspec.field(default_factory=Hours)
    quiet_hours: str = ""  # may wrap midnight
    holidays: Holidays | None = None
    closed: list[dt.date] = []


class SegmentSpec(_Shape, frozen=True):
    id: Id
    when: str
    description: str = ""


class CampaignSpec(_Shape, frozen=True):
    """A campaign the bank runs: reports count decisions whose last-touch utm_campaign
    is `id` (any case) under it, and any other campaign as "(other)".

    `product` names what the campaign sells; nothing reads it yet (it is meant for a
    future model feature: "came from a campaign for this offer's product")."""

    id: Id
    product: str = ""
    description: str = ""


class Arbitration(_Shape, frozen=True):
    """How candidates are ranked beyond propensity x value x lever.

    `customer_value_weight` w multiplies a candidate's score by
    (1 + w x customer value / 100): at 0.5 a customer valued 100 makes a rule's offer
    rank as one worth 1.5x. It is the default of every rule that does not set its own
    `customer_value_weight`: one weight for all scales a batch's candidates alike (the
    recorded scores change, their order does not); weights that differ by rule let a
    valuable customer's premium offers outrank mass ones (a mass offer opts out with
    0). 0 everywhere (the default) leaves rankings exactly as they were."""

    customer_value_weight: Annotated[float, Meta(ge=0, le=100)] = 0.0


class RuleFile(_Shape, frozen=True):
    """One rules file; a rule set is the union of its directory's files."""

    offers: list[Offer] = []
    rules: list[RuleSpec] = []
    calendars: list[CalendarSpec] = []
    levers: dict[str, float] = {}  # product -> arbitration weight
    segments: list[SegmentSpec] = []
    campaigns: list[CampaignSpec] = []
    customer_value: CustomerValue | None = None  # at most one file of a set
    arbitration: Arbitration | None = None  # at most one file of a set


@dataclass(frozen=True)
class Rule:
    """A rule compiled: its condition a closure, its action's channel resolved."""

    id: str
    description: str
    when: Expression
    action: Action
    offer: str | None
    slot: str
    channel: Channel
    fallback: Channel | None
    priority: int
    value: float
    policy: Policy
    holdout_pct: float
    enabled_from: dt.date | None
    enabled_until: dt.date | None
    source: str  # file:line
    value_weight: float = 0.0  # arbitration: its customer value weight (or the set's)

    def enabled_on(self, today: dt.date) -> bool:
        return (self.enabled_from is None or today >= self.enabled_from) and (
            self.enabled_until is None or today < self.enabled_until
        )


def model_name(rule: Rule) -> str:
    """The model that estimates a rule's propensity: who clicks an offer
    (`offer:<offer id>`, shared by every rule showing it) or who answers a contact
    (`callback:<rule id>`).
    """
    if rule.action == Action.OFFER:
        return f"offer:{rule.offer or rule.id}"
    return f"callback:{rule.id}"


@dataclass(frozen=True, slots=True)
class RuleFacts:
    """What deciding derives from a rule and its set, the same for every batch, so
    derived once per set (`RuleSet.facts`): at 50 rules a batch matches ~18, and each
    match paid for these lookups, a model name built and a call to eligibility again.

    `fast`: nothing about the batch but its condition decides whether the rule is a
    candidate: no enabled dates, no control group, and eligibility can neither
    suppress nor reroute it (not a callback, not on the phone channel), so its channel
    is the rule's own. `floor`: the value ranking multiplies by (at least 0.01, so a
    rule without a value still ranks by propensity); `base` = floor x lever, its score
    when no model is published for it, and `key` its rank then (the priority breaks
    ties), unless the customer value boosts it (`boosted`)."""

    model: str  # `model_name`
    offer: Offer | None
    value: float  # the rule's value, else its offer's
    floor: float  # max(value, 0.01)
    lever: float  # the set's lever for the offer's product (1.0 without one)
    fast: bool
    boosted: bool  # a customer value weight applies
    base: float
    key: tuple[float, int]  # (-base, -priority): sorts best first
    entry: tuple[str, Channel | None, str | None]  # its trace entry when it matched
    slot_taken: tuple[str, Channel | None, str | None]  # ... when it lost its slot
    # What a decision of it shares rather than builds per batch (nothing changes them):
    # the offer's public fields, and the factors and model of its estimate with no
    # model published and no boost (propensity 1.0, score `base`).
    public: dict[str, Any] | None
    plain_factors: dict[str, float]
    plain_model: dict[str, Any]
    # The rule's part of its page-offer decision id (`plan.offer_decision_id`).
    id_part: bytes

    @classmethod
    def of(
        cls, rule: Rule, offers: dict[str, Offer], levers: dict[str, float], version: str = ""
    ) -> RuleFacts:
        offer = offers.get(rule.offer) if rule.offer else None
        value = rule.value or (offer.value if offer else 0.0)
        floor = max(value, 0.01)
        lever = levers.get(offer.product if offer else "", 1.0)
        base = 1.0 * floor * lever  # the score with propensity 1.0, in the same order
        fast = (
            rule.action != Action.CALLBACK
            and rule.channel != Channel.CALLBACK
            and rule.enabled_from is None
            and rule.enabled_until is None
            and not rule.holdout_pct > 0
        )
        return cls(
            model_name(rule),
            offer,
            value,
            floor,
            lever,
            fast,
            rule.value_weight > 0,
            base,
            (-base, -rule.priority),
            ("matched", rule.channel, None),
            ("suppressed", rule.channel, "slot_taken"),
            offer.public() if offer is not None else None,
            {"propensity": 1.0, "value": value, "lever": lever, "score": base},
            {"name": model_name(rule), "version": None, "source": "none"},
            f"{rule.id}\0{offer.id if offer else ''}\0{version}\0".encode(),
        )


@dataclass(frozen=True)
class RuleSet:
    version: str
    loaded_at: float
    rules: tuple[Rule, ...]
    offers: dict[str, Offer]
    calendars: dict[str, Calendar]
    levers: dict[str, float] = field(default_factory=dict)
    segments: Segments = NO_SEGMENTS
    # Declared campaigns by id (declaration order); empty: reports keep every name.
    campaigns: dict[str, CampaignSpec] = field(default_factory=dict)
    value: CustomerValue = field(default_factory=CustomerValue)
    value_weight: float = 0.0  # arbitration's customer_value_weight (0: off)
    # False: `conditions` evaluates each rule's own closure (the reference the
    # generated function is tested against); the live path leaves it True.
    generated: bool = True
    conditions: CompiledRules = field(init=False, repr=False, compare=False)
    # Whether a rule or segment reads `customer.value`: only then does deciding score
    # the customer before the conditions run (else lazily, when a record needs it).
    reads_value: bool = field(init=False, repr=False, compare=False)
    facts: tuple[RuleFacts, ...] = field(init=False, repr=False, compare=False)  # per rule

    def __post_init__(self) -> None:
        """Every condition of the set in one generated function, built once here (and
        again by `dataclasses.replace`, so it always matches `rules`)."""
        exprs = [r.when for r in self.rules]
        if self.generated:
            conditions = compile_rules(exprs)
        else:
            fns = [e._fn for e in exprs]
            conditions = CompiledRules(functools.partial(per_rule, fns), "", len(fns))
        object.__setattr__(self, "conditions", conditions)
        every = [*exprs, *(s.when for s in self.segments.segments)]
        object.__setattr__(
            self, "reads_value", any(_reads(e, ("customer", "value")) for e in every)
        )
        facts = tuple(RuleFacts.of(r, self.offers, self.levers, self.version) for r in self.rules)
        object.__setattr__(self, "facts", facts)


def _reads(e: Expression, path: tuple[str, ...]) -> bool:
    """Whether `e` reads `path` (or, unchecked, anything of its root variable)."""
    if e.checked is None:
        return path[0] in e.names
    return any(p[: len(path)] == path for p in e.checked.paths.values())


class RuleError(RingbackError):
    def __init__(self, file: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{file}:{line}:{col}: {message}")
        self.file, self.line, self.col, self.message = file, line, col, message


class RuleSetError(RingbackError):
    """Every error of a rejected rule set, one `file:line:col: message` per line."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


YamlPath = tuple[str | int, ...]
_MAP_TAG = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG
_SEQ_TAG = yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
_SHAPE = mi.type_info(RuleFile)
_TYPE_NAMES = {"object": "mapping", "array": "list"}  # msgspec's words -> YAML's


class _Doc:
    """A YAML document as plain data, with the node of every value and key by path."""

    def __init__(self, file: str, root: yaml.Node, errors: list[RuleError]) -> None:
        self.file, self.errors = file, errors
        self.values: dict[YamlPath, yaml.Node] = {}
        self.keys: dict[YamlPath, yaml.Node] = {}
        self.removed: set[YamlPath] = set()  # keys `decode` took out (reported)
        self.data = self._plain(root, (), yaml.constructor.SafeConstructor())

    def _plain(
        self, node: yaml.Node, path: YamlPath, ctor: yaml.constructor.SafeConstructor
    ) -> Any:
        self.values[path] = node
        if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
            out: dict[str, Any] = {}
            for k, v in node.value:
                key = str(k.value)
                if key in out:
                    self.error(k, f"duplicate key {key!r}")
                self.keys[(*path, key)] = k
                out[key] = self._plain(v, (*path, key), ctor)
            return out
        if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
            return [self._plain(v, (*path, i), ctor) for i, v in enumerate(node.value)]
        try:  # scalars, and any other tag: safe construction only
            return ctor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # e.g. a !!python/... tag: not plain data
            self.error(node, f"{_name(path)}: {getattr(exc, 'problem', None) or exc}")
            raise _Refused from exc

    def error(self, node: yaml.Node | None, message: str) -> None:
        mark = node.start_mark if node is not None else None
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        self.errors.append(RuleError(self.file, line, col, message))

    def at(self, path: YamlPath, message: str) -> None:
        """An error at the value `path` names, or the nearest enclosing one."""
        while path and path not in self.values:
            path = path[:-1]
        self.error(self.values.get(path), message)

    def decode(self) -> tuple[RuleFile, dict[str, list[int]]] | None:
        """The file as a `RuleFile`, and each decoded item's index in the file.

        msgspec stops at the first error, so each one is reported, the key it is about
        taken out (its default applies) or, if that cannot help, its item left out, and
        the rest decoded again: every problem is reported in one run, and the good
        items still get the cross-file checks (unknown offer, expressions)."""
        data, index = self.data, {}
        if isinstance(data, dict):
            index = {s: list(range(len(v))) for s, v in data.items() if isinstance(v, list)}
        while True:
            try:
                return msgspec.convert(data, RuleFile), index
            except msgspec.ValidationError as exc:
                path, message = _error_path(str(exc))  # indices as decoded
            if not (len(path) >= 2 and path[0] in index and isinstance(path[1], int)):
                self.explain(path, message)  # the file's own shape: nothing to go on with
                return None
            section, item = str(path[0]), path[1]
            at = (section, index[section][item], *path[2:])  # indices in the file
            unknown = re.fullmatch(r"Object contains unknown field `(.*)`", message)
            missing = re.fullmatch(r"Object missing required field `(.*)`", message)
            if not (missing and (*at, missing[1]) in self.removed):
                self.explain(at, message)  # (a required key we took out was reported)
            last_key = max(n for n, p in enumerate(path) if isinstance(p, str))
            if unknown:
                cut: YamlPath = (*path, unknown[1])
            elif last_key >= 2 and not missing:
                cut = path[: last_key + 1]
            else:  # the item itself, or a required key: leave the item out
                del data[section][item], index[section][item]
                continue
            self.removed.add((section, index[section][item], *cut[2:]))
            parent = data
            for step in cut[:-1]:
                parent = parent[step]
            del parent[cut[-1]]

    def explain(self, path: YamlPath, message: str) -> None:
        """msgspec's message in the loader's words, at the YAML node it is about."""
        name = _name(path)
        if m := re.fullmatch(r"Object contains unknown field `(.*)`", message):
            key = self.keys.get((*path, m[1]))
            self.error(key, f"unknown key {m[1]!r} (allowed: {_allowed(path)})")
        elif m := re.fullmatch(r"Object missing required field `(.*)`", message):
            self.at(path, f"missing required key {m[1]!r}")
        elif m := re.fullmatch(r"Invalid enum value (.*)", message):
            self.at(path, f"{name}: {m[1]} is not one of {_allowed(path)}")
        elif "matching regex" in message and path in self.values:
            self.at(path, f"{name} {self.values[path].value!r}: {ID_RULE}")
        else:
            words = re.sub(r"`([^`]*)`", lambda w: _TYPE_NAMES.get(w[1], w[1]), message)
            words = words[:1].lower() + words[1:]
            self.at(path, f"{name}: {words}" if name else words)


class _Refused(Exception):
    """A value that is not plain data (reported): the file is not decoded."""


def _name(path: YamlPath) -> str:
    """The key an error is about: the last mapping key on its path."""
    return next((p for p in reversed(path) if isinstance(p, str)), "")


def _error_path(text: str) -> tuple[YamlPath, str]:
    """'Expected `int`, got `str` - at `$.rules[0].priority`' -> (('rules', 0, 'priority'), ...).

    A dict value's key is not in msgspec's path (`$.levers[...]`, "at `key` in `$.x`"):
    the path then stops at the mapping."""
    message, _, where = text.partition(" - at `")
    where = where.removeprefix("key` in `").removesuffix("`")
    path: list[str | int] = []
    for name, index in re.findall(r"\.(\w+)|\[(\d+|\.\.\.)\]", where):
        if index == "...":
            break
        path.append(name or int(index))
    return tuple(path), message


def _type_at(path: YamlPath) -> mi.Type:
    t: mi.Type = _SHAPE
    for step in path:
        if isinstance(t, mi.UnionType):  # X | None: the X
            t = next(u for u in t.types if not isinstance(u, mi.NoneType))
        if isinstance(t, mi.StructType):
            t = next(f.type for f in t.fields if f.encode_name == step)
        elif isinstance(t, mi.ListType | mi.VarTupleType | mi.DictType):
            t = t.value_type if isinstance(t, mi.DictType) else t.item_type
    if isinstance(t, mi.UnionType):
        t = next(u for u in t.types if not isinstance(u, mi.NoneType))
    return t


def _allowed(path: YamlPath) -> str:
    """The keys of the mapping, or the values of the enum, at `path`."""
    t = _type_at(path)
    if isinstance(t, mi.StructType):
        return ", ".join(sorted(f.encode_name for f in t.fields))
    return ", ".join(str(v.value) for v in t.cls) if isinstance(t, mi.EnumType) else "?"


def load_rules(
    path: str | Path, functions_for: Callable[[dict[str, Calendar]], dict[str, Any]] | None = None
) -> RuleSet:
    """Load every *.yaml under `path`; raise RuleSetError listing all problems."""
    root = Path(path)
    errors: list[RuleError] = []
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml")) if root.is_dir() else [root]
    if not files:
        raise RuleSetError([RuleError(str(root), 1, 1, "no .yaml files found")])
    digest = hashlib.sha256()
    decoded: list[tuple[_Doc, RuleFile, dict[str, list[int]]]] = []
    for f in files:
        text = _read_capped(f, errors)
        if text is None:
            continue
        digest.update(f.name.encode() + b"\0" + text.encode())
        doc = _compose(str(f), text, errors)
        if doc is not None and (got := doc.decode()) is not None:
            decoded.append((doc, *got))

    calendars: dict[str, Calendar] = {}
    offers: dict[str, Offer] = {}
    levers: dict[str, float] = {}
    campaigns: dict[str, CampaignSpec] = {}
    value: CustomerValue | None = None
    arbitration: Arbitration | None = None
    for doc, shape, index in decoded:
        if shape.customer_value is not None:
            if value is not None:
                doc.at(("customer_value",), "customer_value is already set in another file")
            elif _weight_sum(shape.customer_value) <= 0:
                doc.at(("customer_value", "weights"), "weights: at least one must be above 0")
            value = value or shape.customer_value
        if shape.arbitration is not None:
            if arbitration is not None:
                doc.at(("arbitration",), "arbitration is already set in another file")
            arbitration = arbitration or shape.arbitration
        for i, spec in zip(index.get("calendars", []), shape.calendars, strict=True):
            if spec.name in calendars:
                doc.at(("calendars", i), f"duplicate calendar {spec.name!r}")
            calendars.setdefault(spec.name, _calendar(doc, ("calendars", i), spec))
        for i, offer in zip(index.get("offers", []), shape.offers, strict=True):
            if offer.id in offers:
                doc.at(("offers", i), f"duplicate offer id {offer.id!r}")
            offers.setdefault(offer.id, offer)
        levers.update(shape.levers)
        for i, campaign in zip(index.get("campaigns", []), shape.campaigns, strict=True):
            if campaign.id in campaigns:
                doc.at(("campaigns", i), f"duplicate campaign id {campaign.id!r}")
            elif len(campaigns) >= MAX_CAMPAIGNS:
                doc.at(
                    ("campaigns", i), f"a rule set may declare at most {MAX_CAMPAIGNS} campaigns"
                )
            else:
                campaigns[campaign.id] = campaign

    functions = functions_for(calendars) if functions_for else default_functions(calendars)
    segments: dict[str, Segment] = {}
    for doc, shape, index in decoded:
        for i, seg_spec in zip(index.get("segments", []), shape.segments, strict=True):
            seg = _segment(doc, ("segments", i), seg_spec, functions)
            if seg and seg.id in segments:
                doc.at(("segments", i), f"duplicate segment id {seg.id!r}")
            elif seg and len(segments) >= MAX_SEGMENTS:
                doc.at(("segments", i), f"a rule set may declare at most {MAX_SEGMENTS} segments")
            elif seg:
                segments[seg.id] = seg
    rules: dict[str, Rule] = {}
    weight = arbitration.customer_value_weight if arbitration else 0.0
    for doc, shape, index in decoded:
        for i, rule_spec in zip(index.get("rules", []), shape.rules, strict=True):
            rule = _rule(doc, ("rules", i), rule_spec, offers, calendars, functions, weight)
            if rule:
                for name in sorted(_segment_names(rule.when) - segments.keys()):
                    doc.at(("rules", i, "when"), f"unknown segment {name!r}")
            if rule and rule.id in rules:
                doc.at(("rules", i), f"duplicate rule id {rule.id!r}")
            elif rule:
                rules[rule.id] = rule
    if errors:
        raise RuleSetError(sorted(errors, key=lambda e: (e.file, e.line, e.col)))
    return RuleSet(
        version=digest.hexdigest()[:12],
        loaded_at=time.time(),
        rules=tuple(rules.values()),
        offers=offers,
        calendars=calendars,
        levers=levers,
        segments=compile_segments(tuple(segments.values())),
        campaigns=campaigns,
        value=value or CustomerValue(),
        value_weight=weight,
    )


def _weight_sum(cfg: CustomerValue) -> float:
    return float(sum(msgspec.structs.asdict(cfg.weights).values()))


def _segment_names(e: Expression) -> set[str]:
    """The segment ids `e` tests with `"id" in segments` / `"id" not in segments`."""
    chk = e.checked
    if chk is None:
        return set()
    out: set[str] = set()
    for node in ast.walk(chk.body):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Subscript)
            and isinstance(node.func.slice, ast.Constant)
            and node.func.slice.value in ("in", "not in")
            and len(node.args) == 2
        ):
            continue
        item, where = node.args
        if (
            isinstance(where, ast.Call)
            and isinstance(where.func, ast.Name)
            and chk.paths.get(where.func.id) == ("segments",)
        ):
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                out.add(item.value)
    return out


def _segment(
    doc: _Doc, at: YamlPath, spec: SegmentSpec, functions: dict[str, Any]
) -> Segment | None:
    """The segment compiled, or None (its problems reported to `doc`)."""
    try:
        expr = compile_expression(spec.when, functions)
    except ExpressionError as exc:
        line, col = _expr_error_position(doc.values[(*at, "when")], exc)
        doc.errors.append(RuleError(doc.file, line, col, exc.message))
        return None
    if "segments" in expr.names:
        doc.at(
            (*at, "when"),
            "a segment's condition cannot read 'segments' (segments are evaluated "
            "together, before the rules)",
        )
        return None
    line = doc.values[at].start_mark.line + 1
    return Segment(spec.id, spec.description, expr, f"{doc.file}:{line}")


def _compose(file: str, text: str, errors: list[RuleError]) -> _Doc | None:
    """The document with node positions, or None (and an error) if it is not safe data."""
    try:
        problem = _unsafe_structure(text)
        node = None if problem else yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        errors.append(RuleError(file, line, col, f"YAML syntax: {getattr(exc, 'problem', exc)}"))
        return None
    if problem:
        mark, message = problem
        errors.append(RuleError(file, mark.line + 1, mark.column + 1, message))
        return None
    if node is None:  # an empty file (or only comments)
        return None
    try:
        return _Doc(file, node, errors)
    except _Refused:
        return None


def _read_capped(f: Path, errors: list[RuleError]) -> str | None:
    """The file's text, or None (and an error) if it is too big or not UTF-8.

    The size is checked on the open file before reading, so a huge (or growing)
    file costs one stat and at most `MAX_FILE_BYTES` + 1 bytes of memory."""
    with f.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(MAX_FILE_BYTES + 1) if size <= MAX_FILE_BYTES else b""
    if size > MAX_FILE_BYTES or len(raw) > MAX_FILE_BYTES:
        errors.append(
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
        errors.append(RuleError(str(f), 1, 1, f"not UTF-8 text (byte {exc.start})"))
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


def _calendar(doc: _Doc, at: YamlPath, spec: CalendarSpec) -> Calendar:
    try:
        ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        doc.at((*at, "timezone"), f"unknown time zone {spec.timezone!r}")
    hours: dict[int, list[tuple[int, int]]] = {}
    for day, text in msgspec.structs.asdict(spec.hours).items():
        try:
            if text is not None:
                hours[DAYS.index(day)] = _hours(text)
        except ValueError as exc:
            doc.at((*at, "hours", day), str(exc))
    quiet: list[tuple[int, int]] = []
    try:
        quiet = _hours(spec.quiet_hours) if spec.quiet_hours else []
    except ValueError as exc:
        doc.at((*at, "quiet_hours"), str(exc))
    hol = spec.holidays
    if hol is not None:
        try:
            import holidays

            holidays.country_holidays(hol.country, subdiv=hol.subdiv, years=2026)
        except (NotImplementedError, KeyError) as exc:
            doc.at((*at, "holidays", "country"), f"holidays: {exc}")
    country, subdiv = (hol.country, hol.subdiv) if hol else (None, None)
    return Calendar(spec.name, spec.timezone, hours, quiet, country, subdiv, frozenset(spec.closed))


def _rule(
    doc: _Doc,
    at: YamlPath,
    spec: RuleSpec,
    offers: dict[str, Offer],
    calendars: dict[str, Calendar],
    functions: dict[str, Any],
    default_weight: float = 0.0,
) -> Rule | None:
    """The rule compiled, or None; problems the shape cannot see go to `doc`."""
    expr = None
    try:
        expr = compile_expression(spec.when, functions)
    except ExpressionError as exc:
        line, col = _expr_error_position(doc.values[(*at, "when")], exc)
        doc.errors.append(RuleError(doc.file, line, col, exc.message))
    act = spec.action
    if act.offer is not None and act.offer not in offers:
        doc.at((*at, "action", "offer"), f"unknown offer {act.offer!r}")
    if (
        act.type == Action.OFFER
        and act.offer is None
        and (*at, "action", "type") not in doc.removed
    ):
        doc.at((*at, "action"), "an offer action needs 'offer'")
    if spec.policy.calendar is not None and spec.policy.calendar not in calendars:
        doc.at((*at, "policy", "calendar"), f"unknown calendar {spec.policy.calendar!r}")
    if expr is None:
        return None
    return Rule(
        spec.id,
        spec.description,
        expr,
        act.type,
        act.offer,
        act.slot,
        act.channel or DEFAULT_CHANNEL[act.type],
        act.fallback,
        spec.priority,
        spec.value,
        spec.policy,
        spec.holdout_pct,
        spec.enabled.from_,
        spec.enabled.until,
        f"{doc.file}:{doc.values[at].start_mark.line + 1}",
        default_weight if spec.customer_value_weight is None else spec.customer_value_weight,
    )
