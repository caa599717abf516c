"""Redis at start-up: is REDIS_URL usable by this service, and if not, why and how to fix it.

`serve` and `work` call `check_redis` before they start. A Redis that cannot be reached is
no reason to refuse starting (the receiver stores events and the sweeper enqueues them
later), but a Redis that answers and refuses — a wrong password, an ACL user without a
command arq needs or without the `arq:*` keys, a database index the server does not have —
would fail every enqueue and every poll for ever. Those are retried for
REDIS_STARTUP_TIMEOUT_SECONDS (someone may be fixing the ACL during the deploy), then the
process exits non-zero with the cause and the fix.

The probe runs each command the service and arq use (`REQUIRED_COMMANDS`) on keys of its
own under the queue's name (`<QUEUE_NAME>:probe:…`), inside the `arq:*` pattern; what it
writes expires within seconds. docs/deployment.md lists the same commands and patterns.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    RedisError,
)

from webhook_worker.config import Settings, redact_url
from webhook_worker.errors import ConfigError

# Every command the receiver, the worker (arq's poll, job start and finish, health check,
# start-up log), the sweeper and the ops commands send. ACL categories are too wide or too
# narrow (arq's start-up needs INFO, which `-@dangerous` takes away), so they are named.
REQUIRED_COMMANDS: tuple[str, ...] = (
    "ping",
    "info",
    "dbsize",
    "select",
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    "get",
    "set",
    "setex",
    "psetex",
    "del",
    "exists",
    "expire",
    "pexpire",
    "incrby",  # redis-py sends INCR as INCRBY
    "zadd",
    "zrem",
    "zcard",
    "zscore",
    "zrange",
    "zrangebyscore",
    "zremrangebyscore",
)
# arq's keys (arq:job:*, arq:in-progress:*, arq:retry:*, arq:result:*, arq:abort,
# arq:health-check) and the queue (QUEUE_NAME, `arq:queue:<database>` by default).
KEY_PATTERN = "arq:*"
_RETRY_EVERY_S = 1.0


class RedisMisconfigured(ConfigError):
    """Redis answers but refuses what this service needs; the message names the fix."""


def acl_setuser_line(user: str = "webhook_worker", password: str = "<password>") -> str:  # noqa: S107
    """The ACL for a user with exactly what the service needs (docs/deployment.md)."""
    commands = " ".join(f"+{name}" for name in REQUIRED_COMMANDS)
    return f"ACL SETUSER {user} on >{password} resetkeys ~{KEY_PATTERN} -@all {commands}"


def diagnose(exc: BaseException, settings: Settings) -> str | None:
    """The cause and the fix of a Redis refusal; None for a Redis that is merely away."""
    url = redact_url(settings.redis_url or "")
    text = str(exc)
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError) or any(
        marker in text for marker in ("WRONGPASS", "NOAUTH", "invalid password")
    ):
        return (
            f"Redis at {url} refused the credentials ({type(exc).__name__}: {text}); set the "
            "user name and password of the Redis ACL user (or requirepass) in REDIS_URL, e.g. "
            "REDIS_URL=redis://webhook_worker:<password>@host:6379/0"
        )
    if isinstance(exc, NoPermissionError) or "NOPERM" in text:
        return (
            f"the Redis user of REDIS_URL lacks a command or key this service needs ({text}); "
            f"give it exactly: {acl_setuser_line(_user(settings))} (docs/deployment.md, Redis)"
        )
    if "DB index is out of range" in text or "Invalid Database" in text:
        database = urlsplit(settings.redis_url or "").path.lstrip("/") or "0"
        return (
            f"REDIS_URL selects database {database}, which the Redis at {url} does not have "
            "(its `databases` setting is lower); use a database it has, e.g. "
            "REDIS_URL=redis://host:6379/0, and give each deployment its own QUEUE_NAME"
        )
    return None


def _user(settings: Settings) -> str:
    return urlsplit(settings.redis_url or "").username or "webhook_worker"


async def probe(client: Redis, queue_name: str) -> None:
    """Send each of REQUIRED_COMMANDS once, on probe keys that expire by themselves."""
    key = f"{queue_name}:probe:{uuid.uuid4().hex}"
    await client.ping()
    await client.info(section="server")
    await client.dbsize()
    async with client.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        await pipe.exists(key)
        await pipe.zscore(key + ":z", "x")
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.psetex(key, 5000, b"1")
        pipe.zadd(key + ":z", {"x": 1})
        pipe.pexpire(key + ":z", 5000)
        await pipe.execute()
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(key)
        pipe.incr(key + ":n")
        pipe.expire(key + ":n", 5)
        pipe.setex(key + ":s", 5, b"1")
        pipe.set(key + ":p", b"1", px=5000)
        pipe.zcard(key + ":z")
        pipe.zrange(key + ":z", 0, -1)
        pipe.zrangebyscore(key + ":z", 0, 2, start=0, num=1)
        pipe.zremrangebyscore(key + ":z", 5, 6)
        pipe.zrem(key + ":z", "x")
        pipe.delete(key, key + ":n", key + ":s", key + ":p", key + ":z")
        await pipe.execute()
    await client.execute_command("UNWATCH")  # type: ignore[no-untyped-call]


async def check_redis(
    settings: Settings,
    *,
    on_retry: Callable[[str], None] | None = None,
    retry_every: float = _RETRY_EVERY_S,
) -> str | None:
    """Return None when Redis is fit, or a warning when it cannot be reached now (start
    anyway). Raise RedisMisconfigured when it refused for REDIS_STARTUP_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + settings.redis_startup_timeout_seconds
    while True:
        client: Redis = Redis.from_url(
            settings.require_redis(), socket_connect_timeout=2, socket_timeout=5
        )
        try:
            await probe(client, settings.queue_name)
            return None
        except (RedisError, OSError) as exc:
            cause = diagnose(exc, settings)
            if cause is None:
                return (
                    f"Redis at {redact_url(settings.redis_url or '')} is not reachable now "
                    f"({type(exc).__name__}); starting anyway, events wait in Postgres"
                )
            if time.monotonic() >= deadline:
                raise RedisMisconfigured(
                    f"{cause} (still refused after REDIS_STARTUP_TIMEOUT_SECONDS="
                    f"{settings.redis_startup_timeout_seconds})"
                ) from None
            if on_retry is not None:
                on_retry(cause)
        finally:
            await client.aclose()
        await asyncio.sleep(retry_every)
