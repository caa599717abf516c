# syntax=docker/dockerfile:1
# webhook-worker container image (docs/deployment.md "Container image").
#
#   docker build -t webhook-worker .            # or: podman build --format docker -t webhook-worker .
#   docker run --read-only --tmpfs /tmp webhook-worker serve
#
# One image for every process: the entrypoint is `webhook-worker`, the command picks the role
# (`serve`, `work`, `console`, `migrate up`, …). BASE_IMAGE must provide `python3` (3.11+)
# with the `venv` module; both stages use it, so the venv built in the first runs in the
# second. `make image-test` builds it on a local Debian bookworm base (no registry needed).
ARG BASE_IMAGE=python:3.11-slim-bookworm
# checkov cannot resolve the build argument; its default is a pinned, non-latest tag:
# checkov:skip=CKV_DOCKER_7:FROM uses BASE_IMAGE, by default python:3.11-slim-bookworm

# --- build: wheels from the lock file, then a venv installed from those wheels only ---------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Every locked runtime dependency publishes manylinux wheels for CPython 3.11–3.13, so no
# compiler is needed here either. The lock file is copied alone first: a code change
# rebuilds only the small layer after it (the service's own wheel).
COPY requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/build-tools \
    && /opt/build-tools/bin/pip install --quiet "hatchling>=1.18" \
    && /opt/build-tools/bin/pip wheel --quiet --wheel-dir /wheels --requirement requirements.lock \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-index --find-links /wheels \
       --requirement requirements.lock
COPY pyproject.toml README.md ./
COPY sql ./sql
COPY webhook_worker ./webhook_worker
RUN /opt/build-tools/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --quiet --no-index --no-deps /wheels/webhook_worker-*.whl \
    && /opt/venv/bin/pip uninstall --quiet --yes pip setuptools \
    && /opt/venv/bin/webhook-worker --help >/dev/null

# --- runtime: the venv, a non-root user, nothing else -------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG APP_UID=10001
LABEL org.opencontainers.image.title="webhook-worker" \
      org.opencontainers.image.description="Stripe webhook receiver, worker and ops console" \
      org.opencontainers.image.documentation="docs/deployment.md"
RUN groupadd --system --gid "${APP_UID}" webhook \
    && useradd --system --uid "${APP_UID}" --gid webhook --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin webhook
COPY --from=build /opt/venv /opt/venv
COPY deploy_hotfix.py deploy/container/healthcheck.py /app/
WORKDIR /app
# Read-only root filesystem: nothing is written but to /tmp (mount a tmpfs there; `serve
# --workers N` keeps its shared metrics files in it). Bytecode was compiled at install time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_ENV=production \
    LOG_FORMAT=json \
    HOST=0.0.0.0 \
    PORT=8000 \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9091 \
    CONSOLE_HOST=0.0.0.0 \
    CONSOLE_PORT=8081
USER ${APP_UID}:${APP_UID}
# 8000: webhooks and /healthz (public). 9091: /metrics, /readyz, /healthz (internal: keep it
# off the internet). 8081: `console` (private).
EXPOSE 8000 9091 8081
# /healthz of the internal listener, which `serve` and `work` both run (METRICS_PORT).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "/app/healthcheck.py"]
# `serve` drains in-flight requests and `work` gives its claimed events back on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["webhook-worker"]
CMD ["serve"]
