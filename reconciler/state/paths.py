"""Where modelplane keeps its state and caches, from the Node manifest and the environment.

Order: the Node manifest, then ``MODELPLANE_STATE_DIR``, then systemd's ``STATE_DIRECTORY``,
then ``/var/lib/modelplane`` for root and ``$XDG_STATE_HOME/modelplane`` (``~/.local/state``)
for everyone else, so a user can try modelplane without root.
"""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.manifests.schema import NodeSpec


def state_dir(node: NodeSpec) -> Path:
    if node.state_dir:
        return Path(node.state_dir).expanduser()
    for variable in ("MODELPLANE_STATE_DIR", "STATE_DIRECTORY"):
        value = os.environ.get(variable)
        if value:
            return Path(value.split(":")[0]).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/modelplane")
    return user_dir()


def user_dir() -> Path:
    """This user's own modelplane folder (``$XDG_STATE_HOME/modelplane``): the state directory
    of a user without root, and where the CLI remembers the last ``run``'s state directory."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "modelplane"


def cache_dir(node: NodeSpec) -> Path:
    """The Hugging Face cache (hub layout) for downloaded weights."""
    if node.cache_dir:
        return Path(node.cache_dir).expanduser()
    value = os.environ.get("MODELPLANE_CACHE_DIR")
    return Path(value).expanduser() if value else state_dir(node) / "hf"


def database_path(node: NodeSpec) -> Path:
    return state_dir(node) / "modelplane.db"


def hub_cache(node: NodeSpec) -> Path:
    """The hub cache inside ``cacheDir``: ``cacheDir`` is an ``HF_HOME``, so weights live in its
    ``hub/`` folder, where ``HF_HOME=<cacheDir> hf cache scan`` (and every other huggingface_hub
    tool) finds them."""
    return cache_dir(node) / "hub"
