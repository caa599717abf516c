"""Hostile clients against a real `webhook-worker serve` process on loopback (issue 14).

Each scenario runs an attack while a parallel sender delivers real signed events, and checks
what an operator relies on: the attack's connections are closed by the server within a
deadline, the process's RSS stays under 150 MB during and after, and every real delivery is
answered 200. The bounds are shortened (2 s header/body time) so the suite stays short; the
defaults are documented in docs/configuration.md and docs/reliability.md "abuse", where the
senders' p99 printed here is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import base_env, create_database, drop_database, sign
from webhook_worker.dev.embedded import free_port
from webhook_worker.dev.servicekit import spawn_command, stop_process, wait_http_ok
from webhook_worker.ops.sample_events import encode_event, event_envelope, new_id

RSS_LIMIT_MB = 150
TIMEOUT_S = 2
CLOSE_DEADLINE_S = TIMEOUT_S + 8  # generous: a loaded 2-core CI box
MIB = 1024 * 1024
MIN_ATTACK_S = 2.0  # the sender runs at least this long, however quick the attack


@dataclass
class Server:
    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_mb(self) -> float:
        return float(psutil.Process(self.proc.pid).memory_info().rss) / MIB


@contextlib.contextmanager
def _serving(
    postgres_admin_dsn: str, template: str, redis_url: str, log_dir: Path, **overrides: str
) -> Iterator[Server]:
    dsn = asyncio.run(create_database(postgres_admin_dsn, template))
    port, metrics_port = free_port(), free_port()
    env = {
        **base_env(dsn, redis_url),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "error",
        "HEADER_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "BODY_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "KEEPALIVE_TIMEOUT_SECONDS": str(TIMEOUT_S),
        "METRICS_PORT": str(metrics_port),
        **overrides,
    }
    log = log_dir / f"serve-{port}.log"
    proc = spawn_command(["serve", "--port", str(port)], env, log)
    server = Server(port, metrics_port, proc, log)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", process=proc, log=log)
        yield server
    finally:
        stop_process(proc)
        asyncio.run(drop_database(postgres_admin_dsn, dsn))


@pytest.fixture(scope="module", autouse=True)
def _enough_descriptors() -> None:
    """1,000 client sockets need a soft open-files limit above the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < 1500:
        pytest.skip(f"the hard open-files limit ({hard}) is too low for 1,000 connections")


@pytest.fixture(scope="module")
def server(
    postgres_admin_dsn: str, template_database: str, redis_url: str, tmp_path_factory: Any
) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("hostile")
    with _serving(postgres_admin_dsn, template_database, redis_url, log_dir) as running:
        yield running


