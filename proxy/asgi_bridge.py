"""The Litestar app (probes, metrics, admin API) answering requests on the proxy's own
connections (:mod:`proxy.server`), over ASGI as uvicorn would run it.

None of these requests is on the hot path: this is the plain ASGI contract (scope, ``receive``,
``send``) mapped onto a :class:`~proxy.native.NativeDownstream`, with uvicorn's behaviour where
an app misbehaves: an exception before the response started is a 500, after it the connection
is cut; either is logged as uvicorn logs it.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from proxy.channel import ClientGone
from proxy.native import NativeDownstream

if TYPE_CHECKING:
    from proxy.server import ProxyHttpProtocol

log = logging.getLogger("uvicorn.error")

PLAIN = [(b"content-type", b"text/plain; charset=utf-8")]


def http_scope(request: NativeDownstream, conn: ProxyHttpProtocol) -> dict[str, Any]:
    root_path: str = conn.config.root_path
    path = request.raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version,
        "server": conn.server_addr,
        "client": conn.client_addr,
        "scheme": "http",
        "method": request.method,
        "root_path": root_path,
        "path": root_path + path,
        "raw_path": root_path.encode() + request.raw_path,
        "query_string": request.query,
        "headers": request.headers,
        "state": conn.app_state.copy(),
    }


async def serve_asgi(app: Any, request: NativeDownstream, conn: ProxyHttpProtocol) -> None:
    """Run ``app`` for ``request``."""
    body = request.body_chunks(sys.maxsize)

    async def receive() -> dict[str, Any]:
        if not request.body_complete and not request.disconnected:
            try:
                chunk = await anext(body, b"")
            except ClientGone:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunk, "more_body": not request.body_complete}
        await request.wait_over()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if request.started:
                raise RuntimeError("http.response.start sent twice")
            headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", ())]
            await request.start(message["status"], headers)
            request.flush()  # a stream's first event may be long in coming
        elif kind == "http.response.body":
            if not request.started or request.finished:
                raise RuntimeError("http.response.body outside a response")
            chunk = bytes(message.get("body", b""))
            if message.get("more_body", False):
                await request.send(chunk)
            else:
                await request.end(chunk)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    try:
        await app(http_scope(request, conn), receive, send)
    except Exception as exc:
        log.error("Exception in ASGI application\n", exc_info=exc)
        if not request.started:
            await request.respond(500, list(PLAIN), b"Internal Server Error")
        else:
            request.cut(exc)
    else:
        if not request.started:
            log.error("ASGI callable returned without starting response.")
            await request.respond(500, list(PLAIN), b"Internal Server Error")
        elif not request.finished and not request.disconnected:
            log.error("ASGI callable returned without completing response.")
            request.cut(RuntimeError("response not completed"))
    finally:
        await body.aclose()
        request.close()
