"""What the ops commands print with: a console sized for logs, JSON, quiet HTTP clients,
and the one way event data reaches the terminal (`cell`, `row`, `plain`).

Event data is attacker-controlled text (a Stripe customer chose the metadata, the email,
the type of a forged-but-stored event). Printed through Rich, `[reverse]…[/reverse]` would
restyle the output and an ESC sequence could rewrite the screen, hide a line or set the
window title. So every value from an event, a ledger row or a check is shown as a Rich
`Text` (never parsed as markup) with control characters — C0, DEL, C1, line and paragraph
separators and bidi overrides — shown as visible `\\xNN` / `\\uNNNN` escapes.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any, TypeAlias

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from webhook_worker.ops import values

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def console() -> Console:
    """stdout at call time (so capture works); wide when not a terminal, so ids never wrap."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


# In one line: every control character. In a block (indented JSON): all but the newline.
_CONTROL_INLINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_BLOCK = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(value: object, *, block: bool = False) -> str:
    """`value` as text with every control character made visible (`-` for None)."""
    text = "-" if value is None else str(value)
    return (_CONTROL_BLOCK if block else _CONTROL_INLINE).sub(_visible, text)


def cell(value: object, style: str = "") -> Text:
    """A table cell or line part that Rich prints as is: no markup, no control character."""
    return value if isinstance(value, Text) else Text(plain(value), style=style)


def row(table: Table, *values: object) -> None:
    """`table.add_row` with every value through `cell`."""
    table.add_row(*(cell(value) for value in values))


def print_json(value: Any) -> None:
    text = orjson.dumps(values.jsonable(value), option=orjson.OPT_INDENT_2).decode()
    print(plain(text, block=True))


def quiet_http_logs() -> None:
    """httpx logs each request at info on stdout; the command prints its own result."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
