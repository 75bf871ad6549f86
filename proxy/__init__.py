"""modelplane proxy: one OpenAI endpoint in front of every model.

``create_app(gateway, settings)`` builds the Litestar app; serve it with uvicorn and
``http=http_protocol(app)`` (the proxy's own HTTP/1.1 connections, :mod:`proxy.server`).
``proxy.gateway`` is its contract with the reconciler.
"""

from proxy.app import create_app
from proxy.server import http_protocol
from proxy.settings import ProxySettings

__all__ = ["ProxySettings", "create_app", "http_protocol"]
