"""The coalescer's own Valkey connections: a pipeline written the moment it is cut.

redis-py's asyncio connection costs the hot path twice. Its write goes through
`asyncio.wait_for`, which on Python 3.11 wraps it in a task: a pipeline cut in one
loop tick reached the socket two ticks later, so Valkey idled while the engine
parsed the next requests, and the engine idled while Valkey ran the pipeline (the
two took turns: throughput was 1 / (engine + Valkey) per request). And it reads
reply by reply through coroutines and a timeout each. Here a pipeline is one
`transport.write` made inside `Store.call`, and its replies are parsed by hiredis
in `data_received`, which settles the callers' futures directly.

Semantics stay those of redis-py's pool: one pipeline at a time per connection (a
blocking command holds only its own connection; WAIT and WAITAOF count the writes
of their own connection), at most `max_connections` open, further pipelines wait
for one to come back. Replies read exactly as redis-py's hiredis parser gives them
(same error classes); a pipeline not answered within `timeout_s`, or whose
connection drops, fails with the connection error and the connection is discarded.
Plain TCP and unix sockets only: `Store` keeps redis-py for TLS and cluster.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Pipelines", "Reply"]

_PUSH = getattr(hiredis, "PushNotification", None)  # RESP3 push messages (hiredis >= 3.2)

Reply = Callable[[list[Any] | BaseException], None]
"""What gets a pipeline's replies (one per command, errors as values) or the
exception that cut it off."""


class _Conn(asyncio.Protocol):
    """One connection; while `busy`, the replies of one pipeline are owed on it."""

    def __init__(self, pool: Pipelines) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error, encoding="utf-8"
        )
        self.results: list[Any] = []
        self.expected = 0
        self.raw: frozenset[int] = frozenset()
        self.on_reply: Reply | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.lost = False
        self.ready = False  # handshake done: from now on the pool lends it out

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(
        self, packed: bytes, n_replies: int, raw: frozenset[int], on_reply: Reply, timeout_s: float
    ) -> None:
        assert self.transport is not None
        self.results = []
        self.expected = n_replies
        self.raw = raw
        self.on_reply = on_reply
        self.timer = asyncio.get_running_loop().call_later(timeout_s, self._timed_out)
        self.transport.write(packed)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        results = self.results
        while True:
            if self.on_reply is None:  # nothing owed: a stray reply means a broken stream
                self._fail(InvalidResponse("reply without a command"))
                return
            try:  # a raw reply undecoded (bytes), as redis-py's `disable_decoding`
                reply = (
                    reader.gets(False) if self.raw and len(results) in self.raw else reader.gets()
                )
            except Exception as exc:  # a protocol error: the stream can't be trusted
                self._fail(exc)
                return
            if reply is False:
                return
            if _PUSH is not None and isinstance(reply, _PUSH):
                continue  # out-of-band (we subscribe to nothing): not a command's reply
            results.append(reply)
            if len(results) == self.expected:
                self._done(results)  # may start the next waiting pipeline on self
                if not reader.has_data():
                    return
                results = self.results

    def _done(self, outcome: list[Any] | BaseException) -> None:
        on_reply, self.on_reply = self.on_reply, None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.results = []
        if self.ready and not isinstance(outcome, BaseException):
            self.pool.release(self)
        if on_reply is not None:
            on_reply(outcome)

    def _timed_out(self) -> None:
        self.timer = None
        self._fail(RedisTimeoutError("Timeout reading from socket"))

    def _fail(self, exc: BaseException) -> None:
        """Close, and fail what is owed: the replies left unread would be the next
        pipeline's otherwise."""
        self.close()
        self._done(exc)

    def close(self) -> None:
        if not self.lost:
            self.lost = True
            self.pool.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        if self.on_reply is not None:
            why = f": {exc}" if exc else ""
            self._done(RedisConnectionError(f"Connection closed by server{why}"))


