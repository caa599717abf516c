"""The spend phase: the application's `credits_spend` (migration 0025) against the ledger
ceilings the credit phase measures, on the same statement driver (pgbench, 32 clients).

- Ceiling: advisory lock + balance update + ledger insert in one transaction
  (`ceilings.measure_ledger`), on random users or one hot user.
- Service: one autocommit `SELECT * FROM credits_spend(user, 1, key, 'bench')` per
  transaction, each with a fresh idempotency key, on random users or the hot one.
- Tail: spends on random users at half the repetition's random rate, paced by pgbench
  (`--rate`), each spend's latency counted from its scheduled start (schedule lag + run
  time), so a stall counts against every spend scheduled behind it; p99 of those.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import tempfile
from pathlib import Path

import asyncpg

from benchmarks.ceilings import _pgbench, _pgbench_bin
from benchmarks.services import USERS

CLIENTS = 32
# Every user can spend for the whole phase: the balance never runs out, so every call
# writes (an `insufficient` answer would be cheaper and flatter the figure).
FUNDING = 10**12


def _spend_script(hot: bool) -> str:
    user = "\\set uid 1\n" if hot else f"\\set uid random(1, {USERS})\n"
    return (
        user + "\\set n random(1, 1000000000000000)\n"
        "SELECT status FROM credits_spend(:uid, 1, 'bench-' || :client_id || '-' || :n, "
        "'bench');\n"
    )


async def _fund(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO credit_transactions (user_id, amount, balance_after, "
                "transaction_type, description) "
                "SELECT id, $1::bigint, credits_balance + $1::bigint, 'BONUS', 'bench funding' "
                "FROM users",
                FUNDING,
            )
            await conn.execute(
                "UPDATE users SET credits_balance = credits_balance + $1::bigint", FUNDING
            )
    finally:
        await conn.close()


def fund_users(dsn: str) -> None:
    """A BONUS row of FUNDING credits per user (balance = ledger sum stays true)."""
    asyncio.run(_fund(dsn))


def measure_spend(dsn: str, hot: bool, seconds: float, clients: int = CLIENTS) -> float:
    """Spends per second through `credits_spend`."""
    return _pgbench(dsn, _spend_script(hot), clients, seconds)


def p99_at_rate(dsn: str, rate: float, seconds: float, clients: int = CLIENTS) -> float:
    """p99 latency (ms) of one spend on random users, paced at `rate` spends/s."""
    with tempfile.TemporaryDirectory(prefix="ww-spend-") as folder:
        script = Path(folder) / "script.sql"
        script.write_text(_spend_script(False))
        prefix = Path(folder) / "spend"
        subprocess.run(
            [
                _pgbench_bin(), "-n", "-M", "prepared", "-c", str(clients),
                "-j", str(min(clients, 2)), "-T", str(max(1, round(seconds))),
                "-R", str(max(1, round(rate))), "-l", f"--log-prefix={prefix}",
                "-f", str(script), dsn,
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        latencies = []
        for log in Path(folder).glob("spend.*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                # client, transaction no, time (µs), script, epoch, µs, schedule lag (µs)
                lag = int(fields[6]) if len(fields) > 6 else 0
                latencies.append((int(fields[2]) + lag) / 1000)
    assert latencies, "pgbench logged no transaction"
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]
