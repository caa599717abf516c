"""Per-request cost of the listener bounds (`webhook_worker.receiver.listener`), without a network.

`python -m benchmarks.listener_cost` feeds the same keep-alive POSTs (a ~3 KB body, like a
Stripe event) through uvicorn's `HttpToolsProtocol` and through `BoundedHttpToolsProtocol`,
on uvloop, into a trivial ASGI app that reads the body and answers 200 — so the difference
is the bounds alone (the header count, two timers per request). Best of several rounds;
small enough to run on a shared machine, unlike `make bench`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from webhook_worker.receiver.listener import BoundedHttpToolsProtocol

REQUESTS = 20_000
ROUNDS = 7
BODY = b"{" + b'"k": "' + b"x" * 3000 + b'"}'
REQUEST = (
    b"POST /webhooks/stripe HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    b"stripe-signature: t=1,v1=" + b"0" * 64 + b"\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY
)


async def app(scope: Any, receive: Any, send: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


class _Transport(asyncio.Transport):
    def __init__(self, done: asyncio.Event) -> None:
        super().__init__()
        self.answers = 0
        self._done = done
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).startswith(b"HTTP/1.1 200"):
            self.answers += 1
            if self.answers == REQUESTS:
                self._done.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("sockname", "peername") else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _round(protocol_class: type[HttpToolsProtocol], config: Config) -> float:
    done = asyncio.Event()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = _Transport(done)
    protocol.connection_made(transport)
    started = time.perf_counter()
    for _ in range(REQUESTS):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # let the request's task run, as the loop would between reads
    await done.wait()
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    return elapsed / REQUESTS * 1e6


async def main() -> None:
    os.environ.setdefault("APP_ENV", "test")
    config = Config(app=app, lifespan="off", log_config=None, access_log=False)
    config.load()
    results: dict[str, list[float]] = {"uvicorn": [], "bounded": []}
    for _ in range(ROUNDS):  # interleaved, so drift on a shared machine hits both alike
        results["uvicorn"].append(await _round(HttpToolsProtocol, config))
        results["bounded"].append(await _round(BoundedHttpToolsProtocol, config))
    for name, values in results.items():
        print(
            f"{name:8} best {min(values):6.2f} µs/request  median {statistics.median(values):6.2f}"
        )
    print(f"bounds   +{min(results['bounded']) - min(results['uvicorn']):.2f} µs/request (best)")


if __name__ == "__main__":
    if sys.platform == "win32":  # pragma: no cover
        asyncio.run(main())
    else:
        uvloop.run(main())
