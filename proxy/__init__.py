"""modelplane proxy: one OpenAI endpoint in front of every model.

``create_app(gateway, settings)`` builds the Litestar app; serve it with uvicorn and
``http=http_protocol(app)`` (the proxy's own HTTP/1.1 connections, :mod:`proxy.server`).
``proxy.gateway`` is its contract with the reconciler.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.app import create_app
    from proxy.server import http_protocol
    from proxy.settings import ProxySettings

__all__ = ["ProxySettings", "create_app", "http_protocol"]
_HOMES = {
    "create_app": "proxy.app",
    "ProxySettings": "proxy.settings",
    "http_protocol": "proxy.server",
}


def __getattr__(name: str) -> Any:
    """Import the app on first use: every command imports ``proxy.gateway`` (the manifest schema
    takes the priority scale from it), and Litestar alone takes half a second to import."""
    if name not in _HOMES:
        raise AttributeError(f"module 'proxy' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
