"""A small, cheap HTTP/1.1 load generator: pre-built signed requests over keep-alive sockets.

Python HTTP clients spend more CPU per request than the receiver does, so the generator
writes pre-rendered request bytes on raw uvloop streams and parses only the status line and
Content-Length. Several processes share the work; each reports per-request latencies.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from dataclasses import dataclass

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]


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


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    if length:
        await reader.readexactly(length)
    return status


async def _connection(
    host: str,
    port: int,
    requests: list[bytes],
    cursor: list[int],
    deadline: float,
    interval: float,
    first_send: float,
    result: LoadResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    next_send = first_send
    try:
        while time.perf_counter() < deadline:
            index = cursor[0]
            if index >= len(requests):
                return
            cursor[0] += 1
            if interval:
                # Open-loop pacing: the latency is measured from the scheduled send time.
                delay = next_send - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                start = next_send
                next_send += interval
            else:
                start = time.perf_counter()
            writer.write(requests[index])
            status = await _read_response(reader)
            result.sent += 1
            if status == 200:
                result.ok += 1
                result.latencies_ms.append((time.perf_counter() - start) * 1000)
            else:
                result.errors += 1
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        result.errors += 1
    finally:
        writer.close()


async def _drive(
    host: str,
    port: int,
    requests: list[bytes],
    connections: int,
    seconds: float,
    rate: float,
    process: tuple[int, int] = (0, 1),
) -> LoadResult:
    """`process` is (index, count) of the generator processes sharing an open-loop rate."""
    result = LoadResult(0, 0, 0, 0.0, [])
    cursor = [0]
    interval = connections / rate if rate else 0.0
    start = time.perf_counter()
    deadline = start + seconds
    index, count = process
    # Open loop: arrivals evenly spaced over all connections of all processes, not every
    # connection firing at once each interval (that would be bursts of `connections`).
    step = 1 / (rate * count) if rate else 0.0
    await asyncio.gather(
        *(
            _connection(
                host,
                port,
                requests,
                cursor,
                deadline,
                interval,
                start + (conn * count + index) * step,
                result,
            )
            for conn in range(connections)
        )
    )
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
    queue.put(asyncio.run(_drive(host, port, requests, connections, seconds, rate, process)))


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
