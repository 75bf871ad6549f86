"""Weights fetched where a backend runs, not on this box: the ray runtime's ``prepare`` step.

On a Ray cluster each node keeps its own Hugging Face cache. The controller resolves a source to
a commit as usual; the model's actor then calls :func:`fetch_on_node` on its node, which
downloads and verifies the files there with the same code a single box uses
(:func:`~reconciler.weights.download.ensure_downloaded`: resume, dedupe, checksums, disk check)
and returns ``{model_path}`` and ``{model_dir}`` as they are on that node.

The hub endpoint travels with the request (it is not a secret); a token never does: a node uses
its own ``HF_TOKEN``, and its own ``HF_ENDPOINT`` when it sets one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.units import format_size

from .config import HubSettings
from .download import Progress, ensure_downloaded
from .resolve import resolve

#: A node's cache when ``Node.ray.cacheDir`` is not set: in the home of the user Ray runs as.
NODE_CACHE = "~/.cache/modelplane/hf"


@dataclass(frozen=True)
class HubWeights:
    """A hub source resolved on the controller to a commit, to fetch on a node."""

    repo: str
    commit: str
    files: tuple[str, ...] | None = None  # globs; None = the whole repo
    cache_dir: str | None = None  # the node's HF_HOME (weights in its hub/); None = NODE_CACHE
    endpoint: str | None = None  # HF_ENDPOINT as the controller sees it
    offline: bool = False


def fetch_on_node(hub: HubWeights, note: Callable[[str], None]) -> dict[str, str]:
    """Download and verify ``hub`` into this node's cache; ``{model_path}``/``{model_dir}``.
    Blocking (the actor runs it in a thread); ``note`` gets the progress in words."""
    cache = Path(hub.cache_dir or NODE_CACHE).expanduser() / "hub"
    local = HubSettings.from_env()
    settings = HubSettings(
        endpoint=(os.environ.get("HF_ENDPOINT") or hub.endpoint or local.endpoint).rstrip("/"),
        offline=hub.offline or local.offline,
        token=local.token,
    )
    note(f"resolving {hub.repo}@{hub.commit[:12]}")
    globs = list(hub.files) if hub.files else None
    resolution = resolve(cache, hub.repo, hub.commit, globs, settings)

    def progress(p: Progress) -> None:
        share = f" ({100 * p.done // p.total}%)" if p.total else ""
        note(f"downloading {format_size(p.done)} of {format_size(p.total)}{share}")

    result = ensure_downloaded(cache, resolution, settings, progress=progress)
    path = Path(result.model_path)
    note("weights ready")
    directory = path if path.is_dir() else path.parent  # as for a backend on this box
    return {"model_path": str(path), "model_dir": str(directory)}
