"""CRM attributes: set by the bank's systems, validated like events, erased with the profile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from conftest import REPO, EngineClient, StoreTarget, event


async def _put(
    engine: EngineClient, customer: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with engine.session.put(
        f"{engine.url}/v1/profiles/{customer}/attributes",
        data=orjson.dumps(body),
        headers={
            "Content-Type": "application/json",
            **(engine.api_headers if headers is None else headers),
        },
    ) as r:
        return r.status, await r.json()


async def test_attributes_are_stored_and_shown_with_the_profile(engine: EngineClient) -> None:
    status, body = await _put(
        engine,
        "cust-vip",
        {
            "products_held": ["current_account", "mortgage"],
            "value_tier": "vip",
            "consent_call": True,
            "branch": "LDN-01",
            "language": "en-GB",
        },
    )
    assert status == 200 and body["created"] is True
    await engine.post_events(
        engine.batch([event("page_view", page="/cards")], identity=engine.token("cust-vip"))
    )
    prof = await engine.profile("cust-vip")
    assert prof["attributes"]["value_tier"] == "vip"
    assert prof["attributes"]["products_held"] == ["current_account", "mortgage"]
    assert prof["attributes"]["do_not_call"] is False  # defaults are explicit
    assert prof["profile"]["counts"] == {"page_view": 1}


async def test_put_replaces_the_whole_set(engine: EngineClient) -> None:
    await _put(engine, "cust-r", {"value_tier": "vip", "do_not_call": True})
    status, body = await _put(engine, "cust-r", {"consent_call": True})
    assert status == 200 and body["created"] is False
    attrs = (await engine.profile("cust-r"))["attributes"]
    assert (attrs["value_tier"], attrs["do_not_call"], attrs["consent_call"]) == (
        "standard",
        False,
        True,
    )


async def test_invalid_attributes_are_refused_with_their_path(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    for body, path in [
        ({"value_tier": "gold"}, "$.value_tier"),
        ({"email": "jane@example.com"}, "$"),
        ({"products_held": ["ok", "not ok!"]}, "$.products_held[1]"),
        ({"consent_call": "yes"}, "$.consent_call"),
    ]:
        status, resp = await _put(engine, "cust-bad", body)
        assert status == 400, body
        assert resp["error"]["code"] == "invalid_attributes"
        assert resp["error"]["path"] == path
    assert await redis.keys("*cust-bad*") == []


async def test_attributes_need_an_api_token(engine: EngineClient) -> None:
    status, _ = await _put(engine, "cust-x", {"value_tier": "vip"}, headers={})
    assert status == 401


def test_import_validates_every_line_before_writing(
    tmp_path: Path, store_target: StoreTarget
) -> None:
    client = store_target.emptied_sync_client()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"customer_id": "c1", "attributes": {"value_tier": "vip"}}\n'
        '{"customer_id": "c2", "attributes": {"value_tier": "platinum"}}\n'
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "import",
            str(bad),
            *store_target.cli_args,
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert f"{bad}:2:" in run.stderr and "$.attributes.value_tier" in run.stderr
    assert list(client.scan_iter()) == []  # nothing partially imported (on any node)

    good = tmp_path / "good.jsonl"
    good.write_text(
        "".join(
            orjson.dumps(
                {
                    "customer_id": f"c{i}",
                    "attributes": {
                        "value_tier": "vip" if i % 10 == 0 else "standard",
                        "consent_call": True,
                    },
                }
            ).decode()
            + "\n"
            for i in range(500)
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "import",
            str(good),
            *store_target.cli_args,
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "500 customer" in run.stdout
    stored = orjson.loads(client.get("rb:{c:c10}:p"))["attrs"]
    assert stored["value_tier"] == "vip" and stored["consent_call"] is True
    assert len(list(client.scan_iter("rb:{c:*}:p"))) == 500
