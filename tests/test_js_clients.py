"""The official JavaScript clients, unmodified, against a real engine (issue 14, item 3).

Banks already run Segment's Node library on their servers and Snowplow's browser
tracker on their pages. Pointed at Ringback (Segment's `host`, Snowplow's collector
URL), what they send must be counted, a retried message counted once, and decided on,
exactly as through the snippet. The packages come from npm at the versions pinned in
tests/clients/package.json (`make test` installs them with `npm ci`).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from browser import chromium
from conftest import REPO, EngineClient, LiveEngine

from engine.valkey import keys

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


BANK = "http://127.0.0.1:8080"  # a page origin the demo site allows; served by the test


@pytest.fixture(scope="module")
def snowplow_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """@snowplow/browser-tracker as the bank's page would load it (an esbuild bundle)."""
    out = tmp_path_factory.mktemp("snowplow") / "sp.js"
    esbuild = CLIENTS / "node_modules" / ".bin" / "esbuild"
    subprocess.run(
        [str(esbuild), "snowplow_entry.js", "--bundle", "--format=iife", f"--outfile={out}"],
        cwd=CLIENTS,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out.read_text()


@pytest.mark.browser
async def test_snowplows_browser_tracker_in_chromium_is_counted_once_and_decided_on(
    live_engine: LiveEngine, snowplow_bundle: str
) -> None:
    """The tracker posts to the engine as its collector, cross-origin from the bank's
    page (a real CORS preflight), with its domain user id as the visitor."""
    async with chromium() as browser:
        context = await browser.new_context()
        # The fulfilled page counts as a public site calling a loopback engine (Local
        # Network Access): the permission a real prompt would ask for.
        await context.grant_permissions(["local-network-access"])
        page = await context.new_page()
        posts: list[bytes] = []
        page.on(
            "request",
            lambda r: (
                posts.append(r.post_data_buffer or b"")
                if r.url.endswith("/com.snowplowanalytics.snowplow/tp2") and r.method == "POST"
                else None
            ),
        )

        async def bank_page(route: Any) -> None:
            await route.fulfill(content_type="text/html", body="<html><body>Loans</body></html>")

        await page.route(f"{BANK}/**", bank_page)
        await page.goto(f"{BANK}/mortgages")
        await page.add_script_tag(content=snowplow_bundle)
        await page.evaluate(
            """(collector) => {
                const sp = window.snowplowTest;
                sp.newTracker('sp', collector, {appId: 'demo-bank', eventMethod: 'post',
                                                bufferSize: 1, contexts: {webPage: true}});
                sp.trackPageView();
                for (const amount of [250000, 260000, 270000]) {
                    sp.trackStructEvent({category: 'calculator', action: 'mortgage',
                                         property: '300', value: amount});
                }
            }""",
            live_engine.url,
        )
        deadline = time.monotonic() + 15
        duid = ""
        while time.monotonic() < deadline:
            events = [e for body in posts for e in orjson.loads(body or b"{}").get("data", [])]
            if len(events) >= 4:
                duid = events[0]["duid"]
                raw = await live_engine.redis.get(
                    keys.profile_keys(keys.anonymous_prefix("demo-bank", duid))[0]
                )
                profile = orjson.loads(raw) if raw else {}
                if profile.get("c:mortgage:n") == 3:
                    break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"not counted: {len(posts)} posts")
    assert profile["n:page_view"] == 1 and profile["c:mortgage:max"] == 270_000
    # Sent again (a tracker retrying after a lost answer): counted once.
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{live_engine.url}/com.snowplowanalytics.snowplow/tp2",
            data=posts[-1],
            headers={"Content-Type": "application/json", "Origin": BANK},
        ) as r:
            assert r.status == 200
    raw = await live_engine.redis.get(
        keys.profile_keys(keys.anonymous_prefix("demo-bank", duid))[0]
    )
    assert orjson.loads(raw)["c:mortgage:n"] == 3
