"""The ops HTTP API under /ops, served by `webhook-worker console` (and by the receiver only
with `OPS_ON_RECEIVER=true`); the same `ops` functions as the CLI.

Off unless `OPS_TOKEN` or `OPS_USERS` is set: then no route exists and /ops/* answers 404.
Otherwise every request needs `Authorization: Bearer <token>`, compared in constant time
against every operator's token (so the audit names who); a missing
or wrong token gets 401 before any database work. Handlers find the asyncpg pool at
`request.app.state.pool` and the ArqRedis at `request.app.state.redis`.

- `GET  /ops/events?status=&type=&since=&limit=` — newest first
- `GET  /ops/events/{event_id}?raw=true` — status, attempts, error, ledger rows (404 if unknown)
- `POST /ops/events/{event_id}/replay` — optional JSON `{"force": bool, "dry_run": bool}`;
  409 when the event is completed/ignored and `force` is not set
- `POST /ops/replay` — JSON `{"event_ids": [...]}` or `{"status": "failed", "type": …,
  "since": …, "until": …}`, plus `force` and `dry_run`; at most `OPS_REPLAY_MAX` events per
  call (`more: true` says call again); a dry run answers the count and the first rows

Bad input (including dates out of range) is 400 with `{"error": …}`; Postgres unreachable is
503. Every replay is logged with who asked (the token's name and the client address), when,
and the event ids (or the filters and the count). An address that keeps failing the token
check is answered only at its turn (`throttle.LoginThrottle`, shared with the console's
login): globally one at a time and slower per address, so parallel guessing is no faster
than serial; a right token is never delayed.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from webhook_worker.config import Settings
from webhook_worker.db import store
from webhook_worker.errors import ConfigError, PermanentError, TransientError
from webhook_worker.ops import audit, listing, values
from webhook_worker.ops import replay as event_replay
from webhook_worker.ops.throttle import LoginThrottle

log = structlog.get_logger("webhook_worker.ops.http_api")
Endpoint = Callable[[Request], Awaitable[Response]]
_TRUE = {"1", "true", "yes", "on"}


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(values.jsonable(content))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _JSON({"error": message}, status_code=status, headers=headers)


def match_operator(given: str, operators: tuple[tuple[str, str], ...]) -> str | None:
    """The name of the operator whose token `given` is, comparing against every token in
    constant time (no early exit), or None."""
    found: str | None = None
    candidate = given.encode()
    for name, token in operators:
        if hmac.compare_digest(candidate, token.encode()) and found is None:
            found = name
    return found


def _authorised(request: Request, operators: tuple[tuple[str, str], ...]) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return match_operator(given.strip(), operators)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _guard(settings: Settings, handler: Endpoint, throttle: LoginThrottle) -> Endpoint:
    operators = settings.operators

    async def endpoint(request: Request) -> Response:
        client = _client(request)
        operator = _authorised(request, operators)
        if operator is None:
            log.warning("ops_request_refused", path=request.url.path, client=client)
            await throttle.failed(client)
            return _error(401, "unauthorised", {"WWW-Authenticate": 'Bearer realm="ops"'})
        throttle.succeeded(client)
        request.state.settings = settings
        request.state.operator = operator
        try:
            return await handler(request)
        except ConfigError as exc:  # OpsInputError included
            return _error(400, exc.message)
        except TransientError:
            log.warning("ops_request_unavailable", path=request.url.path)
            return _error(503, "the database or Redis is unavailable; try again")
        except PermanentError:
            log.exception("ops_request_failed", path=request.url.path)
            return _error(500, "the ops request failed; see the logs")

    return endpoint


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in _TRUE


def _limit(raw: str | None) -> int:
    if raw is None:
        return listing.DEFAULT_LIST_LIMIT
    try:
        return int(raw)
    except ValueError:
        raise values.OpsInputError(f"limit {raw!r} is not an integer") from None


_MAX_BODY_BYTES = 2 * 1024 * 1024  # 10,000 event ids fit with room to spare


async def _json_body(request: Request) -> dict[str, Any]:
    """The JSON object sent, read under a size cap (the webhook body budget does not cover
    /ops)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            raise values.OpsInputError("the body is over 2 MiB; send fewer event ids per call")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise values.OpsInputError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise values.OpsInputError("the body must be a JSON object")
    return data


