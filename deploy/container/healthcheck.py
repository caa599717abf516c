"""The image's HEALTHCHECK: GET /healthz on the internal listener (METRICS_PORT).

`serve` and `work` both run that listener, so one check fits both roles. Exit 0 when it
answers 200, else 1 (the container runtime then marks the container unhealthy). A
container started with METRICS_PORT unset has no internal listener: set
HEALTHCHECK_URL (e.g. http://127.0.0.1:8000/healthz for `serve`) or disable the check.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    url = os.environ.get("HEALTHCHECK_URL") or (
        f"http://127.0.0.1:{os.environ.get('METRICS_PORT') or '9091'}/healthz"
    )
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - local URL
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
