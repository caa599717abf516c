"""A small, cheap HTTP/1.1 load generator: pre-built signed requests over keep-alive sockets.

Python HTTP clients spend more CPU per request than the receiver does, and the generator
shares the machine's cores with the service it measures (pgbench, its C counterpart, costs a
few µs a transaction). So it writes pre-rendered request bytes from an `asyncio.Protocol` on
uvloop and reads each answer out of the bytes it was handed, parsing only the status code and
Content-Length: no stream reader, no task and no await per request. Several processes share
the work; each reports per-request latencies.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import cast

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

_HEAD_END = b"\r\n\r\n"
_LENGTH = b"\r\ncontent-length:"


@dataclass
class LoadResult:
    sent: int
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index]


def render_request(host: str, port: int, path: str, body: bytes, signature: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nStripe-Signature: {signature}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def split_response(buffer: bytes) -> tuple[int, int] | None:
    """(status, length in bytes) of the first whole response in `buffer`, or None if it has
    not all arrived yet."""
    head_end = buffer.find(_HEAD_END)
    if head_end < 0:
        return None
    head = buffer[:head_end].lower()
    at = head.find(_LENGTH)
    body = 0
    if at >= 0:
        start = at + len(_LENGTH)
        stop = head.find(b"\r\n", start)
        body = int(head[start : stop if stop >= 0 else len(head)])
    total = head_end + len(_HEAD_END) + body
    if len(buffer) < total:
        return None
    return int(buffer[9:12]), total


class _Client(asyncio.Protocol):
    """One keep-alive connection: sends the next request when the previous answer is in
    (closed loop) or at its due time (open loop: latency timed from the due time, so a stall
    counts against every request scheduled behind it)."""

    def __init__(self, shared: _Shared, first_send: float) -> None:
        self._shared = shared
        self._next_send = first_send
        self._start = 0.0
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send_next()

    def _send_next(self) -> None:
        shared = self._shared
        now = time.perf_counter()
        if now >= shared.deadline or shared.cursor >= len(shared.requests):
            self._finish()
            return
        if shared.interval:
            delay = self._next_send - now
            if delay > 0:
                self._loop.call_later(delay, self._send_due)
                return
        self._send_due()

    def _send_due(self) -> None:
        shared = self._shared
        if self._transport is None or shared.cursor >= len(shared.requests):
            self._finish()
            return
        request = shared.requests[shared.cursor]
        shared.cursor += 1
        if shared.interval:
            self._start = self._next_send
            self._next_send += shared.interval
        else:
            self._start = time.perf_counter()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        answer = split_response(self._buffer)
        if answer is None:
            return
        status, size = answer
        self._buffer = self._buffer[size:]
        result = self._shared.result
        result.sent += 1
        if status == 200:
            result.ok += 1
            result.latencies_ms.append((time.perf_counter() - self._start) * 1000)
        else:
            result.errors += 1
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:  # closed by the server, not by us
            self._shared.result.errors += 1
            self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def _finish(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


@dataclass
class _Shared:
    requests: list[bytes]
    deadline: float
    interval: float
    result: LoadResult
    cursor: int = 0


async def drive(
    host: str,
    port: int,
    requests: list[bytes],
    connections: int,
    seconds: float,
    rate: float,
    process: tuple[int, int] = (0, 1),
) -> LoadResult:
    """`process` is (index, count) of the generator processes sharing an open-loop rate."""
    loop = asyncio.get_running_loop()
    result = LoadResult(0, 0, 0, 0.0, [])
    start = time.perf_counter()
    shared = _Shared(requests, start + seconds, connections / rate if rate else 0.0, result)
    index, count = process
    # Open loop: arrivals evenly spaced over all connections of all processes, not every
    # connection firing at once each interval (that would be bursts of `connections`).
    step = 1 / (rate * count) if rate else 0.0
    clients = []
    for conn in range(connections):
        first_send = start + (conn * count + index) * step
        try:
            _, client = await loop.create_connection(
                functools.partial(_Client, shared, first_send), host, port
            )
        except OSError:
            result.errors += 1
            continue
        clients.append(client)
    await asyncio.gather(*(client.closed for client in clients))
    result.seconds = time.perf_counter() - start
    return result


def _worker(
    args: tuple[str, int, list[bytes], int, float, float, tuple[int, int]],
    queue: mp.Queue,  # type: ignore[type-arg]
    cpus: set[int] | None,
) -> None:
    host, port, requests, connections, seconds, rate, process = args
    if cpus:
        os.sched_setaffinity(0, cpus)
    if uvloop is not None:
        uvloop.install()
    queue.put(asyncio.run(drive(host, port, requests, connections, seconds, rate, process)))


def run_load(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    connections: int,
    seconds: float,
    processes: int = 2,
    rate: float = 0.0,
    cpus: set[int] | None = None,
) -> LoadResult:
    """Drive `requests` (each used once) for `seconds`; `rate` > 0 paces an open-loop load.
    `cpus` pins the generator's processes to those cores."""
    processes = max(1, min(processes, connections))
    share = len(requests) // processes
    queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    workers = []
    for index in range(processes):
        conns = connections // processes + (index < connections % processes)
        chunk = requests[index * share : (index + 1) * share]
        args = (
            host,
            port,
            chunk,
            conns,
            seconds,
            rate / processes if rate else 0.0,
            (index, processes),
        )
        proc = mp.Process(target=_worker, args=(args, queue, cpus))
        proc.start()
        workers.append(proc)
    parts = [queue.get() for _ in workers]
    for proc in workers:
        proc.join()
    return LoadResult(
        sent=sum(p.sent for p in parts),
        ok=sum(p.ok for p in parts),
        errors=sum(p.errors for p in parts),
        seconds=max(p.seconds for p in parts),
        latencies_ms=[x for p in parts for x in p.latencies_ms],
    )
