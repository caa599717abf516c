# Two commands for a newcomer: `make run` and `make test`. Only Python 3.11+ and make needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast test-slow lint bench bench-console profile clean chromium pgbouncer image-deps image-test image-clean deploy-check

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,bench]'
	@touch $(STAMP)

install: $(STAMP)

## make run: receiver + worker + ops console (http://127.0.0.1:8081/); embedded Postgres/Redis
## under .data/ unless DATABASE_URL/REDIS_URL are set. Prints the console token and the CLI
## commands to list events (they find these services by themselves).
run: $(STAMP)
	$(BIN)/webhook-worker dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## make test: install (Debian's chromium and pgbouncer too, for the console's browser tests
## and the connection-pooler tests), lint, type-check and run the whole fast suite
test: lint chromium pgbouncer
	$(BIN)/pytest -m "not slow and not image"

## The browser tests drive Debian's chromium (never a downloaded browser); as root, install it.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq chromium; \
	  else \
	    echo "the console's browser tests need /usr/bin/chromium: sudo apt-get install -y chromium"; \
	  fi; \
	fi

## The pooler tests start Debian's pgbouncer (transaction pooling) in front of the test
## Postgres, from a temporary folder (never the system service); as root, install it.
pgbouncer:
	@if [ ! -x /usr/sbin/pgbouncer ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq pgbouncer; \
	  else \
	    echo "the pooler tests need /usr/sbin/pgbouncer: sudo apt-get install -y pgbouncer"; \
	  fi; \
	fi

## make test-slow: the long fault-injection load test
test-slow: $(STAMP)
	$(BIN)/pytest -m slow

## make image-test: builds the Dockerfile on a local Debian base (mmdebstrap + podman import,
## cached under .cache/image/) and runs migrate, serve and work as read-only, non-root
## containers against real Postgres and Redis (tests/test_image.py; docs/deployment.md).
image-test: $(STAMP) image-deps
	$(BIN)/pytest -m image tests/test_image.py -p no:randomly -s

## make image-clean: the test images, their build cache and the cached base tarball
image-clean:
	-podman rmi --force localhost/webhook-worker:test localhost/webhook-worker-base:bookworm
	-podman image prune --force
	rm -rf .cache/image

## Debian's podman, runc and mmdebstrap (as root, like chromium); never a downloaded binary.
image-deps:
	@missing=""; for tool in podman runc mmdebstrap; do \
	  command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq podman runc mmdebstrap; \
	  else \
	    echo "make image-test needs$$missing: sudo apt-get install -y podman runc mmdebstrap"; exit 1; \
	  fi; \
	fi

## make deploy-check: checkov over deploy/kubernetes/ and the Dockerfile. checkov lives in its
## own venv under .tools/ (pinned here), apart from the service's and the dev dependencies.
CHECKOV_VERSION := 3.3.30
CHECKOV := .tools/checkov/bin/checkov
$(CHECKOV):
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/python -m pip install --quiet --disable-pip-version-check 'checkov==$(CHECKOV_VERSION)'

deploy-check: $(CHECKOV)
	BC_SKIP_MAPPING=TRUE $(CHECKOV) --quiet --compact --skip-download --framework kubernetes -d deploy/kubernetes
	BC_SKIP_MAPPING=TRUE $(CHECKOV) --quiet --compact --skip-download --framework dockerfile -f Dockerfile

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

## make profile: the credit path's hot spots, the workers' Python (py-spy) and Postgres
## (pg_stat_statements, in a private cluster of Debian's Postgres) into benchmarks/profiles/credit.txt
profile: $(STAMP)
	$(BIN)/python -m benchmarks.profile

## make bench-console: the ops console at 10^6 events (seed, every page's p50/p95, what each
## index costs per insert) into benchmarks/results.json (`console`, `console_p95_ms`)
bench-console: $(STAMP)
	$(BIN)/python -m benchmarks.console

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache .tools .cache
