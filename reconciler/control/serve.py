"""``modelplane run``: uvicorn serving the proxy, with the reconcile loop in its lifespan.

One process, one event loop: the loop's passes and the proxy's requests share it, which is why
every pass hands slow work (starting a model) to background tasks. SIGTERM makes uvicorn stop
accepting, lets requests in flight finish (up to ``grace``), then the lifespan stops the loop;
backends keep running for the next ``modelplane run`` to adopt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from litestar import Litestar

from proxy.app import create_app
from proxy.gateway import ApiKey
from proxy.logsetup import setup_logging
from proxy.server import http_protocol, settle_gc
from proxy.settings import ProxySettings
from reconciler.gpus.inventory import GpuCollector
from reconciler.manifests.manifest_set import ManifestSet
from reconciler.manifests.schema import ProxySpec
from reconciler.ops.systemd import SystemdNotifier
from reconciler.state import run_record
from reconciler.state.lock import StateLock
from reconciler.units import is_loopback, parse_listen

from .controller import Controller
from .service import Service
from .systemd_status import SystemdReporter

log = logging.getLogger("modelplane")


def proxy_settings(spec: ProxySpec) -> ProxySettings:
    """The proxy's limits from the Node manifest."""
    return ProxySettings(
        max_body_bytes=spec.max_body_size,
        max_queue=spec.max_queue,
        queue_timeout=spec.queue_timeout,
        loading_comment_interval=spec.loading_comment_interval,
        access_log=spec.access_log,
    )


async def serve(
    directory: Path,
    listen: str | None = None,
    log_format: str = "text",
    allow_empty: bool = False,
    grace: float = 30.0,
    settings: ProxySettings | None = None,
) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code."""
    setup_logging(log_format)  # type: ignore[arg-type]
    # Read (and removed from the environment) first: backends started later must not inherit it.
    notifier = SystemdNotifier.from_environ()
    controller = await Controller.open(directory)
    lock = StateLock(controller.state_dir)  # one run (or apply) per state directory
    try:
        lock.acquire()
        manifests, _ = await controller.load(online=False)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        lock.release()
        await controller.close()
        return 1
    except BaseException:  # (StateDirLocked: the CLI says who holds it)
        lock.release()
        await controller.close()
        raise
    try:
        return await _serve_locked(
            controller, manifests, directory, listen, notifier, allow_empty, grace, settings
        )
    finally:  # however start-up or serving ends
        lock.release()


async def _serve_locked(
    controller: Controller,
    manifests: ManifestSet,
    directory: Path,
    listen: str | None,
    notifier: SystemdNotifier,
    allow_empty: bool,
    grace: float,
    settings: ProxySettings | None,
) -> int:
    """:func:`serve` once the state directory is locked and the manifests read."""
    node = manifests.node
    host, port = parse_listen(listen or node.listen)
    if not node.api_keys and not is_loopback(host):
        log.warning(
            "no apiKeys in the Node manifest: listening on 127.0.0.1 instead of %s "
            "(add apiKeys to serve other hosts)",
            host,
        )
        host = "127.0.0.1"
    elif not node.api_keys:
        log.info("no apiKeys: open access, on loopback only (%s)", host)

    service = Service(controller, allow_empty=allow_empty)
    service.started_with(node, host, listen_fixed_by_flag=listen is not None)
    token = run_record.new_admin_token(controller.state_dir)
    service.admin_key = ApiKey("modelplane-cli", hashlib.sha256(token.encode()).hexdigest())
    systemd = SystemdReporter(notifier, service)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await service.start()
        settle_gc()  # what exists now lives as long as the process: out of the GC's way
        log.info("modelplane serving on http://%s:%d (manifests: %s)", host, port, directory)
        try:
            yield
        finally:
            await service.stop()
            left = service.left_running()
            if left:
                log.info(
                    "%d backend(s) left running for adoption (%s); `modelplane down` stops them",
                    len(left),
                    ", ".join(left),
                )

    app = create_app(service, settings or proxy_settings(node.proxy), lifespan=[lifespan])
    app.state.proxy.metrics.registry.register(GpuCollector(service.gpu_snapshot))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(grace),
        http=http_protocol(app),  # the proxy's own HTTP/1.1 connections (the fast path)
    )
    server = _Server(config)
    url = run_record.connect_url(host, port)

    def started() -> None:  # the socket is bound, after the lifespan's first pass
        run_record.write(controller.state_dir, url, controller.manifest_dir)
        systemd.ready()

    server.on_started = started
    server.on_exit = service.end_followers
    service.on_exit_request = lambda: on_signal(signal.SIGTERM)  # POST /api/down

    def on_signal(sig: int) -> None:
        systemd.stopping()
        server.handle_exit(sig, None)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    systemd.start()  # watchdog pings from this event loop (start timeout extended until READY)
    try:
        await server.serve()
    finally:
        run_record.mark_stopped(controller.state_dir)
        await systemd.stop()
    return 0 if server.started else 1


class _Server(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM after its graceful shutdown, which would make the
    process die of the signal; modelplane handles the signals itself and exits 0.

    ``on_started`` is called once the listening socket is bound (systemd's READY=1);
    ``on_exit`` runs when the stop begins (to end streams that never end on their own).
    """

    on_started: Callable[[], None] | None = None
    on_exit: Callable[[], None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.on_exit is not None:
            self.on_exit()


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (faster sockets for the proxy), else asyncio's loop."""
    factory = None
    if _has("uvloop"):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        code = runner.run(coro)
    _abandon_stalled_downloads(code)
    return code


def _abandon_stalled_downloads(code: int, grace: float = 5.0) -> None:
    """A download whose socket read is stalled cannot be interrupted, and huggingface_hub's file
    workers would hold the interpreter's exit until the hub answers: exit without them (the
    download starts over on the next ``modelplane run``)."""
    from reconciler.weights.hub_cache import lingering_threads

    stalled = lingering_threads(grace)
    if stalled:
        log.warning("exiting with %d download(s) still stalled on the hub", len(stalled))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
