"""Start-up helpers shared by the test suite and the benchmarks, never used by the service.

- Databases: a DSN with another database name, a database created (empty, from a template,
  or migrated) and dropped through an admin connection.
- Processes: a `webhook-worker` command as a child in its own session, stopped politely.
- Readiness: wait for a condition, or for an HTTP endpoint to answer 200, with a deadline.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from webhook_worker.db import migrations


class NotReadyError(AssertionError):
    """A condition was not met before its deadline (an AssertionError, so that a test waiting
    on it fails rather than errors)."""


# --- databases -----------------------------------------------------------------------------


def dsn_with_database(dsn: str, database: str) -> str:
    """`dsn` pointing at another database of the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def _admin_execute(admin_dsn: str, *statements: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


async def create_database(
    admin_dsn: str, template: str | None = None, *, name: str | None = None, replace: bool = False
) -> str:
    """A new database (empty, or copied from `template`); returns its DSN. Without `name` it
    gets a unique one; with `replace`, a database of that name is dropped first."""
    name = name or f"ww_test_{uuid.uuid4().hex[:12]}"
    suffix = f' TEMPLATE "{template}"' if template else ""
    drop = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'] if replace else []
    await _admin_execute(admin_dsn, *drop, f'CREATE DATABASE "{name}"{suffix}')
    return dsn_with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the database `dsn` points at, cutting off its sessions."""
    name = urlsplit(dsn).path.lstrip("/")
    await _admin_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def migrate_database(dsn: str) -> None:
    """Apply every migration to the database at `dsn`."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrations.migrate_up(conn)
    finally:
        await conn.close()


async def create_migrated_database(admin_dsn: str, name: str) -> str:
    """A fresh, migrated database `name` (an older one of that name is dropped); its DSN."""
    dsn = await create_database(admin_dsn, name=name, replace=True)
    await migrate_database(dsn)
    return dsn


# --- processes -----------------------------------------------------------------------------


def spawn_command(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`webhook-worker ARGS…` as a child in its own session (signals stay local), output
    appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "webhook_worker.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """SIGTERM to each (all at once, so they shut down side by side), then SIGKILL to any
    that has not exited within `timeout` seconds."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    for proc in running:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    stop_processes([proc], timeout)


# --- readiness -----------------------------------------------------------------------------


async def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 - a polling deadline, not a cancellation scope
    interval: float = 0.05,
) -> Any:
    """Poll an async or sync predicate until it returns a truthy value, or fail at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise NotReadyError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def _log_tail(log: Path | None) -> str:
    return "\n" + log.read_text(errors="replace")[-2000:] if log and log.exists() else ""


def wait_http_ok(
    url: str,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> None:
    """Block until GET `url` answers 200; fail early if `process` (the server) exits, and
    at the deadline. Failures quote the tail of `log`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise NotReadyError(
                f"process for {url} exited with {process.returncode}{_log_tail(log)}"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)  # polling a child's start-up with a deadline, not synchronising
    raise NotReadyError(f"{url} did not answer within {timeout}s{_log_tail(log)}")
