"""What the ops commands print with: a console sized for logs, JSON, quiet HTTP clients."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, TypeAlias

import orjson
from rich.console import Console

from webhook_worker.ops import values

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def console() -> Console:
    """stdout at call time (so capture works); wide when not a terminal, so ids never wrap."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def print_json(value: Any) -> None:
    print(orjson.dumps(values.jsonable(value), option=orjson.OPT_INDENT_2).decode())


def quiet_http_logs() -> None:
    """httpx logs each request at info on stdout; the command prints its own result."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
