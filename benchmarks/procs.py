"""Process helpers the load benchmarks share: stop a server we started, read the CPU
a process has used. Only processes a benchmark started itself, by their PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["cpu_seconds", "stop", "wait_ready"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` (fields 14 and 15 of /proc/<pid>/stat;
    the command name in parentheses may hold spaces, so split after its `)`)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, up to 20 s to drain, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ready(
    proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout_s: float = 30.0
) -> None:
    """Until `ringback serve` on 127.0.0.1:`port` answers /readyz 200; an engine that
    exits or is not ready in time is stopped and its log's tail raised."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited: {log_path.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"engine not ready: {log_path.read_text()[-2000:]}")
