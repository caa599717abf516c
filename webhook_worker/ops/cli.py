"""Ops subcommands of `webhook-worker`: events, replay, stats, verify, send-test-event, prune.

One module a command, each a thin argparse front end over its ops command module (`listing`,
`replay`, `stats`, `verify`, `event_sender`, `prune`); `cli.py` registers `OPS_REGISTRARS`,
in the order `--help` lists them. Exit codes as in `cli.py`: 0 ok, 1 the command ran and
found a problem (event not found, failed check, non-200 answer), 2 bad usage or
configuration. `--json` prints one JSON document on stdout for scripts; otherwise `rich`
tables.
"""

from __future__ import annotations

from collections.abc import Callable

from webhook_worker.ops import terminal
from webhook_worker.ops.events_cli import add_events
from webhook_worker.ops.prune_cli import add_prune
from webhook_worker.ops.replay_cli import add_replay
from webhook_worker.ops.send_test_event_cli import add_send_test_event
from webhook_worker.ops.stats_cli import add_stats
from webhook_worker.ops.verify_cli import add_verify

OPS_REGISTRARS: list[Callable[[terminal.Subparsers], None]] = [
    add_events,
    add_replay,
    add_stats,
    add_verify,
    add_send_test_event,
    add_prune,
]
