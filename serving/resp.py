"""A lean asyncio Redis connection that sends concurrent coroutines' commands in one write.

Why not ``redis.asyncio``: on the production profile a service worker answers ``/decide`` on
its event loop, and a blocking Redis call there idles the worker for every round trip (with
Redis on the same loaded host, a round trip waits for Redis to be scheduled). The decision's
reads must be awaited instead, and with 32 requests in flight most of a worker's Redis cost is
per round trip (system calls on both sides, wake-ups), not per command. ``redis.asyncio`` takes
a pooled connection, wraps each send and read in ``asyncio.wait_for`` and reads replies one
``await`` at a time; this connection does less:

* ``submit`` queues a request's already encoded commands and returns a future. At most one
  write is out at a time: while it waits for its replies, new commands queue, and when the
  replies are in, the whole queue goes out in one ``write``, so the requests share the system
  calls and Redis's wake-ups. On an idle connection the write happens at the end of the
  current event-loop iteration: no added wait at low load. Measured with Redis on loopback
  (two workers, concurrency 32): 4.5–4.9 requests per write; the replies come back within an
  iteration there, so a write per iteration gave the same batches. Across a network, where a
  round trip spans several iterations, the batches grow while one write is out.
* Replies are parsed by hiredis as they arrive (``data_received``) and handed to the futures
  in order; Redis answers pipelined commands in the order they were sent.
* One deadline per write: if its last reply has not arrived ``timeout`` seconds later, the
  connection is closed and every pending future fails with ``TimeoutError``; a lost
  connection fails them with ``ConnectionError``. The next ``submit`` reconnects. Connecting
  (and its ``AUTH``/``SELECT``) has the same deadline. With a ``serving.deadline.Breaker``, a
  missed deadline opens it, and while it is open ``submit`` fails at once with
  ``StoreUnavailable`` instead of queueing behind a Redis that does not answer (a small
  ``/decide_batch`` would otherwise wait one deadline per request).

Errors of single commands (a wrong key type, ``NOSCRIPT``) are not exceptions here: they come
back as ``hiredis.ReplyError`` values among the replies, for the caller to handle per command.
Nothing is retried: a command that may have run is never sent twice (a promo counted twice, a
credit taken twice).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import hiredis

from serving.deadline import Breaker, StoreUnavailable

#: RESP's line end.
_CRLF: Final = b"\r\n"


class RedisConnectionError(ConnectionError):
    """The connection to Redis failed or was lost before the replies arrived."""


def encode(value: bytes | str | int | float) -> bytes:
    """One command argument as RESP bytes (bulk-string payload, without the length)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):  # bool is an int: refuse an ambiguous argument
        raise TypeError("a Redis argument cannot be a bool")
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"a Redis argument must be bytes, str, int or float, not {type(value)}")


