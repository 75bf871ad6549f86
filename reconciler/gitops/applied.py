"""What ``status`` says about the manifests in force: "applied <sha> (<subject>) at <time>", and
warnings a user should act on (uncommitted manifests, a pull that keeps failing). Pure.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from reconciler.state.store import Generation

from .worktree import GitInfo, changes_between


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def applied_line(generation: Generation | None) -> str:
    """``applied 1a2b3c4d5e6f (add qwen) at 2025-01-01 12:00:00`` for the generation in force."""
    if generation is None:
        return "nothing applied yet"
    when = _when(generation.time)
    if not generation.git_commit:
        return f"applied generation {generation.id} at {when} (manifests not in a git repository)"
    subject = generation.summary.get("git", {}).get("subject", "")
    text = f"applied {generation.git_commit[:12]} ({subject})"
    if generation.git_dirty:
        text += " + uncommitted changes"
    return f"{text} at {when}"


def applied(generation: Generation | None) -> dict[str, Any] | None:
    """The ``applied`` object of ``status --json`` and ``/api/status``."""
    if generation is None:
        return None
    git = generation.summary.get("git", {})
    return {
        "generation": generation.id,
        "time": generation.time,
        "commit": generation.git_commit,
        "branch": generation.git_branch,
        "subject": git.get("subject"),
        "dirty": generation.git_dirty,
        "pulled": bool(git.get("pulled")),
        "outcome": generation.outcome,
        "text": applied_line(generation),
    }


def dirty_warning(git: GitInfo | None) -> str | None:
    """A warning when manifests under the directory are not committed (they apply anyway)."""
    if git is None or not git.dirty:
        return None
    shown = ", ".join(git.dirty_files[:5]) + (" …" if len(git.dirty_files) > 5 else "")
    return (
        f"uncommitted changes in the manifests directory (applied as they are, not in any "
        f"commit): {shown}"
    )


def history(generations: Sequence[Generation], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` generations, oldest first, each with the models it added (+),
    changed (~) or removed (-) against the one before (``generations``: newest first, one more
    than ``limit`` so the oldest shown has something to compare with)."""
    ordered = list(reversed(generations))
    rows = []
    for before, gen in zip([None, *ordered], ordered, strict=False):
        old = before.summary.get("models", {}) if before else {}
        changes = changes_between(old, gen.summary.get("models", {}))
        rows.append(
            {
                "generation": gen.id,
                "time": gen.time,
                "commit": gen.git_commit,
                "dirty": gen.git_dirty,
                "subject": gen.summary.get("git", {}).get("subject", ""),
                "outcome": gen.outcome,
                "changes": changes.summary(),
            }
        )
    return rows[-limit:] if limit else []
