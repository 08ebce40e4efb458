"""Drive Django's ASGIHandler in-process, like an ASGI server would, with many requests at once."""

import asyncio
from dataclasses import dataclass
from typing import Callable, List, Optional

from .probe import REQUEST_ID, probe


@dataclass
class Response:
    request_id: str
    status: Optional[int]
    body: bytes
    headers: dict = None

    @property
    def text(self) -> str:
        return self.body.decode()


def http_scope(path: str, request_id: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"x-req", request_id.encode())],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
    }


async def _serve(app, path: str, request_id: str, *, mark_sent: bool = False) -> Response:
    # Runs in a task of its own: REQUEST_ID is this request's, as a server's per-connection task.
    REQUEST_ID.set(request_id)
    body_sent = False
    never = asyncio.Event()  # the client never disconnects

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()  # Django's disconnect listener parks here until it is cancelled
        return {"type": "http.disconnect"}

    response = Response(request_id, None, b"")
    chunks: List[bytes] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = dict(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if mark_sent and not message.get("more_body", False):
                probe.record("body_sent", request_id)  # the last of the response has gone out

    await app(http_scope(path, request_id), receive, send)
    response.body = b"".join(chunks)
    return response


async def request(app, path: str, request_id: str) -> Response:
    """One request, in its own task (so its context, hence REQUEST_ID, is its own)."""
    return await asyncio.ensure_future(_serve(app, path, request_id))


async def run_many(
    app,
    path: str,
    count: int,
    *,
    concurrency: Optional[int] = None,
    prefix: str = "r",
    on_response: Optional[Callable[[Response], None]] = None,
) -> List[Response]:
    """``count`` requests to ``path``, all at once or at most ``concurrency`` in flight."""
    limit = asyncio.Semaphore(concurrency) if concurrency else None

    async def one(i: int) -> Response:
        if limit is None:
            response = await _serve(app, path, f"{prefix}{i}")
        else:
            async with limit:
                response = await _serve(app, path, f"{prefix}{i}")
        if on_response is not None:
            on_response(response)
        return response

    # gather() wraps each coroutine in a task of its own: one context per request.
    return await asyncio.gather(*(one(i) for i in range(count)))


def start(app, path: str, request_id: str, *, mark_sent: bool = False) -> "asyncio.Task[Response]":
    """A request running in the background; ``mark_sent``: record a ``body_sent`` stage when the
    response's last body message is sent."""
    return asyncio.ensure_future(_serve(app, path, request_id, mark_sent=mark_sent))