class Pipelines:
    """Up to `max_connections` lean connections to one Valkey; `send` writes at once
    when one is idle (the usual case), else as soon as one is open or comes back."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        self._address = (host, port)
        self._path = path
        # RESP3, as redis-py 8 speaks it by default: replies then have the same shapes
        # (maps, doubles) that its response callbacks expect.
        hello: tuple[Any, ...] = ("HELLO", 3)
        if password is not None:
            hello += ("AUTH", username or "default", password)
        self._hello: list[tuple[Any, ...]] = [hello]
        if db:
            self._hello.append(("SELECT", db))
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max = max_connections
        self._idle: list[_Conn] = []
        self._open: set[_Conn] = set()
        self._opening = 0
        self._waiting: collections.deque[tuple[bytes, int, frozenset[int], Reply]] = (
            collections.deque()
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], **options: Any) -> Pipelines:
        """From redis-py's `parse_url` result (host, port or path, username, password, db)."""
        keep = ("host", "port", "path", "username", "password", "db")
        return cls(**{k: kwargs[k] for k in keep if k in kwargs}, **options)

    def send(
        self, commands: Sequence[tuple[Any, ...]], raw: frozenset[int], on_reply: Reply
    ) -> None:
        """Pack `commands` and write them now if a connection is idle; `on_reply` gets
        the replies (or the error that cut the pipeline off), from the event loop."""
        packed = b"".join([hiredis.pack_command(c) for c in commands])
        job = (packed, len(commands), raw, on_reply)
        if self._idle:
            self._start(self._idle.pop(), job)
            return
        self._waiting.append(job)
        if self._closed:
            self._fail_waiting(RedisConnectionError("the store is closed"))
        elif len(self._open) + self._opening < self._max:
            self._connect()

    def _start(self, conn: _Conn, job: tuple[bytes, int, frozenset[int], Reply]) -> None:
        packed, n, raw, on_reply = job
        conn.send(packed, n, raw, on_reply, self._timeout_s)

    def release(self, conn: _Conn) -> None:
        """`conn` owes nothing: the next waiting pipeline goes out on it, or it idles."""
        if conn.lost:
            return
        if self._waiting:
            self._start(conn, self._waiting.popleft())
        else:
            self._idle.append(conn)

    def discard(self, conn: _Conn) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        if self._waiting and not self._closed and len(self._open) + self._opening < self._max:
            self._connect()

    def _connect(self) -> None:
        self._opening += 1
        task = asyncio.ensure_future(self._open_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_one(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    if self._path is not None:
                        _, conn = await loop.create_unix_connection(lambda: _Conn(self), self._path)
                    else:
                        _, conn = await loop.create_connection(lambda: _Conn(self), *self._address)
                    if self._hello:
                        await self._handshake(conn)
            finally:
                self._opening -= 1
        except TimeoutError:
            self._fail_one(RedisTimeoutError("Timeout connecting to server"))
            return
        except OSError as exc:
            self._fail_one(RedisConnectionError(f"Error connecting to Valkey: {exc}"))
            return
        except Exception as exc:  # AUTH or SELECT refused: that pipeline gets the error
            self._fail_one(exc)
            return
        except BaseException as exc:
            self._fail_one(exc)
            raise
        if self._closed:
            conn.close()
            return
        conn.ready = True
        self._open.add(conn)
        self.release(conn)

    async def _handshake(self, conn: _Conn) -> None:
        done: asyncio.Future[list[Any] | BaseException] = asyncio.get_running_loop().create_future()
        packed = b"".join([hiredis.pack_command(c) for c in self._hello])
        conn.send(packed, len(self._hello), frozenset(), done.set_result, self._timeout_s)
        replies = await done
        if isinstance(replies, BaseException):
            raise replies
        for reply in replies:
            if isinstance(reply, Exception):
                conn.close()
                raise reply

    def _fail_one(self, exc: BaseException) -> None:
        """A connection that did not open fails the pipeline waiting longest, as a
        redis-py pool's failed connect fails the one pipeline that asked for it."""
        if self._waiting:
            self._waiting.popleft()[3](exc)

    def _fail_waiting(self, exc: BaseException) -> None:
        while self._waiting:
            self._waiting.popleft()[3](exc)

    def disconnect_idle(self) -> None:
        """Close every idle connection (after an outage: they may all be stale)."""
        for conn in list(self._idle):
            conn.close()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_waiting(RedisConnectionError("the store is closed"))
        for conn in list(self._open):
            conn.close()
