#!/usr/bin/env python3
"""Roll the webhook-worker hotfix out: preflight, migrate, verify, smoke test, report.

    python deploy_hotfix.py [--yes] [--dry-run] [--skip-migration] [--smoke-url URL]
    python deploy_hotfix.py --rollback [--to VERSION] [--yes]

A thin shell (the Procfile's `release`); the steps live in `webhook_worker/ops/deploy.py`.
Exit 0 only when every step passed, 1 when one failed, 2 on bad configuration or usage.
"""

from __future__ import annotations

import sys

from webhook_worker.ops.deploy import main

if __name__ == "__main__":
    sys.exit(main())
