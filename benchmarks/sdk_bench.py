"""Snippet cost in the browser: main-thread time per tracked event, Ringback vs Snowplow.

    python -m benchmarks.sdk_bench [--events 500] [--runs 5] [--no-write]

The same page is loaded in Debian's Chromium three ways: with no tracker (baseline),
with Ringback's committed build, and with @snowplow/browser-tracker (installed with
npm into benchmarks/out/, bundled by sdk-js's esbuild with only the functions used,
as a bank's bundler would). Each tracks the same custom events, 10 every 100 ms, and
sends them to a collector that playwright answers at once, so only the page's own
work is measured. Main-thread time is Chrome's TaskDuration (CDP Performance
metrics) from the first event until 3 s after the last, minus the baseline's: the
calls themselves plus everything they cause later (timers, serialisation, storage,
sends, responses). Median of the runs; trackers interleaved so drift hits all alike.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Route, sync_playwright

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out" / "sdk_bench"  # git-ignored
RINGBACK_JS = REPO / "sdk-js" / "dist" / "ringback.min.js"
ESBUILD = REPO / "sdk-js" / "node_modules" / ".bin" / "esbuild"
SNOWPLOW = "@snowplow/browser-tracker"
SNOWPLOW_VERSION = "4.10.1"
ORIGIN = "http://127.0.0.1:8080"  # answered by playwright, never really listened on
SNOWPLOW_PATH = "/com.snowplowanalytics.snowplow/tp2"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SETTLE_MS = 3000

BODY = """<header><a href="/">Example Bank</a> <a href="/mortgages">Mortgages</a></header>
<main><h1>Borrow with confidence</h1><p>Clear rates and advisers who call back.</p>
<form><input name="amount" value="250000"></form></main>"""

PAGES = {
    "baseline": "<script>window.benchTrack = () => {}</script>",
    "ringback": (
        "<script>window.ringback=window.ringback||function(){(ringback.q=ringback.q||[])"
        ".push(arguments)}</script>"
        f'<script src="/ringback.js" data-site="bench" data-consent="implied" '
        f'data-endpoint="{ORIGIN}"></script>'
        "<script>window.benchTrack = (i) => ringback.track('bench', {n: i})</script>"
    ),
    "snowplow": (
        '<script src="/snowplow.js"></script><script>'
        f"spBench.newTracker('sp', '{ORIGIN}', {{appId: 'bench', platform: 'web'}});"
        "spBench.trackPageView();"
        "window.benchTrack = (i) => spBench.trackStructEvent("
        "{category: 'bench', action: 'track', label: String(i)});</script>"
    ),
}


@dataclass
class Collector:
    """Counts what reaches the collector endpoints, answering each at once."""

    requests: int = 0
    events: int = 0
    bytes: int = 0
    scripts: dict[str, bytes] = field(default_factory=dict)
    page: str = ""

    def handle(self, route: Route) -> None:
        req = route.request
        path = req.url.removeprefix(ORIGIN).split("?")[0]
        if req.method == "GET" and path == "/":
            route.fulfill(body=self.page, content_type="text/html")
        elif req.method == "GET" and path.lstrip("/") in self.scripts:
            route.fulfill(body=self.scripts[path.lstrip("/")], content_type="text/javascript")
        elif req.method == "POST" and path in ("/v1/events", SNOWPLOW_PATH):
            body = req.post_data or ""
            self.requests += 1
            self.bytes += len(body.encode())
            if path == "/v1/events":
                n = len(json.loads(body)["events"])
                self.events += n
                answer = {"accepted": n, "duplicates": 0, "decisions": []}
                route.fulfill(body=json.dumps(answer), content_type="application/json")
            else:
                self.events += len(json.loads(body)["data"])
                route.fulfill(status=200, body="")
        elif req.method == "POST":
            route.fulfill(status=204, body="")
        else:
            route.fulfill(status=404, body="")


def build_snowplow() -> bytes:
    """npm-install Snowplow into benchmarks/out and bundle what the page uses."""
    if not (OUT / "node_modules" / SNOWPLOW).is_dir():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(OUT), "--no-audit", "--no-fund",
             "--loglevel=error", f"{SNOWPLOW}@{SNOWPLOW_VERSION}"],
            check=True,
        )  # fmt: skip
    entry = OUT / "entry.js"
    entry.write_text(
        f"import {{ newTracker, trackPageView, trackStructEvent }} from '{SNOWPLOW}';\n"
        "window.spBench = { newTracker, trackPageView, trackStructEvent };\n"
    )
    bundle = OUT / "snowplow.min.js"
    subprocess.run(
        [str(ESBUILD), str(entry), "--bundle", "--minify", "--format=iife",
         "--target=es2020", "--legal-comments=none", f"--outfile={bundle}", "--log-level=warning"],
        check=True,
        cwd=OUT,
    )  # fmt: skip
    return bundle.read_bytes()


def measure(context: BrowserContext, collector: Collector, events: int) -> tuple[float, float]:
    """Main-thread ms over the whole run, and ms spent inside the tracking calls."""
    page = context.new_page()
    page.goto(ORIGIN + "/")
    page.wait_for_function("typeof window.benchTrack === 'function'")
    page.wait_for_timeout(500)  # the page view and start-up work are not per-event cost
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")

    def task_s() -> float:
        metrics = cdp.send("Performance.getMetrics")["metrics"]
        return float(next(m["value"] for m in metrics if m["name"] == "TaskDuration"))

    before = task_s()
    # performance.now() is coarsened to 100 µs without cross-origin isolation: time
    # whole bursts of 10 calls, not single calls.
    inside_ms = page.evaluate(
        """async (n) => {
          let inside = 0;
          for (let i = 0; i < n; i += 10) {
            const t = performance.now();
            for (let j = i; j < Math.min(i + 10, n); j++) window.benchTrack(j);
            inside += performance.now() - t;
            await new Promise((r) => setTimeout(r, 100));
          }
          return inside;
        }""",
        events,
    )
    page.wait_for_timeout(SETTLE_MS)
    total_ms = (task_s() - before) * 1000
    page.close()
    return total_ms, float(inside_ms)


def probe_fetch(browser: Any, scripts: dict[str, bytes]) -> float:
    """Main-thread µs of one fetch() call on this machine: the floor of any send."""
    collector = Collector(scripts=scripts, page=f"<!doctype html><body>{BODY}</body>")
    context = browser.new_context()
    context.route(ORIGIN + "/**", collector.handle)
    page = context.new_page()
    page.goto(ORIGIN + "/")
    ms = page.evaluate(
        """async () => {
          let total = 0;
          for (let round = 0; round < 5; round++) {
            const t = performance.now();
            for (let i = 0; i < 20; i++)
              fetch('/probe', {method: 'POST', body: 'x', keepalive: true}).catch(() => {});
            total += performance.now() - t;
            await new Promise((r) => setTimeout(r, 300));
          }
          return total;
        }"""
    )
    context.close()
    return float(ms) / 100 * 1000


def run(events: int, runs: int) -> dict[str, dict[str, Any]]:
    scripts = {"ringback.js": RINGBACK_JS.read_bytes(), "snowplow.js": build_snowplow()}
    totals: dict[str, list[float]] = {name: [] for name in PAGES}
    inside: dict[str, list[float]] = {name: [] for name in PAGES}
    sent: dict[str, Collector] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for _ in range(runs):
            for name, head in PAGES.items():
                collector = Collector(scripts=scripts)
                collector.page = (
                    f"<!doctype html><html><head>{head}</head><body>{BODY}</body></html>"
                )
                context = browser.new_context()
                context.route(ORIGIN + "/**", collector.handle)
                total_ms, inside_ms = measure(context, collector, events)
                context.close()
                totals[name].append(total_ms)
                inside[name].append(inside_ms)
                sent[name] = collector
        fetch_us = probe_fetch(browser, scripts)
        browser.close()
    base = statistics.median(totals["baseline"])
    results = {}
    for name in ("ringback", "snowplow"):
        js = scripts[f"{name}.js"]
        results[name] = {
            "gzip_bytes": len(gzip.compress(js, 9, mtime=0)),
            "per_event_us": (statistics.median(totals[name]) - base) / events * 1000,
            "inside_call_us": statistics.median(inside[name]) / events * 1000,
            "requests": sent[name].requests,
            "events_sent": sent[name].events,
            "wire_bytes": sent[name].bytes,
        }
    results["baseline"] = {"task_ms": base, "fetch_call_us": fetch_us}
    return results


def report(results: dict[str, dict[str, Any]], events: int, runs: int) -> str:
    rb, sp = results["ringback"], results["snowplow"]
    rows = "\n".join(
        f"| {label} | {r['gzip_bytes']:,} | {r['per_event_us']:.1f} | {r['inside_call_us']:.1f} "
        f"| {r['requests']} | {r['wire_bytes'] / 1024:.1f} |"
        for label, r in (("Ringback (dist)", rb), (f"{SNOWPLOW} {SNOWPLOW_VERSION}", sp))
    )
    ratio = sp["per_event_us"] / rb["per_event_us"] if rb["per_event_us"] > 0 else float("nan")
    fetch_us = results["baseline"]["fetch_call_us"]
    return f"""## Snippet: main-thread cost per tracked event

