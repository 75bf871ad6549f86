"""The OpenAI surface (``/v1/...``) and the ``/upstream/{model}/...`` passthrough.

The handlers take a :class:`~proxy.channel.Downstream`: the proxy's own HTTP connections
(:mod:`proxy.server`) call :meth:`OpenAIRoutes.serve_v1` / :meth:`OpenAIRoutes.serve_upstream`
directly; :meth:`OpenAIRoutes.v1` / :meth:`OpenAIRoutes.upstream` are the same as ASGI handlers,
mounted in the Litestar app for other servers. A request goes through:

1. authentication (``Authorization: Bearer``, when keys are configured);
2. the body: JSON read once, or multipart scanned up to its ``model`` field;
3. the route (404 for unknown models and for models the key may not reach);
4. wake, when the model is not Ready (streams get ``: loading`` comments meanwhile);
5. a slot in the model's priority queue (429 when full, 503 after the wait bound); a Ready model
   with a free slot and nobody waiting takes it without awaiting anything;
6. ``gateway.begin_request`` → forward → relay the reply → ``gateway.end_request``;
7. metrics, the request log record and one access-log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from typing import TypeVar
from urllib.parse import unquote

import msgspec
from litestar.types import Receive, Scope, Send

from proxy import errors
from proxy.auth import Access, authenticate
from proxy.body import MultipartModelFinder, multipart_boundary, no_model_field, parse_json_request
from proxy.channel import AsgiDownstream, ClientGone, Downstream
from proxy.core import ProxyCore
from proxy.errors import ProxyError
from proxy.forward import BrokenReply, Relayed, classify, is_sse, pump, relay, request_headers
from proxy.gateway import ModelRoute, Phase, Unavailable
from proxy.hints import NONE as NO_HINTS
from proxy.hints import ClientHints
from proxy.loading import progress_text, reasoning_event
from proxy.queueing import ModelQueue, QueueFull, QueueTimeout, queue_json, resolve_priority
from proxy.request import DISCONNECTED, Exchange, Outgoing, finish, pick_headers, target
from proxy.upstream import Reply, UpstreamError

log = logging.getLogger("modelplane.proxy")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx in front: do not buffer the stream
]
T = TypeVar("T")
WAKE_GRACE = 30.0  # seconds past a model's startup_timeout before the proxy stops waiting


def model_entry(name: str, route: ModelRoute, alias_of: str | None = None) -> dict[str, object]:
    """One ``/v1/models`` entry: OpenAI's fields plus modelplane's ``phase``."""
    entry: dict[str, object] = {
        "id": name,
        "object": "model",
        "created": route.created,
        "owned_by": "modelplane",
        "phase": route.phase,
    }
    if alias_of is not None:
        entry["alias_of"] = alias_of
    return entry


class OpenAIRoutes:
    """The ASGI handlers; one instance per app."""

    def __init__(self, core: ProxyCore) -> None:
        self.core = core
        self.gateway = core.gateway
        self.settings = core.settings

    # --- entry points -------------------------------------------------------------------------

    async def serve_v1(self, down: Downstream) -> None:
        """Everything under ``/v1``."""
        path = down.raw_path
        method = down.method
        if method == "POST":
            await self._handle(down, upstream=False)
            return
        try:
            if method in ("GET", "HEAD") and path in (b"/v1/queue", b"/v1/queue/"):
                await self._queue(down)
            elif method in ("GET", "HEAD") and (path in (b"/v1/models", b"/v1/models/")):
                await self._models(down, None)
            elif method in ("GET", "HEAD") and path.startswith(b"/v1/models/"):
                name = unquote(path[len(b"/v1/models/") :].decode("utf-8", "replace"))
                await self._models(down, name)
            else:
                error = errors.method_not_allowed(
                    method, path.decode("latin-1"), "POST (or GET /v1/models)"
                )
                await down.fail(error)
        finally:
            down.close()

    async def serve_upstream(self, down: Downstream) -> None:
        """``/upstream/{model}/{path}``: any method, passed through to the model's backend."""
        await self._handle(down, upstream=True)

    async def v1(self, scope: Scope, receive: Receive, send: Send) -> None:
        """:meth:`serve_v1` for ASGI servers (``modelplane run`` uses :mod:`proxy.server`)."""
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        await self.serve_v1(AsgiDownstream(scope, receive, send))

    async def upstream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """:meth:`serve_upstream` for ASGI servers."""
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        await self.serve_upstream(AsgiDownstream(scope, receive, send))

    # --- /v1/models ---------------------------------------------------------------------------

    async def _models(self, down: Downstream, model: str | None) -> None:
        try:
            access = self._authenticate_with(pick_headers(down.headers).authorization)
            if model is None:
                data = []
                for route in self.gateway.routes():
                    if access.may_reach(route):
                        data.append(model_entry(route.name, route))
                        data.extend(model_entry(a, route, route.name) for a in route.aliases)
                body: object = {"object": "list", "data": data}
            else:
                route = self._route(model, access)
                alias_of = route.name if model != route.name else None
                body = model_entry(model, route, alias_of)
        except ProxyError as error:
            await down.fail(error)
            return
        await down.respond_json(200, msgspec.json.encode(body))

    async def _queue(self, down: Downstream) -> None:
        """``GET /v1/queue`` (Model Boss): waiting and in-flight requests per model the key
        may reach."""
        try:
            access = self._authenticate_with(pick_headers(down.headers).authorization)
        except ProxyError as error:
            await down.fail(error)
            return
        routes = [r for r in self.gateway.routes() if access.may_reach(r)]
        view = queue_json(routes, self.core.queues.stats())
        await down.respond_json(200, msgspec.json.encode(view))

    # --- proxied requests ---------------------------------------------------------------------

    async def _handle(self, down: Downstream, upstream: bool) -> None:
        ex = Exchange(
            time.perf_counter(),
            time.time(),
            down.client,
            down.method,
            down.raw_path.decode("latin-1"),
        )
        try:
            try:
                if upstream:
                    await self._upstream(down, ex)
                else:
                    await self._api(down, ex)
            except ProxyError as error:
                ex.status = error.status
                await down.fail(error)
            except ClientGone:
                ex.status = DISCONNECTED
            except BrokenReply as broken:
                ex.status = broken.error.status
                down.cut(broken)  # the client must see the reply cut off, not complete
            except Exception:
                log.exception("internal error in %s %s", ex.method, ex.path)
                ex.status = 500
                await down.fail(errors.internal_error("internal error in the proxy (logged)"))
        except asyncio.CancelledError:
            if not down.disconnected:
                raise
            # The client went away: the watcher cancelled us; the upstream call is closed.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            ex.status = DISCONNECTED
        finally:
            down.close()
            finish(ex, down, self.core, upstream)

    async def _api(self, down: Downstream, ex: Exchange) -> None:
        headers = down.headers
        picked = pick_headers(headers)
        access = self._authenticate_with(picked.authorization)
        limit = self.settings.max_body_bytes
        if picked.content_length is not None and picked.content_length > limit:
            raise errors.too_large(limit)
        boundary = (
            multipart_boundary(picked.content_type)
            if picked.content_type[:10].lower() == "multipart/"
            else None
        )
        if boundary is not None:
            ex.requested, rest = await self._read_multipart(down, boundary)
            content: AsyncIterable[bytes] | bytes = rest
            stream, x_priority = False, None
        else:
            request = parse_json_request(await down.read_body(limit))
            ex.requested, content = request.model, request.content
            stream, x_priority = request.stream, request.x_priority
            self._apply_hints(ex, request.hints)
        route = self._route(ex.requested, access)
        ex.model = route.name
        try:
            priority = resolve_priority(picked.x_priority, x_priority, route.priority)
        except ValueError as exc:
            raise errors.bad_request(str(exc), "invalid_priority", param="x_priority") from None
        outgoing = Outgoing(
            target(down.raw_path, down.query),
            request_headers(headers, drop_authorization=not access.open),
            content,
            None if isinstance(content, bytes) else picked.content_length,
        )
        await self._serve(down, ex, route, priority, stream, outgoing)

    def _apply_hints(self, ex: Exchange, hints: ClientHints) -> None:
        """Model Boss's fields: who asks (logged instead of the address), its cooldown, and how
        long the model should stay loaded after this request. Most requests carry none."""
        if hints is NO_HINTS:
            return
        if hints.client_id:
            ex.client = hints.client_id
        if hints.cooldown:
            left = self.core.cooldowns.check(ex.client, hints.cooldown, ex.wall)
            if left is not None:
                raise errors.cooling_down(ex.client, left)
        ex.stay_warm = hints.stay_warm

    async def _upstream(self, down: Downstream, ex: Exchange) -> None:
        rest = down.raw_path[len(b"/upstream/") :]
        name, _, tail = rest.partition(b"/")
        ex.requested = unquote(name.decode("utf-8", "replace"))
        headers = down.headers
        picked = pick_headers(headers)
        access = self._authenticate_with(picked.authorization)
        if not ex.requested:
            raise errors.not_found("use /upstream/{model}/{path}")
        route = self._route(ex.requested, access)
        ex.model = route.name
        limit = self.settings.max_body_bytes
        if picked.content_length is not None and picked.content_length > limit:
            raise errors.too_large(limit)
        outgoing = Outgoing(
            target(b"/" + tail, down.query),
            request_headers(headers, drop_authorization=not access.open),
            b"",
        )
        if picked.chunked or picked.content_length:
            # Streamed: a backend's web UI may upload files.
            outgoing.content = down.body_chunks(limit)
            outgoing.content_length = picked.content_length
        else:
            await down.read_body(limit)  # empty; also starts the disconnect watch
        endpoint = await self._ready_endpoint(down, route, stream=False)
        self.gateway.begin_request(route.name)  # no slot: UIs load many small files at once
        try:
            endpoint = await self._recheck(down, route.name, endpoint)
            await self._forward(down, ex, route, endpoint, outgoing)
        finally:
            self.gateway.end_request(route.name)

    async def _read_multipart(
        self, down: Downstream, boundary: str
    ) -> tuple[str, AsyncIterator[bytes]]:
        """Read up to the ``model`` field; the content to forward is those bytes, then the rest
        of the body as it arrives (the body limit still applies)."""
        finder = MultipartModelFinder(boundary)
        limit = self.settings.max_body_bytes
        chunks = down.body_chunks(limit)
        held: list[bytes] = []
        model = None
        try:
            async for chunk in chunks:
                held.append(chunk)
                if (model := finder.feed(chunk)) is not None:
                    break
        finally:
            await chunks.aclose()
        if model is None:
            raise no_model_field()
        return model, _prefixed(held, down.body_chunks(limit))

    async def _serve(
        self,
        down: Downstream,
        ex: Exchange,
        route: ModelRoute,
        priority: int,
        stream: bool,
        outgoing: Outgoing,
    ) -> None:
        """Wake, queue, forward; ``begin_request``/``end_request`` bracket the forwarding."""
        name = route.name
        queue = self.core.queues.get(name)
        limit = route.max_concurrency
        ready = route.endpoint if route.phase == Phase.READY else None
        if ready and queue.try_acquire(limit):
            # The usual case: nothing is awaited before begin_request, so nothing can have
            # changed since the route was looked up.
            endpoint, waited = ready, False
        else:
            reasoning = route.loading_as_reasoning and ex.path.startswith("/v1/chat/completions")
            endpoint = await self._ready_endpoint(down, route, stream, reasoning)
            await self._slot(down, name, queue, priority, limit)
            waited = True
        slot_start = time.perf_counter()
        self.gateway.begin_request(name)
        try:
            if waited:
                endpoint = await self._recheck(down, name, endpoint)
            await self._forward(down, ex, route, endpoint, outgoing)
        finally:
            if ex.stay_warm:  # before end_request: a stayWarm 0 model must not go first
                self.gateway.stay_warm(name, ex.stay_warm)
            self.gateway.end_request(name)
            queue.release(limit, time.perf_counter() - slot_start)

    async def _slot(
        self, down: Downstream, name: str, queue: ModelQueue, priority: int, limit: int
    ) -> None:
        """A slot in the model's queue: at once, or after waiting (a started stream gets
        ``: queued`` comments meanwhile); 429 when the queue is full, 503 past the wait bound."""
        waiting = queue.acquire(
            priority, limit, self.settings.max_queue, self.settings.queue_timeout
        )
        try:
            if down.started:
                await self._with_comments(down, f"queued for {name}", waiting)
            else:
                await waiting
        except QueueFull as full:
            raise errors.queue_full(name, full.queued, full.retry_after) from None
        except QueueTimeout as timeout:
            raise errors.queue_timeout(name, timeout.waited, timeout.retry_after) from None

    # --- wake ---------------------------------------------------------------------------------

    async def _ready_endpoint(
        self, down: Downstream, route: ModelRoute, stream: bool, reasoning: bool = False
    ) -> str:
        """The endpoint of a Ready model at once; else wake it (a stream starts its SSE reply
        now and gets ``: loading`` comments while it waits, or with ``reasoning`` the progress
        as ``reasoning_content`` deltas a chat UI shows: proxy/loading.py)."""
        if route.phase == Phase.READY and route.endpoint:
            return route.endpoint
        future = self.core.waker.pending(route.name)
        if stream and not down.started:
            await down.start(200, list(SSE_HEADERS))
        # The gateway bounds a wake by startupTimeout; this bound only guards against a wake
        # that never returns (a bug there must not pile requests up here forever).
        limit = route.startup_timeout + WAKE_GRACE
        try:
            async with asyncio.timeout(limit):
                if down.started:
                    return await self._with_comments(
                        down,
                        f"loading {route.name}",
                        asyncio.shield(future),
                        reasoning_for=route.name if reasoning else None,
                    )
                return await asyncio.shield(future)
        except Unavailable as exc:
            raise errors.unavailable(exc.message, exc.status, exc.retry_after) from None
        except TimeoutError:
            raise errors.unavailable(
                f"model `{route.name}` did not become ready within {limit:.0f} s"
            ) from None

    async def _recheck(self, down: Downstream, name: str, endpoint: str) -> str:
        """After waiting, the model may have moved or stopped; now that the request counts as
        in flight it cannot be unloaded any more, so look once more."""
        route = self.gateway.route(name)
        if route is None:
            raise errors.model_not_found(name)
        if route.phase == Phase.READY and route.endpoint:
            return route.endpoint
        return await self._ready_endpoint(down, route, stream=False)

    async def _with_comments(
        self,
        down: Downstream,
        what: str,
        awaitable: Awaitable[T],
        reasoning_for: str | None = None,
    ) -> T:
        """Await ``awaitable`` while a side task sends ``: <what> (N s)`` comments on the open
        stream (``reasoning_content`` deltas for the model ``reasoning_for`` instead). The
        awaiting happens here, in the request's task, so a disconnect cancels it exactly as it
        would without comments."""
        tick = (
            self._tick(down, what)
            if reasoning_for is None
            else self._tick_reasoning(down, reasoning_for)
        )
        ticker = asyncio.get_running_loop().create_task(tick)
        try:
            return await awaitable
        finally:
            ticker.cancel()
            await asyncio.wait({ticker})

    async def _tick(self, down: Downstream, what: str) -> None:
        start = time.monotonic()
        while True:
            await down.comment(f"{what} ({time.monotonic() - start:.0f} s)")
            await asyncio.sleep(self.settings.loading_comment_interval)

    async def _tick_reasoning(self, down: Downstream, model: str) -> None:
        start = time.monotonic()
        first = True
        while True:
            waited = time.monotonic() - start
            await down.progress(reasoning_event(model, progress_text(model, waited, first)))
            first = False
            await asyncio.sleep(self.settings.loading_comment_interval)

    # --- forwarding ---------------------------------------------------------------------------

    async def _forward(
        self,
        down: Downstream,
        ex: Exchange,
        route: ModelRoute,
        endpoint: str,
        out: Outgoing,
    ) -> None:
        name = route.name
        pools = self.core.pool
        upstream = pools.acquire(endpoint)
        try:
            try:
                reply = await upstream.request(
                    ex.method,
                    out.target,
                    out.headers,
                    out.content,
                    out.content_length,
                    route.request_timeout,
                    route.idle_timeout,
                )
            except UpstreamError as exc:
                error = classify(name, exc)
                self._report(name, error, exc.backend_failed)
                raise error from None
            try:
                ex.streamed = is_sse(reply)
                if down.started:  # our SSE reply is open already (we waited for a wake)
                    relayed = await self._into_open_stream(down, reply, name, ex)
                else:
                    relayed = await relay(down, reply, name, self.settings.max_buffered_response)
            except BrokenReply as broken:
                self._report(name, broken.error, broken.backend_failed)
                raise
            finally:
                reply.close()
        finally:
            pools.release(endpoint)
        ex.usage = relayed.usage
        if relayed.broken is not None:
            ex.status = relayed.broken.status
            self._report(name, relayed.broken, relayed.backend_failed)  # before the client hears
            # an error answer, or an error event in a stream
            await down.fail(relayed.broken, relayed.unfinished)

    async def _into_open_stream(
        self, down: Downstream, reply: Reply, name: str, ex: Exchange
    ) -> Relayed:
        """Relay into the SSE reply we already started: a backend error becomes an error event."""
        if reply.status >= 400:
            ex.status = reply.status
            try:
                body = await reply.aread()
            except UpstreamError as exc:
                body = str(exc).encode()
            await down.end(b"data: " + _error_event(reply.status, body) + b"\n\n")
            return Relayed()
        ex.streamed = True
        return await pump(down, reply, name, sse=True)

    # --- helpers ------------------------------------------------------------------------------

    def _authenticate_with(self, authorization: str | None) -> Access:
        return authenticate(self.gateway.api_keys(), authorization)

    def _route(self, model: str, access: Access) -> ModelRoute:
        route = self.gateway.route(model)
        if route is None or not access.may_reach(route):
            raise errors.model_not_found(model)
        return route

    def _report(self, name: str, error: ProxyError, backend_failed: bool) -> None:
        """Tell the gateway of a failed exchange: a broken backend (it stops being routed to)
        or a timeout (slow is not broken: the operator hears of it, the model keeps serving)."""
        if backend_failed:
            self._backend_failed(name, error.message)
        elif error.code == "timeout":
            self._timed_out(name, error.message)

    def _timed_out(self, name: str, message: str) -> None:
        log.warning("%s", message)
        try:
            self.gateway.request_timed_out(name, message)
        except Exception:
            log.exception("gateway.request_timed_out(%s) raised", name)

    def _backend_failed(self, name: str, reason: str) -> None:
        self.core.metrics.backend_failures.labels(name).inc()
        log.warning("backend of %s failed: %s", name, reason)
        try:
            self.gateway.backend_failed(name, reason)
        except Exception:
            log.exception("gateway.backend_failed(%s) raised", name)


def _error_event(status: int, body: bytes) -> bytes:
    """A backend's error reply as one line of JSON: as it is when OpenAI-shaped, else wrapped."""
    try:
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        return msgspec.json.encode(parsed)  # compact: an SSE data line must not break
    message = body.decode("utf-8", "replace").strip()[:500] or f"backend answered {status}"
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ProxyError(status, message, kind, "backend_error").body()


async def _prefixed(held: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in held:
        yield chunk
    held.clear()
    async for chunk in rest:
        yield chunk
