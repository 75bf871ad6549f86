"""Read manifest files and validate each document on its own, keeping positions for errors.

ruamel.yaml's round-trip loader remembers where every key and value sits, so a pydantic error's
location (``spec.stayWarm``) can be turned into ``path:line:col``. Cross-document checks and the
"last valid version" fallback live in :mod:`reconciler.manifests`; this module only reads.

Reading is bounded (:mod:`.limits`) and touches no shared state, so the service runs it in a
worker thread: a slow or hostile file never holds up the proxy's event loop.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .limits import Limits
from .schema import API_VERSION, KINDS, Document
from .yamldocs import Refused, load_documents


@dataclass(frozen=True, order=True)
class ManifestError:
    """One problem, printed as ``path:line:col: Kind/name: message`` (lines and columns 1-based)."""

    path: str
    line: int
    col: int
    kind: str
    name: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}:{self.col}"
        if not self.kind:
            return f"{where}: {self.message}"
        return f"{where}: {self.kind}/{self.name or '?'}: {self.message}"


@dataclass
class RawDocument:
    """One YAML document as written, before validation."""

    path: str
    index: int  # position in its file, from 0
    line: int
    col: int
    data: Any
    kind: str = ""
    name: str = ""
    doc: Document | None = None  # set when valid
    errors: list[ManifestError] = field(default_factory=list)

    def error(self, message: str, line: int | None = None, col: int | None = None) -> None:
        self.errors.append(
            ManifestError(
                self.path,
                line or self.line,
                col or self.col,
                self.kind,
                self.name,
                message,
            )
        )

    @property
    def body(self) -> dict[str, Any]:
        """The document as plain JSON-able data (what the state database remembers)."""
        return _plain(self.data)


@dataclass
class ManifestFile:
    """A file and what it held; ``parse_error`` set means nothing in it could be read.

    ``directory``: the path is a folder that could not be listed (or the limits could not be
    read), so every document last seen under it is unknown now, not gone.
    """

    path: str
    documents: list[RawDocument] = field(default_factory=list)
    parse_error: ManifestError | None = None
    directory: bool = False

    def holds(self, path: str) -> bool:
        """Whether a document remembered at ``path`` came from here."""
        return path == self.path or (self.directory and path.startswith(self.path + os.sep))


def manifest_paths(root: Path, unreadable: list[tuple[Path, OSError]] | None = None) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` under ``root``, recursively, in a stable order.

    Hidden files and folders under ``root`` (``.git``, ``.github/workflows/*.yml``) are not
    manifests. A folder that cannot be listed is appended to ``unreadable`` (never skipped
    silently: what it held must stay in force). Symlinked folders are not followed.
    """
    found: list[Path] = []

    def failed(exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append((Path(exc.filename or root), exc))

    for folder, dirnames, filenames in os.walk(root, onerror=failed):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(folder, name)
            if name.startswith(".") or path.suffix not in (".yaml", ".yml"):
                continue
            if path.is_file():
                found.append(path)
    return sorted(found)


def read_directory(root: Path, limits: Limits | None = None) -> list[ManifestFile]:
    """Read and validate every manifest file under ``root`` (which must be a directory).

    An unreadable file or folder is a :class:`ManifestFile` with ``parse_error`` set. Safe to
    call from a worker thread (``asyncio.to_thread``): it shares no state with its caller.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: manifest directory does not exist or is not a directory")
    if limits is None:
        try:
            limits = Limits.from_environ()
        except ValueError as exc:  # nothing can be read: everything under root stays in force
            return [_unreadable_folder(root, str(exc))]
    unreadable: list[tuple[Path, OSError]] = []
    paths = manifest_paths(root, unreadable)
    files = [read_file(path, display=str(path), limits=limits) for path in paths]
    for folder, exc in unreadable:
        files.append(_unreadable_folder(folder, f"cannot read this folder: {_reason(exc)}"))
    return sorted(files, key=lambda f: f.path)


def read_file(path: Path, display: str | None = None, limits: Limits | None = None) -> ManifestFile:
    """Read one file, refusing one larger than ``limits.file_bytes`` before reading it."""
    shown = display or str(path)
    limits = limits or Limits()
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = b"" if size > limits.file_bytes else handle.read(limits.file_bytes + 1)
        size = max(size, len(data))  # (it may have grown since fstat)
        if size > limits.file_bytes:
            message = limits.file_too_large(size)
            return ManifestFile(shown, parse_error=ManifestError(shown, 1, 1, "", "", message))
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        message = _reason(exc) if isinstance(exc, OSError) else str(exc)
        return ManifestFile(shown, parse_error=ManifestError(shown, 1, 1, "", "", message))
    return parse_text(text, shown, limits)


def _unreadable_folder(folder: Path, message: str) -> ManifestFile:
    shown = str(folder)
    error = ManifestError(shown, 1, 1, "", "", message)
    return ManifestFile(shown, parse_error=error, directory=True)


def _reason(exc: OSError) -> str:
    """``Permission denied`` rather than ``[Errno 13] Permission denied: '/the/same/path'``."""
    return exc.strerror or str(exc)


def parse_text(text: str, path: str, limits: Limits | None = None) -> ManifestFile:
    """Parse a file's text; one YAML syntax error makes the whole file unreadable, while a
    document beyond ``limits`` (too deep, an alias bomb) is an error of that document only."""
    result = ManifestFile(path)
    try:
        loaded = load_documents(text, limits or Limits())
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        result.parse_error = ManifestError(path, line, col, "", "", f"YAML syntax: {problem}")
        return result
    except YAMLError as exc:
        result.parse_error = ManifestError(path, 1, 1, "", "", f"YAML: {exc}")
        return result
    starts = _document_starts(text)
    for index, data in enumerate(d for d in loaded if d is not None):
        if isinstance(data, Refused):
            raw = RawDocument(path, index, data.line, data.col, None)
            raw.error(data.message)
            result.documents.append(raw)
            continue
        line, col = _position(data)
        if line is None:
            line, col = (starts[index] if index < len(starts) else 1), 1
        raw = RawDocument(path, index, line, col or 1, data)
        validate_document(raw)
        result.documents.append(raw)
    return result


def validate_document(raw: RawDocument) -> None:
    """Fill ``raw.doc`` or ``raw.errors`` (every error of the document, with positions)."""
    data = raw.data
    if not isinstance(data, CommentedMap):
        what = "a list" if isinstance(data, list) else type(data).__name__
        raw.error(f"a manifest document must be a mapping, not {what}")
        return
    kind = data.get("kind")
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
        raw.name = metadata["name"]
    if not isinstance(kind, str) or kind not in KINDS:
        hint = _did_you_mean(str(kind), KINDS) if isinstance(kind, str) else ""
        message = (
            f"unknown kind {kind!r}{hint} (one of {', '.join(KINDS)})"
            if kind is not None
            else f"missing field 'kind' (one of {', '.join(KINDS)})"
        )
        line, col = _key_position(data, "kind") or (raw.line, raw.col)
        raw.error(message, line, col)
        return
    raw.kind = kind
    if data.get("apiVersion") != API_VERSION:
        line, col = _value_position(data, "apiVersion") or (raw.line, raw.col)
        got = data.get("apiVersion")
        raw.error(
            f"apiVersion must be {API_VERSION!r}" + (f", got {got!r}" if got is not None else ""),
            line,
            col,
        )
    model_cls = KINDS[kind]
    try:
        doc = model_cls.model_validate(_plain(data))
    except ValidationError as exc:
        for line, col, message in _explain(exc, data, model_cls):
            if message.startswith("apiVersion:") or message == "missing field apiVersion":
                continue  # reported above, once, with a better message
            raw.error(message, line, col)
        return
    if not raw.errors:
        raw.doc = doc


# --- turning pydantic errors into positioned messages ----------------------------------------


def _explain(
    exc: ValidationError, data: CommentedMap, model_cls: type[BaseModel]
) -> Iterator[tuple[int, int, str]]:
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for err in exc.errors(include_url=False):
        path, union_at = _data_path(data, err["loc"])
        if union_at is not None:  # one message per union field, not one per member tried
            err = {**err, "subpath": path[union_at:]}
            path = path[:union_at]
        grouped.setdefault(path, []).append(err)
    for path, errors in sorted(grouped.items(), key=lambda kv: _locate(data, kv[0], "value")):
        dotted = ".".join(str(p) for p in path) or "document"
        kinds = {e["type"] for e in errors}
        if kinds == {"extra_forbidden"}:
            parent, key = path[:-1], path[-1]
            allowed = _fields_at(model_cls, parent)
            hint = _did_you_mean(str(key), allowed)
            line, col = _locate(data, path, want="key")
            where = ".".join(str(p) for p in parent)
            yield line, col, f"unknown field {where + '.' if where else ''}{key}{hint}"
        elif kinds == {"missing"}:
            line, col = _locate(data, path[:-1], want="key")
            yield line, col, f"missing field {dotted}"
        else:
            line, col = _locate(data, path, want="value")
            messages = sorted(
                {_message(e) for e in errors if e["type"] != "missing"},
                key=lambda m: (m.startswith("["), m),
            )
            yield line, col, f"{dotted}: {' or '.join(messages)}"


def _message(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    if err.get("subpath"):
        inner = {k: v for k, v in err.items() if k != "subpath"}
        where = "".join(f"[{p}]" for p in err["subpath"])
        return f"{where} {_message(inner)}"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    msg = msg.replace("Input should be", "should be")
    if (
        err["type"] not in ("value_error",)
        and "input" in err
        and not isinstance(err["input"], dict | list)
    ):
        msg += f" (got {err['input']!r})"
    return msg


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], int | None]:
    """Drop pydantic's union-member tags from ``loc``, keeping only keys/indices in the data.

    Also returns where the first union tag was (the path length at that point), if any.
    """
    path: list[Any] = []
    union_at: int | None = None
    node = data
    for part in loc:
        in_map = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_map or in_list:
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part == loc[-1]:
            path.append(part)  # a missing or unknown key: the last element
            node = None
        else:  # a union member's tag such as "list[int]"
            if union_at is None:
                union_at = len(path)
    return tuple(path), union_at


def _locate(data: Any, path: tuple[Any, ...], want: str) -> tuple[int, int]:
    """1-based (line, col) of the key or value at ``path``, or of the nearest ancestor."""
    best = _position(data)
    line, col = (best[0] or 1, best[1] or 1)
    node = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, CommentedMap) and part in node:
            pos = _key_position(node, part) if (want == "key" or not last) else None
            if last and want == "value":
                pos = _value_position(node, part)
            if pos:
                line, col = pos
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            try:
                item_line, item_col = node.lc.item(part)
                line, col = item_line + 1, item_col + 1
            except (KeyError, TypeError, AttributeError):
                pass
            node = node[part]
        else:
            break
    return line, col


def _position(node: Any) -> tuple[int | None, int | None]:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return None, None
    return lc.line + 1, lc.col + 1


def _key_position(node: CommentedMap, key: Any) -> tuple[int, int] | None:
    try:
        line, col = node.lc.key(key)
    except (KeyError, TypeError, AttributeError):
        return None
    return line + 1, col + 1


def _value_position(node: CommentedMap, key: Any) -> tuple[int, int] | None:
    try:
        line, col = node.lc.value(key)
    except (KeyError, TypeError, AttributeError):
        return _key_position(node, key)
    return line + 1, col + 1


def _fields_at(model_cls: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The camelCase field names allowed at ``path`` inside ``model_cls``."""
    current: Any = model_cls
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        by_alias = {(f.alias or n): f for n, f in current.model_fields.items()}
        field_info = by_alias.get(part)
        if field_info is None:
            return []
        current = _model_in(field_info.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [(f.alias or n) for n, f in current.model_fields.items()]
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside ``X | None``, ``list[X]``, ``Annotated[X, ...]`` and friends."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return None
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(word: str, choices: Any) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def _document_starts(text: str) -> list[int]:
    """1-based first line of each non-empty document (fallback for scalar documents)."""
    starts, current = [], 1
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("---"):
            current = number + 1
        elif line.strip() and not line.lstrip().startswith("#") and current not in starts:
            starts.append(current)
    return starts or [1]


def _plain(node: Any) -> Any:
    """ruamel's commented containers as plain dicts and lists."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node
