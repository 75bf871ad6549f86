"""Who a request is from when a proxy on the same box (nginx, a load balancer) forwards it.

uvicorn's ``proxy_headers`` behaviour, kept for the proxy's own connections: a request from a
trusted peer (``forwarded_allow_ips``, default 127.0.0.1) is logged as coming from the client its
``X-Forwarded-For`` names: the nearest address that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache


class ForwardedFor:
    """The trusted peers: ``*``, addresses and networks."""

    def __init__(self, trusted: Sequence[str] | str | None) -> None:
        if isinstance(trusted, str):
            trusted = [t.strip() for t in trusted.split(",")]
        self.everyone = "*" in (trusted or [])
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.literals: set[str] = set()
        for entry in trusted or []:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.literals.add(entry)

    def trusts(self, host: str) -> bool:
        if self.everyone or host in self.literals:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client(self, header: bytes) -> str:
        """The client an ``X-Forwarded-For`` value names."""
        hosts = [h.strip() for h in header.decode("latin-1").split(",") if h.strip()]
        for host in reversed(hosts):
            if not self.trusts(host):
                return host
        return hosts[0] if hosts else ""


def forwarded_for(trusted: Sequence[str] | str | None) -> ForwardedFor:
    """One :class:`ForwardedFor` per setting (parsed once, not per connection)."""
    return _cached(tuple(trusted) if isinstance(trusted, list) else trusted)


@lru_cache(maxsize=8)
def _cached(trusted: tuple[str, ...] | str | None) -> ForwardedFor:
    return ForwardedFor(trusted)