def _refused(server: Server) -> dict[str, float]:
    """`webhook_listener_refused_total` by reason, from the internal listener: what the server
    did, whether or not the attacking client got to read the answer before the close."""
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("webhook_listener_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


def _delta(before: dict[str, float], after: dict[str, float], reason: str) -> float:
    return after.get(reason, 0.0) - before.get(reason, 0.0)


# --- the parallel sender and the RSS sampler -------------------------------------------------


@dataclass
class Deliveries:
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _deliver(server: Server, stop: threading.Event, out: Deliveries) -> None:
    """Signed events one after another on a keep-alive connection, as Stripe would send them.

    Runs in a thread of its own, so the attack's client work in the test's event loop does not
    count as server latency.
    """
    url = f"http://127.0.0.1:{server.port}/webhooks/stripe"
    with httpx.Client(timeout=30) as client:
        while not stop.wait(0.02):
            body = encode_event(event_envelope("customer.created", {"id": new_id("cus")}))
            started = time.perf_counter()
            response = client.post(url, content=body, headers={"Stripe-Signature": sign(body)})
            out.latencies.append(time.perf_counter() - started)
            out.statuses.append(response.status_code)


async def _sample_rss(server: Server, stop: asyncio.Event, peaks: list[float]) -> None:
    while not stop.is_set():
        peaks.append(server.rss_mb())
        await asyncio.sleep(0.05)


async def _under_attack(server: Server, attack: Callable[[], Awaitable[None]], name: str) -> None:
    """Run `attack` beside real deliveries; check the deliveries and the process's memory."""
    stop, sending = asyncio.Event(), threading.Event()
    deliveries, rss = Deliveries(), [server.rss_mb()]
    sampler = asyncio.create_task(_sample_rss(server, stop, rss))
    sender = asyncio.create_task(asyncio.to_thread(_deliver, server, sending, deliveries))
    try:
        await asyncio.gather(attack(), asyncio.sleep(MIN_ATTACK_S))
    finally:
        stop.set()
        sending.set()
        await asyncio.gather(sampler, sender)
    after = server.rss_mb()
    print(
        f"\nabuse[{name}]: deliveries={len(deliveries.statuses)} "
        f"p99={deliveries.p99_ms():.1f}ms rss_peak={max(rss):.0f}MB rss_after={after:.0f}MB"
    )
    assert deliveries.statuses, "the sender delivered nothing during the attack"
    assert set(deliveries.statuses) == {200}, deliveries.statuses
    assert max(rss) < RSS_LIMIT_MB, f"RSS peaked at {max(rss):.0f} MB"
    assert after < RSS_LIMIT_MB, f"RSS stayed at {after:.0f} MB"
    assert server.proc.poll() is None, "the server died"


# --- raw connections -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _connections(server: Server, count: int) -> AsyncIterator[list[Conn]]:
    conns = [await Conn.open(server.port) for _ in range(count)]
    try:
        yield conns
    finally:
        for conn in conns:
            conn.writer.close()


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    answer: bytes = b""

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.writer.write(data)
            await self.writer.drain()
        except ConnectionError:
            return False
        return True

    async def closed_by_server(self) -> bool:
        """Read to EOF (or a reset): the server closed; keeps what it answered."""
        try:
            while chunk := await self.reader.read(65536):
                self.answer += chunk
        except ConnectionError:
            pass
        return True

    def status(self) -> int | None:
        line = self.answer.split(b"\r\n", 1)[0].split(b" ")
        return int(line[1]) if len(line) > 1 and line[1].isdigit() else None


async def _all_closed(conns: list[Conn], *, drip: bytes | None = None) -> None:
    """Every connection closed by the server before the deadline, dripping bytes meanwhile."""

    async def one(conn: Conn) -> None:
        # Drip one byte every 0.5 s until the server answers or closes, then read to EOF.
        while drip is not None and await conn.send(drip):
            try:
                async with asyncio.timeout(0.5):
                    chunk = await conn.reader.read(65536)
            except TimeoutError:
                continue
            except ConnectionError:
                return
            conn.answer += chunk
            break
        await conn.closed_by_server()

    async with asyncio.timeout(CLOSE_DEADLINE_S):
        await asyncio.gather(*(one(conn) for conn in conns))


_HEAD = b"POST /webhooks/stripe HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"


# --- the scenarios ---------------------------------------------------------------------------


async def test_slow_headers_are_answered_408_and_closed(server: Server) -> None:
    async def attack() -> None:
        async with _connections(server, 200) as conns:
            for conn in conns:
                await conn.send(_HEAD)
            await _all_closed(conns, drip=b"x")
            assert {conn.status() for conn in conns} <= {408, None}

    before = _refused(server)
    await _under_attack(server, attack, "slow headers x200")
    assert _delta(before, _refused(server), "header_timeout") == 200


async def test_slow_bodies_are_answered_408_and_closed(server: Server) -> None:
    async def attack() -> None:
        async with _connections(server, 50) as conns:
            for conn in conns:
                await conn.send(_HEAD + b"content-length: 100000\r\n\r\n{")
            await _all_closed(conns, drip=b" ")
            assert {conn.status() for conn in conns} <= {408, None}

    before = _refused(server)
    await _under_attack(server, attack, "slow bodies x50")
    assert _delta(before, _refused(server), "body_timeout") == 50


async def test_1_mib_headers_are_refused_431(server: Server) -> None:
    huge = b"x-filler: " + b"a" * MIB  # unfinished: httptools would buffer it all

    async def attack() -> None:
        async with _connections(server, 100) as conns:
            await asyncio.gather(*(conn.send(_HEAD + huge) for conn in conns))
            await _all_closed(conns)
            assert {conn.status() for conn in conns} <= {431, None}

    before = _refused(server)
    await _under_attack(server, attack, "1 MiB header x100")
    assert _delta(before, _refused(server), "header_too_large") == 100


async def test_300_near_cap_bodies_held_open_stay_bounded(server: Server) -> None:
    body = b"{" + b" " * (MIB - 64)  # just under MAX_BODY_BYTES, never finished

    async def attack() -> None:
        async with _connections(server, 300) as conns:
            head = _HEAD + b"content-length: %d\r\n\r\n" % MIB
            await asyncio.gather(*(conn.send(head + body) for conn in conns))
            await _all_closed(conns)
            statuses = {conn.status() for conn in conns}
            assert statuses <= {408, 503, None}, statuses

    before = _refused(server)
    await _under_attack(server, attack, "300 held 1 MiB bodies")
    after = _refused(server)
    over_budget = _delta(before, after, "body_bytes_in_flight")
    assert over_budget > 0, "MAX_BODY_BYTES_IN_FLIGHT never refused a body"
    assert over_budget + _delta(before, after, "body_timeout") == 300


async def test_1000_idle_connections_are_closed(server: Server) -> None:
    async def attack() -> None:
        async with _connections(server, 1000) as conns:
            await _all_closed(conns)
            assert {conn.status() for conn in conns} <= {408, None}

    before = _refused(server)
    await _under_attack(server, attack, "1000 idle connections")
    assert _delta(before, _refused(server), "header_timeout") == 1000


async def test_metrics_flood_on_the_public_port_costs_nothing(server: Server) -> None:
    statuses: list[int] = []

    async def flood() -> None:
        url = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(150):
                for path in ("/metrics", "/readyz"):
                    statuses.append((await client.get(url + path)).status_code)

    async def attack() -> None:
        await asyncio.gather(*(flood() for _ in range(8)))

    await _under_attack(server, attack, "metrics flood 8x300")
    assert set(statuses) == {404}


async def test_metrics_and_readyz_are_on_the_internal_listener_only(server: Server) -> None:
    public = f"http://127.0.0.1:{server.port}"
    internal = f"http://127.0.0.1:{server.metrics_port}"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(public + "/metrics")).status_code == 404
        assert (await client.get(public + "/readyz")).status_code == 404
        assert (await client.get(public + "/healthz")).status_code == 200
        metrics = await client.get(internal + "/metrics")
        assert metrics.status_code == 200
        assert "webhook_requests_total" in metrics.text
        ready = await client.get(internal + "/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "postgres": "ok", "redis": "ok", "grants": "ok"}
        assert (await client.post(internal + "/metrics")).status_code == 405
        assert (await client.get(internal + "/webhooks/stripe")).status_code == 404


def test_connections_beyond_max_connections_are_answered_503(
    postgres_admin_dsn: str, template_database: str, redis_url: str, tmp_path: Path
) -> None:
    with _serving(
        postgres_admin_dsn, template_database, redis_url, tmp_path, MAX_CONNECTIONS="16"
    ) as small:
        asyncio.run(_beyond_max_connections(small))


async def _beyond_max_connections(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}/webhooks/stripe"
    body = encode_event(event_envelope("customer.created", {"id": new_id("cus")}))
    headers = {"Stripe-Signature": sign(body)}
    async with _connections(server, 16) as idle:
        async with httpx.AsyncClient(timeout=10) as client:
            refused = await client.post(url, content=body, headers=headers)
        assert refused.status_code == 503
        await _all_closed(idle)  # the header timeout frees the slots
    async with httpx.AsyncClient(timeout=10) as client:
        accepted = await client.post(url, content=body, headers=headers)
    assert accepted.status_code == 200
