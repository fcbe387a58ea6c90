"""The shape of the code, checked: the folders are the stages of the data path and
imports only point down; app state, Valkey key names and errors each have one home.

A newcomer changing a rule input, a metric or a delivery channel relies on these
rules to know where to look; a test keeps them true rather than a README table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"

# The data path, bottom to top: a module may import from its own stage or any stage
# to its left. `cli` (the process: commands, supervisor) sits on top of everything.
STAGES = (
    "core",
    "valkey",
    "ingest",
    "profile",
    "models",
    "decisions",
    "delivery",
    "learning",
    "contact_center",
    "privacy",
    "http",
    "cli",
)


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(ENGINE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _stage(path: Path) -> str | None:
    parts = path.relative_to(ENGINE).parts
    return parts[0] if len(parts) > 1 else None


def _imported(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every engine module imported anywhere in the file, lazy imports included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("engine."):
                yield node.lineno, node.module
            elif node.module == "engine":  # `from engine import core` names a stage
                for alias in node.names:
                    yield node.lineno, f"engine.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("engine."):
                    yield node.lineno, alias.name


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the nodes that are docstrings (their text may quote anything)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_every_module_lives_in_a_stage_folder() -> None:
    loose = [p.name for p in ENGINE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert loose == [], f"modules outside a stage folder: {loose}"
    folders = {p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(STAGES), f"stage folders differ from the declared stages: {folders}"


def _upward(stage: str, tree: ast.Module) -> list[str]:
    out = []
    for lineno, module in _imported(tree):
        target = module.split(".")[1]
        if target in STAGES and STAGES.index(target) > STAGES.index(stage):
            out.append(f"{lineno}: {stage} imports {module}")
    return out


def test_imports_only_point_down_the_data_path() -> None:
    upward: list[str] = []
    for path, tree in _modules():
        stage = _stage(path)
        if stage is not None:
            upward += [f"{path.relative_to(ENGINE)}:{u}" for u in _upward(stage, tree)]
    assert upward == [], "imports that point up the data path:\n" + "\n".join(upward)


def test_the_layer_check_catches_upward_imports_lazy_ones_too() -> None:
    source = (
        "from engine.valkey import keys\n"
        "from engine import delivery\n"
        "def f():\n"
        "    from engine.http.state import STORE\n"
    )
    found = _upward("profile", ast.parse(source))
    assert found == [
        "2: profile imports engine.delivery",
        "4: profile imports engine.http.state",
    ]


def test_app_state_keys_are_declared_only_in_http_state() -> None:
    elsewhere: list[str] = []
    for path, tree in _modules():
        if path.relative_to(ENGINE).as_posix() == "http/state.py":
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AppKey"
            ):
                elsewhere.append(f"{path.relative_to(ENGINE)}:{node.lineno}")
    assert elsewhere == [], f"web.AppKey outside engine/http/state.py: {elsewhere}"


def test_valkey_key_names_are_built_only_in_the_keys_module() -> None:
    """A key name anywhere else (an `rb:` string) could drift from the one the Lua,
    erasure and the README's retention table know about."""
    elsewhere: list[str] = []
    for path, tree in _modules():
        if path.relative_to(ENGINE).as_posix() == "valkey/keys.py":
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith("rb:")
                and id(node) not in docs
            ):
                elsewhere.append(f"{path.relative_to(ENGINE)}:{node.lineno}: {node.value!r}")
    assert elsewhere == [], "key names outside engine/valkey/keys.py:\n" + "\n".join(elsewhere)


@pytest.mark.parametrize("base", ["Exception", "RuntimeError", "ValueError"])
def test_every_public_error_class_belongs_to_the_one_error_tree(base: str) -> None:
    """Errors derive from `engine.core.errors.RingbackError` (directly or through
    one of its classes), so callers can catch Ringback's own failures as one family;
    private control-flow exceptions (`_Name`) are exempt."""
    from engine.core import errors

    tree_names = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.RingbackError)
    }
    strays: list[str] = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            if node.name == "RingbackError":  # the root itself
                continue
            bases = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            if base in bases and not bases & tree_names:
                strays.append(f"{path.relative_to(ENGINE)}:{node.lineno}: {node.name}({base})")
    assert strays == [], "error classes outside the RingbackError tree:\n" + "\n".join(strays)
