"""How a second terminal finds the services `make run` (`webhook-worker dev`) started.

`dev` writes `services.json` (0600: the URLs carry the folder's passwords) to its data folder
while it runs and deletes it on exit — only its own: a file another `dev` wrote is left.
A CLI command run with no DATABASE_URL / REDIS_URL, in development (APP_ENV unset or
`development`), fills the missing ones from that file when the `dev` process that wrote it
is still alive, and says so on stderr: a newcomer's `webhook-worker events list` just works,
and nobody is surprised about which database it read. Production (APP_ENV=production set
explicitly) never looks.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import MutableMapping
from pathlib import Path

from webhook_worker.config import redact_url

FILE_NAME = "services.json"


def write(folder: Path, env: dict[str, str], console_url: str | None) -> Path:
    path = folder / FILE_NAME
    data = {
        "pid": os.getpid(),
        "DATABASE_URL": env["DATABASE_URL"],
        "REDIS_URL": env["REDIS_URL"],
        "console_url": console_url,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    path.chmod(0o600)
    return path


def remove(folder: Path) -> None:
    """Delete the file if this process wrote it; another process's file is left alone."""
    path = folder / FILE_NAME
    try:
        owner = json.loads(path.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return
    if owner == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def apply(environ: MutableMapping[str, str]) -> str | None:
    """Fill DATABASE_URL / REDIS_URL from a running `dev`'s file; the note for stderr."""
    if environ.get("APP_ENV", "development") != "development":
        return None
    missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not environ.get(name)]
    if not missing or any(environ.get(n) for n in ("ASYNC_DATABASE_URL", "SYNC_DATABASE_URL")):
        return None
    path = Path(environ.get("DATA_DIR", ".data")).resolve() / FILE_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not _alive(data.get("pid")):
        return None
    for name in missing:
        if isinstance(data.get(name), str):
            environ[name] = data[name]
    environ.setdefault("APP_ENV", "development")
    used = ", ".join(f"{name}={redact_url(environ[name])}" for name in missing)
    return f"using the services of the running `make run` ({path}): {used}"
