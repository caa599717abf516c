"""The uvicorn factories: each reads the environment once, configures logging and composes
its app. Only entry points read settings (STYLE.md); the apps themselves take `Settings`."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from webhook_worker.config import Settings
from webhook_worker.log import configure_logging, log_deprecations
from webhook_worker.ops import http_api
from webhook_worker.receiver import app as receiver_app
from webhook_worker.receiver import listener


def receiver_from_env() -> Starlette:
    """`webhook-worker serve`: settings from the environment (parsed once per process, for
    the app and the listener's bounds alike), logging, then the receiver."""
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level, e2e_bypass=settings.e2e_test_mode)
    log_deprecations(settings.deprecations)
    listener.configure(settings)
    return receiver_with_options(settings, freeze_heap=True)


def receiver_with_options(settings: Settings, *, freeze_heap: bool = False) -> Starlette:
    """The receiver, with the ops API on its port when OPS_ON_RECEIVER=true (deprecated)."""
    extra: list[BaseRoute] = http_api.ops_routes(settings) if settings.ops_on_receiver else []
    return receiver_app.create_app(settings, extra_routes=extra, freeze_heap=freeze_heap)
