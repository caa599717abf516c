"""The container image, built and run as a platform runs it (`make image-test`).

Builds the Dockerfile on a local Debian bookworm base (deploy/container/local-base.sh:
mmdebstrap + `podman import`, no registry), then runs `migrate up`, `serve` and `work` as
containers with a read-only root filesystem against the tests' real Postgres and Redis,
posts a signed event, sees it credited, and stops the worker with SIGTERM. Needs podman,
runc and mmdebstrap (`make image-deps` installs them from Debian as root).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml

from tests.conftest import TEST_SECRET, sign, wait_for
from webhook_worker.dev.embedded import free_port
from webhook_worker.dev.servicekit import wait_http_ok

# The first run on a machine builds the base (~2.5 min) and the image (~2 min) in setup.
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/webhook-worker:test"
BASE_IMAGE = "localhost/webhook-worker-base:bookworm"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
# Host networking (the tests' Postgres and Redis listen on 127.0.0.1) and explicit limits
# (runc cannot raise them past the sandbox's own here). Strictly read-only: not even the
# tmpfs podman adds by default on /tmp, /run and /var/tmp.
RUN = [
    *PODMAN,
    "run",
    "--network=host",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
    "--read-only",
    "--read-only-tmpfs=false",
]
APP_UID = 10001
BUILD_TIMEOUT_S = 900
OPS_TOKEN = "image-test-ops-token-0123456789abcdef"


def _podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _check(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: `make image-deps` installs them (as root)")
    base = subprocess.run(
        [str(ROOT / "deploy/container/local-base.sh"), BASE_IMAGE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    _check(base)
    started = time.monotonic()
    build = subprocess.run(
        [
            *PODMAN,
            "build",
            "--network=host",
            # The docker format keeps HEALTHCHECK (OCI image configs have no such field).
            "--format=docker",
            f"--build-arg=BASE_IMAGE={BASE_IMAGE}",
            f"--tag={IMAGE}",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    _check(build)
    size = int(_check(_podman("image", "inspect", "--format", "{{.Size}}", IMAGE)).strip())
    print(f"\nimage {IMAGE}: built in {time.monotonic() - started:.0f} s, {size / 1e6:.0f} MB")
    return IMAGE


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test starts; all removed at teardown."""
    names: list[str] = []
    yield names
    for name in names:
        _podman("rm", "--force", "--time=0", name)


def _env_file(tmp_path: Path, **values: str) -> Path:
    """Secrets reach the containers through an env file, never the command line."""
    path = tmp_path / "container.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


