"""ASGI middleware of the service: a limit on request bodies, and the headers every response
carries, errors included."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse

MAX_BODY = 16 * 1024  # bytes of a request body
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
                    "X-Content-Type-Options": "nosniff"}


class SecurityHeaders:
    """ASGI middleware: every response gets :data:`SECURITY_HEADERS` (the page's
    Content-Security-Policy, and ``nosniff`` so that no response is read as another type than
    the one it is sent as)."""

    def __init__(self, app, headers: dict[str, str] = SECURITY_HEADERS):
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k for k, _ in self.headers}
                message["headers"] = [*(h for h in message.get("headers", []) if h[0].lower() not in names),
                                      *self.headers]
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """ASGI middleware: a request whose body is over ``max_bytes`` (``paths``: the limits of
    some paths instead, e.g. an upload's) gets a 413, whether it says its length up front or not."""

    def __init__(self, app, max_bytes: int = MAX_BODY, paths: dict[str, int] | None = None):
        self.app, self.max_bytes, self.paths = app, max_bytes, dict(paths or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        most = self.paths.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > most):
            return await self._refuse(scope, receive, send, most)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > most:
                raise HTTPException(413, f"request body over {most} bytes")
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope, receive, send, most: int):
        response = JSONResponse({"detail": f"request body over {most} bytes"}, status_code=413)
        await response(scope, receive, send)
