"""Event data reaches the terminal as text: Rich markup shown literally, control characters
shown as visible escapes, in every CLI table and detail view (`webhook_worker.ops.terminal`).

Event data is attacker-controlled: the type, the reason, the error text a handler copied
from the payload and the payload itself. The CLI runs with colours forced on
(FORCE_COLOR), as on an operator's terminal, and the rendered text is read back.
"""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.ops_support import insert_event, run_cli
from webhook_worker.ops.terminal import plain

MARKUP = "[reverse]FAKE[/reverse]"
ESCAPES = "\x1b[2J\x1b]0;owned\x07\u202eright"  # clear screen, window title, bidi override
REVERSE_SGR = "\x1b[7m"  # what Rich prints for [reverse]


def test_plain_makes_every_control_character_visible() -> None:
    assert plain(f"{MARKUP}{ESCAPES}\nx") == (
        "[reverse]FAKE[/reverse]\\x1b[2J\\x1b]0;owned\\x07\\u202eright\\x0ax"
    )
    assert plain('{\n  "a": "\x9b"\n}', block=True) == '{\n  "a": "\\x9b"\n}'


@pytest.fixture
async def hostile_event(db: asyncpg.Connection) -> str:
    event_id = await insert_event(
        db, status="failed", event_type=f"{MARKUP}.type", error=f"{MARKUP} {ESCAPES}"
    )
    await db.execute(
        "UPDATE stripe_events SET status_reason = $2, "
        "raw_data = jsonb_set(raw_data, '{data,object,metadata}', $3::jsonb) "
        "WHERE event_id = $1",
        event_id,
        f"{MARKUP}{ESCAPES}",
        json.dumps({"credits": MARKUP, "note": ESCAPES}),
    )
    return event_id


@pytest.mark.parametrize(
    "command",
    [
        ["events", "list"],
        ["events", "show", "{id}"],
        ["events", "show", "{id}", "--raw"],
        ["replay", "--status", "failed", "--dry-run"],
        ["stats"],
    ],
)
async def test_event_data_is_shown_literally_in_every_table_and_view(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    clean_redis_url: str,
    hostile_event: str,
    command: list[str],
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": clean_redis_url,
        "APP_ENV": "test",
        "FORCE_COLOR": "1",  # styles on, as on a terminal: markup would show
        "COLUMNS": "250",
    }
    args = [part.format(id=hostile_event) for part in command]
    result = await run_cli(capsys, monkeypatch, env, *args)
    assert result.code == 0, result.err
    shown = result.out
    assert MARKUP in shown  # the markup is text…
    assert REVERSE_SGR not in shown  # …and never restyles anything
    assert "\x1b[2J" not in shown and "\x1b]0;" not in shown and "\x07" not in shown
    assert "\u202e" not in shown
    if command[0] == "events" and "--raw" not in command:
        assert "\\x1b[2J" in shown  # the escape is visible, not run
