"""The operator's dashboard at ``/ui``: static files shipped in the package, no build step.

The page (``proxy/ui/``: HTML, one script, one stylesheet) holds no data: everything it shows
comes from the admin API (``/api/status``, ``/api/events?follow=1``, ``/api/requests``,
``/api/models/{m}/logs?follow=1``), with the admin key when keys are configured. So the files
themselves are served without a key (a browser cannot send a bearer token on a navigation), and
what the page reads is guarded exactly like ``modelplane status`` is: the page asks for the key
on a 401 and keeps it for the browser tab (``sessionStorage``).
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.handlers import BaseRouteHandler
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_307_TEMPORARY_REDIRECT

UI_DIR = Path(__file__).parent / "ui"


def dashboard_handlers() -> list[BaseRouteHandler]:
    @get("/", sync_to_thread=False, include_in_schema=False)
    def root() -> Response[None]:
        """A browser pointed at the service lands on the dashboard."""
        return Response(None, status_code=HTTP_307_TEMPORARY_REDIRECT, headers={"location": "/ui/"})

    static = create_static_files_router(
        path="/ui",
        directories=[UI_DIR],
        html_mode=True,
        name="dashboard",
        include_in_schema=False,
        # a few kB that change with each release: always revalidated (304 when unchanged)
        cache_control=CacheControlHeader(no_cache=True),
    )
    return [root, static]
