"""`webhook-worker config` and `webhook-worker env`: what this process would run with.

`config` prints every variable of docs/configuration.md with its value in effect (secrets
and DSN passwords redacted) and where it came from; `env` prints the URLs of a running
`make run` as shell exports, for tools outside the CLI (`psql`, scripts).
"""

from __future__ import annotations

import shlex
import sys

from rich.markup import escape
from rich.table import Table

from webhook_worker import config_reference, local_services
from webhook_worker.config import Settings
from webhook_worker.exit_codes import EXIT_OK, EXIT_PROBLEM
from webhook_worker.ops import terminal

_TITLES = {
    "main": "main settings",
    "advanced": "advanced (docs/configuration.md says why)",
    "deprecated": "deprecated (still accepted; use the replacement)",
}


def print_config(settings: Settings, *, as_json: bool) -> int:
    rows = config_reference.effective(settings)
    if as_json:
        terminal.print_json(rows)
        return EXIT_OK
    console = terminal.console()
    for section, title in _TITLES.items():
        table = Table(title=title, title_justify="left")
        table.add_column("variable", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("source", overflow="fold")
        for row in rows:
            if row["section"] == section:
                table.add_row(row["name"], escape(row["value"]), escape(row["source"]))
        if table.row_count:
            console.print(table)
    return EXIT_OK  # deprecated names in use were logged at start-up (`setting_deprecated`)


def print_env(settings: Settings) -> int:
    found = local_services.running(settings.data_dir)
    if found is None:
        print(
            f"no running `make run` found in {settings.data_dir}/ (start it with `make run`, "
            "or set DATA_DIR to its folder)",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    _, urls = found
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in urls.items())
    print(f"export {exports}")
    return EXIT_OK
