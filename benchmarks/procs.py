"""Process helpers the load benchmarks share: stop a server we started, read the CPU
a process has used. Only processes a benchmark started itself, by their PID."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

__all__ = ["cpu_seconds", "stop"]

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
