"""The ops HTTP API under /ops, mounted by the receiver; the same `ops` functions as the CLI.

Off unless `OPS_TOKEN` is set: then no route exists and /ops/* answers 404. With a token,
every request needs `Authorization: Bearer <token>`, compared in constant time; a missing
or wrong token gets 401 before any database work. Handlers find the asyncpg pool at
`request.app.state.pool` and the ArqRedis at `request.app.state.redis`.

- `GET  /ops/events?status=&type=&since=&limit=` — newest first
- `GET  /ops/events/{event_id}?raw=true` — status, attempts, error, ledger rows (404 if unknown)
- `POST /ops/events/{event_id}/replay` — optional JSON `{"force": bool, "dry_run": bool}`;
  409 when the event is completed/ignored and `force` is not set
- `POST /ops/replay` — JSON `{"event_ids": [...]}` or `{"status": "failed", "type": …,
  "since": …}`, plus `force` and `dry_run`

Bad input is 400 with `{"error": …}`; Postgres unreachable is 503.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from webhook_worker import ops, store
from webhook_worker.config import Settings
from webhook_worker.errors import ConfigError, PermanentError, TransientError

log = structlog.get_logger("webhook_worker.ops_api")
Endpoint = Callable[[Request], Awaitable[Response]]
_TRUE = {"1", "true", "yes", "on"}


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(ops.jsonable(content))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _JSON({"error": message}, status_code=status, headers=headers)


def _authorised(request: Request, token: bytes) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode(), token)


def _guard(token: str, handler: Endpoint) -> Endpoint:
    expected = token.encode()

    async def endpoint(request: Request) -> Response:
        if not _authorised(request, expected):
            log.warning("ops_request_refused", path=request.url.path)
            return _error(401, "unauthorised", {"WWW-Authenticate": 'Bearer realm="ops"'})
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
        return ops.DEFAULT_LIST_LIMIT
    try:
        return int(raw)
    except ValueError:
        raise ops.OpsInputError(f"limit {raw!r} is not an integer") from None


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ops.OpsInputError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ops.OpsInputError("the body must be a JSON object")
    return data


async def list_events(request: Request) -> Response:
    params = request.query_params
    since = ops.parse_since(params.get("since"))
    async with store.acquire(request.app.state.pool, "listing events") as conn:
        events = await ops.list_events(
            conn,
            status=ops.check_status(params.get("status")),
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
        event = await ops.show_event(conn, event_id, raw=raw)
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
    force: bool,
    dry_run: bool,
) -> ops.ReplayResult:
    async with store.acquire(request.app.state.pool, "replaying events") as conn:
        selection = await ops.select_replay(
            conn,
            event_ids=event_ids,
            status=ops.check_status(status),
            event_type=event_type,
            since=ops.parse_since(since),
            force=force,
        )
        return await ops.replay_events(conn, request.app.state.redis, selection, dry_run=dry_run)


async def replay_event(request: Request) -> Response:
    event_id = request.path_params["event_id"]
    body = await _json_body(request)
    result = await _replay(
        request,
        event_ids=[event_id],
        status=None,
        event_type=None,
        since=None,
        force=_flag(body.get("force", request.query_params.get("force", False))),
        dry_run=_flag(body.get("dry_run", request.query_params.get("dry_run", False))),
    )
    if result.not_found:
        return _error(404, f"event {event_id} not found")
    log.info("ops_replayed", count=len(result.replayed), dry_run=result.dry_run)
    return _JSON(result.as_dict(), status_code=409 if result.skipped else 200)


async def replay(request: Request) -> Response:
    body = await _json_body(request)
    event_ids = body.get("event_ids") or []
    if not isinstance(event_ids, list) or not all(isinstance(i, str) for i in event_ids):
        raise ops.OpsInputError("event_ids must be a list of event id strings")
    for key in ("status", "type", "since"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ops.OpsInputError(f"{key} must be a string")
    result = await _replay(
        request,
        event_ids=event_ids,
        status=body.get("status"),
        event_type=body.get("type"),
        since=body.get("since"),
        force=_flag(body.get("force", False)),
        dry_run=_flag(body.get("dry_run", False)),
    )
    log.info("ops_replayed", count=len(result.replayed), dry_run=result.dry_run)
    return _JSON(result.as_dict())


def ops_routes(settings: Settings) -> list[BaseRoute]:
    """Routes under /ops; none at all (so 404) when OPS_TOKEN is unset."""
    token = settings.ops_token
    if not token:
        return []
    return [
        Route("/ops/events", _guard(token, list_events), methods=["GET"]),
        Route("/ops/events/{event_id}", _guard(token, show_event), methods=["GET"]),
        Route("/ops/events/{event_id}/replay", _guard(token, replay_event), methods=["POST"]),
        Route("/ops/replay", _guard(token, replay), methods=["POST"]),
    ]
