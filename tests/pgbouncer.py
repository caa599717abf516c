"""A real PgBouncer (Debian's `pgbouncer` package, `make pgbouncer`) in transaction pooling
mode in front of a test Postgres, started from a temporary folder (never the system service).

Every database of the upstream server is reachable through it under the same name
(`* = host=… port=…`); clients log in without a password (auth_type trust), and PgBouncer
logs in to the server with the password the auth file lists for the role. As root it
drops to the embedded Postgres's system user, since PgBouncer refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from webhook_worker.dev.embedded import _run_as, _wait_for_port, free_port

BINARY = Path("/usr/sbin/pgbouncer")


def require_binary() -> str:
    if not BINARY.exists():
        raise AssertionError(
            f"{BINARY} is missing: the pooler tests need Debian's pgbouncer; run `make "
            "pgbouncer` (or sudo apt-get install -y pgbouncer)"
        )
    return str(BINARY)


@dataclass
class PgBouncer:
    """PgBouncer on 127.0.0.1:`port`, pool_mode = transaction, for `upstream` (a DSN)."""

    folder: Path
    upstream: str
    roles: Iterable[str] = ("postgres",)
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = None

    def _ini(self) -> str:
        parts = urlsplit(self.upstream)
        return "\n".join(
            [
                "[databases]",
                f"* = host={parts.hostname} port={parts.port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {self.folder / 'userlist.txt'}",
                "pool_mode = transaction",
                "max_client_conn = 1000",
                # Few server connections per database/role pair: clients really share them.
                "default_pool_size = 4",
                "reserve_pool_size = 0",
                "ignore_startup_parameters = extra_float_digits",
                f"logfile = {self.folder / 'pgbouncer.log'}",
                f"pidfile = {self.folder / 'pgbouncer.pid'}",
                "",
            ]
        )

    def url(self, database: str | None = None, user: str | None = None) -> str:
        """`dsn` with its host and port replaced by PgBouncer's (and database/user if given)."""
        parts = urlsplit(self.upstream)
        user = user or parts.username or "postgres"
        path = f"/{database}" if database else parts.path
        return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{self.port}", path=path))

    def through(self, dsn: str) -> str:
        """The same database and role as `dsn`, reached through PgBouncer."""
        parts = urlsplit(dsn)
        return self.url(parts.path.lstrip("/"), parts.username)

    def add_roles(self, *roles: str) -> None:
        self.roles = (*self.roles, *roles)
        self._write_files()
        if self._process is not None:
            # SIGHUP: PgBouncer re-reads its config and auth file.
            self._process.send_signal(1)

    def _write_files(self) -> None:
        # Postgres asks every role for its SCRAM password (tests/conftest.py gives each the
        # upstream's): PgBouncer logs in to the server with the plain-text one listed here.
        password = urlsplit(self.upstream).password or ""
        (self.folder / "pgbouncer.ini").write_text(self._ini())
        (self.folder / "userlist.txt").write_text(
            "".join(f'"{role}" "{password}"\n' for role in dict.fromkeys(self.roles))
        )

    def start(self) -> PgBouncer:
        binary = require_binary()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_files()
        user = _run_as()
        if user:
            entry = pwd.getpwnam(user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            for path in self.folder.iterdir():
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._process = subprocess.Popen(
            [binary, str(self.folder / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "stderr.log").open("wb"),
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
        _wait_for_port(self.port, 15, "pgbouncer", self.folder / "pgbouncer.log")
        return self

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
