"""The manifest set in force: valid documents, last valid versions of broken ones, cross-checks.

Isolation (docs/architecture.md, Principles): an invalid document keeps its last valid version
in force, a file that does not parse keeps every document it last held, and everything else
applies. The last valid versions come from the state database (``StoredDocument``);
:func:`resolve` is pure.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .engines import BUILTIN_ENGINES
from .loader import ManifestError, ManifestFile, RawDocument, read_directory
from .schema import KINDS, Document, EngineSpec, ModelDoc, ModelSpec, NodeSpec

Key = tuple[str, str]  # (kind, name)


@dataclass(frozen=True)
class StoredDocument:
    """A valid document as the state database remembers it."""

    kind: str
    name: str
    path: str
    line: int
    body: Mapping[str, Any]


@dataclass(frozen=True)
class InForce:
    """A document that applies now; ``stale`` says why an older valid version is used."""

    kind: str
    name: str
    path: str
    line: int
    col: int
    doc: Document
    body: Mapping[str, Any]
    stale: ManifestError | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    def stored(self) -> StoredDocument:
        return StoredDocument(self.kind, self.name, self.path, self.line, self.body)


@dataclass
class ManifestSet:
    """What the manifests ask for, after isolation and cross-document checks."""

    models: dict[str, InForce] = field(default_factory=dict)
    engine_docs: dict[str, InForce] = field(default_factory=dict)
    node_doc: InForce | None = None
    errors: list[ManifestError] = field(default_factory=list)
    documents_seen: int = 0  # documents in the files read now, valid or not

    @property
    def node(self) -> NodeSpec:
        if self.node_doc is None:
            return NodeSpec()
        spec = self.node_doc.doc.spec
        assert isinstance(spec, NodeSpec)
        return spec

    @property
    def engines(self) -> dict[str, EngineSpec]:
        """Built-in engines, overridden by manifests of the same name."""
        engines = dict(BUILTIN_ENGINES)
        for name, item in self.engine_docs.items():
            assert isinstance(item.doc.spec, EngineSpec)
            engines[name] = item.doc.spec
        return engines

    def in_force(self) -> list[InForce]:
        items = [*self.models.values(), *self.engine_docs.values()]
        if self.node_doc:
            items.append(self.node_doc)
        return sorted(items, key=lambda i: (i.kind, i.name))

    @property
    def digest(self) -> str:
        """A stable digest of every document in force (what a generation records)."""
        payload = [[i.kind, i.name, i.body] for i in self.in_force()]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def empty(self) -> bool:
        """No documents at all: an empty or emptied directory (the prune guard's case)."""
        return not self.in_force()


def load(
    root: Path,
    last: Mapping[Key, StoredDocument] | None = None,
    gpu_indices: Iterable[int] | None = None,
    extra_roots: Iterable[Path] = (),
) -> ManifestSet:
    """Read ``root`` (and ``extra_roots``: pull mode's checkout) as one set of documents, and
    resolve it against the last valid documents. A name defined in two roots is a duplicate."""
    files = read_directory(root)
    for extra in extra_roots:
        files += read_directory(extra)
    return resolve(files, last or {}, gpu_indices)


def resolve(
    files: list[ManifestFile],
    last: Mapping[Key, StoredDocument],
    gpu_indices: Iterable[int] | None = None,
) -> ManifestSet:
    """Choose the documents in force and run the cross-document checks. Pure."""
    result = ManifestSet()
    candidates: list[InForce] = []
    for mfile in files:
        if mfile.parse_error:
            result.errors.append(mfile.parse_error)
            candidates += _fallbacks(last, mfile, set(), mfile.parse_error)
            continue
        result.documents_seen += len(mfile.documents)
        present: set[Key] = set()
        unnamed_error: ManifestError | None = None
        for raw in mfile.documents:
            result.errors += raw.errors
            if raw.doc is not None:
                candidates.append(_in_force(raw))
                present.add((raw.kind, raw.name))
            elif raw.kind and raw.name:
                present.add((raw.kind, raw.name))
                fallback = last.get((raw.kind, raw.name))
                stale = _fallback(fallback, raw.errors[0]) if fallback else None
                if stale:
                    candidates.append(stale)
            elif raw.errors:
                unnamed_error = unnamed_error or raw.errors[0]
        if unnamed_error:
            # A broken document we cannot name may be any one this file held: keep them all.
            candidates += _fallbacks(last, mfile, present, unnamed_error)
    _cross_check(candidates, last, result, set(gpu_indices) if gpu_indices is not None else None)
    result.errors.sort()
    return result


def last_set(
    last: Mapping[Key, StoredDocument],
    reason: ManifestError,
    gpu_indices: Iterable[int] | None = None,
) -> ManifestSet:
    """Every last valid document, each ``Stale`` with ``reason``: what stays in force while
    the directory holds no Model at all (emptied, or unreadable), so the prune guard keeps the
    whole set — routing included — instead of an empty one. Pure."""
    result = ManifestSet(errors=[reason])
    candidates = [item for _, stored in sorted(last.items()) if (item := _fallback(stored, reason))]
    _cross_check(candidates, last, result, set(gpu_indices) if gpu_indices is not None else None)
    return result


def _in_force(raw: RawDocument) -> InForce:
    assert raw.doc is not None
    return InForce(raw.kind, raw.name, raw.path, raw.line, raw.col, raw.doc, raw.body)


def _fallback(stored: StoredDocument, error: ManifestError) -> InForce | None:
    try:
        doc = KINDS[stored.kind].model_validate(stored.body)
    except (KeyError, ValidationError):
        return None  # remembered under an older schema: nothing usable to keep
    return InForce(stored.kind, stored.name, stored.path, stored.line, 1, doc, stored.body, error)


def _fallbacks(
    last: Mapping[Key, StoredDocument], mfile: ManifestFile, present: set[Key], error: ManifestError
) -> list[InForce]:
    """The last valid versions of what ``mfile`` (a file, or an unreadable folder) held."""
    kept = []
    for key, stored in sorted(last.items()):
        if mfile.holds(stored.path) and key not in present:
            item = _fallback(stored, error)
            if item:
                kept.append(item)
    return kept


def _cross_check(
    candidates: list[InForce],
    last: Mapping[Key, StoredDocument],
    result: ManifestSet,
    gpu_indices: set[int] | None,
) -> None:
    """Duplicates, more than one Node, unknown engines, colliding aliases, unknown GPUs.

    A document that fails a check falls back to its last valid version when that one passes.
    """
    seen: dict[Key, InForce] = {}
    for item in sorted(candidates, key=lambda i: (i.stale is not None, i.path, i.line)):
        key = (item.kind, item.name)
        first = seen.get(key)
        if first is None:
            seen[key] = item
        elif item.stale is None:  # fallbacks never clash with a current document
            result.errors.append(
                _error(item, f"duplicate {item.kind} name (first at {first.where})")
            )

    nodes = sorted((i for k, i in seen.items() if k[0] == "Node"), key=lambda i: (i.path, i.line))
    for extra in nodes[1:]:
        result.errors.append(
            _error(extra, f"more than one Node (the first is at {nodes[0].where})")
        )
        del seen[("Node", extra.name)]
    if nodes:
        result.node_doc = nodes[0]
    result.engine_docs = {n: i for (k, n), i in seen.items() if k == "Engine"}

    engines = result.engines
    node = result.node
    static = {g.index for g in node.gpus} if isinstance(node.gpus, list) else None
    known_gpus = static if static is not None else gpu_indices
    taken: dict[str, InForce] = {}
    models = sorted((i for k, i in seen.items() if k[0] == "Model"), key=lambda i: (i.path, i.line))
    for name in (m.name for m in models):
        taken[name] = seen[("Model", name)]
    for item in models:
        problems = _model_problems(item, engines, known_gpus, taken, node)
        if problems and item.stale is None:
            for problem in problems:
                result.errors.append(_error(item, problem))
            stored = last.get(("Model", item.name))
            fallback = _fallback(stored, _error(item, problems[0])) if stored else None
            if fallback and fallback.body != item.body:
                if not _model_problems(fallback, engines, known_gpus, taken, node):
                    item = fallback
                else:
                    continue
            else:
                continue
        elif problems:
            continue
        assert isinstance(item.doc, ModelDoc)
        result.models[item.name] = item
        for alias in item.doc.spec.aliases:
            taken.setdefault(alias, item)


def _model_problems(
    item: InForce,
    engines: Mapping[str, EngineSpec],
    known_gpus: set[int] | None,
    taken: Mapping[str, InForce],
    node: NodeSpec,
) -> list[str]:
    assert isinstance(item.doc, ModelDoc)
    spec = item.doc.spec
    problems = []
    if spec.engine not in engines:
        problems.append(
            f"engine {spec.engine!r} does not exist (known: {', '.join(sorted(engines))})"
        )
    problems += _runtime_problems(spec, node)
    on_this_box = (spec.runtime or node.runtime) != "ray"  # a Ray node's GPUs are not ours
    if on_this_box and isinstance(spec.gpus, list) and known_gpus is not None:
        missing = sorted(set(spec.gpus) - known_gpus)
        if missing:
            have = ", ".join(map(str, sorted(known_gpus))) or "none"
            problems.append(f"GPU {', '.join(map(str, missing))} not on this Node (it has: {have})")
    for alias in spec.aliases:
        owner = taken.get(alias)
        if owner is not None and owner.name != item.name:
            what = "a model name" if owner.name == alias else f"an alias of Model/{owner.name}"
            problems.append(f"alias {alias!r} is already {what} ({owner.where})")
    if len(set(spec.aliases)) != len(spec.aliases):
        problems.append("aliases repeat a name")
    return problems


def _runtime_problems(spec: ModelSpec, node: NodeSpec) -> list[str]:
    """What the model asks that its runtime cannot do (the ray runtime's own fields)."""
    runtime = spec.runtime or node.runtime
    if runtime != "ray":
        if spec.node_selector:
            return [f"nodeSelector applies to the ray runtime only (this model runs on {runtime})"]
        return []
    problems = []
    if node.ray is None:
        problems.append("runtime ray needs Node.spec.ray.address (the cluster to run on)")
    if isinstance(spec.gpus, list):
        problems.append(
            "explicit GPU indices do not apply on a Ray cluster (Ray assigns the GPUs on the "
            "node placement chooses): use gpus: auto, and nodeSelector to choose nodes"
        )
    return problems


def _error(item: InForce, message: str) -> ManifestError:
    return ManifestError(item.path, item.line, item.col, item.kind, item.name, message)
