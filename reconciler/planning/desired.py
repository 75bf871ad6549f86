"""Desired state: the effective spec of each model and a stable hash of it.

The hash covers exactly what a running backend depends on (engine, command, source, args, env,
GPUs, runtime, container settings). Fields the proxy or planner read live — ``stayWarm``,
``priority``, ``aliases``, ``maxConcurrency``, ``pin`` — are left out, so changing them never
restarts a model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.manifests.loader import ManifestError
from reconciler.manifests.manifest_set import ManifestSet
from reconciler.manifests.schema import EngineSpec, ModelDoc, ModelSpec, NodeSpec


@dataclass(frozen=True)
class DesiredModel:
    name: str
    spec: ModelSpec
    engine: EngineSpec
    runtime: str
    effective: Mapping[str, Any]
    spec_hash: str
    where: str = ""
    stale: ManifestError | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        return self.spec.pin


@dataclass(frozen=True)
class Desired:
    models: Mapping[str, DesiredModel]
    node: NodeSpec = field(default_factory=NodeSpec)
    empty: bool = False  # no manifests at all (the prune guard refuses to stop everything)


def effective_spec(
    spec: ModelSpec, engine_name: str, engine: EngineSpec, runtime: str, revision: str | None = None
) -> dict[str, Any]:
    """What a backend is started from; ``revision`` is the resolved commit of a hub source."""
    source = spec.source.model_dump(by_alias=True, exclude={"prefetch"}, exclude_none=True)
    if revision and "huggingface" in source:
        source["huggingface"]["revision"] = revision
    effective: dict[str, Any] = {
        "engine": {
            "name": engine_name,
            **engine.model_dump(by_alias=True, include={"image", "command", "env", "health_path"}),
        },
        "source": source,
        "args": list(spec.args),
        "env": dict(spec.env),
        "gpus": spec.gpus,
        "runtime": runtime,
        "container": spec.container.model_dump(by_alias=True) if spec.container else None,
        "imagePull": spec.image_pull or engine.image_pull,
    }
    if runtime == "ray":  # (only there: other models' hashes, and so their backends, stay)
        effective["nodeSelector"] = dict(spec.node_selector)
    return effective


def spec_hash(effective: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(effective, sort_keys=True).encode()).hexdigest()[:12]


def changed_fields(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Which parts of an effective spec differ (``engine.command``, ``args``…), for causes."""
    if old is None:
        return []
    changed = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict) and key == "engine":
            subkeys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            changed += [f"engine.{k}" for k in subkeys]
        else:
            changed.append(key)
    return changed


def build_desired(manifests: ManifestSet, revisions: Mapping[str, str] | None = None) -> Desired:
    """Desired state from a resolved manifest set (``revisions``: model → resolved commit)."""
    node = manifests.node
    engines = manifests.engines
    models: dict[str, DesiredModel] = {}
    for name, item in manifests.models.items():
        assert isinstance(item.doc, ModelDoc)
        spec = item.doc.spec
        engine = engines[spec.engine]
        runtime = spec.runtime or node.runtime
        effective = effective_spec(spec, spec.engine, engine, runtime, (revisions or {}).get(name))
        models[name] = DesiredModel(
            name=name,
            spec=spec,
            engine=engine,
            runtime=runtime,
            effective=effective,
            spec_hash=spec_hash(effective),
            where=item.where,
            stale=item.stale,
            labels=dict(item.doc.metadata.labels),
        )
    return Desired(models=models, node=node, empty=manifests.empty)
