"""`ringback simulate`: realistic synthetic visitors for demos and load tests.

Each visitor lands (sometimes from a campaign), browses a few product pages, may play
with a loan calculator (amount/term moving like a slider), may abandon a form or ask
for a call, sends heartbeats while reading, and leaves. Batches are sent as the
snippet sends them (every second or every 20 events). Load is bounded: `rate` new
visitors per second for `duration` seconds, then in-flight visitors finish.

    ringback simulate --url http://127.0.0.1:8080 --rate 5 --duration 30

`--population N` runs a bank population with hidden response probabilities instead
(engine/cli/population.py).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from engine.cli import population
from engine.core.progress import Progress

__all__ = ["SimulationReport", "register", "simulate"]

JOURNEYS: dict[str, list[str]] = {
    "mortgage": ["/", "/mortgages", "/mortgages/fixed-rate", "/mortgages/calculator"],
    "loans": ["/", "/loans", "/personal-loan", "/personal-loan/apply"],
    "cards": ["/", "/cards", "/cards/compare", "/cards/platinum"],
    "savings": ["/", "/savings", "/savings/fixed-term"],
    "investments": ["/", "/investments", "/funds/compare"],
    "churn": ["/", "/fees", "/complaints", "/close-account"],
}
CAMPAIGNS = [None, None, ("newsletter", "spring-rates"), ("google", "mortgage-search")]


@dataclass
class SimulationReport:
    visitors: int = 0
    batches: int = 0
    events: int = 0
    decisions: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> str:
        return (
            f"visitors {self.visitors}, batches {self.batches}, events {self.events}, "
            f"decisions {self.decisions}, errors {dict(self.errors) or 0}, "
            f"latency p50 {self.percentile(50):.1f} ms p99 {self.percentile(99):.1f} ms"
        )


class _Visitor:
    def __init__(self, site: str, rng: random.Random, speed: float) -> None:
        self.site = site
        self.rng = rng
        self.speed = speed
        self.anonymous_id = "sim-" + uuid.uuid4().hex[:20]
        self.queue: list[dict[str, Any]] = []
        self.seq = 0

    def ev(self, etype: str, page: str, props: dict[str, Any] | None = None) -> None:
        self.seq += 1
        e: dict[str, Any] = {
            "id": f"{self.anonymous_id[-8:]}.{self.seq}",
            "type": etype,
            "ts": int(time.time() * 1000),
            "page": page,
        }
        if props is not None:
            e["props"] = props
        self.queue.append(e)

    def script(self) -> list[tuple[float, str, str, dict[str, Any] | None]]:
        """The visit as (delay_s, type, page, props) steps."""
        rng = self.rng
        interest = rng.choice(list(JOURNEYS))
        pages = JOURNEYS[interest][: rng.randint(2, len(JOURNEYS[interest]))]
        steps: list[tuple[float, str, str, dict[str, Any] | None]] = []
        campaign = rng.choice(CAMPAIGNS)
        for i, page in enumerate(pages):
            props: dict[str, Any] = {"title": page.strip("/").replace("-", " ").title() or "Home"}
            if i == 0 and campaign:
                props.update(utm_source=campaign[0], utm_medium="email", utm_campaign=campaign[1])
            steps.append((rng.uniform(1, 4), "page_view", page, props))
            if rng.random() < 0.4:
                steps.append(
                    (rng.uniform(0.5, 2), "scroll", page, {"depth": rng.choice([25, 50, 75, 100])})
                )
            steps.append((rng.uniform(0.5, 3), "heartbeat", page, {"dwell_ms": 15_000}))
        if interest in ("mortgage", "loans") and rng.random() < 0.7:
            product = "mortgage" if interest == "mortgage" else "loans"
            amount: float = 250_000 if product == "mortgage" else 15_000
            term = 300 if product == "mortgage" else 48
            for _ in range(rng.randint(2, 8)):
                amount = max(1000, amount + rng.choice([-1, 1]) * amount * 0.1)
                monthly = round(amount / term * 1.4, 2)
                steps.append(
                    (
                        rng.uniform(0.3, 1.5),
                        "calc",
                        pages[-1],
                        {
                            "product": product,
                            "amount": round(amount),
                            "term_months": term,
                            "rate": 4.2,
                            "monthly_payment": monthly,
                        },
                    )
                )
            if rng.random() < 0.3:
                steps.append(
                    (1, "interest", pages[-1], {"product": product, "call_me": rng.random() < 0.5})
                )
        if interest == "loans" and rng.random() < 0.4:
            steps.append(
                (
                    1,
                    "form",
                    pages[-1],
                    {"field": "amount", "action": "focus", "form": "personal-loan-application"},
                )
            )
            steps.append(
                (
                    2,
                    "form",
                    pages[-1],
                    {"field": "amount", "action": "abandon", "form": "personal-loan-application"},
                )
            )
        return steps


async def _send(
    session: aiohttp.ClientSession, url: str, visitor: _Visitor, report: SimulationReport
) -> None:
    if not visitor.queue:
        return
    body = {
        "site": visitor.site,
        "anonymous_id": visitor.anonymous_id,
        "events": visitor.queue[:20],
    }
    del visitor.queue[:20]
    started = time.perf_counter()
    try:
        async with session.post(
            f"{url}/v1/events",
            data=orjson.dumps(body),
            headers={"Content-Type": "text/plain;charset=UTF-8"},
        ) as r:
            payload = await r.read()
            report.latencies_ms.append((time.perf_counter() - started) * 1000)
            if r.status == 200:
                report.batches += 1
                report.events += len(body["events"])
                report.decisions += len(orjson.loads(payload).get("decisions", []))
            else:
                report.errors[r.status] = report.errors.get(r.status, 0) + 1
    except aiohttp.ClientError:
        report.errors[0] = report.errors.get(0, 0) + 1


async def _visit(
    session: aiohttp.ClientSession, url: str, visitor: _Visitor, report: SimulationReport
) -> None:
    report.visitors += 1
    last_flush = time.monotonic()
    for delay, etype, page, props in visitor.script():
        await asyncio.sleep(delay / visitor.speed)
        visitor.ev(etype, page, props)
        if len(visitor.queue) >= 20 or time.monotonic() - last_flush >= 1.0:
            await _send(session, url, visitor, report)
            last_flush = time.monotonic()
    await _send(session, url, visitor, report)  # the pagehide beacon


async def simulate(
    url: str,
    rate: float,
    duration_s: float,
    *,
    site: str = "demo-bank",
    speed: float = 1.0,
    seed: int | None = None,
    progress: bool = False,
) -> SimulationReport:
    """Start `rate` visitors per second for `duration_s` seconds; wait for them to leave."""
    rng = random.Random(seed)
    report = SimulationReport()
    url = url.rstrip("/")
    connector = aiohttp.TCPConnector(limit=200)
    shown = Progress("arriving", int(duration_s), unit="s") if progress else None
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        ticked = 0
        while time.monotonic() - started < duration_s:
            visitor = _Visitor(site, random.Random(rng.random()), speed)
            tasks.append(asyncio.create_task(_visit(session, url, visitor, report)))
            await asyncio.sleep(rng.expovariate(rate) if rate > 0 else duration_s)
            if shown is not None and (now := int(time.monotonic() - started)) > ticked:
                shown.advance(min(now, int(duration_s)) - ticked)
                ticked = min(now, int(duration_s))
        if shown is not None:
            shown.close(f"{len(tasks)} visitor(s) arrived; waiting for them to leave")
        await asyncio.gather(*tasks)
    return report


def register(sub: argparse._SubParsersAction, name: str) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="send realistic synthetic visitors to an engine")
    p.add_argument("--url", required=True, help="engine base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--rate", type=float, default=2.0, help="new visitors per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to keep arriving")
    p.add_argument("--site", default="demo-bank")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="time compression: 10 makes each visit 10x faster "
        "(--population: simulated days per real second)",
    )
    p.add_argument("--seed", type=int)
    population.add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import uvloop

    if args.population is not None:  # engine/cli/population.py
        return population.run(args)
    report = uvloop.run(
        simulate(
            args.url,
            args.rate,
            args.duration,
            site=args.site,
            speed=args.speed,
            seed=args.seed,
            progress=True,
        )
    )
    print(report.summary())
    return 0 if not report.errors else 1
