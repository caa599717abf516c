"""The internal listener (`internal.py`): /metrics and /readyz off the public port, one per
port however many processes try to bind it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import base_env, sign, wait_for
from tests.worker_support import spawn_worker, stop_worker, worker_env
from webhook_worker import internal_listener as internal
from webhook_worker import job_queue as queue
from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.dev.embedded import free_port
from webhook_worker.errors import ConfigError
from webhook_worker.ops.sample_events import encode_event, event_envelope, new_id


@pytest.fixture
async def listening(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[tuple[Settings, str]]:
    settings = make_settings(METRICS_PORT=str(free_port()))
    pool = await store.create_pool(settings)
    redis = queue.connect_redis_lazily(settings)
    server = await internal.start(settings, lambda: internal.readiness(pool, redis), "test")
    assert server is not None
    try:
        yield settings, f"http://127.0.0.1:{settings.metrics_port}"
    finally:
        await internal.stop(server)
        await redis.aclose()
        await pool.close()


async def test_metrics_readyz_and_healthz_are_served(listening: tuple[Settings, str]) -> None:
    _, base = listening
    async with httpx.AsyncClient(timeout=10) as client:
        metrics = await client.get(f"{base}/metrics")
        ready = await client.get(f"{base}/readyz")
        health = await client.get(f"{base}/healthz")
        unknown = await client.get(f"{base}/webhooks/stripe")
        posted = await client.post(f"{base}/metrics")
    assert metrics.status_code == 200 and "webhook_requests_total" in metrics.text
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "postgres": "ok", "redis": "ok", "grants": "ok"}
    assert health.json() == {"status": "ok"}
    assert (unknown.status_code, posted.status_code) == (404, 405)


async def test_the_default_host_is_loopback() -> None:
    assert Settings.from_env({}).metrics_host == "127.0.0.1"


async def test_a_second_process_on_the_same_port_leaves_it_to_the_first(
    listening: tuple[Settings, str],
) -> None:
    settings, _ = listening

    async def never_called() -> tuple[bool, dict[str, str]]:
        raise AssertionError("the second listener must not serve")

    assert await internal.start(settings, never_called, "sibling") is None


async def test_readyz_is_503_when_redis_is_down(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        METRICS_PORT=str(free_port()), REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    pool = await store.create_pool(settings)
    redis = queue.connect_redis_lazily(settings)
    server = await internal.start(settings, lambda: internal.readiness(pool, redis), "test")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            ready = await client.get(f"http://127.0.0.1:{settings.metrics_port}/readyz")
    finally:
        await internal.stop(server)
        await redis.aclose()
        await pool.close()
    assert ready.status_code == 503
    assert ready.json()["redis"] == "unavailable"


async def test_nothing_listens_without_metrics_port(settings: Settings) -> None:
    async def never_called() -> tuple[bool, dict[str, str]]:
        raise AssertionError

    assert await internal.start(settings, never_called, "test") is None


async def test_a_worker_process_serves_its_internal_listener_on_loopback(
    database_url: str, clean_redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = worker_env(database_url, clean_redis_url, METRICS_PORT=str(port))
    proc = spawn_worker(env, tmp_path / "worker.log")
    base = f"http://127.0.0.1:{port}"

    async def ready() -> httpx.Response | None:
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"{base}/readyz")
        except httpx.ConnectError:
            return None  # not listening yet
        return response if response.status_code == 200 else None

    try:
        response = await wait_for(ready)
        assert response.json() == {"ready": True, "postgres": "ok", "redis": "ok", "grants": "ok"}
        async with httpx.AsyncClient(timeout=5) as client:
            assert "worker_events_total" in (await client.get(f"{base}/metrics")).text
    finally:
        stop_worker(proc)


async def test_an_address_of_another_host_is_a_configuration_error(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(METRICS_HOST="192.0.2.1", METRICS_PORT=str(free_port()))

    async def never_called() -> tuple[bool, dict[str, str]]:
        raise AssertionError

    with pytest.raises(ConfigError, match=r"METRICS_HOST=192\.0\.2\.1"):
        await internal.start(settings, never_called, "test")


def _accepted_total(exposition: str) -> float:
    prefix = 'webhook_requests_total{outcome="accepted",reason=""}'
    return sum(
        float(line.split()[-1]) for line in exposition.splitlines() if line.startswith(prefix)
    )


async def test_several_receiver_workers_share_one_listener_that_adds_them_up(
    database_url: str, clean_redis_url: str, tmp_path: Path
) -> None:
    """`serve --workers 2`: one process binds METRICS_PORT, and its /metrics counts the
    requests both workers answered (PROMETHEUS_MULTIPROC_DIR, set by `serve`)."""
    port, metrics_port = free_port(), free_port()
    env = {
        **base_env(database_url, clean_redis_url),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LOG_FORMAT": "json",
        "METRICS_PORT": str(metrics_port),
    }
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhook_worker.cli", "serve", "--port", str(port),
             "--workers", "2"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/webhooks/stripe"
    try:
        await wait_for(lambda: _both_workers_started(proc, log), timeout=60)
        for _ in range(20):  # a connection each, so the kernel spreads them over both workers
            body = encode_event(event_envelope("customer.created", {"id": new_id("cus")}))
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(
                    url, content=body, headers={"Stripe-Signature": sign(body)}
                )
            assert response.status_code == 200

        async def accepted() -> int:
            async with httpx.AsyncClient(timeout=10) as client:
                metrics = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
            return _accepted_total(metrics.text)

        # A worker counts a request once its answer is on the way: poll, then check exactly.
        await wait_for(lambda: _at_least(accepted(), 20), timeout=10)
        assert await accepted() == 20
        assert "internal_listener_shared" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def _at_least(count: Awaitable[int], expected: int) -> bool:
    return bool(await count >= expected)


def _both_workers_started(proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text()[-3000:]
    return log.read_text().count("receiver_started") >= 2
