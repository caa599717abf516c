"""The spend phase: the application's `credits_spend` (migration 0025) against the ledger
ceilings the credit phase measures, on the same statement driver (pgbench, 32 clients).

- Ceiling: advisory lock + balance update + ledger insert in one transaction
  (`ceilings.measure_ledger`), on random users or one hot user.
- Service: one autocommit `SELECT * FROM credits_spend(user, 1, key, 'bench')` per
  transaction, each with a fresh idempotency key, on random users or the hot one.
- Tail: spends on random users at half the repetition's random rate, paced by pgbench
  (`--rate`), each spend's latency counted from its scheduled start (schedule lag + run
  time), so a stall counts against every spend scheduled behind it; p99 of those.
  The first WARM_UP_SECONDS are reported apart (`cold_p99_ms`): pgbench opens fresh
  connections, and a backend's first call of credits_spend compiles its PL/pgSQL functions
  and plans (~100 ms, once per connection); 32 of them at once made the tail of the whole
  run (p99 107-183 ms with, 5-15 ms without, the same run). An application calls through
  pooled connections that paid this once.
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
WARM_UP_SECONDS = 1.0
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


def p99_at_rate(dsn: str, rate: float, seconds: float, clients: int = CLIENTS) -> dict[str, float]:
    """p99 latency (ms) of one spend on random users, paced at `rate` spends/s, for
    `seconds` after the connections' warm-up (`p99_ms`) and during it (`cold_p99_ms`)."""
    with tempfile.TemporaryDirectory(prefix="ww-spend-") as folder:
        script = Path(folder) / "script.sql"
        script.write_text(_spend_script(False))
        prefix = Path(folder) / "spend"
        subprocess.run(
            [
                _pgbench_bin(), "-n", "-M", "prepared", "-c", str(clients),
                "-j", str(min(clients, 2)),
                "-T", str(max(1, round(seconds)) + round(WARM_UP_SECONDS)),
                "-R", str(max(1, round(rate))), "-l", f"--log-prefix={prefix}",
                "-f", str(script), dsn,
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        spends = []  # (scheduled start in s, latency in ms)
        for log in Path(folder).glob("spend.*"):
            for line in log.read_text().splitlines():
                fields = line.split()
                # client, transaction no, time (µs), script, epoch, µs, schedule lag (µs)
                lag = int(fields[6]) if len(fields) > 6 else 0
                end = int(fields[4]) + int(fields[5]) / 1e6
                latency_s = (int(fields[2]) + lag) / 1e6
                spends.append((end - latency_s, latency_s * 1000))
    return tail_figures(spends, WARM_UP_SECONDS)


def tail_figures(spends: list[tuple[float, float]], warm_up: float) -> dict[str, float]:
    """p99 of the spends (scheduled start in s, latency in ms) that started `warm_up`
    seconds or more after the first one (`p99_ms`), and of the earlier ones (`cold_p99_ms`)."""
    assert spends, "pgbench logged no transaction"
    warm_from = min(start for start, _ in spends) + warm_up
    warm = [ms for start, ms in spends if start >= warm_from]
    cold = [ms for start, ms in spends if start < warm_from]
    return {"p99_ms": _p99(warm), "cold_p99_ms": _p99(cold)}


def _p99(latencies: list[float]) -> float:
    if len(latencies) < 2:
        return max(latencies, default=0.0)
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]
