"""What the ops commands print with: a console sized for logs, JSON, quiet HTTP clients,
and tables that keep ids and statuses whole at any width."""

from __future__ import annotations

import argparse
import logging
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


def print_json(value: Any) -> None:
    print(orjson.dumps(values.jsonable(value), option=orjson.OPT_INDENT_2).decode())


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
    """A table no wider than `width` whose required columns are never cut."""
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
