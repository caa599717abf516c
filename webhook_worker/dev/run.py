"""`webhook-worker dev`: the whole service on one machine with one command.

Starts embedded Postgres and Redis under a data folder when DATABASE_URL / REDIS_URL are
unset, applies migrations, then runs the receiver and one worker as child processes until
Ctrl-C. A development secret is created once and printed, so `send-test-event` and the
Stripe CLI (`stripe listen --forward-to`) can sign against it.

- One `dev` per folder (`instance.claim`): a second refuses before starting anything, and
  every port is checked before the first service starts.
- The embedded Postgres and Redis get a random password per folder (`postgres.password`,
  `redis.password`, mode 0600) and Postgres uses SCRAM: no other local user gets in.
- Only what this process started is stopped on the way out, and only its own
  `services.json` is deleted.
- Ctrl-C (or SIGTERM) stops the children (each in its own session, sent SIGTERM), then the
  services, with no traceback; a second Ctrl-C during that is ignored.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from webhook_worker import local_services
from webhook_worker.config import redact_url
from webhook_worker.db import migrations
from webhook_worker.dev import instance
from webhook_worker.dev.embedded import EmbeddedPostgres, EmbeddedRedis, free_port


def _machine_secret(path: Path, new_value: str) -> str:
    """A secret of this machine's dev set-up: created once (mode 0600), then read back."""
    if not path.exists():
        path.write_text(f"{new_value}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _dev_secret(data_dir: Path) -> str:
    return _machine_secret(data_dir / "dev_webhook_secret", f"whsec_dev{secrets.token_hex(16)}")


def _dev_ops_token(data_dir: Path) -> str:
    """A console token for this machine, created once like the dev secret."""
    return _machine_secret(data_dir / "dev_ops_token", secrets.token_hex(32))


def _service_password(data_dir: Path, name: str) -> str:
    """The embedded service's password for this folder, made once (mode 0600)."""
    return _machine_secret(data_dir / f"{name}.password", secrets.token_urlsafe(24))


def _port_file(data_dir: Path, name: str, default: int) -> int:
    """Reuse the same embedded ports across runs so printed URLs stay valid."""
    path = data_dir / f"{name}.port"
    if path.exists():
        return int(path.read_text())
    path.write_text(str(default))
    return default


async def _migrate(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [f"{m.version:04d}_{m.name}" for m in await migrations.migrate_up(conn)]
    finally:
        await conn.close()


def _metrics_env(folder: Path, env: dict[str, str]) -> None:
    """The internal metrics listener for the receiver and the worker, as in production: one
    METRICS_PORT (whichever binds first serves /metrics and /readyz) and a shared
    PROMETHEUS_MULTIPROC_DIR, emptied at each start, so /metrics shows both processes."""
    if not env.get("METRICS_PORT"):
        from webhook_worker.dev.embedded import free_port

        env["METRICS_PORT"] = str(_port_file(folder, "metrics", free_port()))
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        samples = folder / "metrics"
        shutil.rmtree(samples, ignore_errors=True)
        samples.mkdir(mode=0o700)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(samples)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a supervisor, `kill`) stops everything the way Ctrl-C does."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _ignore_interrupts() -> None:
    """While stopping: a second Ctrl-C must not cut the clean-up short with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_dev(port: int = 8000, data_dir: str = ".data", console_port: int = 8081) -> int:
    _interrupt_on_sigterm()
    folder = Path(data_dir).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        held = instance.claim(folder, port, console_port)
    except instance.AlreadyRunning as exc:
        print(f"webhook-worker dev: {exc} (data in {folder})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    try:
        return _run_claimed(folder, port, console_port)
    finally:
        held.release()


def _embedded(
    folder: Path, env: dict[str, str]
) -> tuple[EmbeddedPostgres | None, EmbeddedRedis | None]:
    """The embedded services this run needs (not started yet)."""
    pg = redis = None
    if not env.get("DATABASE_URL"):
        pg = EmbeddedPostgres(
            folder / "postgres",
            _port_file(folder, "postgres", free_port()),
            password=_service_password(folder, "postgres"),
        )
    if not env.get("REDIS_URL"):
        redis = EmbeddedRedis(
            folder / "redis",
            _port_file(folder, "redis", free_port()),
            password=_service_password(folder, "redis"),
        )
    return pg, redis


def _run_claimed(folder: Path, port: int, console_port: int) -> int:
    env = dict(os.environ)
    env.setdefault("APP_ENV", "development")
    env.setdefault("LOG_FORMAT", "console")
    services: list[EmbeddedPostgres | EmbeddedRedis] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        pg, redis = _embedded(folder, env)
        ports = {"receiver": port, "console": console_port}
        if pg is not None and not pg.is_running():
            ports["embedded Postgres"] = pg.port
        if redis is not None:
            ports["embedded Redis"] = redis.port
        try:
            instance.check_ports(ports)
        except instance.PortBusy as exc:
            print(f"webhook-worker dev: {exc}", file=sys.stderr)
            return 1
        if pg is not None:
            services.append(pg)
            pg.start()
            env["DATABASE_URL"] = pg.url
            print(f"embedded Postgres: {redact_url(pg.url)} (data in {pg.data_dir})")
        if redis is not None:
            services.append(redis)
            redis.start()
            env["REDIS_URL"] = redis.url
            print(f"embedded Redis:    {redact_url(redis.url)}")
        if services:
            print(f"  (passwords in {folder}/*.password, mode 0600)")
        if not env.get("STRIPE_WEBHOOK_SECRET"):
            env["STRIPE_WEBHOOK_SECRET"] = _dev_secret(folder)
        if console_port and not (env.get("OPS_TOKEN") or env.get("OPS_USERS")):
            env["OPS_TOKEN"] = _dev_ops_token(folder)
        _metrics_env(folder, env)
        console_url = f"http://127.0.0.1:{console_port}/" if console_port else None
        applied = asyncio.run(_migrate(env["DATABASE_URL"]))
        print(f"migrations applied: {', '.join(applied) or 'none pending'}")
        children += _start_children(port, console_port, env)
        local_services.write(folder, env, console_url)
        print(_banner(port, env, console_url), flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _ignore_interrupts()
        _stop(children, services, folder)


def _stop(
    children: list[subprocess.Popen[bytes]],
    services: list[EmbeddedPostgres | EmbeddedRedis],
    folder: Path,
) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
    local_services.remove(folder)
    for service in services:
        service.stop()  # only what this process started (EmbeddedPostgres.started)


def _start_children(
    port: int, console_port: int, env: dict[str, str]
) -> list[subprocess.Popen[bytes]]:
    """Receiver, worker and (unless its port is 0) the ops console."""
    exe = [sys.executable, "-m", "webhook_worker.cli"]
    local = ["--host", "127.0.0.1"]
    commands = [[*exe, "serve", "--port", str(port), *local], [*exe, "work"]]
    if console_port:
        commands.append([*exe, "console", "--port", str(console_port), *local])
    # Each in its own session: the terminal's Ctrl-C reaches only `dev`, which then stops
    # them with SIGTERM (no child is interrupted half-way through its start-up).
    return [subprocess.Popen(command, env=env, start_new_session=True) for command in commands]


def _banner(port: int, env: dict[str, str], console_url: str | None) -> str:
    """What a newcomer needs next: where to send, what to run, where to look."""
    venv_hint = "" if shutil.which("webhook-worker") else ".venv/bin/"
    cli = f"{venv_hint}webhook-worker"
    lines = [
        "",
        "webhook-worker is running",
        f"  endpoint: http://127.0.0.1:{port}/webhooks/stripe",
        f"  secret:   {env['STRIPE_WEBHOOK_SECRET']}  (development only)",
    ]
    if console_url:
        token = env.get("OPS_TOKEN")
        how = "paste it on the console's login page" if token else "log in with yours"
        lines += [
            f"  console:  {console_url}",
            f"  token:    {token or '(from OPS_USERS)'}  ({how})",
        ]
    metrics_host = env.get("METRICS_HOST") or "127.0.0.1"
    lines.append(
        f"  metrics:  http://{metrics_host}:{env['METRICS_PORT']}/metrics  "
        "(receiver and worker; /readyz beside it)"
    )
    lines += [
        "In another terminal (the CLI finds these services by itself):",
        f"  {cli} send-test-event --url http://127.0.0.1:{port}/webhooks/stripe "
        "--email you@example.com --credits 10",
        f"  {cli} events list",
        f"  {cli} events list --status failed",
        f"  {cli} stats",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)
