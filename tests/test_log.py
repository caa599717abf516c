"""Logging: secrets, signatures and emails never reach a rendered log line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable

import pytest
import structlog

from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.log import configure_logging, get_logger, lines_per_iteration, redact_text

SECRET = "whsec_supersecretvalue123456"
SIGNATURE = "t=1700000000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"
EMAIL = "Jane.Doe+shop@Example.com"


@pytest.fixture
def captured(log_stream: io.StringIO) -> io.StringIO:
    return log_stream


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_structlog_line_is_redacted(captured: io.StringIO) -> None:
    get_logger("test").info(
        "event_received",
        email=EMAIL,
        note=f"customer {EMAIL} paid with secret {SECRET}",
        stripe_signature=SIGNATURE,
        header=SIGNATURE,
        nested={"customer_email": EMAIL, "secrets": [SECRET]},
        event_id="evt_123",
    )
    text = captured.getvalue()
    for needle in (
        SECRET,
        "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
        EMAIL,
    ):
        assert needle not in text
    assert "jane.doe" not in text.lower()
    line = _lines(captured)[0]
    assert line["event"] == "event_received"
    assert line["event_id"] == "evt_123"


def test_stdlib_loggers_are_redacted_too(captured: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("user %s used %s", EMAIL, SECRET)
    logging.getLogger("arq.worker").info("header was %s", SIGNATURE)
    text = captured.getvalue()
    assert EMAIL not in text
    assert SECRET not in text
    assert "5257a869e7ecebeda" not in text
    assert [line["logger"] for line in _lines(captured)] == ["uvicorn.error", "arq.worker"]


def test_dsn_passwords_are_masked() -> None:
    assert redact_text("postgresql://app:hunter2@db:5432/x") == "postgresql://app:***@db:5432/x"


def test_e2e_bypass_is_stamped_on_every_line() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", e2e_bypass=True)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        get_logger("test").info("event_received")
        logging.getLogger("uvicorn.error").info("started")
        lines = _lines(stream)
        assert len(lines) == 2
        assert all("NOT verified" in str(line["signature_bypass"]) for line in lines)
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []


@pytest.mark.parametrize("echo", [True, False])
async def test_db_echo_logs_each_statement_at_debug_but_never_its_arguments(
    captured: io.StringIO, make_settings: Callable[..., Settings], echo: bool
) -> None:
    sql_logger = logging.getLogger("webhook_worker.sql")
    sql_logger.setLevel(logging.DEBUG)
    try:
        pool = await store.create_pool(make_settings(DB_ECHO=str(echo).lower()))
        async with store.acquire(pool, "testing DB_ECHO") as conn:
            assert await conn.fetchval("SELECT lower($1::text)", EMAIL) == EMAIL.lower()
        await pool.close()
    finally:
        sql_logger.setLevel(logging.NOTSET)
    statements = [line for line in _lines(captured) if line["event"] == "sql"]
    if not echo:
        assert statements == []
        return
    echoed = [line for line in statements if "lower($1::text)" in str(line["statement"])]
    assert len(echoed) == 1 and echoed[0]["level"] == "debug"
    assert isinstance(echoed[0]["duration_ms"], float)
    assert "jane.doe" not in captured.getvalue().lower()


def test_a_logger_used_before_a_reconfigure_follows_the_new_format_and_level() -> None:
    """Loggers are cached on first use: the renderer and the level must still be the latest
    `configure_logging`'s (a worker module's `log` is bound once, tests reconfigure)."""
    logger = get_logger("test.cached")
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging("console", "info")
        logging.getLogger().handlers[0].setStream(first)  # type: ignore[attr-defined]
        logger.info("first_line", n=1)
        configure_logging("json", "warning")
        logging.getLogger().handlers[0].setStream(second)  # type: ignore[attr-defined]
        logger.info("below_the_level")
        logger.warning("second_line", n=2, note=f"from {EMAIL}")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []
    assert "first_line" in first.getvalue() and not first.getvalue().startswith("{")
    [line] = _lines(second)
    assert line["event"] == "second_line" and line["level"] == "warning" and line["n"] == 2
    assert EMAIL not in second.getvalue()


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_a_services_lines_go_out_once_per_loop_iteration_in_order() -> None:
    """`lines_per_iteration`: the lines of one iteration are one write when its callbacks have
    run; a stdlib record (uvicorn, arq) first writes what is held back; leaving writes the
    rest; another thread's line is written at once."""
    stream = _CountingStream()
    logger, stdlib = get_logger("test.batched"), logging.getLogger("test.stdlib")
    loop = asyncio.get_running_loop()
    try:
        configure_logging("json", "info")
        logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
        with lines_per_iteration():
            logger.info("first", n=1)
            logger.info("second", n=2)
            assert stream.getvalue() == ""  # held back while the iteration runs
            iteration_over = loop.create_future()
            loop.call_soon(iteration_over.set_result, None)  # runs after the flush
            await iteration_over
            assert stream.writes == 1 and [line["n"] for line in _lines(stream)] == [1, 2]
            logger.info("third", n=3)
            stdlib.warning("stdlib_line")
            assert [line["event"] for line in _lines(stream)][-2:] == ["third", "stdlib_line"]
            await asyncio.to_thread(logger.info, "from_a_thread")
            logger.info("fourth", n=4)
            assert _lines(stream)[-1]["event"] == "from_a_thread"
        assert _lines(stream)[-1]["event"] == "fourth"  # written on leaving
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []
