"""Operators' view and hand of a user's credits: `webhook-worker credits show|grant|adjust`
and the console's user page ("Grant / adjust").

A user is named by email, id, UUID or Stripe customer id (`cus_…`). A grant is a BONUS row,
an adjustment an ADJUSTMENT row of either sign (never below zero), each with its required
reason, through the spending functions (`webhook_worker.credits`) and audited like a replay:
one `ops_audit` row written in the same transaction, and an `ops_credits_changed` log line
(ids and amounts, never an email).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

from webhook_worker import credits
from webhook_worker.db.host import UserId, user_key
from webhook_worker.db.queries import query
from webhook_worker.db.store import Connection, translate_errors
from webhook_worker.log import get_logger
from webhook_worker.ops.audit import Via
from webhook_worker.worker import resolver

Kind = Literal["grant", "adjust"]
_log = get_logger("webhook_worker.ops.credits")
_HISTORY = 50


class UserReferenceError(credits.CreditsError):
    """No single user matches this reference."""


async def find_user(conn: Connection, reference: str) -> UserId:
    """The one user an email, id, UUID or `cus_…` names; `UserReferenceError` otherwise."""
    text = reference.strip()
    found: UserId | None
    if text.startswith("cus_"):
        with translate_errors("finding a user"):
            value = await conn.fetchval(query("credits_user_by_customer"), text)
        found = None if value is None else user_key(value)
    else:
        candidate = resolver.classify(text)
        if candidate.kind == "placeholder":
            raise UserReferenceError(
                "name the user by email, id, UUID or Stripe customer id (cus_…)"
            )
        try:
            found = await resolver.lookup_user(conn, candidate)
        except resolver.AmbiguousUser:
            raise UserReferenceError(
                "several users (one per tenant) have that email: name the user by id"
            ) from None
    if found is None:
        raise UserReferenceError("no user matches that reference")
    return found


@dataclass(frozen=True)
class UserCredits:
    user_id: UserId
    balance: int
    shortfall_owed: int
    shortfall_collected: int
    history: list[credits.Transaction] = field(default_factory=list)
    holds: list[credits.Hold] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def show(conn: Connection, user_id: UserId, *, limit: int = _HISTORY) -> UserCredits:
    with translate_errors("reading a user's credits"):
        return UserCredits(
            user_id=user_id,
            balance=await credits.balance(conn, user_id),
            shortfall_owed=int(await conn.fetchval(query("credits_user_shortfall"), user_id)),
            shortfall_collected=int(await conn.fetchval(query("credits_user_collected"), user_id)),
            history=await credits.history(conn, user_id, limit=limit),
            holds=await credits.open_holds(conn, user_id),
            audit=[
                {**dict(row), "filters": _json(row["filters"])}
                for row in await conn.fetch(query("credits_audit_for_user"), str(user_id))
            ],
        )


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def new_key() -> str:
    """An idempotency key for one operator action (the console puts it in its form, so a
    form sent twice changes the credits once)."""
    return f"ops:{uuid.uuid4()}"


async def change(
    conn: Connection,
    *,
    kind: Kind,
    user_id: UserId,
    amount: int,
    reason: str,
    who: str,
    via: Via,
    client: str | None = None,
    idempotency_key: str | None = None,
) -> credits.Result:
    """Grant (amount > 0) or adjust (either sign) with a reason, audited in the same
    transaction. Raises the `webhook_worker.credits` errors; nothing is written then."""
    if not reason.strip():
        raise credits.InvalidArgument("--reason is required: say why the credits change")
    key = idempotency_key or new_key()
    with translate_errors(f"{kind} credits"):
        async with conn.transaction():
            if kind == "grant":
                result = await credits.grant(
                    conn, user_id, amount, idempotency_key=key, reason=reason
                )
            else:
                result = await credits.adjust(
                    conn, user_id, amount, idempotency_key=key, reason=reason
                )
            if result.status != "duplicate":
                details = {
                    "user_id": str(user_id),
                    "amount": amount,
                    "reason": reason,
                    "idempotency_key": key,
                    "status": result.status,
                    "transaction_id": result.transaction_id,
                    "balance": result.balance,
                }
                await conn.fetchval(
                    query("credits_audit_insert"),
                    who,
                    client,
                    via,
                    f"credits_{kind}",
                    orjson.dumps(details).decode(),
                )
    _log.info(
        "ops_credits_changed",
        who=who,
        via=via,
        action=kind,
        user_id=str(user_id),
        amount=amount,
        status=result.status,
        transaction_id=result.transaction_id,
    )
    return result
