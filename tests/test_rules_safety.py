"""Rule files are untrusted input: a small file must not cost gigabytes or minutes.

The loader refuses YAML anchors and aliases ("billion laughs"), files over
`MAX_FILE_BYTES`, over-deep nesting and non-data tags, each as one
`file:line:col: message` like its other errors, both in `ringback rules check` and
in a hot reload (where the previous rules keep serving). The CLI runs under a 1 GB
address-space limit, so without the guard the bomb fails the test instead of eating
the machine's memory.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, EngineClient, event, write_pack

from engine.core.settings import Settings
from engine.decisions.loader import MAX_DEPTH, MAX_FILE_BYTES, RuleSetError, load_rules

PACK = """\
offers:
  - {id: cheap, title: Cheap, product: cards, value: 10, channels: [web]}
rules:
  - id: cheap_offer
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: cheap, slot: hero}
"""

# 1.4 KB that a naive loader expands into 9**9 (387 million) strings.
_LOL = '"lol-lol-lol-lol-lol-lol-lol-lol-lol-lol"'
BILLION_LAUGHS = (
    "# looks like an offers file\n"
    "offers:\n"
    "  - id: laughs\n"
    "    title: Laughs\n"
    f"    text: &a0 [{', '.join([_LOL] * 9)}]\n"
    + "".join(f"    cta_label{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
    + "    channels: [*a8, *a8, *a8, *a8, *a8, *a8, *a8, *a8, *a8]\n"
    + "levers:\n"
    + "".join(f"  lever_{i}: *a8\n" for i in range(12))
)
BOMB_ERROR = "bomb.yaml:5:11: anchors and aliases are not allowed"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def _rules_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "rules", "check", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,  # a hang guard, not a timing assertion
        preexec_fn=_limit_memory,
    )


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return write_pack(tmp_path, PACK)


def test_the_bomb_is_a_small_file() -> None:
    assert 1000 < len(BILLION_LAUGHS.encode()) < 2000


def test_rules_check_refuses_a_billion_laughs_file_with_its_position(pack: Path) -> None:
    (pack / "bomb.yaml").write_text(BILLION_LAUGHS)
    out = _rules_check(pack)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.splitlines() == [f"{pack / BOMB_ERROR}"]
    assert "Traceback" not in out.stderr


def test_a_lone_anchor_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "offers:\n  - &first {id: a, title: A}\n  - {id: b, title: B}\n"
    )
    with pytest.raises(RuleSetError) as exc:
        load_rules(tmp_path)
    assert [str(e) for e in exc.value.errors] == [
        f"{tmp_path / 'a.yaml'}:2:5: anchors and aliases are not allowed"
    ]


def test_an_oversize_rules_file_is_refused_before_it_is_parsed(pack: Path) -> None:
    # Valid YAML, just too much of it; a YAML syntax error at its end proves the parser
    # never saw it.
    padding = "# filler comment line, forty-four bytes long\n" * (MAX_FILE_BYTES // 44 + 1)
    big = pack / "big.yaml"
    big.write_text(PACK.replace("offers:", "offers:\n" + padding, 1) + "rules: [\n")
    size = big.stat().st_size
    assert size > MAX_FILE_BYTES
    out = _rules_check(pack)
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        f"{big}:1:1: file is {size} bytes; a rules file may be at most {MAX_FILE_BYTES} "
        "bytes (split it into several files)"
    ]


def test_a_file_exactly_at_the_cap_still_loads(tmp_path: Path) -> None:
    text = PACK + "#" * (MAX_FILE_BYTES - len(PACK) - 1) + "\n"
    assert len(text.encode()) == MAX_FILE_BYTES
    (tmp_path / "pack.yaml").write_text(text)
    assert [r.id for r in load_rules(tmp_path).rules] == ["cheap_offer"]


def test_deep_nesting_and_python_tags_are_errors_not_tracebacks(tmp_path: Path) -> None:
    # The document mapping is level 1, so the 32nd "[" (column 8 + 32) is one too many.
    (tmp_path / "deep.yaml").write_text("levers: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "tag.yaml").write_text(
        'offers:\n  - {id: x, title: !!python/object/apply:os.system ["echo pwned"]}\n'
    )
    (tmp_path / "latin1.yaml").write_bytes(b"offers:\n  - {id: x, title: caf\xe9}\n")
    out = _rules_check(tmp_path)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "pwned" not in out.stdout
    assert out.stdout.splitlines() == [
        f"{tmp_path / 'deep.yaml'}:1:{8 + MAX_DEPTH}: nested more than {MAX_DEPTH} levels deep",
        f"{tmp_path / 'latin1.yaml'}:1:1: not UTF-8 text (byte 30)",
        f"{tmp_path / 'tag.yaml'}:2:20: title: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'",
    ]


async def _reload(engine: EngineClient) -> tuple[int, dict[str, Any]]:
    async with engine.session.post(
        f"{engine.url}/v1/admin/rules/reload", headers=engine.api_headers
    ) as r:
        return r.status, await r.json()


async def _offers_shown(engine: EngineClient) -> list[str]:
    status, resp, _ = await engine.post_events(engine.batch([event("page_view", page="/")]))
    assert status == 200, resp
    return [d["offer"]["id"] for d in resp["decisions"]]


async def test_hot_reload_refuses_the_bomb_and_the_oversize_file_and_keeps_serving(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine: EngineClient = await make_engine(replace(settings, rules_dir=pack))
    assert await _offers_shown(engine) == ["cheap"]

    (pack / "bomb.yaml").write_text(BILLION_LAUGHS)
    status, body = await _reload(engine)
    assert status == 422 and body["reloaded"] is False
    assert body["error"] == f"{pack / BOMB_ERROR}"
    assert await _offers_shown(engine) == ["cheap"]

    (pack / "bomb.yaml").unlink()
    (pack / "big.yaml").write_text("#" * MAX_FILE_BYTES + "\n")
    status, body = await _reload(engine)
    assert status == 422 and "big.yaml:1:1: file is" in body["error"]
    assert await _offers_shown(engine) == ["cheap"]

    (pack / "big.yaml").unlink()
    status, body = await _reload(engine)
    assert status == 200 and body["reloaded"] is True
