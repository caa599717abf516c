"""What the ops commands print with: a console sized for logs, JSON, quiet HTTP clients,
tables that keep ids and statuses whole at any width, and the one way event data reaches
the terminal (`cell`, `row`, `plain`, and `fit_table`, which uses them).

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from webhook_worker.ops import values

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# A rich table's cost per column (one space of padding each side, one border) and overall.
_COLUMN_COST = 3
_TABLE_COST = 1
_MIN_WRAPPED = 12
_WIDE = 10_000


def console(*, wide: bool = False) -> Console:
    """stdout at call time (so capture works), as wide as the terminal (`COLUMNS` when not
    one, else 80); `wide`: unbounded, for `--wide` (the terminal wraps long lines)."""
    return Console(highlight=False, width=_WIDE if wide else None)


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


def when(value: Any) -> str:
    """A timestamp as the tables show it, to the second; `-` for none."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def quiet_http_logs() -> None:
    """httpx logs each request at info on stdout; the command prints its own result."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def one_line(text: str | None) -> str:
    """An error as a list shows it: its first line (the column cuts it to fit)."""
    if not text:
        return ""
    first, *rest = text.strip().splitlines() or [""]
    return first + (" …" if rest else "")


@dataclass(frozen=True)
class Column:
    """`required` columns (ids, statuses) are always shown whole; the others, by `priority`
    (lowest first), whole when they fit, `fold` ones folded and `cut` ones cut to one line
    into what is left, and dropped otherwise (`--wide` shows every column whole). They are
    shown in the order given."""

    header: str
    required: bool = False
    wrap: Literal["no", "fold", "cut"] = "no"
    justify: Literal["left", "right"] = "left"
    priority: int = 0


def fit_table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    width: int,
    wide: bool = False,
) -> Table:
    """A table no wider than `width` whose required columns are never cut; every cell is
    event data shown as text (`plain`)."""
    rows = [[plain(value) for value in row] for row in rows]
    natural = [
        max([len(col.header), *(len(row[i]) for row in rows)]) for i, col in enumerate(columns)
    ]
    chosen: dict[int, int] = {i: natural[i] for i, col in enumerate(columns) if col.required}

    def room() -> int:
        return width - _TABLE_COST - sum(w + _COLUMN_COST for w in chosen.values())

    for i in sorted(range(len(columns)), key=lambda i: columns[i].priority):
        if i in chosen:
            continue
        if wide or natural[i] + _COLUMN_COST <= room():
            chosen[i] = natural[i]
        elif columns[i].wrap != "no" and room() - _COLUMN_COST >= _MIN_WRAPPED:
            chosen[i] = room() - _COLUMN_COST
    hidden = [col.header for i, col in enumerate(columns) if i not in chosen]
    caption = f"not shown at this width: {', '.join(hidden)} (--wide shows all)" if hidden else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    keep = sorted(chosen)
    for i in keep:
        col = columns[i]
        table.add_column(
            col.header,
            width=chosen[i],
            no_wrap=col.wrap != "fold",
            overflow="fold" if col.wrap == "fold" else "ellipsis",
            justify=col.justify,
        )
    for row in rows:  # event data as plain text, never parsed as Rich markup
        table.add_row(*(Text(row[i]) for i in keep))
    return table


def print_table(
    title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], *, wide: bool = False
) -> None:
    """`fit_table` at the terminal's width; wider only when the required columns need it."""
    out = console(wide=wide)
    table = fit_table(title, columns, rows, width=out.width, wide=wide)
    needed = _TABLE_COST + sum((c.width or 0) + _COLUMN_COST for c in table.columns)
    if needed > out.width:
        out = console(wide=True)
    out.print(table)
