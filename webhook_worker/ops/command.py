"""What every ops subcommand runs in: its async handler under `asyncio.run` (argparse
calls plain functions) and one small pool, closed when the command ends."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from webhook_worker.config import Settings
from webhook_worker.db import store

AsyncHandler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def sync(handler: AsyncHandler) -> Callable[[argparse.Namespace, Settings], int]:
    return lambda args, settings: asyncio.run(handler(args, settings))


@contextlib.asynccontextmanager
async def connection(settings: Settings) -> AsyncIterator[store.Connection]:
    pool = await store.create_pool(settings, min_size=1, max_size=2)
    try:
        async with store.acquire(pool, "running an ops command") as conn:
            yield conn
    finally:
        await pool.close()
