"""What stands between the network and the routes: body size while it streams in, the Host header
(DNS rebinding), the Origin of state-changing requests (cross-site posts) and where an admin reload
may read an index from."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class BodyLimit:
    """Refuse a body above `max_bytes` from its Content-Length, before reading it, and stop one
    without a length (chunked) as soon as it streams past the limit: memory stays bounded."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _refuse(
                scope, receive, send, 413, f"the request body is larger than {self.max_bytes} bytes"
            )
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"the request body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)


class SameOriginPosts:
    """A browser on another site may post to a loopback service (a form or `fetch` with a simple
    content type) and fill the click log with fake queries; browsers name that site in `Origin`.
    Requests without Origin (scripts, ClipClient) and from the page the service serves pass."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and urlsplit(origin).netloc != host:
                await _refuse(scope, receive, send, 403, f"cross-origin request from {origin} refused")
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


def reload_folder(requested: str | None, started_with: Path, indexes_root: Path) -> Path:
    """The index folder an admin reload may load: the one the service started with, or a folder
    beside it or under the workspace's index directory; any other path is refused (403)."""
    if not requested:
        return started_with
    folder = Path(requested).expanduser().resolve()
    allowed = [started_with.resolve().parent, indexes_root.resolve()]
    if not any(folder.is_relative_to(root) for root in allowed):
        raise HTTPException(403, f"reloads read only index folders under {' or '.join(map(str, allowed))}")
    return folder
