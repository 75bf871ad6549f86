"""Which modelplane a command talks about, without ``--dir`` every time.

Read-only commands (``status``, ``events``, ``history``, ``logs``, ``gpus``) and ``load``,
``unload``, ``down`` look, in order, at: ``--dir``; ``$MODELPLANE_DIR``; ``./manifests``;
``$MODELPLANE_STATE_DIR``; the state directory of this user's last ``modelplane run``; the
default state directory. The first that exists wins; when none does, the error lists each place
and why it did not count, so a wrong guess is plain to see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.manifests import manifest_set
from reconciler.manifests.schema import NodeSpec
from reconciler.state import paths, run_record

DATABASE = "modelplane.db"


@dataclass(frozen=True)
class Located:
    state_dir: Path
    manifests: Path | None  # the manifest directory, when one is known
    how: str  # where it was found, in words


class NotFound(Exception):
    """Nothing to talk about: the message says where it looked."""


def locate(directory: Path | None) -> Located:
    if directory is not None:
        return _from_manifests(directory, "--dir")
    looked: list[str] = ["--dir: not given"]
    env_dir = os.environ.get("MODELPLANE_DIR")
    if env_dir:
        return _from_manifests(Path(env_dir), "$MODELPLANE_DIR")
    looked.append("$MODELPLANE_DIR: unset")
    here = Path("manifests")
    if here.is_dir():
        return _from_manifests(here, "./manifests")
    looked.append(f"./manifests: no such directory in {Path.cwd()}")
    env_state = os.environ.get("MODELPLANE_STATE_DIR")
    if env_state:
        return _from_state(Path(env_state), "$MODELPLANE_STATE_DIR")
    looked.append("$MODELPLANE_STATE_DIR: unset")
    pointer = paths.user_dir() / run_record.LAST_RUN_FILE
    last = run_record.last_state_dir()
    if last is not None and _has_state(last):
        return _from_state(last, f"the last run ({pointer})")
    why = f"none recorded in {pointer}" if last is None else f"{last} has no {DATABASE}"
    looked.append(f"the last run: {why}")
    default = paths.state_dir(NodeSpec())
    if _has_state(default):
        return _from_state(default, "the default state directory")
    looked.append(f"{default}: no {DATABASE}")
    raise NotFound(
        "no modelplane found. Looked at:\n  "
        + "\n  ".join(looked)
        + "\nPass --dir DIR (the manifest directory), set MODELPLANE_DIR, or run from the folder"
        " that holds manifests/."
    )


def _from_manifests(directory: Path, how: str) -> Located:
    if not directory.is_dir():
        raise NotFound(f"manifest directory {directory} ({how}) does not exist")
    try:
        node = manifest_set.load(directory).node
    except FileNotFoundError:
        node = NodeSpec()
    return Located(paths.state_dir(node), directory, f"{how} {directory}")


def _from_state(state_dir: Path, how: str) -> Located:
    record = run_record.last(state_dir)
    manifests = Path(record.manifests) if record is not None else None
    if manifests is not None and not manifests.is_dir():
        manifests = None
    return Located(state_dir, manifests, f"{how}: {state_dir}")


def _has_state(state_dir: Path) -> bool:
    return (state_dir / DATABASE).exists() or (state_dir / run_record.RUN_FILE).exists()
