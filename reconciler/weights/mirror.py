"""``modelplane mirror``: serve a Hugging Face cache as a hub endpoint for other boxes.

Another box sets ``HF_ENDPOINT=http://this-box:8401`` and huggingface_hub downloads from here with
the same code it uses against huggingface.co. Served: the part of the hub API that downloads use —

* ``GET /api/models/{repo}[/revision/{rev}]``  model info: commit sha, files with sizes and LFS data
* ``GET /api/models/{repo}/tree/{rev}[/{path}]``  file listing (``snapshot_download`` uses it)
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``  the file, with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``/``X-Linked-Size`` (LFS), ``Accept-Ranges`` and ``Range`` support (resume)

Errors carry the hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``)
so the client raises its usual exceptions. Read-only (other methods get 405), loopback unless told
otherwise, optionally behind a bearer token. The test suite's hub is this same server over a
directory of generated repos in cache layout.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import socket
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from huggingface_hub.utils.sha import git_hash

from reconciler.units import is_loopback, parse_listen

from .cache_store import CacheStore, StoredFile

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8401"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (kept only when ``record=True``, for tests)."""

    method: str
    path: str
    range: str | None
    authorization: str | None
    status: int


@dataclass
class DropConnection:
    """Test fault: cut the connection after ``after_bytes`` of a file's body, ``times`` times."""

    path_suffix: str
    after_bytes: int
    times: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, path: str) -> bool:
        with self.lock:
            if self.times > 0 and path.endswith(self.path_suffix):
                self.times -= 1
                return True
            return False


@dataclass
class HoldBody:
    """Test fault: send the first ``after_bytes`` of a file's body, then wait for ``release``
    (at most ``timeout`` seconds) before the rest: a download that stays under way until the
    test has looked at it."""

    path_suffix: str
    after_bytes: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)  # a body is being held
    timeout: float = 60.0

    def matches(self, path: str) -> bool:
        return path.endswith(self.path_suffix) and not self.release.is_set()


