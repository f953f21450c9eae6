"""``serving.resp.RedisPipe`` against a small fake Redis on loopback: one write for the requests
of an event-loop iteration, replies in order, errors as values, and failures that fail the
pending requests instead of hanging them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import pytest

from serving.resp import RedisConnectionError, RedisPipe, pack, pack_tail


class FakeRedis:
    """Answers GET/SET/PING/AUTH/SELECT from a dict; ``mute`` swallows commands, ``hang_up``
    closes the connection on the next command. Counts the reads it gets (one per write of the
    client when the client writes once per iteration)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.mute = False
        self.hang_up = False
        self.commands: list[list[bytes]] = []
        self.chunks = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            self.chunks += 1
            parser.feed(data)
            while (command := parser.gets()) is not False:
                self.commands.append(command)
                if self.hang_up:
                    writer.close()
                    return
                if not self.mute:
                    writer.write(self.answer(command))
            await writer.drain()
        writer.close()

    def answer(self, command: list[bytes]) -> bytes:
        name = command[0].upper()
        if name == b"GET":
            value = self.data.get(command[1])
            return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
        if name == b"SET":
            self.data[command[1]] = command[2]
            return b"+OK\r\n"
        if name in (b"PING", b"SELECT"):
            return b"+PONG\r\n" if name == b"PING" else b"+OK\r\n"
        if name == b"AUTH":
            return b"+OK\r\n" if command[-1] == b"secret" else b"-WRONGPASS invalid password\r\n"
        return b"-ERR unknown command '%s'\r\n" % command[0]


@asynccontextmanager
async def fake_redis() -> AsyncIterator[tuple[FakeRedis, int]]:
    fake = FakeRedis()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield fake, port
    finally:
        server.close()


def test_pack_encodes_resp_arrays() -> None:
    assert pack("GET", b"k") == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    zcount = b"*4\r\n$6\r\nZCOUNT\r\n$1\r\nk\r\n$3\r\n(10\r\n$2\r\n20\r\n"
    assert pack("ZCOUNT", "k", "(10", 20) == zcount
    assert pack("X", 1.5, "é") == b"*3\r\n$1\r\nX\r\n$3\r\n1.5\r\n$2\r\n\xc3\xa9\r\n"
    assert pack_tail(b"a", "bc") == b"$1\r\na\r\n$2\r\nbc\r\n"
    with pytest.raises(TypeError):
        pack("SET", "k", True)
    with pytest.raises(TypeError):
        pack("SET", "k", None)  # type: ignore[arg-type]


def test_requests_of_one_iteration_share_one_write_and_get_their_own_replies() -> None:
    async def run() -> tuple[list[Any], int, int, int]:
        async with fake_redis() as (fake, port):
            fake.data = {b"a": b"1", b"b": b"2"}
            pipe = RedisPipe("127.0.0.1", port, timeout=2)
            await pipe.execute(("PING",))  # connect first: the next writes are the ones counted
            before = pipe.writes
            futures = [
                pipe.submit(pack("GET", "a") + pack("GET", "zz"), 2),
                pipe.submit(pack("NOPE"), 1),
                pipe.submit(pack("SET", "c", 3) + pack("GET", "c") + pack("GET", "b"), 3),
            ]
            replies = list(await asyncio.gather(*futures))
            writes = pipe.writes - before
            pipe.close()
            return replies, writes, fake.chunks, len(fake.commands)

    replies, writes, _, commands = asyncio.run(run())
    assert replies[0] == [b"1", None]
    [error] = replies[1]
    assert isinstance(error, hiredis.ReplyError) and "unknown command" in str(error)
    assert replies[2] == [b"OK", b"3", b"2"]
    assert writes == 1
    assert commands == 7  # PING + 6


def test_late_replies_fail_the_pending_requests_and_the_pipe_reconnects() -> None:
    async def run() -> tuple[BaseException, list[Any]]:
        async with fake_redis() as (fake, port):
            pipe = RedisPipe("127.0.0.1", port, timeout=0.2)
            fake.mute = True
            pending = [pipe.submit(pack("PING"), 1) for _ in range(3)]
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
            assert all(isinstance(o, TimeoutError) for o in outcomes)
            fake.mute = False
            fake.data[b"k"] = b"v"
            again = await pipe.execute(("GET", "k"))
            pipe.close()
            return outcomes[0], again

    error, again = asyncio.run(run())
    assert "no reply from Redis within 0.2 s" in str(error)
    assert again == [b"v"]


def test_a_lost_connection_fails_the_pending_requests() -> None:
    async def run() -> list[Any]:
        async with fake_redis() as (fake, port):
            pipe = RedisPipe("127.0.0.1", port, timeout=2)
            await pipe.execute(("PING",))
            fake.hang_up = True
            outcomes = await asyncio.gather(
                pipe.submit(pack("PING"), 1), pipe.submit(pack("PING"), 1), return_exceptions=True
            )
            fake.hang_up = False
            outcomes.append(await pipe.execute(("PING",)))  # a new connection
            pipe.close()
            return outcomes

    first, second, recovered = asyncio.run(run())
    assert isinstance(first, RedisConnectionError) and isinstance(second, RedisConnectionError)
    assert recovered == [b"PONG"]


def test_an_unreachable_server_fails_fast() -> None:
    async def run() -> BaseException:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens on ``port`` now
        pipe = RedisPipe("127.0.0.1", port, timeout=0.5)
        [outcome] = await asyncio.gather(pipe.submit(pack("PING"), 1), return_exceptions=True)
        return outcome

    outcome = asyncio.run(run())
    assert isinstance(outcome, RedisConnectionError)
    assert "cannot connect to Redis" in str(outcome)


def test_credentials_and_database_are_sent_on_connect() -> None:
    async def run(password: str) -> list[Any]:
        async with fake_redis() as (fake, port):
            pipe = RedisPipe("127.0.0.1", port, db=3, password=password, timeout=1)
            outcome = await asyncio.gather(pipe.execute(("PING",)), return_exceptions=True)
            pipe.close()
            return [outcome[0], fake.commands[:2]]

    ok, commands = asyncio.run(run("secret"))
    assert ok == [b"PONG"]
    assert commands == [[b"AUTH", b"secret"], [b"SELECT", b"3"]]
    refused, _ = asyncio.run(run("wrong"))
    assert isinstance(refused, RedisConnectionError) and "WRONGPASS" in str(refused)


def test_a_pipe_moves_to_a_new_event_loop() -> None:
    async def run(pipe: RedisPipe, port: int) -> list[Any]:
        return await pipe.execute(("PING",))

    async def both() -> None:
        async with fake_redis() as (_, port):
            pipe = RedisPipe("127.0.0.1", port, timeout=1)
            assert await run(pipe, port) == [b"PONG"]
            # The same pipe used from another loop (a thread's): it reconnects there.
            other = await asyncio.to_thread(asyncio.run, run(pipe, port))
            assert other == [b"PONG"]

    asyncio.run(both())
