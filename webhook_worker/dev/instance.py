"""One `webhook-worker dev` (`make run`) per data folder, and its ports free before it starts.

The first `dev` takes an exclusive `flock` on `<folder>/dev.lock` and writes its pid and
ports there; the kernel drops the lock when the process ends, however it ends, so a crash
never leaves a stale claim. A second `dev` on the same folder fails to take the lock and
refuses at once, before starting anything, naming the first one:
`already running (pid N): receiver :8000, console :8081`.

Then every port it is about to use (receiver, console, the embedded Postgres and Redis) is
tried before any service starts; a busy one is named.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "dev.lock"


class AlreadyRunning(Exception):
    """Another `dev` holds this data folder."""


class PortBusy(Exception):
    """A port `dev` needs is taken."""


def _describe(info: object) -> str:
    if not isinstance(info, dict):
        return "already running"
    parts = [f"receiver :{info.get('port')}"]
    if info.get("console_port"):
        parts.append(f"console :{info['console_port']}")
    return f"already running (pid {info.get('pid')}): {', '.join(parts)}"


@dataclass
class Claim:
    """This process's hold on a data folder; `release` (or exit) ends it."""

    fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)


def claim(folder: Path, port: int, console_port: int) -> Claim:
    """Hold `folder` for this process, or raise AlreadyRunning naming the holder."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        try:
            info = json.loads(os.read(fd, 4096) or b"null")
        except ValueError:
            info = None
        os.close(fd)
        raise AlreadyRunning(_describe(info)) from None
    info = {"pid": os.getpid(), "port": port, "console_port": console_port}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return Claim(fd)


def check_ports(ports: dict[str, int]) -> None:
    """Raise PortBusy naming the first of `ports` (what → port) something listens on."""
    for what, port in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                raise PortBusy(
                    f"port {port} ({what}) is busy: stop what listens there, or choose another port"
                ) from None
