"""Redis with a password: the service reaches its queue through a Redis ACL user, and a
client without the password gets nothing (docs/deployment.md: Redis must have AUTH or an ACL
user). The embedded Redis here requires a password, as `make run`'s does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from arq.constants import job_key_prefix
from redis.exceptions import AuthenticationError, ResponseError

from webhook_worker import job_queue as queue
from webhook_worker.config import Settings
from webhook_worker.errors import TransientError

USER, PASSWORD = "webhooks", "acl-password-0123456789abcdef"


@pytest.fixture
async def acl_user(clean_redis_url: str) -> AsyncIterator[str]:
    """An ACL user with a password and the whole command set on every key; its URL."""
    admin = aioredis.from_url(clean_redis_url)
    await admin.acl_setuser(
        USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"]
    )
    port = urlsplit(clean_redis_url).port
    try:
        yield f"redis://{USER}:{PASSWORD}@127.0.0.1:{port}/0"
    finally:
        await admin.acl_deluser(USER)
        await admin.aclose()


async def test_the_queue_works_through_an_acl_user_with_a_password(acl_user: str) -> None:
    redis = await queue.create_redis(Settings(redis_url=acl_user))
    try:
        assert await redis.acl_whoami() == USER
        [job_id] = await queue.enqueue_event_jobs(redis, ["evt_acl_1"])
        assert await redis.exists(job_key_prefix + job_id) == 1
        assert await queue.queue_depth(redis) == 1
    finally:
        await redis.aclose()


async def test_a_wrong_or_missing_password_gets_nothing(acl_user: str) -> None:
    wrong = acl_user.replace(PASSWORD, "not-the-password")
    with pytest.raises(TransientError):
        await queue.create_redis(Settings(redis_url=wrong), retries=0)
    port = urlsplit(acl_user).port
    anonymous = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.zcard(Settings().queue_name)
    finally:
        await anonymous.aclose()
