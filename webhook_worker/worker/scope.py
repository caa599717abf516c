"""What the service trusts: which correctly signed events may move money.

A valid signature proves only that Stripe sent the event to this endpoint. Test mode and
live mode, the platform and its connected accounts, and event destinations (thin events)
can all deliver to one URL, so every event is checked against the deployment's scope
before any handler sees it:

- `livemode_mismatch`: the event's mode is not `STRIPE_MODE` (test-card money in a live
  deployment, or live money in a test one);
- `connect_account_not_allowed`: the event carries an `account` (it happened on a
  connected account) that `STRIPE_CONNECT_ACCOUNTS` does not list;
- `thin_event`: an event destination's thin event (`object: v2.core.event`), which names
  an object but carries no money fields to act on.

Out-of-scope events are still stored and answered 200 (so Stripe stops retrying) and then
marked `ignored` with the reason; they never credit or debit. The checks run in the worker,
so replays and any later source of events (reconciliation) pass the same gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook_worker.config import Settings

THIN_EVENT_OBJECT = "v2.core.event"
LIVEMODE_MISMATCH = "livemode_mismatch"
CONNECT_ACCOUNT_NOT_ALLOWED = "connect_account_not_allowed"
THIN_EVENT = "thin_event"
REASONS = (LIVEMODE_MISMATCH, CONNECT_ACCOUNT_NOT_ALLOWED, THIN_EVENT)


def out_of_scope_reason(settings: Settings, payload: Mapping[str, Any]) -> str | None:
    """Why this event must not move money here, or None when it is in scope.

    Reads the stored payload itself (not the indexed columns), so the answer is the same
    for a delivery, a replay and a reconciled event. A missing `livemode` counts as test
    mode, as Stripe never omits it from a live event.
    """
    livemode = payload.get("livemode") is True
    if livemode != (settings.stripe_mode == "live"):
        return LIVEMODE_MISMATCH
    account = payload.get("account")
    if account is not None and account not in settings.connect_accounts:
        return CONNECT_ACCOUNT_NOT_ALLOWED
    if payload.get("object") == THIN_EVENT_OBJECT:
        return THIN_EVENT
    return None


def describe(settings: Settings) -> str:
    """One line for `verify` and the deploy preflight: the mode and accounts trusted."""
    accounts = ", ".join(sorted(settings.connect_accounts)) or "none (platform events only)"
    return f"STRIPE_MODE={settings.stripe_mode}; Connect accounts handled: {accounts}"


def warnings(settings: Settings) -> list[str]:
    """Combinations that are allowed but usually a mistake."""
    found: list[str] = []
    if settings.app_env == "production" and settings.stripe_mode == "test":
        found.append(
            "APP_ENV=production with STRIPE_MODE=test: only test-mode (test card) events credit "
            "and every live payment is ignored as livemode_mismatch; set STRIPE_MODE=live"
        )
    if settings.app_env != "production" and settings.stripe_mode == "live":
        found.append(
            f"APP_ENV={settings.app_env} with STRIPE_MODE=live: real payments credit this "
            "non-production deployment"
        )
    return found
