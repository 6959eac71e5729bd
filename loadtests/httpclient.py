"""A lean HTTP/1.1 keep-alive client: pre-encoded requests out, status and body back.

Why not aiohttp's client: on the 2-core reference machine two aiohttp-client processes drove a
bare aiohttp server to 6.8k req/s where wrk reached 13.7k; this client, on asyncio protocols and
uvloop, matches wrk's throughput (docs/benchmarks/experiments/wrk-agreement.md) with about twice
wrk's CPU per request, so the generator is not what is measured.
It does one request per connection at a time (no pipelining), at most `limit` connections; a
request that finds them all busy waits in FIFO order, and that wait is part of its latency.
Deadlines are enforced by a sweeper every 50 ms rather than a timer per request.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from urllib.parse import urlsplit

_LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2
_MAX_HEAD = 64 * 1024


class RequestFailed(Exception):
    """No HTTP response; `kind` says why: timeout, connect, closed or protocol."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, base path) of an http:// URL; https is not supported on purpose (loopback tool)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http://host[:port][/base] URLs are supported, not {url!r}")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


class RequestHead:
    """The fixed part of one route's requests, encoded once; `render(body)` adds only the length."""

    def __init__(self, method: str, path: str, host: str, headers: dict[str, str] | None = None):
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._prefix = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

    def render(self, body: bytes, extra: bytes = b"") -> bytes:
        """`extra` is zero or more complete header lines, each ending in CRLF."""
        return b"".join((self._prefix, str(len(body)).encode(), b"\r\n", extra, b"\r\n", body))


def _dechunk(buf: bytearray, start: int) -> tuple[bytes | None, int]:
    """(body, end of message) once a whole chunked body is in `buf`, else (None, 0)."""
    parts, pos = [], start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # trailers, usually none
            return (b"".join(parts), end + 4) if end >= 0 else (None, 0)
        if len(buf) < pos + size + 2:
            return None, 0
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.deadline = float("inf")
        self.closed = False
        self.keep_alive = True
        self._reset()

    def _reset(self) -> None:
        self._body_start = -1
        self._status = 0
        self._mode = _LENGTH
        self._length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def send(self, data: bytes, deadline: float) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.deadline = deadline
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            self.fail("protocol")  # bytes nobody asked for: this connection cannot be trusted
            return
        try:
            self._parse()
        except (ValueError, IndexError):
            self.fail("protocol")

    def _parse(self) -> None:
        buf = self.buf
        if self._body_start < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ValueError("response head too large")
                return
            head = bytes(buf[:end]).lower()
            if not head.startswith(b"http/1."):
                raise ValueError("not an HTTP/1.x response")
            self._status = int(head[9:12])
            self._body_start = end + 4
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                eol = head.find(b"\r\n", at + 2)
                self._mode, self._length = _LENGTH, int(head[at + 17 : eol if eol >= 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self._mode = _CHUNKED
            elif self._status in (204, 304) or self._status < 200:
                self._mode, self._length = _LENGTH, 0
            else:
                self._mode = _UNTIL_CLOSE
            self.keep_alive = self._mode != _UNTIL_CLOSE and b"\r\nconnection: close" not in head
        if self._mode == _LENGTH:
            end = self._body_start + self._length
            if len(buf) < end:
                return
            body = bytes(buf[self._body_start : end])
        elif self._mode == _CHUNKED:
            body, end = _dechunk(buf, self._body_start)
            if body is None:
                return
        else:
            return  # the body ends when the server closes
        del buf[:end]
        self._complete(self._status, body)

    def _complete(self, status: int, body: bytes) -> None:
        waiter, self.waiter = self.waiter, None
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def fail(self, kind: str) -> None:
        waiter, self.waiter = self.waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(RequestFailed(kind))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and self._body_start >= 0 and self._mode == _UNTIL_CLOSE:
            self._complete(self._status, bytes(self.buf[self._body_start :]))
        else:
            self.fail("closed")


class ConnectionPool:
    """At most `limit` keep-alive connections to one host; FIFO wait when all are busy."""

    def __init__(self, host: str, port: int, limit: int, sweep_interval: float = 0.05):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.host, self.port, self.limit = host, port, limit
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._opening = 0
        self._waiters: deque[tuple[float, asyncio.Future]] = deque()
        self._loop = asyncio.get_running_loop()
        self._interval = sweep_interval
        self._sweeper = self._loop.call_later(sweep_interval, self._sweep)
        self.opened = 0  # connections opened over the pool's life, for the report

    async def request(self, data: bytes, deadline: float) -> tuple[int, bytes]:
        """(status, body); raises RequestFailed. `deadline` is on the time.monotonic() clock."""
        conn = await self._acquire(deadline)
        try:
            status, body = await conn.send(data, deadline)
        except BaseException:
            self._discard(conn)
            raise
        self._release(conn)
        return status, body

    async def _acquire(self, deadline: float) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                self._busy.add(conn)
                return conn
        if len(self._busy) + self._opening < self.limit:
            self._opening += 1
            return await self._open(deadline)
        waiter = self._loop.create_future()
        self._waiters.append((deadline, waiter))
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                given = waiter.result()  # handed over just as we were cancelled: pass it on
                if given is None:
                    self._opening -= 1
                    self._wake_one()
                else:
                    self._release(given)
            raise
        return await self._open(deadline) if conn is None else conn

    async def _open(self, deadline: float) -> _Connection:
        """Opens a connection for a slot the caller has already counted in `_opening`."""
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestFailed("timeout")
            try:
                _, conn = await asyncio.wait_for(
                    self._loop.create_connection(_Connection, self.host, self.port), remaining)
            except asyncio.TimeoutError:
                raise RequestFailed("timeout") from None
            except OSError:
                raise RequestFailed("connect") from None
        except BaseException:
            self._opening -= 1
            self._wake_one()
            raise
        self._opening -= 1
        self.opened += 1
        self._busy.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.closed or not conn.keep_alive:
            self._discard(conn)
            return
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # stays busy, now on the waiter's behalf
                return
        self._busy.discard(conn)
        self._idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.close()
        self._wake_one()

    def _wake_one(self) -> None:
        """A slot came free without a connection to hand over: the first waiter opens one."""
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                self._opening += 1
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._busy if c.waiter is not None and c.deadline <= now]:
            conn.fail("timeout")
        # Deadlines are (nearly) in arrival order, so expired waiters are at the front.
        while self._waiters and self._waiters[0][0] <= now:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RequestFailed("timeout"))
        self._sweeper = self._loop.call_later(self._interval, self._sweep)

    def close(self) -> None:
        self._sweeper.cancel()
        for conn in [*self._idle, *self._busy]:
            conn.close()
        self._idle.clear()
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RequestFailed("closed"))
        self._waiters.clear()
