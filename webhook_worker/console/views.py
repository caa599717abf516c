"""The console's pages and form posts. Handlers are thin: parse, call `data` / `ops` /
`audit`, render a template. Input errors render a 400 page naming the bad filter; unknown
ids a 404 page."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from webhook_worker.console import credits_views, data, present
from webhook_worker.console.auth import (
    LOGIN_NONCE_COOKIE,
    Forbidden,
    Page,
    check_login,
    client_of,
    current_session,
    end_session,
    log,
    login_nonce,
    read_form,
    safe_next,
    start_session,
)
from webhook_worker.console.chart import COLOURS, per_hour_svg, per_minute_svg
from webhook_worker.console.session import COOKIE_NAME
from webhook_worker.db import store
from webhook_worker.db.store import EVENT_STATUSES
from webhook_worker.ops import audit, listing, replay, values

_TRUE = {"1", "true", "on", "yes"}


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    session = getattr(request.state, "session", None) or current_session(request)
    signer = request.app.state.signer
    base = {
        "operator": session.operator if session else None,
        "csrf": signer.csrf_token(session) if session else "",
        "statuses": EVENT_STATUSES,
        "colours": COLOURS,
    }
    templates = request.app.state.templates
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)  # type: ignore[no-any-return]


def error_page(request: Request, status: int, message: str) -> Response:
    context = {"status": status, "message": console_wording(message)}
    return render(request, "error.html", context, status)


def console_wording(message: str) -> str:
    """The replay rules speak CLI (`use --force`); the console has a "force" box."""
    for cli, console in (
        ("use --force to replay", "tick \u201cforce\u201d to replay"),
        ("needs --force", "needs the \u201cforce\u201d box"),
        ("; e.g. --status failed", ""),
        ("--since", "from"),
    ):
        message = message.replace(cli, console)
    return message


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


# --- login -------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    nonce, csrf = login_nonce(request)
    response = render(
        request,
        "login.html",
        {"login_csrf": csrf, "next": safe_next(request.query_params.get("next")), "error": None},
    )
    _set_nonce(request, response, nonce)
    return response


def _set_nonce(request: Request, response: Response, nonce: str) -> None:
    response.set_cookie(
        LOGIN_NONCE_COOKIE,
        nonce,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def login(request: Request) -> Response:
    form = await read_form(request)
    operator = await check_login(request, form)
    if operator is None:
        nonce, csrf = login_nonce(request)
        response = render(
            request,
            "login.html",
            {
                "login_csrf": csrf,
                "next": safe_next(form.get("next")),
                "error": "That token is not valid.",
            },
            401,
        )
        _set_nonce(request, response, nonce)
        return response
    cookie = await start_session(request, operator)
    response = RedirectResponse(safe_next(form.get("next")), status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=request.app.state.signer.lifetime,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_NONCE_COOKIE)
    return response


async def logout(request: Request) -> Response:
    """Guarded like every POST (a forged logout is refused); see `logout_expired` for the
    operator whose session already ended."""
    await end_session(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, httponly=True, samesite="strict")
    return response


async def logout_expired(request: Request) -> Response:
    """Log out with a session already expired: nothing to end, so straight to the login
    page instead of a 403 "session expired"."""
    if current_session(request) is None:
        return RedirectResponse("/login", status_code=303)
    guarded: Page = request.app.state.guarded_logout
    return await guarded(request)


# --- overview / events -------------------------------------------------------------------


async def overview(request: Request) -> Response:
    pool = request.app.state.pool
    async with (
        store.acquire(pool, "reading the overview") as conn,
        store.acquire(pool, "reading the overview") as other,
    ):
        figures = await data.overview(conn, other)
    minutes = per_minute_svg(figures["per_minute"], figures["now"])
    hours = per_hour_svg(figures["per_hour"], figures["now"])
    return render(
        request,
        "overview.html",
        {"o": figures, "chart": minutes, "hours_chart": hours, "page": "overview"},
    )


async def events(request: Request) -> Response:
    """The list; a bad filter is shown beside the filters as typed, with no rows."""
    filters, problem = data.read_filters(request.query_params)
    rows: list[dict[str, Any]] = []
    cursor = total = None
    paged = False
    if problem is None:
        try:
            before = data.parse_cursor(request.query_params.get("before"))
            paged = before[0] is not None
            async with store.acquire(request.app.state.pool, "listing events") as conn:
                rows, cursor = await data.events_page(conn, filters, before)
                total = None if paged else await data.estimated_total(conn, filters)
        except values.OpsInputError as exc:
            problem = exc.message
    problem = console_wording(problem) if problem else None
    next_url = None
    if cursor:
        next_url = "/events?" + urlencode({**filters.as_params(), "before": cursor})
    return render(
        request,
        "events.html",
        {
            "events": rows,
            "f": filters,
            "problem": problem,
            "total": total,
            "next_url": next_url,
            "first_url": "/events?" + urlencode(filters.as_params()),
            "paged": paged,
            "bulk_url": "/replay?" + urlencode(filters.as_params()),
            "no_reason_url": "/events?"
            + urlencode({k: v for k, v in filters.as_params().items() if k != "reason"}),
            "page": "events",
        },
        400 if problem else 200,
    )


async def _event_context(request: Request, event_id: str) -> dict[str, Any] | None:
    async with store.acquire(request.app.state.pool, "reading an event") as conn:
        found = await listing.show_event(conn, event_id, raw=True)
        if found is None:
            return None
        found["ledger"] = await data.event_ledger(conn, event_id)
        replays = await audit.for_event(conn, event_id)
    payload = values.jsonable(found.pop("raw_data", None))
    return {
        "e": found,
        "payload": payload,
        "payload_text": present.payload_text(payload) if payload is not None else "",
        "s": present.summary(found, payload),
        "final": found["processing_status"] in replay.FORCED_REPLAY_STATUSES,
        "replays": replays,
        "page": "events",
    }


async def event(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    context = await _event_context(request, event_id)
    if context is None:
        return error_page(request, 404, f"No event {event_id} is stored.")
    return render(request, "event.html", context)


async def event_status(request: Request) -> Response:
    """JSON for the event page's script: whether the worker is done with it yet."""
    event_id = request.path_params["event_id"]
    async with store.acquire(request.app.state.pool, "reading an event") as conn:
        status = await data.event_status(conn, event_id)
    if status is None:
        return JSONResponse({"error": f"event {event_id} not found"}, status_code=404)
    return JSONResponse(values.jsonable(status))


