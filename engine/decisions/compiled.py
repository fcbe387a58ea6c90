"""A rule set's conditions as one generated function, built once when the set loads.

Evaluating each rule's own closure repeats work across rules: 50 rules read
`profile.calc.mortgage.count` through a path function each, every comparison is a
helper call that checks for UNKNOWN, and `and` evaluates all its operands. The
function generated here reads every dotted path of the set once per call (shared
prefixes once too), checks UNKNOWN inline before each comparison, stops an `and` at
the first definite False (an `or` at the first True) when what it skips cannot raise,
and returns only the rules that get a trace entry: those that matched and those whose
condition is UNKNOWN. Rules that do not match cost no allocation.

The results are exactly those of each rule's own `Expression` (tests/test_rules_compiled.py
checks this property on random inputs): the same Kleene logic, the same TypeError ->
UNKNOWN, the same value for `default`/`known`. What cannot be reproduced inline falls
back to the rule's own closure: a rule nested deeper than Python's static block limit
allows, or a tree this generator does not know. If the generated function raises
(which a rule's closure would too, e.g. an overflow inside a function call), the caller
re-evaluates rule by rule with `per_rule`, so which rule raises, and whether, is the same.

Safety: the source is generated from the checked tree only (`expr.Checked`), never from
the rule text. Identifiers are our own (`n3`, `t17`, `F0`); keys and literals are
embedded with repr(); operators come from the table below; it runs with no builtins.

>>> from engine.decisions.expr import compile_expression as c
>>> rules = compile_rules([c("profile.a > 1"), c("profile.b == 2 and profile.a > 1"), c("false")])
>>> rules.find({"profile": {"a": 2}})  # (index, True: matched / False: UNKNOWN)
[(0, True), (1, False)]
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.decisions.expr import UNKNOWN, Checked, Expression, _arith, _call, _neg

__all__ = ["CompiledRules", "Found", "compile_rules", "per_rule"]

Found = list[tuple[int, bool]]  # (rule index, matched: True / UNKNOWN: False), rule order
Variables = Mapping[str, Any]

# The checked tree's comparison names -> Python operators (the same ones expr._CMP applies).
_CMP_SYMBOL = {
    "==": "==",
    "!=": "!=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
    "in": "in",
    "not in": "not in",
}
_ARITH = frozenset("+-*/%")
# Python allows 20 statically nested blocks; each and/or is one, a comparison's try one.
MAX_BOOL_DEPTH = 15


class _Unsupported(Exception):
    """A tree this generator does not reproduce: the rule keeps its own closure."""


@dataclass(frozen=True)
class CompiledRules:
    """A rule set's conditions: `find(variables)` -> the rules with a trace entry."""

    find: Callable[[Variables], Found]
    source: str  # the generated code ("" when every rule uses its closure)
    closures: int  # rules evaluated by their own closure inside `find`


def per_rule(
    fns: Sequence[Callable[[Variables], Any]], variables: Variables, skip: Container[int] = ()
) -> Found:
    """The reference: each rule's own closure, in order (rules in `skip` not evaluated)."""
    out: Found = []
    for i, fn in enumerate(fns):
        if i in skip:
            continue
        r = fn(variables)
        if r is True:
            out.append((i, True))
        elif r is UNKNOWN:
            out.append((i, False))
    return out


def compile_rules(exprs: Sequence[Expression]) -> CompiledRules:
    """One function for all of `exprs`; falls back to `per_rule` if it cannot be built.

    Generated twice: the first pass counts the comparisons (and `default`s) of paths
    and literals that occur more than once across the set, which the second shares:
    computed on first use, then reused (`event.type == "calc"` in 16 of 50 rules is
    compared once a call)."""
    counting = _Generator()
    for i, e in enumerate(exprs):
        counting.rule(i, e)
    gen = _Generator({k for k, n in counting.counts.items() if n > 1})
    body: list[str] = []
    for i, e in enumerate(exprs):
        body += gen.rule(i, e)
    lines = ["def find(v):", "    out = []", "    a = out.append", *gen.prologue, *body]
    source = "\n".join([*lines, "    return out", ""])
    try:
        exec(compile(source, "<rule set>", "exec"), gen.ns)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        fns = [e._fn for e in exprs]
        return CompiledRules(functools.partial(per_rule, fns), "", len(fns))
    return CompiledRules(gen.ns["find"], source, gen.closures)


def _pure(e: ast.AST) -> bool:
    """Whether evaluating `e` cannot raise, so skipping it cannot change the outcome.

    Arithmetic (huge ints overflow) and function calls can; a comparison between two
    values (not a literal) can too (deeply nested lists recurse)."""
    for n in ast.walk(e):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            if n.func.id in ("_arith", "_call"):
                return False
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript):
            if not any(isinstance(x, ast.Constant | ast.Tuple) for x in n.args):
                return False
    return True


