"""The project's exceptions: one root, each subclass's docstring is its default message.

Driver errors (asyncpg, redis) are translated into these inside `store` and `queue`, so
callers decide on retry or failure without knowing which driver raised.
"""

from __future__ import annotations


class WebhookWorkerError(Exception):
    """webhook-worker failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(WebhookWorkerError):
    """The configuration is invalid."""


class SignatureError(WebhookWorkerError):
    """The Stripe-Signature header does not verify the body."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"signature rejected: {reason}")
        self.reason = reason


class PayloadError(WebhookWorkerError):
    """The body is not a Stripe event."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"payload rejected: {reason}")
        self.reason = reason


class TransientError(WebhookWorkerError):
    """A fault that may pass on its own (connection lost, serialization failure, deadlock)."""


class PermanentError(WebhookWorkerError):
    """A fault that a retry cannot fix; the event fails and waits for a replay."""


class MigrationError(WebhookWorkerError):
    """The schema migrations cannot be applied."""


class MigrationLockTimeout(MigrationError):
    """Another migration run held the lock for longer than MIGRATION_LOCK_TIMEOUT_SECONDS."""


class DataLossRefused(MigrationError):
    """A rollback would drop rows of the ledger, events or audit; --drop-data lets it."""
