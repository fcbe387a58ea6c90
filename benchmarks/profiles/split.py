"""Where the engine's time goes, from py-spy's collapsed stacks (`--format raw`).

    python -m benchmarks.profiles.split benchmarks/profiles/ingest_<date>.collapsed [--top 15]

Prints the top self-time functions and a split of all samples by stage of the ingest
path. A sample goes to the stage of its innermost frame that names one (so the
Prometheus calls inside `decide` count as metrics, not as deciding); samples with no
such frame (uvloop's C loop, asyncio's task and timeout machinery) are event-loop
overhead.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (stage, regex on "function (file)"), checked for every frame; innermost match wins.
STAGES: list[tuple[str, str]] = [
    (
        "HTTP in: aiohttp request parsing, request objects",
        r"RequestHandler\.(data_received|start)|"
        r"_make_request|web_request\.py|aiohttp/streams\.py|http_parser",
    ),
    (
        "HTTP dispatch: aiohttp routing + engine middlewares",
        r"Application\._handle|"
        r"web_middlewares\.py|InFlight\.middleware|cors_middleware|error_middleware|"
        r"RouteLimits\.middleware",
    ),
    (
        "HTTP out: response start, headers, socket write",
        r"finish_response|http_writer\.py|"
        r"web_response\.py|StreamResponse",
    ),
    ("handler glue (handle_events itself)", r"^handle_events "),
    (
        "guards: IP limit, origin, media type, body read",
        r"IpRateLimiter|check_origin|"
        r"_read_body|read_body|client_ip",
    ),
    (
        "JSON decode + validation (parse_batch)",
        r"parse_batch|decode_batch|_check_nesting|"
        r"_date_events|engine/ingest/schema\.py",
    ),
    (
        "profile delta build (Python, before the call)",
        r"build_delta|ProfileStore\.delta|"
        r"engine/profile/delta\.py",
    ),
    (
        "profile call: header encode + result decode (apply_batch)",
        r"ProfileStore\.(apply_batch|"
        r"ingest)",
    ),
    (
        "Valkey client: coalescing, pack, send, read replies",
        r"Store\.(call|fcall|_flush|_flush_tick|_send|_send_wire|_wire_replied|_settle|"
        r"_pipeline)|redis/|hiredis|engine/valkey/wire\.py",
    ),
    (
        "decide (decision_input, profile decode, rules, reserve)",
        r"RulesDecider|decision_input|"
        r"engine/decisions/|decode_profile",
    ),
    ("answer encoding (json_response, CORS headers)", r"json_response|cors_headers"),
    (
        "audit / records writes",
        r"write_audit|write_trigger|count_decision|enqueue|"
        r"page_outcomes",
    ),
    ("Prometheus metrics", r"prometheus_client/"),
    (
        "background tasks (gateway follow, learner, janitor)",
        r"Gateway\.|learner|janitor|"
        r"GcPause|Reloader",
    ),
    ("idle thread-pool thread (py-spy counts its wait)", r"concurrent/futures/thread\.py"),
]
_COMPILED = [(name, re.compile(rx)) for name, rx in STAGES]
EVENT_LOOP = "event loop: uvloop C loop, asyncio tasks/timeouts"
_LINE = re.compile(r":\d+\)$")


def read(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        if line.strip():
            stack, n = line.rsplit(" ", 1)
            stacks.append(([_LINE.sub(")", f) for f in stack.split(";")], int(n)))
    return stacks


def stage_of(frames: list[str]) -> str:
    found = EVENT_LOOP
    for f in frames:
        for name, rx in _COMPILED:
            if rx.search(f):
                found = name
                break
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("collapsed", type=Path)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    stacks = read(args.collapsed)
    total = sum(n for _, n in stacks)
    self_time: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    for frames, n in stacks:
        self_time[frames[-1]] += n
        stages[stage_of(frames)] += n
    print(f"{total} samples\n\n| self time | function (file) |\n|---|---|")
    for f, n in self_time.most_common(args.top):
        print(f"| {n / total * 100:.1f} % | `{f}` |")
    print("\n| share | stage |\n|---|---|")
    for name, n in stages.most_common():
        print(f"| {n / total * 100:.1f} % | {name} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
