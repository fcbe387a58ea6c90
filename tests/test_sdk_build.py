"""The committed snippet build: current, within its size budget, and true to the contract.

`sdk-js/dist/ringback.min.js` is committed so Python-only users need no Node; these
tests make sure it is exactly what the sources build, that it stays a fraction of its
peers' size (Snowplow's tracker is 17.4 KB min+gzip), and that the documented wire
types (`sdk-js/index.d.ts`) name the same events and fields as `engine/schema.py`.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from engine.ingest import schema

SDK = Path(__file__).resolve().parent.parent / "sdk-js"
DIST = SDK / "dist" / "ringback.min.js"
SIZE_BUDGET_BYTES = 3072  # min + gzip -9


def test_dist_is_what_the_sources_build(tmp_path: Path) -> None:
    assert shutil.which("node"), "Node.js is needed to build the snippet"
    assert (SDK / "node_modules" / "esbuild").is_dir(), (
        "esbuild missing: run `cd sdk-js && npm ci` (make test does)"
    )
    out = tmp_path / "ringback.min.js"
    subprocess.run(["node", "build.mjs", str(out)], cwd=SDK, check=True, capture_output=True)
    assert out.read_bytes() == DIST.read_bytes(), (
        "sdk-js/dist/ringback.min.js is stale: run `cd sdk-js && npm run build` and commit it"
    )


def test_snippet_fits_its_size_budget(capsys: pytest.CaptureFixture[str]) -> None:
    raw = DIST.read_bytes()
    gzipped = len(gzip.compress(raw, compresslevel=9, mtime=0))
    with capsys.disabled():
        print(f"\nsdk-js/dist/ringback.min.js: {len(raw)} bytes minified, {gzipped} gzip -9")
    assert gzipped <= SIZE_BUDGET_BYTES


@pytest.mark.parametrize(
    "pattern",
    [
        r"innerHTML",
        r"outerHTML",
        r"insertAdjacentHTML",
        r"document\.write",
        r"\beval\(",
        r"new Function",
        r"document\.cookie",
    ],
)
def test_snippet_source_never_parses_or_stores_markup_or_cookies(pattern: str) -> None:
    """Server data only ever reaches the page as text; no cookies, first-party or not."""
    for path in sorted((SDK / "src").glob("*.js")):
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("//")
        )
        assert not re.search(pattern, code), f"{path.name} uses {pattern}"


def _dts_interface(name: str) -> str:
    text = (SDK / "index.d.ts").read_text()
    match = re.search(rf"interface {name} \{{(.*?)\n\}}", text, re.S)
    assert match, f"index.d.ts has no interface {name}"
    return match.group(1)


def test_typed_wire_events_are_the_servers_event_types() -> None:
    text = (SDK / "index.d.ts").read_text()
    declared = set(re.findall(r"type: '([a-z_]+)'; props", text))
    assert declared == set(schema.EVENT_TYPES)


@pytest.mark.parametrize(
    ("interface", "struct"),
    [
        ("Batch", schema.Batch),
        ("PageViewProps", schema.PageViewProps),
        ("ClickProps", schema.ClickProps),
        ("CalcProps", schema.CalcProps),
        ("FormProps", schema.FormProps),
        ("CustomProps", schema.CustomProps),
    ],
)
def test_typed_payload_fields_mirror_the_schema(interface: str, struct: type) -> None:
    body = _dts_interface(interface)
    declared = set(re.findall(r"^\s+(\w+)\??:", body, re.M))
    assert declared == {f.name for f in msgspec.structs.fields(struct)}
