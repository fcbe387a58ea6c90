"""The coalescer's own Valkey connections: a pipeline written the moment it is cut.

redis-py's asyncio connection costs the hot path twice. Its write goes through
`asyncio.wait_for`, which on Python 3.11 wraps it in a task: a pipeline cut in one
loop tick reached the socket two ticks later, so Valkey idled while the engine
parsed the next requests, and the engine idled while Valkey ran the pipeline (the
two took turns: throughput was 1 / (engine + Valkey) per request). And it reads
reply by reply through coroutines and a timeout each. Here a pipeline is one
`transport.write` made inside `Store.call`, and its replies are parsed by hiredis
in `data_received`, which settles the callers' futures directly.

Semantics stay close to redis-py's pool: a connection is lent to one tick's
pipelines at a time (they go out one behind the other on it, so the calls of a tick
run in the order they were made, as when a tick was one pipeline; a blocking command
holds only its own connection and its tick's; WAIT and WAITAOF count the writes of
their own connection), at most `max_connections` open, further pipelines wait for one
to come back, and fail after `timeout_s` if none does ("No connection available").
Replies read exactly as redis-py's hiredis parser gives them (same error classes); a
pipeline not answered within `timeout_s`, or whose connection drops, fails with the
connection error, with everything else owed on that connection, and the connection is
discarded. A command argument that cannot be packed fails its own pipeline at once.
Plain TCP and unix sockets only: `Store` keeps redis-py for TLS and cluster.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Pipelines", "Reply"]

_PUSH = getattr(hiredis, "PushNotification", None)  # RESP3 push messages (hiredis >= 3.2)
# What the reader returns for "no whole reply yet" (its default, False, is also a RESP3
# boolean reply).
_MORE = object()

Reply = Callable[[list[Any] | BaseException], None]
"""What gets a pipeline's replies (one per command, errors as values) or the
exception that cut it off."""


class _Job(NamedTuple):
    n_replies: int
    raw: frozenset[int]
    on_reply: Reply
    timer: asyncio.TimerHandle


class _Waiting:
    """A pipeline waiting for a connection, and the pipelines of the same tick cut
    after it (`followers`: they go out right behind it, on its connection, so a tick
    keeps its order even when it had to wait). Fails after the pool's timeout, as a
    redis-py pool's caller waiting for a connection does."""

    __slots__ = ("conn", "followers", "n_replies", "on_reply", "packed", "raw", "timer")

    def __init__(self, packed: bytes, n_replies: int, raw: frozenset[int], on_reply: Reply) -> None:
        self.packed = packed
        self.n_replies = n_replies
        self.raw = raw
        self.on_reply = on_reply
        self.followers: list[_Waiting] = []
        self.timer: asyncio.TimerHandle | None = None  # set while it waits
        self.conn: _Conn | None = None  # where it went out, once it did

    def fail(self, exc: BaseException) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.on_reply(exc)
        for f in self.followers:
            f.on_reply(exc)


