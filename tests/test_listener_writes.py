"""The receiver's connections write each answer once: uvicorn's two writes per response (the
status line and headers, then the body) reach the socket as one system call."""

from __future__ import annotations

import asyncio

from webhook_worker.receiver.listener import _OneWritePerIteration


class _Socket(asyncio.Transport):
    """A transport that records what reaches the socket, and how many writes it took."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def write_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 4242) if name == "peername" else default


async def _next_iteration() -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(done.set_result, None)  # runs after the flush scheduled before it
    await done


async def test_the_writes_of_one_iteration_reach_the_socket_as_one() -> None:
    socket = _Socket()
    transport = _OneWritePerIteration(socket, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert socket.writes == []
    await _next_iteration()
    assert socket.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 4242)  # the rest is the socket's


async def test_closing_writes_what_is_held_first_and_aborting_drops_it() -> None:
    loop = asyncio.get_running_loop()
    socket = _Socket()
    transport = _OneWritePerIteration(socket, loop)
    transport.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    transport.write_eof()
    transport.close()
    assert socket.writes == [b"HTTP/1.1 408 Request Timeout\r\n\r\n"]
    assert socket.events == ["eof", "close"]

    aborted = _Socket()
    transport = _OneWritePerIteration(aborted, loop)
    transport.write(b"half an answer")
    transport.abort()
    await _next_iteration()
    assert aborted.writes == [] and aborted.events == ["abort"]