async def list_events(request: Request) -> Response:
    params = request.query_params
    since = values.parse_since(params.get("since"), name="since")
    async with store.acquire(request.app.state.pool, "listing events") as conn:
        events = await listing.list_events(
            conn,
            status=values.check_status(params.get("status")),
            event_type=params.get("type") or None,
            since=since,
            reason=params.get("reason") or None,
            limit=_limit(params.get("limit")),
        )
    return _JSON({"events": events})


async def show_event(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    raw = _flag(request.query_params.get("raw", "false"))
    async with store.acquire(request.app.state.pool, "reading an event") as conn:
        event = await listing.show_event(conn, event_id, raw=raw)
    if event is None:
        return _error(404, f"event {event_id} not found")
    return _JSON(event)


async def _replay(
    request: Request,
    *,
    event_ids: list[str],
    status: str | None,
    event_type: str | None,
    since: str | None,
    until: str | None,
    force: bool,
    dry_run: bool,
) -> event_replay.ReplayResult:
    settings: Settings = request.state.settings
    async with store.acquire(request.app.state.pool, "replaying events") as conn:
        selection = await event_replay.select_replay(
            conn,
            event_ids=event_ids,
            status=values.check_status(status),
            event_type=event_type,
            since=values.parse_since(since, name="since"),
            until=values.parse_since(until, name="until"),
            force=force,
            limit=settings.ops_replay_max,
            preview=dry_run,
        )
        result = await event_replay.replay_events(
            conn, request.app.state.redis, selection, dry_run=dry_run
        )
        filters = {"status": status, "type": event_type, "since": since, "until": until}
        used = {k: v for k, v in filters.items() if v is not None}
        if not dry_run and result.replayed:
            await audit.record_replay(
                conn,
                who=request.state.operator,
                client=_client(request),
                via="api",
                forced=force,
                filters=used or None,
                event_ids=result.replayed,
            )
    _log_replay(request, result, used)
    return result


_LOGGED_IDS = 100


def _log_replay(
    request: Request, result: event_replay.ReplayResult, filters: dict[str, str]
) -> None:
    """Who (token name, client address), when, and which events: the ids, or filter + count."""
    ids = result.replayed if not result.dry_run else [e["event_id"] for e in result.selected]
    fields: dict[str, Any] = {
        "who": {"operator": request.state.operator, "client": _client(request)},
        "at": datetime.now(UTC).isoformat(),
        "dry_run": result.dry_run,
        "count": len(result.replayed),
        "matching": result.count,
        "more": result.more,
    }
    if filters or len(ids) > _LOGGED_IDS:
        fields["filters"] = filters
    if len(ids) <= _LOGGED_IDS:
        fields["event_ids"] = ids
    log.info("ops_replayed", **fields)


async def replay_event(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    body = await _json_body(request)
    result = await _replay(
        request,
        event_ids=[event_id],
        status=None,
        event_type=None,
        since=None,
        until=None,
        force=_flag(body.get("force", request.query_params.get("force", False))),
        dry_run=_flag(body.get("dry_run", request.query_params.get("dry_run", False))),
    )
    if result.not_found:
        return _error(404, f"event {event_id} not found")
    return _JSON(result.as_dict(), status_code=409 if result.skipped else 200)


async def replay(request: Request) -> Response:
    body = await _json_body(request)
    event_ids = body.get("event_ids") or []
    if not isinstance(event_ids, list) or not all(isinstance(i, str) for i in event_ids):
        raise values.OpsInputError("event_ids must be a list of event id strings")
    for key in ("status", "type", "since", "until"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise values.OpsInputError(f"{key} must be a string")
    result = await _replay(
        request,
        event_ids=event_ids,
        status=body.get("status"),
        event_type=body.get("type"),
        since=body.get("since"),
        until=body.get("until"),
        force=_flag(body.get("force", False)),
        dry_run=_flag(body.get("dry_run", False)),
    )
    return _JSON(result.as_dict())


def ops_routes(settings: Settings, throttle: LoginThrottle | None = None) -> list[BaseRoute]:
    """Routes under /ops; none at all (so 404) when neither OPS_TOKEN nor OPS_USERS is set."""
    if not settings.operators:
        return []
    throttle = LoginThrottle() if throttle is None else throttle

    def guarded(handler: Endpoint) -> Endpoint:
        return _guard(settings, handler, throttle)

    return [
        Route("/ops/events", guarded(list_events), methods=["GET"]),
        Route("/ops/events/{event_id}", guarded(show_event), methods=["GET"]),
        Route("/ops/events/{event_id}/replay", guarded(replay_event), methods=["POST"]),
        Route("/ops/replay", guarded(replay), methods=["POST"]),
    ]
