"""modelplane proxy: one OpenAI endpoint in front of every model.

``create_app(gateway, settings)`` builds the Litestar app; ``proxy.gateway`` is its contract with
the reconciler.
"""

from proxy.app import create_app
from proxy.settings import ProxySettings

__all__ = ["ProxySettings", "create_app"]