def _start(
    name: str, env_file: Path, log: Path, *args: str, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`podman run` in the foreground: the client lives as long as the container and exits
    with its exit code."""
    extra = [f"--env={k}={v}" for k, v in env.items()]
    # The container's own output, in the kubelet's log format (`<time> <stream> <tag> <line>`);
    # the client's stream (`log`) also carries podman's messages.
    extra.append(f"--log-opt=path={log.with_suffix('.ctr')}")
    with log.open("wb") as out:
        return subprocess.Popen(
            [*RUN, "--rm", f"--name={name}", f"--env-file={env_file}", *extra, IMAGE, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _container_lines(path: Path) -> list[str]:
    """The lines a container wrote, from its k8s-file log (`P` records continue a line)."""
    lines, partial = [], ""
    for record in path.read_text(errors="replace").splitlines():
        _, _, tag, text = record.split(" ", 3)
        partial += text
        if tag == "F":
            lines.append(partial)
            partial = ""
    return lines


def _host_pid(name: str) -> int:
    return int(_check(_podman("inspect", "--format", "{{.State.Pid}}", name)).strip())


def _ids(status: str, field: str) -> set[str]:
    line = next(x for x in status.splitlines() if x.startswith(f"{field}:"))
    return set(line.split()[1:])


def _assert_non_root_read_only(name: str, role: str) -> None:
    pid = _host_pid(name)
    proc = Path(f"/proc/{pid}")
    assert role in proc.joinpath("cmdline").read_bytes().decode().split("\0")
    status = proc.joinpath("status").read_text()
    # real, effective, saved and filesystem ids: all the image's own user, never root
    assert _ids(status, "Uid") == {str(APP_UID)}
    assert _ids(status, "Gid") == {str(APP_UID)}
    root_mount = next(
        line.split()
        for line in proc.joinpath("mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    assert root_mount[5].split(",")[0] == "ro", root_mount
    # inside the container, not on this machine
    for target in ("/app/written", "/tmp/written", "/opt/venv/written"):  # noqa: S108
        tried = _podman(
            "exec", name, "python3", "-c", f"open({target!r}, 'w').write('x')", timeout=30
        )
        assert tried.returncode != 0 and "Read-only file system" in tried.stderr, tried.stderr


def _grace_seconds() -> int:
    manifests = yaml.safe_load_all((ROOT / "deploy/kubernetes/worker.yaml").read_text())
    worker = next(m for m in manifests if m["kind"] == "Deployment")
    return int(worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def _checkout_event(email: str, credits: int) -> bytes:
    """A paid Checkout Session, written here (not built by the code under test)."""
    event = {
        "id": f"evt_image_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": f"cs_test_{uuid.uuid4().hex[:16]}",
                "object": "checkout.session",
                "mode": "payment",
                "status": "complete",
                "payment_status": "paid",
                "amount_total": 2500,
                "currency": "usd",
                "payment_intent": f"pi_{uuid.uuid4().hex[:16]}",
                "customer_details": {"email": email},
                "metadata": {"credits": str(credits)},
            }
        },
    }
    return json.dumps(event).encode()


async def test_image_migrates_serves_credits_and_stops_on_sigterm(
    image: str,
    empty_database_url: str,
    clean_redis_url: str,
    containers: list[str],
    tmp_path: Path,
) -> None:
    env_file = _env_file(
        tmp_path,
        STRIPE_WEBHOOK_SECRET=TEST_SECRET,
        DATABASE_URL=empty_database_url,
        DIRECT_DATABASE_URL=empty_database_url,
        REDIS_URL=clean_redis_url,
        STRIPE_MODE="test",
        CREDIT_PRICES="usd:100",
    )
    # Host networking: keep every listener on loopback, on ports of the test's own.
    local = {"HOST": "127.0.0.1", "METRICS_HOST": "127.0.0.1"}
    tag = uuid.uuid4().hex[:8]

    # migrate up: a one-shot container on the direct URL
    migrate = f"ww-migrate-{tag}"
    containers.append(migrate)
    done = subprocess.run(
        [*RUN, "--rm", f"--name={migrate}", f"--env-file={env_file}", image, "migrate", "up"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    _check(done)
    migrations = sorted(p.name for p in (ROOT / "sql/migrations").glob("*.sql"))
    assert migrations and re.search(r"applied 0001_", done.stdout), done.stdout
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert applied == len(migrations)

        # serve, work and console, strictly read-only, as the image's non-root user
        port, receiver_metrics, worker_metrics = free_port(), free_port(), free_port()
        console_port = free_port()
        serve, work, ops = f"ww-serve-{tag}", f"ww-work-{tag}", f"ww-console-{tag}"
        containers += [serve, work, ops]
        receiver = _start(
            serve,
            env_file,
            tmp_path / "serve.log",
            "serve",
            env={**local, "PORT": str(port), "METRICS_PORT": str(receiver_metrics)},
        )
        worker = _start(
            work,
            env_file,
            tmp_path / "work.log",
            "work",
            env={**local, "METRICS_PORT": str(worker_metrics)},
        )
        console = _start(
            ops,
            env_file,
            tmp_path / "console.log",
            "console",
            "--host=127.0.0.1",
            f"--port={console_port}",
            env={"OPS_TOKEN": OPS_TOKEN},
        )
        for proc, url, log in (
            (receiver, f"http://127.0.0.1:{receiver_metrics}/readyz", "serve.log"),
            (worker, f"http://127.0.0.1:{worker_metrics}/readyz", "work.log"),
            (receiver, f"http://127.0.0.1:{port}/healthz", "serve.log"),
            (console, f"http://127.0.0.1:{console_port}/login", "console.log"),
        ):
            wait_http_ok(url, process=proc, log=tmp_path / log, timeout=120)
        _assert_non_root_read_only(serve, "serve")
        _assert_non_root_read_only(work, "work")
        _assert_non_root_read_only(ops, "console")
        # the console's pages render from the read-only image (templates, static files)
        page = httpx.get(f"http://127.0.0.1:{console_port}/login", timeout=10)
        assert page.status_code == 200 and "<form" in page.text
        _check(_podman("kill", "--signal=TERM", ops))
        assert console.wait(timeout=30) == 0

        # the image's HEALTHCHECK passes on a running receiver
        assert "healthcheck.py" in _check(
            _podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image)
        )
        _check(_podman("healthcheck", "run", serve))

        # a signed event: stored by the receiver container, credited by the worker container
        email = f"image-{tag}@example.com"
        body = _checkout_event(email, credits=250)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": sign(body), "Content-Type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"received": True, "duplicate": False}

        async def credited() -> bool:
            balance = await conn.fetchval(
                "SELECT credits_balance FROM users WHERE lower(email) = $1", email
            )
            return balance == 250

        await wait_for(credited, timeout=90)
        status = await conn.fetchval(
            "SELECT processing_status FROM stripe_events WHERE event_id = $1",
            json.loads(body)["id"],
        )
        assert status == "completed"

        # SIGTERM: the worker exits 0 within the grace period the manifest gives it
        grace = _grace_seconds()
        _check(_podman("kill", "--signal=TERM", work))
        started = time.monotonic()
        code = worker.wait(timeout=grace)
        took = time.monotonic() - started
        log = (tmp_path / "work.log").read_text(errors="replace")
        assert code == 0, f"worker exited {code} after SIGTERM:\n{log[-3000:]}"
        assert took < grace
        print(f"\nworker stopped by SIGTERM in {took:.1f} s (grace period {grace} s)")

        _check(_podman("kill", "--signal=TERM", serve))
        assert receiver.wait(timeout=30) == 0
    finally:
        await conn.close()
    # no container logs a secret; receiver and worker log JSON lines (the image's LOG_FORMAT;
    # the console also prints its address as a plain line for a person)
    for name in ("serve.ctr", "work.ctr", "console.ctr"):
        text = "\n".join(_container_lines(tmp_path / name))
        assert text and TEST_SECRET not in text and OPS_TOKEN not in text
    for name in ("serve.ctr", "work.ctr"):
        lines = [line for line in _container_lines(tmp_path / name) if line.strip()]
        assert all(isinstance(json.loads(line), dict) for line in lines), lines
