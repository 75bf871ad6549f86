"""A minimal, read-only docker registry (v2 API, stdlib only) serving one generated image.

dockerd pulls from 127.0.0.1 over plain HTTP without configuration (loopback registries are
insecure by default), so the runtime's real pull path, progress included, runs without a network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tiny_image(payload_size: int = 2 * 2**20) -> tuple[bytes, dict[str, bytes]]:
    """A one-layer image holding ``/payload`` (random bytes): its manifest and blobs by digest."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = os.urandom(payload_size)
        info = tarfile.TarInfo("payload")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    raw = layer.getvalue()
    compressed = gzip.compress(raw, compresslevel=1)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/payload"]},
            "rootfs": {"type": "layers", "diff_ids": [_digest(raw)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": _digest(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(compressed),
                    "digest": _digest(compressed),
                }
            ],
        }
    ).encode()
    return manifest, {_digest(config): config, _digest(compressed): compressed}


class Registry:
    """Serves ``<host>/<name>:<tag>`` (any) as the tiny image; counts manifest GETs and HEADs."""

    def __init__(self) -> None:
        self.manifest, self.blobs = tiny_image()
        self.manifest_requests = 0
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                headers = {"Docker-Distribution-API-Version": "registry/2.0"}
                if self.path == "/v2/":
                    data, kind = b"{}", "application/json"
                elif re.match(r"^/v2/.+/manifests/[^/]+$", self.path):
                    registry.manifest_requests += 1
                    data, kind = registry.manifest, MANIFEST_TYPE
                    headers["Docker-Content-Digest"] = _digest(data)
                elif (m := re.match(r"^/v2/.+/blobs/(sha256:[0-9a-f]+)$", self.path)) and (
                    m.group(1) in registry.blobs
                ):
                    data, kind = registry.blobs[m.group(1)], "application/octet-stream"
                    headers["Docker-Content-Digest"] = m.group(1)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                for key, value in {**headers, "Content-Type": kind}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Registry:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
