"""Driver errors become the service's own: transient ones retry the event, the rest fail it."""

from __future__ import annotations

import asyncpg
import pytest

from webhook_worker.db.store import translate_errors
from webhook_worker.errors import PermanentError, TransientError


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError("not connected"),  # the server went away mid-use
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        ConnectionResetError("reset by peer"),
    ],
)
def test_a_lost_connection_is_a_transient_fault(error: Exception) -> None:
    with pytest.raises(TransientError, match="claiming"), translate_errors("claiming events"):
        raise error


def test_a_refused_statement_is_a_permanent_fault() -> None:
    with pytest.raises(PermanentError, match="storing events"), translate_errors("storing events"):
        raise asyncpg.CheckViolationError("new row violates check constraint")
