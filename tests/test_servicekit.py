"""The start-up helpers the tests and the benchmarks share."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from webhook_worker.dev.servicekit import (
    NotReadyError,
    create_database,
    create_migrated_database,
    drop_database,
    dsn_with_database,
    stop_processes,
    wait_for,
    wait_http_ok,
)


def test_a_dsn_names_another_database_and_keeps_the_rest() -> None:
    dsn = "postgresql://u:p@127.0.0.1:5433/postgres?sslmode=disable"
    assert (
        dsn_with_database(dsn, "other") == "postgresql://u:p@127.0.0.1:5433/other?sslmode=disable"
    )


async def test_a_migrated_database_replaces_one_of_that_name_and_copies_as_a_template(
    postgres_admin_dsn: str,
) -> None:
    name = f"ww_servicekit_{uuid.uuid4().hex[:8]}"
    dsn = await create_migrated_database(postgres_admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    await conn.execute("INSERT INTO users (email) VALUES ('left@example.com')")
    await conn.close()
    dsn = await create_migrated_database(postgres_admin_dsn, name)  # replaced: empty again
    copy = await create_database(postgres_admin_dsn, name)
    try:
        for database in (dsn, copy):
            conn = await asyncpg.connect(database)
            try:
                assert await conn.fetchval("SELECT count(*) FROM users") == 0
            finally:
                await conn.close()
    finally:
        await drop_database(postgres_admin_dsn, copy)
        await drop_database(postgres_admin_dsn, dsn)
    admin = await asyncpg.connect(postgres_admin_dsn)
    try:
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = ANY($1::text[])",
            [name, copy.rsplit("/", 1)[1]],
        )
    finally:
        await admin.close()
    assert left == 0


async def test_waiting_returns_the_condition_value_or_fails_as_an_assertion() -> None:
    assert await wait_for(lambda: 42, timeout=1) == 42
    with pytest.raises(AssertionError, match=r"not met within 0\.1s"):
        await wait_for(lambda: False, timeout=0.1, interval=0.01)


def test_waiting_for_http_fails_early_with_the_log_when_the_server_exits(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("address already in use\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(NotReadyError, match="exited with 3\naddress already in use"):
        wait_http_ok("http://127.0.0.1:9/healthz", process=proc, log=log, timeout=30)


IGNORE_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_stopping_terminates_each_and_kills_one_that_ignores_the_signal() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c", IGNORE_TERM], stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    stop_processes([polite, stubborn], timeout=0.5)
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    stubborn.stdout.close()
