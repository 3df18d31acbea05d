"""Request limits applied before anything else runs (before routing and before authentication).

A body larger than ``[api] max_body_kb`` is refused with 413: at once when its
Content-Length says so (nothing of it is read), and as soon as a body streamed without
one passes the limit (nothing more is read).  A plain ASGI middleware, so the live
stream is not buffered.
"""

from __future__ import annotations

import json
from typing import Any


def _too_large(limit: int) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"error": f"request body larger than {limit // 1024} KiB refused; send less ([api] max_body_kb)"}).encode()
    start = {"type": "http.response.start", "status": 413,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1  # unparseable: refuse rather than read
                if declared > self.max_bytes:
                    for message in _too_large(self.max_bytes):
                        await send(message)
                    return
        received = 0
        refused = False
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        for m in _too_large(self.max_bytes):
                            await send(m)
                    return {"type": "http.disconnect"}  # the app stops reading; what it answers is dropped
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise  # the app's own failure: the server's error handling answers it
