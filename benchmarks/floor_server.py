"""The floor: a bare aiohttp + uvloop handler doing the least an ingest must do.

It decodes the same batch with the same msgspec schema and makes one EVALSHA per
request (no coalescing), then answers. Ringback's ingest is measured against this
in the same run, so the ratio means something on a noisy shared machine.

    python -m benchmarks.floor_server --port 9001 --redis redis://127.0.0.1:6379 [--reuse-port]
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from engine.ingest.schema import decode_batch

SCRIPT = """
redis.call('HINCRBY', KEYS[1], 'events', ARGV[1])
return redis.call('HLEN', KEYS[1])
"""


async def main(port: int, url: str, reuse_port: bool) -> None:
    client = aioredis.Redis.from_url(url, max_connections=64)
    sha = await client.script_load(SCRIPT)

    async def handle(request: web.Request) -> web.Response:
        batch = decode_batch(await request.read())
        key = f"floor:{{{batch.anonymous_id}}}"
        n = await client.evalsha(sha, 1, key, len(batch.events))
        return web.Response(
            body=orjson.dumps({"accepted": len(batch.events), "n": n}),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/v1/events", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port, backlog=2048).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis", required=True)
    ap.add_argument("--reuse-port", action="store_true")
    a = ap.parse_args()
    uvloop.run(main(a.port, a.redis, a.reuse_port))