def pack(*args: bytes | str | int | float) -> bytes:
    """One command in RESP (an array of bulk strings), as Redis reads it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        # str and bytes first without a call: this runs for every command of every request.
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        else:
            data = encode(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def pack_tail(*args: bytes | str | int | float) -> bytes:
    """The bulk strings of ``args`` without the array header (to append a fixed argument list
    to a command built per request, e.g. ``HMGET``'s fields)."""
    return b"".join(b"$%d\r\n%s\r\n" % (len(d), d) for d in map(encode, args))


class _Waiter:
    """A submitted request: how many replies it expects, and the ones received so far."""

    __slots__ = ("count", "future", "replies", "timer")

    def __init__(self, count: int, future: asyncio.Future[list[Any]]) -> None:
        self.count = count
        self.future = future
        self.replies: list[Any] = []
        self.timer: asyncio.TimerHandle | None = None


class _Protocol(asyncio.Protocol):
    """Feeds received bytes to hiredis and completes the waiters in order."""

    def __init__(self, owner: RedisPipe) -> None:
        self._owner = owner
        self._reader = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._owner._waiting
        gets = self._reader.gets
        while (reply := gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self._owner._fail(RedisConnectionError("unexpected reply from Redis"))
                return
            waiter = waiting[0]
            waiter.replies.append(reply)
            if len(waiter.replies) == waiter.count:
                waiting.popleft()
                if waiter.timer is not None:
                    waiter.timer.cancel()
                if not waiter.future.done():
                    waiter.future.set_result(waiter.replies)
        if not waiting:
            self._owner._round_trip_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(self, exc)


class RedisPipe:
    """One connection to one Redis server for one event loop; see the module docstring.

    Args:
        host, port, db, username, password, ssl: the server (as ``redis.Redis`` takes them).
        timeout: seconds to connect, and to receive a write's replies.
        breaker: opened by a missed deadline; while open, ``submit`` fails at once.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        timeout: float = 0.5,
        breaker: Breaker | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.ssl = ssl
        self.timeout = timeout
        self.breaker = breaker
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._queued: list[tuple[bytes, _Waiter]] = []
        self._waiting: deque[_Waiter] = deque()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Writes sent and commands' requests in them (for tests and the benchmark's notes).
        self.writes = 0
        self.submitted = 0

    @classmethod
    def like(
        cls, client: Any, timeout: float | None = None, breaker: Breaker | None = None
    ) -> RedisPipe:
        """A pipe to the server of a ``redis.Redis`` client (same address, db, credentials,
        TLS); ``timeout`` defaults to the client's socket timeout, else 0.5 s."""
        import redis

        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        return cls(
            str(kwargs.get("host", "127.0.0.1")),
            int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db") or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            ssl=issubclass(pool.connection_class, redis.SSLConnection),
            timeout=float(timeout or kwargs.get("socket_timeout") or 0.5),
            breaker=breaker,
        )

    def submit(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Queue ``count`` encoded commands (``pack``); the future gets their ``count`` replies.

        The future fails with ``RedisConnectionError`` or ``TimeoutError`` when the connection
        cannot be made or is lost, or the replies are late. Must be called on the loop that
        runs the pipe (the first call binds it).
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        future: asyncio.Future[list[Any]] = loop.create_future()
        breaker = self.breaker
        if breaker is not None and breaker.is_open():
            try:
                breaker.check()
            except StoreUnavailable as error:
                future.set_exception(error)
                return future
        self._queued.append((packed, _Waiter(count, future)))
        self.submitted += 1
        if not self._scheduled:
            self._scheduled = True
            # End of this iteration: every request that gets here meanwhile shares the write.
            loop.call_soon(self._flush)
        return future

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``loop`` from now on (a connection belongs to one loop: an earlier loop's is
        dropped, and its pending requests with it)."""
        old, transport = self._loop, self._transport
        if transport is not None and old is not None and not old.is_closed():
            if old.is_running():  # another thread's loop: it closes its own transport
                old.call_soon_threadsafe(transport.abort)
            else:
                transport.abort()
        self._transport = self._protocol = None
        self._connecting = None
        self._queued = []
        self._waiting = deque()
        self._scheduled = False
        self._loop = loop

    async def execute(self, *commands: Sequence[bytes | str | int | float]) -> list[Any]:
        """Send ``commands`` (argument lists) and return their replies (a convenience for
        tests and set-up; the request path packs once and calls ``submit``)."""
        return await self.submit(b"".join(pack(*c) for c in commands), len(commands))

    def _round_trip_done(self) -> None:
        """Every reply is in: send what was queued meanwhile (after the requests woken by
        these replies have run, so that their next commands join the write)."""
        if self._queued and not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queued or self._waiting or self._connecting is not None:
            # A write is out: its replies' arrival flushes the queue (``_round_trip_done``); or
            # the connection is being set up: ``_connect`` flushes when it is ready.
            return
        if self._transport is None or self._transport.is_closing():
            if self._connecting is None:
                assert self._loop is not None
                self._connecting = self._loop.create_task(self._connect())
            return  # ``_connect`` flushes the queue when it is done
        queued, self._queued = self._queued, []
        assert self._loop is not None
        waiters = [w for _, w in queued]
        self._transport.write(b"".join([p for p, _ in queued]))
        self.writes += 1
        self._waiting.extend(waiters)
        # One deadline per write, held by its last waiter: replies come in order, so when the
        # last one is complete every earlier one is too.
        waiters[-1].timer = self._loop.call_later(self.timeout, self._late, waiters[-1])

    def _late(self, waiter: _Waiter) -> None:
        if not waiter.future.done():
            error = TimeoutError(f"no reply from Redis within {self.timeout} s")
            breaker = self.breaker
            if breaker is not None:
                breaker.trip(error)
            # Requests queued behind the late write would go out on a new connection and wait
            # a deadline of their own: with the breaker open they fail now, like later ones.
            self._fail(error, queued_too=breaker is not None and breaker.is_open())

    async def _connect(self) -> None:
        assert self._loop is not None
        try:
            context = ssl_module.create_default_context() if self.ssl else None
            protocol = _Protocol(self)
            transport, _ = await asyncio.wait_for(
                self._loop.create_connection(lambda: protocol, self.host, self.port, ssl=context),
                self.timeout,
            )
            # asyncio sets TCP_NODELAY on TCP connections: small writes leave at once.
            self._transport = transport
            self._protocol = protocol
            setup: list[bytes] = []
            if self.password:
                auth = (self.username, self.password) if self.username else (self.password,)
                setup.append(pack("AUTH", *auth))
            if self.db:
                setup.append(pack("SELECT", self.db))
            if setup:
                future = self._loop.create_future()
                waiter = _Waiter(len(setup), future)
                self._waiting.append(waiter)
                transport.write(b"".join(setup))
                waiter.timer = self._loop.call_later(self.timeout, self._late, waiter)
                replies = await future
                errors = [r for r in replies if isinstance(r, hiredis.ReplyError)]
                if errors:
                    raise RedisConnectionError(f"Redis refused the connection set-up: {errors[0]}")
        except Exception as error:
            self._connecting = None
            failure: Exception = error
            if isinstance(error, TimeoutError) and self.breaker is not None:
                self.breaker.trip(error)  # connecting (or AUTH, SELECT) missed the deadline
            if not isinstance(error, RedisConnectionError | TimeoutError):
                where = f"{self.host}:{self.port}"
                failure = RedisConnectionError(
                    f"cannot connect to Redis at {where}: {type(error).__name__}: {error}"
                )
            self._fail(failure, queued_too=True)
            return
        self._connecting = None
        self._flush()

    def _fail(self, error: BaseException, queued_too: bool = False) -> None:
        """Close the connection and fail every request waiting on it (and the queued ones
        with ``queued_too``; else they go out on a new connection)."""
        if queued_too:
            queued, self._queued = self._queued, []
            for _, waiter in queued:
                if not waiter.future.done():
                    waiter.future.set_exception(error)
        transport, self._transport, self._protocol = self._transport, None, None
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            if waiter.timer is not None:
                waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_exception(error)
        if transport is not None:
            transport.abort()
        loop = self._loop
        if self._queued and not self._scheduled and loop is not None and not loop.is_closed():
            self._scheduled = True  # the queued requests go out on a new connection
            loop.call_soon(self._flush)

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return  # an old connection, already failed
        reason = f": {exc}" if exc else ""
        self._fail(RedisConnectionError(f"connection to Redis lost{reason}"))

    def close(self) -> None:
        """Close the connection; pending requests fail. Safe from any thread (a shutdown
        hook): a running loop closes it itself."""
        loop = self._loop
        error = RedisConnectionError("connection closed")
        if loop is None or loop.is_closed():
            self._transport = self._protocol = None
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop.is_running() and current is not loop:
            loop.call_soon_threadsafe(self._fail, error, True)
        else:
            self._fail(error, True)