class _Conn(asyncio.Protocol):
    """One connection; `jobs` are the pipelines written on it whose replies are owed,
    oldest first (Valkey answers a connection's commands in order, so several
    pipelines may be in flight on one: a tick's pipelines share one and run in the
    order they were cut)."""

    def __init__(self, pool: Pipelines) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,
            encoding="utf-8",
            notEnoughData=_MORE,
        )
        self.results: list[Any] = []
        self.jobs: collections.deque[_Job] = collections.deque()
        self.lost = False
        self.ready = False  # handshake done: from now on the pool lends it out

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(
        self, packed: bytes, n_replies: int, raw: frozenset[int], on_reply: Reply, timeout_s: float
    ) -> None:
        assert self.transport is not None
        timer = asyncio.get_running_loop().call_later(timeout_s, self._timed_out)
        self.jobs.append(_Job(n_replies, raw, on_reply, timer))
        self.transport.write(packed)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while True:
            if not self.jobs:  # nothing owed: a stray reply means a broken stream
                if reader.has_data():
                    self._fail(InvalidResponse("reply without a command"))
                return
            job = self.jobs[0]
            results = self.results
            try:  # a raw reply undecoded (bytes), as redis-py's `disable_decoding`
                reply = reader.gets(False) if job.raw and len(results) in job.raw else reader.gets()
            except Exception as exc:  # a protocol error: the stream can't be trusted
                self._fail(exc)
                return
            if reply is _MORE:
                return
            if _PUSH is not None and isinstance(reply, _PUSH):
                continue  # out-of-band (we subscribe to nothing): not a command's reply
            results.append(reply)
            if len(results) == job.n_replies:
                self.jobs.popleft()
                job.timer.cancel()
                self.results = []
                job.on_reply(results)
                if not self.jobs and self.ready and not self.lost:
                    self.pool.release(self)  # may start a waiting pipeline on self

    def _timed_out(self) -> None:
        self._fail(RedisTimeoutError("Timeout reading from socket"))

    def _fail(self, exc: BaseException) -> None:
        """Close, and fail everything owed: the replies left unread would be the next
        pipeline's otherwise."""
        self.close()
        self._fail_jobs(exc)

    def _fail_jobs(self, exc: BaseException) -> None:
        self.results = []
        while self.jobs:
            job = self.jobs.popleft()
            job.timer.cancel()
            job.on_reply(exc)

    def close(self) -> None:
        if not self.lost:
            self.lost = True
            self.pool.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        if self.jobs:
            why = f": {exc}" if exc else ""
            self._fail_jobs(RedisConnectionError(f"Connection closed by server{why}"))


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
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], **options: Any) -> Pipelines:
        """From redis-py's `parse_url` result (host, port or path, username, password, db)."""
        keep = ("host", "port", "path", "username", "password", "db")
        return cls(**{k: kwargs[k] for k in keep if k in kwargs}, **options)

    def send(
        self,
        commands: Sequence[tuple[Any, ...]],
        raw: frozenset[int],
        on_reply: Reply,
        after: _Conn | _Waiting | None = None,
    ) -> _Conn | _Waiting:
        """Pack `commands` and write them now: behind `after`'s pipelines if it is still
        open (so they run after them: the pipelines of one tick keep their order), else
        on an idle connection; else they wait for one (behind `after` if it still
        waits). `on_reply` gets the replies (or the error that cut the pipeline off),
        from the event loop. Returns where they went, to pass as the next pipeline's
        `after`. Raises what packing raises (an argument
        of a type that is no command argument) before anything is sent."""
        packed = b"".join([hiredis.pack_command(c) for c in commands])
        job = _Waiting(packed, len(commands), raw, on_reply)
        if isinstance(after, _Waiting):
            if after.timer is not None:  # still waiting: go right behind it
                after.followers.append(job)
                return after
            after = after.conn  # gone out (None: failed)
        if isinstance(after, _Conn) and not after.lost and after.ready:
            if after in self._idle:
                self._idle.remove(after)
            self._start(after, job)
            return after
        if self._idle:
            conn = self._idle.pop()
            self._start(conn, job)
            return conn
        job.timer = asyncio.get_running_loop().call_later(self._timeout_s, self._expire, job)
        self._waiting.append(job)
        if self._closed:
            self._fail_waiting(RedisConnectionError("the store is closed"))
        elif len(self._open) + self._opening < self._max:
            self._connect()
        return job

    def _start(self, conn: _Conn, job: _Waiting) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        job.conn = conn
        conn.send(job.packed, job.n_replies, job.raw, job.on_reply, self._timeout_s)
        for f in job.followers:
            conn.send(f.packed, f.n_replies, f.raw, f.on_reply, self._timeout_s)

    def _expire(self, job: _Waiting) -> None:
        """No connection came free within the timeout: fail it (a 503 upstream) rather
        than queue requests without bound while Valkey is slow or away."""
        job.timer = None
        try:
            self._waiting.remove(job)
        except ValueError:
            return
        job.fail(RedisConnectionError("No connection available"))

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

        def answered(replies: list[Any] | BaseException) -> None:
            if not done.done():  # the connect timeout may have given up on it
                done.set_result(replies)

        packed = b"".join([hiredis.pack_command(c) for c in self._hello])
        conn.send(packed, len(self._hello), frozenset(), answered, self._timeout_s)
        try:
            replies = await done
        except BaseException:
            conn.close()
            raise
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
            self._waiting.popleft().fail(exc)
        # The next one gets a connection attempt of its own (else, with every attempt
        # failed, the rest would wait for a send that may never come).
        if self._waiting and not self._closed and len(self._open) + self._opening < self._max:
            self._connect()

    def _fail_waiting(self, exc: BaseException) -> None:
        while self._waiting:
            self._waiting.popleft().fail(exc)

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
