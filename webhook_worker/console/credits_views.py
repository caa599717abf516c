"""The user page's spending part: open holds, the shortfall, the operators' grants and
adjustments, and the "Grant / adjust" form (POST /users/{key}/credits), behind the same
login, CSRF check and audit as a replay (webhook_worker.ops.credits_admin)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from webhook_worker import credits
from webhook_worker.console.auth import client_of, read_form
from webhook_worker.db import store
from webhook_worker.db.host import UserId
from webhook_worker.ops import credits_admin, values

_KINDS = ("grant", "adjust")
_MAX_CREDITS = 10**12


async def spending_context(conn: store.Connection, shown_id: str) -> dict[str, Any]:
    """What `_credits.html` shows (for the user whose id, as text, the page shows), with a
    fresh idempotency key for the form."""
    try:
        user_id: UserId = await credits_admin.find_user(conn, shown_id)
    except credits_admin.UserReferenceError:
        return {}
    return {
        "spending": await credits_admin.show(conn, user_id, limit=1),
        "credits_key": credits_admin.new_key(),
    }


def _amount(raw: str) -> int:
    try:
        amount = int(raw.strip())
    except ValueError:
        raise values.OpsInputError(f"credits must be a whole number, got {raw[:20]!r}") from None
    if amount == 0 or abs(amount) > _MAX_CREDITS:
        raise values.OpsInputError("credits must be a non-zero whole number")
    return amount


async def change_credits(request: Request) -> Response:
    """Grant or adjust, audited; back to the user page (an error page on a refusal)."""
    from webhook_worker.console.views import error_page

    form = await read_form(request)
    kind = form.get("kind", "")
    if kind not in _KINDS:
        raise values.OpsInputError("action must be grant or adjust")
    amount = _amount(form.get("amount", ""))
    key = form.get("key", "").strip()[:200] or None
    async with store.acquire(request.app.state.pool, "changing credits") as conn:
        try:
            user_id = await credits_admin.find_user(conn, request.path_params["key"])
            await credits_admin.change(
                conn,
                kind=kind,  # type: ignore[arg-type]
                user_id=user_id,
                amount=amount,
                reason=form.get("reason", ""),
                who=request.state.session.operator,
                via="console",
                client=client_of(request),
                idempotency_key=key,
            )
        except credits.CreditsError as exc:
            return error_page(request, 400, str(exc))
    return RedirectResponse(f"/users/{quote(str(user_id), safe='')}", status_code=303)
