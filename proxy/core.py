"""Everything one app's handlers share: the gateway, settings, queues, pools, metrics, waker."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.cooldown import ClientCooldowns
from proxy.forward import BackendPool
from proxy.gateway import Gateway
from proxy.metrics import ProxyMetrics
from proxy.queueing import Queues
from proxy.settings import ProxySettings
from proxy.wake import Waker


@dataclass
class ProxyCore:
    gateway: Gateway
    settings: ProxySettings
    queues: Queues
    metrics: ProxyMetrics
    waker: Waker
    pool: BackendPool
    cooldowns: ClientCooldowns = field(default_factory=ClientCooldowns)  # x_cooldown

    @classmethod
    def build(cls, gateway: Gateway, settings: ProxySettings) -> ProxyCore:
        queues = Queues()
        metrics = ProxyMetrics(gateway.routes, queues.stats)

        def live_endpoints() -> set[str]:
            return {route.endpoint for route in gateway.routes() if route.endpoint}

        return cls(
            gateway=gateway,
            settings=settings,
            queues=queues,
            metrics=metrics,
            waker=Waker(gateway, metrics),
            pool=BackendPool(settings, live_endpoints),
        )