def _bool_depth(e: ast.AST) -> int:
    if isinstance(e, ast.Call):
        inner = max((_bool_depth(a) for a in e.args), default=0)
        is_bool = isinstance(e.func, ast.Name) and e.func.id in ("_and", "_or")
        return inner + 1 if is_bool else inner
    return 0


_NOT_YET = object()  # a shared comparison not computed yet in this call


class _Generator:
    def __init__(self, shared: frozenset[tuple[str, ...]] | set[tuple[str, ...]] = frozenset()):
        self.ns: dict[str, Any] = {
            "__builtins__": {},
            "U": UNKNOWN,
            "N": _NOT_YET,
            "type": type,
            "dict": dict,
            "TypeError": TypeError,
            "_arith": _arith,
            "_neg": _neg,
            "_call": _call,
        }
        self.prologue: list[str] = []
        self.paths: dict[tuple[str, ...], str] = {}
        self.values: set[tuple[str, ...]] = set()  # paths read as values, not only steps
        self.funcs: dict[int, str] = {}
        self.closures = 0
        self.n = 0
        self.out: list[str] = []
        # Locals that hold the same value for the whole call (paths, shared defaults):
        # a comparison of these and literals gives the same result wherever it occurs.
        self.stable: set[str] = set()
        self.counts: dict[tuple[str, ...], int] = {}  # such comparisons, by text
        self.shared = shared  # ... that occur more than once: computed once a call
        self.memo: dict[tuple[str, ...], str] = {}  # shared comparison -> its local
        # Hoisted defaults -> their locals: numbered on their own, so a default has the
        # same name in both passes (the first has no shared comparisons to count).
        self.defaults: dict[tuple[str, ...], str] = {}

    def tmp(self) -> str:
        self.n += 1
        return f"t{self.n}"

    def emit(self, ind: int, line: str) -> None:
        self.out.append("    " * ind + line)

    def rule(self, index: int, e: Expression) -> list[str]:
        self.out = []
        try:
            chk = e.checked
            if chk is None or _bool_depth(chk.body) > MAX_BOOL_DEPTH:
                raise _Unsupported
            r = self.named(self.node(chk.body, 1, chk), 1)
        except _Unsupported:
            self.out = []
            self.closures += 1
            r = self.tmp()
            self.ns[f"E{index}"] = e._fn
            self.emit(1, f"{r} = E{index}(v)")
        self.emit(1, f"if {r} is True: a(({index}, True))")
        self.emit(1, f"elif {r} is U: a(({index}, False))")
        return self.out

    def path(self, parts: tuple[str, ...]) -> str:
        """The local holding `parts`' value, read in the prologue once per call, each
        prefix once: the same steps as `expr._path` (None and non-dicts are UNKNOWN)."""
        for k in range(1, len(parts) + 1):
            prefix = parts[:k]
            if prefix in self.paths:
                continue
            key = parts[k - 1]
            if not (key.isidentifier() and not key.startswith("_")):
                raise _Unsupported  # the checker allows no other keys
            parent = self.paths[prefix[:-1]] if k > 1 else "v"
            name = self.paths[prefix] = f"n{len(self.paths)}"
            self.prologue.append(
                f"    {name} = {parent}.get({key!r}, U) if type({parent}) is dict else U"
            )
        name = self.paths[parts]
        self.stable.add(name)
        if parts not in self.values:
            # None is UNKNOWN for a value read; a step only needs "not a dict", which
            # None already is. The body runs after the whole prologue.
            self.values.add(parts)
            self.prologue.append(f"    if {name} is None: {name} = U")
        return name

    def named(self, atom: tuple[str, bool], ind: int) -> str:
        """A local for the atom, so that `x is U` never compares a literal."""
        text, const = atom
        if not const:
            return text
        t = self.tmp()
        self.emit(ind, f"{t} = {text}")
        return t

    def node(self, e: ast.expr, ind: int, chk: Checked) -> tuple[str, bool]:
        """Emit statements computing `e`; return (local or literal, is_literal)."""
        if isinstance(e, ast.Constant):
            if not (e.value is None or isinstance(e.value, bool | int | float | str)):
                raise _Unsupported
            return repr(e.value), True
        if isinstance(e, ast.Tuple):
            values = tuple(self.node(x, ind, chk) for x in e.elts)
            if not all(const for _, const in values):
                raise _Unsupported
            return "(" + "".join(f"{t}, " for t, _ in values) + ")", True
        if not isinstance(e, ast.Call) or e.keywords:
            raise _Unsupported
        f = e.func
        if isinstance(f, ast.Subscript):
            return self.compare(f, e.args, ind, chk), False
        if not isinstance(f, ast.Name):
            raise _Unsupported
        name = f.id
        if name in chk.paths:
            return self.path(chk.paths[name]), False
        if name in ("_and", "_or"):
            return self.boolop(name == "_and", e.args, ind, chk), False
        r = self.tmp()
        if name in ("_not", "_known", "_neg") and len(e.args) == 1:
            x = self.named(self.node(e.args[0], ind, chk), ind)
            expr = {
                "_not": f"U if {x} is U else not {x}",
                "_known": f"{x} is not U",
                "_neg": f"_neg({x})",
            }[name]
            self.emit(ind, f"{r} = {expr}")
            return r, False
        if name == "_default" and len(e.args) == 2:
            x = self.named(self.node(e.args[0], ind, chk), ind)
            y, yc = self.node(e.args[1], ind, chk)
            key = ("default", x, y)
            if x in self.stable and yc:
                # Pure, cheap and as stable as its operands: computed in the prologue
                # (in both passes, so comparisons of it count as shared).
                d = self.defaults.get(key)
                if d is None:
                    d = self.defaults[key] = f"d{len(self.defaults)}"
                    self.prologue.append(f"    {d} = {y} if {x} is U else {x}")
                    self.stable.add(d)
                return d, False
            self.emit(ind, f"{r} = {y} if {x} is U else {x}")
            return r, False
        if name == "_arith" and len(e.args) == 3:
            op = e.args[0]
            if not (isinstance(op, ast.Constant) and op.value in _ARITH):
                raise _Unsupported
            x, _ = self.node(e.args[1], ind, chk)
            y, _ = self.node(e.args[2], ind, chk)
            self.emit(ind, f"{r} = _arith({op.value!r}, {x}, {y})")
            return r, False
        if name == "_call" and e.args:
            fn = e.args[0]
            if not (
                isinstance(fn, ast.Subscript)
                and isinstance(fn.slice, ast.Constant)
                and isinstance(fn.slice.value, str)
                and fn.slice.value in chk.functions
            ):
                raise _Unsupported
            target = chk.functions[fn.slice.value]
            local = self.funcs.setdefault(id(target), f"F{len(self.funcs)}")
            self.ns[local] = target
            args = [self.node(a, ind, chk)[0] for a in e.args[1:]]
            self.emit(ind, f"{r} = _call({', '.join([local, *args])})")
            return r, False
        raise _Unsupported

    def compare(self, f: ast.Subscript, args: list[ast.expr], ind: int, chk: Checked) -> str:
        """C[op](x, y): UNKNOWN if either side is, UNKNOWN on TypeError, else x op y."""
        op = f.slice.value if isinstance(f.slice, ast.Constant) else None
        sym = _CMP_SYMBOL.get(op) if isinstance(op, str) else None
        if sym is None or len(args) != 2:
            raise _Unsupported
        x, xc = self.node(args[0], ind, chk)
        y, yc = self.node(args[1], ind, chk)
        key = (x, sym, y)
        if all(c or t in self.stable for t, c in ((x, xc), (y, yc))) and self.count(key):
            r = self.memo.get(key, "")
            if not r:
                r = self.memo[key] = f"c{len(self.memo)}"
                self.prologue.append(f"    {r} = N")
            self.emit(ind, f"if {r} is N:")
            ind += 1
        else:
            r = self.tmp()
        self.emit(ind, f"{r} = U")
        unknown = [f"{t} is not U" for t, const in ((x, xc), (y, yc)) if not const]
        if unknown:
            self.emit(ind, f"if {' and '.join(unknown)}:")
            ind += 1
        self.emit(ind, "try:")
        self.emit(ind + 1, f"{r} = {x} {sym} {y}")
        self.emit(ind, "except TypeError:")
        self.emit(ind + 1, "pass")
        return r

    def count(self, key: tuple[str, ...]) -> bool:
        """Count `key` (first pass); whether it is shared (second pass)."""
        self.counts[key] = self.counts.get(key, 0) + 1
        return key in self.shared

    def boolop(self, is_and: bool, args: list[ast.expr], ind: int, chk: Checked) -> str:
        """Kleene and/or as a state that only moves towards its absorbing value (False
        for and, True for or); leaves early once there when the rest is `_pure`."""
        start, stop = ("True", "False") if is_and else ("False", "True")
        r = self.tmp()
        self.emit(ind, f"{r} = {start}")
        pure = [_pure(a) for a in args]
        loop = len(args) > 1 and pure[-1]
        if loop:
            self.emit(ind, "while True:")
            ind += 1
        for k, arg in enumerate(args):
            x = self.named(self.node(arg, ind, chk), ind)
            self.emit(ind, f"if {x} is U:")
            self.emit(ind + 1, f"if {r} is {start}: {r} = U")
            self.emit(ind, f"elif {'not ' if is_and else ''}{x}:")
            self.emit(ind + 1, f"{r} = {stop}")
            if loop and k < len(args) - 1 and all(pure[k + 1 :]):
                self.emit(ind, f"if {r} is {stop}: break")
        if loop:
            self.emit(ind, "break")
        return r
