"""The server's own ceilings, measured with pgbench and the service's statement shapes: a
single-row INSERT of a ~3 KB jsonb event, and advisory lock + ledger insert + balance
update over USERS users or on one hot user."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import tempfile
from pathlib import Path

import asyncpg

from benchmarks.services import USERS


def _pgbench_bin() -> str:
    spec = importlib.util.find_spec("pgserver")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "pginstall" / "bin" / "pgbench"
        if candidate.exists():
            return str(candidate)
    return "pgbench"


def _pgbench(dsn: str, script: str, clients: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script)
    out = subprocess.run(
        [
            _pgbench_bin(), "-n", "-M", "prepared", "-c", str(clients),
            "-j", str(min(clients, 2)), "-T", str(max(1, round(seconds))), "-f", handle.name, dsn,
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    os.unlink(handle.name)
    match = re.search(r"tps = ([\d.]+)", out.stdout)
    assert match, out.stdout + out.stderr
    return float(match.group(1))


def _insert_script() -> str:
    """One event per transaction, as a plain receiver would; the ~3 KB text is parsed to jsonb
    on every insert (it sits in `bench_payload` because pgbench reads `:word` as a variable)."""
    return (
        "\\set id random(1, 1000000000000)\n"
        "INSERT INTO stripe_events (event_id, type, livemode, raw_data) "
        "SELECT 'evt_bench_' || :id || '_' || :client_id, 'checkout.session.completed', "
        "false, payload::jsonb FROM bench_payload ON CONFLICT (event_id) DO NOTHING;\n"
    )


def _ledger_script(hot: bool) -> str:
    user = "\\set uid 1\n" if hot else f"\\set uid random(1, {USERS})\n"
    return (
        user + "BEGIN;\n"
        "SELECT pg_advisory_xact_lock(1, :uid);\n"
        "UPDATE users SET credits_balance = credits_balance + 5, updated_at = now() "
        "WHERE id = :uid RETURNING credits_balance AS bal \\gset\n"
        "INSERT INTO credit_transactions (user_id, amount, balance_after, transaction_type, "
        "description) VALUES (:uid, 5, :bal, 'BONUS', 'bench');\n"
        "COMMIT;\n"
    )


async def _store_payload(dsn: str, payload: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_payload (payload text NOT NULL)")
        await conn.execute("TRUNCATE bench_payload")
        await conn.execute("INSERT INTO bench_payload VALUES ($1)", payload)
    finally:
        await conn.close()


def prepare_insert(dsn: str, payload: str) -> None:
    """The event body the INSERT ceiling stores, kept in the phase's database."""
    asyncio.run(_store_payload(dsn, payload))


def measure_insert(dsn: str, clients: int, seconds: float) -> float:
    """INSERTs per second into the phase's `stripe_events` (the table the receiver writes)."""
    return _pgbench(dsn, _insert_script(), clients, seconds)


def measure_ledger(dsn: str, hot: bool, seconds: float, clients: int = 32) -> float:
    """Ledger credits per second on the phase's `users` and `credit_transactions`."""
    return _pgbench(dsn, _ledger_script(hot), clients, seconds)
