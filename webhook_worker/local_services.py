"""How a second terminal finds the services `make run` (`webhook-worker dev`) started.

`dev` writes `services.json` (0600: the URLs may carry passwords) to its data folder
(`DATA_DIR`, default `.data`) while it runs and deletes it on exit (only its own: a file
another `dev` wrote is left). Every other entry point (`webhook-worker …`,
`deploy_hotfix.py`) loads its settings through `load_settings`: with no DATABASE_URL /
REDIS_URL, in development (APP_ENV unset or `development`), the missing ones come from that
file when the `dev` process that wrote it is still alive, and the note says so on stderr: a
newcomer's `webhook-worker events list` just works, and nobody is surprised about which
database it read. `webhook-worker env` prints them for a shell (`psql`, scripts).
Production (APP_ENV=production set explicitly) never looks.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from webhook_worker.config import Settings, redact_url

FILE_NAME = "services.json"
URL_NAMES = ("DATABASE_URL", "REDIS_URL")


def write(folder: Path, env: Mapping[str, str], console_url: str | None) -> Path:
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


def running(data_dir: str) -> tuple[Path, dict[str, str]] | None:
    """The services file of a live `make run` under `data_dir`, and its URLs."""
    path = Path(data_dir).resolve() / FILE_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not _alive(data.get("pid")):
        return None
    urls = {name: data[name] for name in URL_NAMES if isinstance(data.get(name), str)}
    return (path, urls) if urls else None


def load_settings(environ: Mapping[str, str]) -> tuple[Settings, str | None]:
    """`Settings.from_env`, with the URLs `make run` left out filled from its services file
    (development only); the note for stderr says which were used."""
    settings = Settings.from_env(environ)
    if "APP_ENV" in settings.given and settings.app_env != "development":
        return settings, None
    aliases = ("ASYNC_DATABASE_URL", "SYNC_DATABASE_URL")
    missing = [name for name in URL_NAMES if name not in settings.given]
    if not missing or any(name in settings.given for name in aliases):
        return settings, None
    found = running(settings.data_dir)
    if found is None:
        return settings, None
    path, urls = found
    filled = {name: urls[name] for name in missing if name in urls}
    if not filled:
        return settings, None
    origin = f"make run's services ({path})"
    origins = dict.fromkeys(filled, origin)
    if "APP_ENV" not in settings.given:
        origins["APP_ENV"] = "make run (development)"
    settings = Settings.from_env({**environ, **filled, "APP_ENV": "development"})
    settings = settings.with_overrides(given=settings.given - origins.keys(), origins=origins)
    used = ", ".join(f"{name}={redact_url(value)}" for name, value in filled.items())
    return settings, f"using the services of the running `make run` ({path}): {used}"
