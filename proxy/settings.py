"""The proxy's knobs, in one frozen dataclass the CLI fills from flags or the Node manifest."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class ProxySettings:
    """Limits and timeouts of the HTTP side. Defaults suit one GPU box serving a few models."""

    max_body_bytes: int = 32 * MiB
    """Largest request body accepted (JSON or multipart); larger ones get 413."""

    max_queue: int = 256
    """Requests that may wait for a slot per model; one more gets 429 + Retry-After."""

    queue_timeout: float = 300.0
    """Longest wait for a slot (seconds); past it the request gets 503 + Retry-After."""

    loading_comment_interval: float = 5.0
    """Seconds between ``: loading <model> (N s)`` SSE comments while a stream waits for a wake."""

    connect_timeout: float = 10.0
    """Seconds to open a TCP connection to a backend (it is local: long means it is stuck)."""

    write_timeout: float | None = 60.0
    """Longest a backend may take to accept a chunk of the request body."""

    keepalive_connections: int = 256
    """Idle keep-alive connections kept per backend endpoint."""

    keepalive_expiry: float = 60.0
    """Seconds an idle keep-alive connection is kept before it is closed."""

    max_buffered_response: int = 64 * MiB
    """A non-streamed JSON reply up to this size is read whole (to count its tokens); larger
    replies, and every non-JSON reply, are streamed through."""

    access_log: bool = True
    """One ``modelplane.access`` log line per proxied request."""

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.queue_timeout <= 0:
            raise ValueError("queue_timeout must be positive")
        if self.loading_comment_interval <= 0:
            raise ValueError("loading_comment_interval must be positive")