async def replay_event(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    form = await read_form(request)
    force = form.get("force", "").lower() in _TRUE
    result = await _replay(request, event_ids=[event_id], filters=None, force=force)
    if result.not_found:
        message = f"No event {event_id} is stored."
        if _wants_json(request):
            return JSONResponse({"error": message}, status_code=404)
        return error_page(request, 404, message)
    if _wants_json(request):
        body = values.jsonable(result.as_dict())
        for skipped in body.get("skipped", []):
            skipped["reason"] = console_wording(str(skipped.get("reason", "")))
        return JSONResponse(body, status_code=409 if result.skipped else 200)
    return RedirectResponse(f"/events/{quote(event_id, safe='')}", status_code=303)


async def _replay(
    request: Request,
    *,
    event_ids: list[str],
    filters: data.EventFilters | None,
    force: bool,
) -> replay.ReplayResult:
    """Select, reset and enqueue; audit who, what, how many (dry runs are not audited)."""
    settings = request.app.state.settings
    async with store.acquire(request.app.state.pool, "replaying events") as conn:
        selection = await replay.select_replay(
            conn,
            event_ids=event_ids,
            status=filters.status if filters else None,
            event_type=filters.event_type if filters else None,
            since=filters.since if filters else None,
            until=filters.until if filters else None,
            force=force,
            limit=settings.ops_replay_max,
        )
        result = await replay.replay_events(conn, request.app.state.redis, selection)
        if result.replayed:
            result_id = await audit.record_replay(
                conn,
                who=request.state.session.operator,
                client=client_of(request),
                via="console",
                forced=force,
                filters=filters.as_params() if filters else None,
                event_ids=result.replayed,
            )
            request.state.audit_id = result_id
    log.info(
        "ops_replayed",
        via="console",
        operator=request.state.session.operator,
        count=len(result.replayed),
        event_ids=result.replayed[:100],
        filters=filters.as_params() if filters else None,
    )
    return result


# --- bulk replay -------------------------------------------------------------------------


def _bulk_filters(params: Any) -> data.EventFilters:
    filters = data.parse_filters(params)
    if filters.q or filters.reason:
        raise values.OpsInputError(
            "bulk replay filters by status, type and dates, not search text or reason"
        )
    if filters.status is None:
        raise values.OpsInputError("choose the status of the events to replay (e.g. failed)")
    return filters


async def bulk_form(request: Request) -> Response:
    params = dict(request.query_params)
    params.setdefault("status", "failed")
    params.pop("q", None)
    params.pop("reason", None)
    filters = data.parse_filters(params)
    return render(request, "bulk.html", {"f": filters, "preview": None, "page": "replay"})


async def bulk_preview(request: Request) -> Response:
    form = await read_form(request)
    filters = _bulk_filters(form)
    force = form.get("force", "").lower() in _TRUE
    settings = request.app.state.settings
    async with store.acquire(request.app.state.pool, "previewing a replay") as conn:
        preview = await replay.select_replay(
            conn,
            status=filters.status,
            event_type=filters.event_type,
            since=filters.since,
            until=filters.until,
            force=force,
            limit=settings.ops_replay_max,
            preview=True,
        )
    return render(
        request,
        "bulk.html",
        {"f": filters, "preview": preview, "force": force, "page": "replay"},
    )


async def bulk_run(request: Request) -> Response:
    form = await read_form(request)
    filters = _bulk_filters(form)
    force = form.get("force", "").lower() in _TRUE
    result = await _replay(request, event_ids=[], filters=filters, force=force)
    audit_id = getattr(request.state, "audit_id", None)
    if audit_id is None:
        return render(
            request,
            "bulk.html",
            {"f": filters, "preview": None, "nothing": True, "result": result, "page": "replay"},
        )
    return RedirectResponse(f"/replay/{audit_id}", status_code=303)


async def bulk_result(request: Request) -> Response:
    audit_id = _audit_id(request)
    async with store.acquire(request.app.state.pool, "reading a replay") as conn:
        progress = await audit.progress(conn, audit_id) if audit_id else None
    if progress is None:
        return error_page(request, 404, f"No replay {request.path_params['audit_id']} is recorded.")
    return render(request, "bulk_result.html", {"p": progress, "page": "replay"})


async def bulk_progress(request: Request) -> Response:
    audit_id = _audit_id(request)
    async with store.acquire(request.app.state.pool, "reading a replay") as conn:
        progress = await audit.progress(conn, audit_id) if audit_id else None
    if progress is None:
        return JSONResponse({"error": "no such replay"}, status_code=404)
    return JSONResponse(values.jsonable(progress))


def _audit_id(request: Request) -> int | None:
    raw = request.path_params["audit_id"]
    return int(raw) if raw.isdigit() and len(raw) < 18 else None


# --- users -------------------------------------------------------------------------------


async def user_search(request: Request) -> Response:
    key = (request.query_params.get("q") or "").strip()
    if not key:
        return render(request, "user.html", {"user": None, "matches": [], "page": "users"})
    if len(key) > 320:
        raise values.OpsInputError("the user key is longer than 320 characters")
    return await _user(request, key)


async def user(request: Request) -> Response:
    return await _user(request, request.path_params["key"])


async def _user(request: Request, key: str) -> Response:
    async with store.acquire(request.app.state.pool, "finding a user") as conn:
        matches = await data.find_users(conn, key)
        history = await data.user_history(conn, matches[0]["key"]) if len(matches) == 1 else None
        spending = await credits_views.spending_context(conn, matches[0]["id"]) if history else {}
    if not matches:
        return error_page(request, 404, "No user has that id, UUID or email.")
    return render(
        request,
        "user.html",
        {
            "user": matches[0] if history else None,
            "matches": matches if history is None else [],
            "history": history,
            "page": "users",
            **spending,
        },
    )


async def forbidden(request: Request, exc: Exception) -> Response:
    message = exc.message if isinstance(exc, Forbidden) else "forbidden"
    log.warning("console_post_refused", path=request.url.path, client=client_of(request))
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=403)
    return error_page(request, 403, message)
