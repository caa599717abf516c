"""What a person at a terminal sees: tables at 80 and 120 columns, help with defaults,
`config` and `env`. Real Postgres and Redis through `webhook_worker.cli.main`."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import base_env
from tests.ops_support import CliResult, insert_event, run_cli
from webhook_worker.cli import build_parser

Cli = Callable[..., Awaitable[CliResult]]

LONG_ERROR = (
    "user_not_found: no user matched the session's client_reference_id, metadata or email; "
    "create or fix the user, then replay\nTraceback line that must not show in a list"
)


@pytest.fixture
def env(database_url: str, clean_redis_url: str) -> dict[str, str]:
    return base_env(database_url, clean_redis_url)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> Cli:
    async def run(*args: str, columns: int | None = None, **extra: str) -> CliResult:
        more = {**extra, **({"COLUMNS": str(columns)} if columns else {})}
        return await run_cli(capsys, monkeypatch, {**env, **more}, *args)

    return run


@pytest.mark.parametrize("columns", [80, 120])
async def test_events_list_keeps_ids_and_statuses_whole(
    cli: Cli, db: asyncpg.Connection, columns: int
) -> None:
    events = {
        await insert_event(db, status="failed", error=LONG_ERROR): "failed",
        await insert_event(
            db, event_type="charge.dispute.funds_reinstated", status="processing"
        ): "processing",
        await insert_event(db, event_type="invoice_payment.paid", status="completed"): "completed",
    }
    result = await cli("events", "list", columns=columns)
    assert result.code == 0
    lines = result.out.splitlines()
    assert max(len(line) for line in lines) <= columns
    for event_id, status in events.items():
        row = next(line for line in lines if event_id in line)  # whole, on one line
        assert re.search(rf"│ {status}\s+│", row), row
    assert "Traceback line" not in result.out  # an error is one line in a list
    failed_rows = [line for line in lines if "user_not_found" in line]
    assert len(failed_rows) == 1
    assert "--wide shows all" in result.out  # something was left out at this width

    wide = await cli("events", "list", "--wide", columns=columns)
    assert "charge.dispute.funds_reinstated" in wide.out and "received (UTC)" in wide.out
    assert "create or fix the user, then replay" in wide.out
    assert "Traceback line" not in wide.out


async def test_events_show_prints_the_error_whole(cli: Cli, db: asyncpg.Connection) -> None:
    event_id = await insert_event(db, status="failed", error=LONG_ERROR)
    result = await cli("events", "show", event_id, columns=80)
    flat = " ".join(result.out.split())
    assert "create or fix the user, then replay" in flat
    assert "Traceback line that must not show in a list" in flat


async def test_replay_dry_run_prints_no_audit_line(cli: Cli, db: asyncpg.Connection) -> None:
    await insert_event(db, status="failed")
    result = await cli("replay", "--status", "failed", "--dry-run", columns=80)
    assert result.code == 0 and "would replay 1 event(s)" in result.out
    assert "ops_replayed" not in result.out + result.err


def _every_action(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _every_action(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            found.append((" ".join(path), action))
    return found


def test_every_option_has_help_and_says_its_default() -> None:
    missing = []
    for command, action in _every_action(build_parser()):
        name = "/".join(action.option_strings) or action.dest
        takes_value = action.nargs != 0
        optional = bool(action.option_strings) or action.nargs in ("?", "*")
        if not action.help:
            missing.append(f"{command} {name}: no help")
        elif takes_value and optional and "default" not in action.help:
            missing.append(f"{command} {name}: help does not say the default")
    assert not missing, "\n".join(missing)


async def test_dev_help_says_it_starts_the_console(cli: Cli) -> None:
    result = await cli("dev", "--help", columns=100)
    assert "console" in result.out and "worker" in result.out
    migrate = await cli("migrate", "--help", columns=100)
    assert "status: list applied and pending" in " ".join(migrate.out.split())


async def test_config_redacts_secrets_and_says_where_values_came_from(cli: Cli) -> None:
    token = "t0ken" * 8
    result = await cli(
        "config",
        "--json",
        OPS_TOKEN=token,
        OPS_USERS=f"alice:{'a1' * 20}",
        STRIPE_API_KEY="rk_test_supersecretvalue1234",
        CENTS_PER_CREDIT="100",
    )
    assert result.code == 0
    assert token not in result.out and "a1a1a1a1" not in result.out
    assert "supersecretvalue" not in result.out and "whsec_" not in result.out
    rows = {row["name"]: row for row in json.loads(result.out)}
    assert rows["OPS_TOKEN"]["value"] == "set (hidden)"
    assert rows["OPS_USERS"]["value"] == "alice (tokens hidden)"
    assert rows["OPS_TOKEN"]["source"] == "environment"
    assert rows["MAX_TRIES"] == {
        "name": "MAX_TRIES",
        "value": "8",
        "source": "default",
        "section": "main",
    }
    assert rows["CREDIT_PRICES"]["source"] == "CENTS_PER_CREDIT (deprecated)"
    assert rows["CREDIT_PRICES"]["value"] == "usd:100"
    assert rows["STRIPE_MODE"]["source"] == "default for APP_ENV=test"
    assert "setting_deprecated" in result.err and "CREDIT_PRICES=usd:" in result.err


async def test_env_prints_exports_of_a_running_make_run_and_the_cli_uses_them(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    from webhook_worker import local_services

    without_urls = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    isolated = {**without_urls, "APP_ENV": "development", "DATA_DIR": str(tmp_path)}
    nothing = await run_cli(capsys, monkeypatch, isolated, "env")
    assert nothing.code == 1 and "make run" in nothing.err

    local_services.write(tmp_path, env, None)  # this test process plays the running `dev`
    result = await run_cli(capsys, monkeypatch, isolated, "env")
    assert result.code == 0
    assert result.out.strip() == (
        f"export DATABASE_URL={env['DATABASE_URL']} REDIS_URL={env['REDIS_URL']}"
    )
    config = await run_cli(capsys, monkeypatch, isolated, "config", "--json")
    rows = {row["name"]: row for row in json.loads(config.out)}
    assert rows["REDIS_URL"]["source"].startswith("make run's services")
    listing = await run_cli(capsys, monkeypatch, isolated, "events", "list", "--json")
    assert listing.code == 0 and "using the services of the running `make run`" in listing.err
    assert os.environ.get("DATABASE_URL") is None  # nothing written back to the environment


async def test_the_reconcile_hint_matches_the_mode(cli: Cli) -> None:
    test_mode = await cli("reconcile", "--dry-run")
    assert test_mode.code == 2
    assert "STRIPE_API_KEY=rk_test_" in test_mode.err and "rk_live_" not in test_mode.err
    live = await cli(
        "reconcile", "--dry-run", APP_ENV="production", LOG_FORMAT="console", STRIPE_MODE="live"
    )
    assert live.code == 2 and "STRIPE_API_KEY=rk_live_" in live.err


async def test_stats_keeps_event_types_whole_at_80_columns(
    cli: Cli, db: asyncpg.Connection
) -> None:
    await insert_event(db, event_type="checkout.session.async_payment_succeeded", status="failed")
    result = await cli("stats", columns=80)
    assert result.code == 0
    assert max(len(line) for line in result.out.splitlines()) <= 80
    row = next(line for line in result.out.splitlines() if "async_payment_succeeded" in line)
    assert "checkout.session.async_payment_succeeded" in row
    assert "failed" in result.out  # the first status column kept
