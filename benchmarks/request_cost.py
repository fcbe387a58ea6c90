"""CPU per request by kind: what one anonymous page view, one identified page view and
one identified calculator event that fires a callback cost the engine and Valkey.

The latency targets of issue 12 are waits for the one worker's event loop; how long the
loop is busy per request is what they come from. A real `python -m engine serve` (1
worker, embedded Valkey) with the callback benchmark's rules and customers; each kind
runs closed loop (4 senders, one-event batches) for `--seconds`, the kinds alternated
`--rounds` times in one run (the shared box's speed moves between minutes); CPU is the
processes' utime + stime over the requests answered.

    python -m benchmarks.request_cost [--seconds 4] [--rounds 2] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import uvloop

from benchmarks import callback_bench as cb
from benchmarks.procs import cpu_seconds
from benchmarks.results import write_section
from engine.valkey.embedded import free_port

SENDERS = 4


async def _closed_loop(h: cb.Harness, seconds: float, make: Callable[[], bytes]) -> int:
    """Requests answered by SENDERS senders in `seconds`, each waiting for its answer."""
    n = 0
    stop_at = time.perf_counter() + seconds

    async def sender() -> None:
        nonlocal n
        while time.perf_counter() < stop_at:
            async with h.http.post(
                f"{h.url}/v1/events", data=make(), headers={"Content-Type": "application/json"}
            ) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{r.status} from /v1/events")
            n += 1

    await asyncio.gather(*[sender() for _ in range(SENDERS)])
    return n


async def _run(
    url: str, creds: dict[str, str], pids: dict[str, int], args: argparse.Namespace
) -> dict[str, list[tuple[float, float, float]]]:
    async with cb.Harness(url, creds, args.customers) as h:
        await h.setup_customers()
        seq = itertools.count()

        def anonymous() -> bytes:
            i = next(seq)
            event = {"id": f"c{i}", "ts": int(time.time() * 1000), "type": "page_view"}
            return orjson.dumps(
                {
                    "site": cb.SITE,
                    "anonymous_id": f"anon-cost-{i % args.customers:06d}-{h.run}",
                    "events": [event | {"page": "/offers"}],
                }
            )

        def identified(calc: bool) -> Callable[[], bytes]:
            def make() -> bytes:
                _, anon, token = h.pool[next(h.next_customer)]
                return h._body(anon, token, calc=calc, offer=not calc)

            return make

        kinds: dict[str, Callable[[], bytes]] = {
            "anonymous page view (an offer fires)": anonymous,
            "identified page view (an offer fires)": identified(False),
            "identified calc (a callback fires)": identified(True),
        }
        await _closed_loop(h, 1.0, anonymous)  # warm-up
        out: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for name, make in kinds.items():
                e0, v0 = cpu_seconds(pids["engine"]), cpu_seconds(pids["valkey"])
                n = await _closed_loop(h, args.seconds, make)
                e1, v1 = cpu_seconds(pids["engine"]), cpu_seconds(pids["valkey"])
                row = (n / args.seconds, (e1 - e0) / n * 1e6, (v1 - v0) / n * 1e6)
                out[name].append(row)
                print(
                    f"{name:40s} {row[0]:7.0f} req/s  engine {row[1]:6.0f} µs/req  "
                    f"valkey {row[2]:5.0f} µs/req",
                    flush=True,
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per kind and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--customers", type=int, default=300)
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ringback-request-cost-"))
    rules = tmp / "rules"
    rules.mkdir()
    for name, text in cb.RULES.items():
        (rules / name).write_text(text.replace("{expires_s}", "1"))
    port = free_port()
    proc, log_path = cb._start_engine(tmp, port, 1)
    try:
        creds = orjson.loads((tmp / "data" / "demo-credentials.json").read_bytes())
        valkey = cb._valkey_pid(log_path)
        if valkey is None:
            raise RuntimeError("the embedded valkey-server's pid is not in the engine's log")
        pids = {"engine": proc.pid, "valkey": valkey}
        result = uvloop.run(_run(f"http://127.0.0.1:{port}", creds, pids, args))
    finally:
        cb.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    cmd = f"python -m benchmarks.request_cost --seconds {args.seconds:g} --rounds {args.rounds}"
    lines = [
        "## CPU per request, by kind",
        "",
        f"Command: `{cmd}`. `python -m engine serve` (1 worker, embedded Valkey, the "
        "callback benchmark's rules and consented customers); each kind closed loop with "
        f"{SENDERS} senders, one-event batches, kinds alternated {args.rounds} times; CPU = "
        "utime + stime / requests answered; medians over the rounds (min-max). Measured "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| kind | req/s | engine µs / request | Valkey µs / request |",
        "|---|---|---|---|",
    ]
    for name, rows in result.items():
        cells = []
        for k in range(3):
            xs = [r[k] for r in rows]
            cells.append(f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("request-cost", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