class MirrorServer:
    """The mirror over one cache directory, run in a background thread or in the foreground."""

    def __init__(
        self,
        cache_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        record: bool = False,
    ) -> None:
        self.store = CacheStore(cache_dir)
        self.token = token
        self.record = record
        self.requests: list[RequestRecord] = []
        self.faults: list[DropConnection] = []
        self.holds: list[HoldBody] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        server_cls = _V6Server if ":" in host else _Server
        self.httpd = server_cls((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.mirror = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def start(self) -> MirrorServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), name="weights-mirror", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        """Stop accepting, and end kept-alive connections so no handler thread lingers."""
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(cache_dir: str | Path, listen: str = DEFAULT_LISTEN, token: str | None = None) -> None:
    """Run the mirror in the foreground until interrupted (``modelplane mirror``)."""
    host, port = parse_listen(listen)
    if not is_loopback(host) and not token:
        log.warning(
            "mirror listening on %s without a token: anyone who can reach it can read"
            " every cached model",
            listen,
        )
    server = MirrorServer(cache_dir, host, port, token=token)
    log.info("mirror of %s at %s", cache_dir, server.url)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that goes away mid-response is routine: log it, do not print a traceback."""
        log.debug("request from %s failed", client_address, exc_info=True)


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _NotFound(Exception):
    def __init__(self, code: str, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.commit = commit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "modelplane-mirror"

    @property
    def mirror(self) -> MirrorServer:
        return self.server.mirror  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        with self.mirror._lock:
            self.mirror._connections.add(self.connection)

    def finish(self) -> None:
        with self.mirror._lock:
            self.mirror._connections.discard(self.connection)
        super().finish()

    # --- plumbing ---------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _refuse(self) -> None:
        self.close_connection = True  # the request body, if any, is not read
        self._send_json({"error": "read-only mirror"}, HTTPStatus.METHOD_NOT_ALLOWED)

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _dispatch(self, *, head: bool) -> None:
        self._status = 0
        try:
            if not self._authorized():
                self._send_json(
                    {"error": "Invalid credentials in Authorization header"},
                    HTTPStatus.UNAUTHORIZED,
                    {"X-Error-Message": "Invalid credentials in Authorization header"},
                    head=head,
                )
                return
            url = urlsplit(self.path)
            segments = [unquote(s) for s in url.path.split("/")[1:]]
            if segments[:2] == ["api", "models"]:
                self._api(segments[2:], parse_qs(url.query), head=head)
            else:
                self._resolve(segments, head=head)
        except _NotFound as err:
            extra = {"X-Error-Code": err.code, "X-Error-Message": err.message}
            if err.commit:
                extra["X-Repo-Commit"] = err.commit
            self._send_json({"error": err.message}, HTTPStatus.NOT_FOUND, extra, head=head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log.exception("mirror: %s %s failed", self.command, self.path)
            self.close_connection = True
            if not self._status:  # nothing sent yet: the client gets an answer
                self._send_json({"error": "internal error"}, HTTPStatus.INTERNAL_SERVER_ERROR)
        finally:
            if self.mirror.record:
                self.mirror.requests.append(
                    RequestRecord(
                        method=self.command,
                        path=self.path,
                        range=self.headers.get("Range"),
                        authorization=self.headers.get("Authorization"),
                        status=self._status,
                    )
                )

    def _authorized(self) -> bool:
        if not self.mirror.token:
            return True
        sent = self.headers.get("Authorization", "")
        return hmac.compare_digest(sent.encode(), f"Bearer {self.mirror.token}".encode())

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = int(code)
        super().send_response(code, message)

    def _send_json(
        self,
        body: Any,
        status: int = HTTPStatus.OK,
        headers: dict[str, str] | None = None,
        *,
        head: bool = False,
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # --- API --------------------------------------------------------------------------------

    def _split_repo(self, segments: list[str]) -> tuple[str, list[str]]:
        """``org/name`` or a bare ``name``, whichever exists, and the segments after it."""
        store = self.mirror.store
        if len(segments) >= 2 and store.exists("/".join(segments[:2])):
            return "/".join(segments[:2]), segments[2:]
        if segments and store.exists(segments[0]):
            return segments[0], segments[1:]
        name = "/".join(segments[:2])
        raise _NotFound("RepoNotFound", f"Repository {name} not found")

    def _commit(self, repo: str, revision: str) -> str:
        commit = self.mirror.store.resolve(repo, revision)
        if commit is None:
            raise _NotFound("RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _api(self, segments: list[str], query: dict[str, list[str]], *, head: bool) -> None:
        if not segments or segments == [""]:
            self._send_json([{"id": r, "modelId": r} for r in self.mirror.store.repos()], head=head)
            return
        repo, rest = self._split_repo(segments)
        if not rest:
            self._model_info(repo, "main", head=head)
        elif rest[0] == "revision" and len(rest) == 2:
            self._model_info(repo, rest[1], head=head)
        elif rest[0] == "tree" and len(rest) >= 2:
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            self._tree(repo, rest[1], "/".join(p for p in rest[2:] if p), recursive, head=head)
        else:
            self._send_json({"error": "not served by this mirror"}, HTTPStatus.NOT_FOUND, head=head)

    def _model_info(self, repo: str, revision: str, *, head: bool) -> None:
        store = self.mirror.store
        commit = self._commit(repo, revision)
        siblings = []
        for f in store.files(repo, commit).values():
            sibling: dict[str, Any] = {"rfilename": f.path, "size": f.size, "blobId": f.blob_id}
            if f.is_lfs:
                sibling["lfs"] = {"sha256": f.etag, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sibling)
        body = {
            "_id": repo,
            "id": repo,
            "modelId": repo,
            "sha": commit,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": [],
            "lastModified": store.last_modified(repo, commit),
            "siblings": siblings,
        }
        self._send_json(body, head=head)

    def _tree(self, repo: str, revision: str, prefix: str, recursive: bool, *, head: bool) -> None:
        commit = self._commit(repo, revision)
        files = self.mirror.store.files(repo, commit)
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for f in files.values():
            if not f.path.startswith(base):
                continue
            parts = f.path[len(base) :].split("/")
            for depth in range(1, len(parts)):
                directory = base + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(directory, _directory_entry(directory, commit))
            if recursive or len(parts) == 1:
                entries[f.path] = _file_entry(f)
        if prefix and not entries:
            raise _NotFound("EntryNotFound", f"{prefix} does not exist on {revision}", commit)
        self._send_json(sorted(entries.values(), key=lambda e: e["path"]), head=head)

    # --- files ------------------------------------------------------------------------------

    def _resolve(self, segments: list[str], *, head: bool) -> None:
        try:
            at = segments.index("resolve", 1)
        except ValueError:
            raise _NotFound(
                "EntryNotFound", "not a /{repo}/resolve/{revision}/{path} url"
            ) from None
        repo = "/".join(segments[:at])
        if not self.mirror.store.exists(repo):
            raise _NotFound("RepoNotFound", f"Repository {repo} not found")
        if len(segments) < at + 3:
            raise _NotFound("EntryNotFound", "no file path in the url")
        revision, path = segments[at + 1], "/".join(segments[at + 2 :])
        commit = self._commit(repo, revision)
        stored = self.mirror.store.files(repo, commit).get(path)
        if stored is None:
            raise _NotFound("EntryNotFound", f"{path} does not exist on {revision}", commit)
        self._send_file(stored, commit, head=head)

    def _send_file(self, f: StoredFile, commit: str, *, head: bool) -> None:
        start, end = 0, f.size - 1
        status = HTTPStatus.OK
        wanted = self.headers.get("Range")
        match = _RANGE.match(wanted.strip()) if wanted else None
        if match and (match.group(1) or match.group(2)):
            first, last = match.group(1), match.group(2)
            if first:
                start, end = int(first), min(int(last), f.size - 1) if last else f.size - 1
            else:
                start = max(f.size - int(last), 0)
            if start >= f.size or start > end:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{f.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = HTTPStatus.PARTIAL_CONTENT
        length = max(end - start + 1, 0)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f.etag}"')
        self.send_header("X-Repo-Commit", commit)
        if f.is_lfs:
            self.send_header("X-Linked-Etag", f'"{f.etag}"')
            self.send_header("X-Linked-Size", str(f.size))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        self.end_headers()
        if head or length == 0:
            return
        fault = next((d for d in self.mirror.faults if d.take(f.path)), None)
        count = min(length, fault.after_bytes) if fault else length
        hold = next((h for h in self.mirror.holds if h.matches(f.path)), None)
        with f.blob.open("rb") as src:
            self.wfile.flush()
            if hold is not None and not fault:
                first = min(count, hold.after_bytes)
                if first:
                    self.connection.sendfile(src, offset=start, count=first)
                hold.reached.set()
                hold.release.wait(hold.timeout)
                start, count = start + first, count - first
            if count:
                self.connection.sendfile(src, offset=start, count=count)
        if fault:
            log.debug("fault: dropping the connection after %d bytes of %s", count, f.path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


def _file_entry(f: StoredFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
    if f.is_lfs:
        entry["lfs"] = {"oid": f.etag, "size": f.size, "pointerSize": f.pointer_size}
    return entry


def _directory_entry(path: str, commit: str) -> dict[str, Any]:
    return {
        "type": "directory",
        "oid": git_hash(f"{commit}:{path}".encode()),
        "size": 0,
        "path": path,
    }
