"""The internal listener (`internal.py`): /metrics and /readyz off the public port, one per
port however many processes try to bind it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for
from tests.worker_support import spawn_worker, stop_worker, worker_env
from webhook_worker import internal, queue, store
from webhook_worker.config import Settings
from webhook_worker.embedded import free_port
from webhook_worker.errors import ConfigError


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
    assert ready.json() == {"ready": True, "postgres": "ok", "redis": "ok"}
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
        assert response.json() == {"ready": True, "postgres": "ok", "redis": "ok"}
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