Command: `python -m benchmarks.sdk_bench --events {events} --runs {runs}` (also in `make bench`).
Debian Chromium, headless; {events} custom events per run (10 every 100 ms), collector
answered by playwright; main-thread time = Chrome TaskDuration from the first event to
{SETTLE_MS // 1000} s after the last, minus a tracker-less baseline, median of {runs} runs.
Measured {datetime.date.today().isoformat()}.

| tracker | min+gzip bytes | main thread µs/event | inside the call µs/event | requests | sent KB |
|---|---|---|---|---|---|
{rows}

Snowplow spends {ratio:.1f}x Ringback's main-thread time per event (defaults for both:
Ringback batches per second or 20 events, Snowplow sends what is queued whenever its
previous request is done; both keep an outbox in localStorage). Requests dominate: a
bare `fetch()` call costs {fetch_us:.0f} µs of main thread on this machine, so batching
is the lever. "Inside the call" is what the page's own handler pays; Ringback hands a
full batch to a task of its own.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = ap.parse_args(argv)
    if not ESBUILD.exists():
        print("sdk-js/node_modules missing: run `cd sdk-js && npm ci`", file=sys.stderr)
        return 1
    results = run(args.events, args.runs)
    text = report(results, args.events, args.runs)
    print(text)
    if not args.no_write:
        from benchmarks.results import write_section

        write_section("sdk", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
