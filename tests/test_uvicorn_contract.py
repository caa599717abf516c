"""The one deliberate private coupling of the receiver (issue 26): the public listener
subclasses uvicorn's `HttpToolsProtocol` (webhook_worker/receiver/listener.py) and relies
on the methods it overrides and the per-connection attributes it reads. uvicorn is pinned to
the version this test ran on (pyproject.toml); a new uvicorn that renames or reshapes any
of them fails here before it can fail in production. The bounds themselves are exercised
against a real server by tests/integration/test_hostile_clients.py."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from webhook_worker.config import Settings
from webhook_worker.receiver import listener
from webhook_worker.receiver.listener import BoundedHttpToolsProtocol

# method: its parameters after self, as the subclass overrides and calls it
OVERRIDDEN = {
    "connection_made": ["transport"],
    "connection_lost": ["exc"],
    "data_received": ["data"],
    "on_headers_complete": [],
    "on_message_complete": [],
    "on_response_complete": [],
}


def test_uvicorn_is_the_pinned_version() -> None:
    assert version("uvicorn") == "0.55.0"


def test_the_overridden_methods_keep_their_signatures() -> None:
    for name, params in OVERRIDDEN.items():
        method = getattr(HttpToolsProtocol, name)
        assert list(inspect.signature(method).parameters)[1:] == params, name
        assert getattr(BoundedHttpToolsProtocol, name) is not method, name


async def test_a_connection_has_the_attributes_the_subclass_reads() -> None:
    listener.configure(Settings.from_env({"APP_ENV": "test"}))
    config = Config(app=lambda scope, receive, send: None, http="httptools")
    config.load()
    protocol = BoundedHttpToolsProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    for attribute in ("loop", "cycle", "parser", "transport"):
        assert hasattr(protocol, attribute), attribute
    assert protocol.loop is asyncio.get_running_loop()
