"""The official JavaScript clients, unmodified, against a real engine (issue 14, item 3).

Banks already run Segment's Node library on their servers and Snowplow's browser
tracker on their pages. Pointed at Ringback (Segment's `host`, Snowplow's collector
URL), what they send must be counted, a retried message counted once, and decided on,
exactly as through the snippet. The packages come from npm at the versions pinned in
tests/clients/package.json (`make test` installs them with `npm ci`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import REPO, EngineClient

pytestmark = pytest.mark.slow

CLIENTS = REPO / "tests" / "clients"


async def _node(script: Path, *args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        *args,
        cwd=CLIENTS,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return orjson.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


async def test_segments_node_library_is_counted_once_per_message_and_names_the_customer(
    engine: EngineClient,
) -> None:
    write_key = engine.credentials["segment_server_write_key"]  # a server source: trusted
    result = await _node(
        CLIENTS / "segment_node.mjs", engine.url, write_key, "cust-node-1", "anon-node-1"
    )
    assert result == {"errors": []}
    profile = (await engine.profile("cust-node-1"))["profile"]
    assert profile["counts"] == {"page_view": 1, "calc": 3}  # the repeated messageId once
    assert profile["calc"]["mortgage"]["count"] == 3
    assert profile["calc"]["mortgage"]["max_amount"] == 270_000


async def test_a_wrong_write_key_is_an_error_the_node_library_reports(
    engine: EngineClient,
) -> None:
    result = await _node(CLIENTS / "segment_node.mjs", engine.url, "not-a-key", "c-x", "anon-x")
    assert result["errors"], "the library must see the refusal"
    status, _ = await engine.get_json("/v1/profiles/c-x", headers=engine.api_headers)
    assert status == 404  # nothing written
