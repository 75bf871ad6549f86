"""The Litestar application: the OpenAI surface, /upstream, probes, metrics, admin API.

Serve it with the proxy's own HTTP protocol (``uvicorn.Config(app, http=http_protocol(app))``,
see :mod:`proxy.server`): the OpenAI routes then run without ASGI in between, and only the
admin side goes through Litestar. Under any other ASGI server the same routes answer through
the ``/v1`` and ``/upstream`` mounts below, more slowly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

from litestar import Litestar, Request, Response, asgi
from litestar.exceptions import HTTPException
from litestar.types import Receive, Scope, Send

from proxy import errors
from proxy.admin import admin_handlers
from proxy.core import ProxyCore
from proxy.errors import ProxyError
from proxy.gateway import Gateway
from proxy.openai_routes import OpenAIRoutes
from proxy.settings import ProxySettings

log = logging.getLogger("modelplane.proxy")

Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


def _error_response(error: ProxyError) -> Response[bytes]:
    headers = {k.decode(): v.decode() for k, v in error.headers()}
    return Response(error.body(), status_code=error.status, headers=headers)


def _on_proxy_error(_: Request, exc: ProxyError) -> Response[bytes]:
    return _error_response(exc)


def _on_http_exception(_: Request, exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (unknown path, bad query parameter…) in OpenAI's shape too."""
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    codes = {404: "not_found", 405: "method_not_allowed"}
    error = ProxyError(exc.status_code, str(exc.detail), kind, codes.get(exc.status_code))
    return _error_response(error)


def _on_exception(request: Request, exc: Exception) -> Response[bytes]:
    log.error("internal error in %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(errors.internal_error(f"internal error: {type(exc).__name__}"))


def create_app(
    gateway: Gateway,
    settings: ProxySettings | None = None,
    *,
    lifespan: Sequence[Lifespan] = (),
) -> Litestar:
    """The proxy for ``gateway``. ``lifespan``: context managers the app enters on startup and
    leaves on shutdown (``modelplane run`` runs its reconcile loop in one). The shared state is
    at ``app.state.proxy`` (:class:`~proxy.core.ProxyCore`), the OpenAI routes at
    ``app.state.openai`` (for :func:`proxy.server.http_protocol`)."""
    core = ProxyCore.build(gateway, settings or ProxySettings())
    routes = OpenAIRoutes(core)

    @asgi("/v1", is_mount=True, copy_scope=False)
    async def v1(scope: Scope, receive: Receive, send: Send) -> None:
        await routes.v1(scope, receive, send)

    @asgi("/upstream", is_mount=True, copy_scope=False)
    async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
        await routes.upstream(scope, receive, send)

    def close_pool() -> None:
        core.pool.close()

    app = Litestar(
        route_handlers=[v1, upstream, *admin_handlers(core)],
        exception_handlers={
            ProxyError: _on_proxy_error,
            HTTPException: _on_http_exception,
            Exception: _on_exception,
        },
        lifespan=list(lifespan),
        on_shutdown=[close_pool],
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
    app.state.proxy = core
    app.state.openai = routes
    return app
