"""Free-space checks before a download, so a full disk fails early with a reason and no damage."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from reconciler.units import MiB, format_size

from .errors import InsufficientDisk

FreeSpace = Callable[[Path], int]

#: Kept free on top of what a download needs: logs, the state database and temporary files live
#: on the same disk on most boxes, and filling it to the last byte breaks them.
DEFAULT_MARGIN = 512 * MiB


def free_space(path: Path) -> int:
    """Bytes free for an unprivileged writer on the filesystem that holds ``path``.

    ``path`` may not exist yet (a first download creates the cache): the nearest existing parent
    is measured instead.
    """
    return shutil.disk_usage(existing_parent(path)).free


def existing_parent(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def check_space(
    path: Path,
    missing: int,
    *,
    margin: int = DEFAULT_MARGIN,
    measure: FreeSpace = free_space,
) -> None:
    """Raise :class:`InsufficientDisk` unless ``missing`` + ``margin`` bytes fit on ``path``'s disk.

    ``measure`` is the one seam tests replace (a mocked free-space figure at the boundary).
    """
    if missing <= 0:
        return
    free = measure(path)
    needed = missing + margin
    if free >= needed:
        return
    where = Path(path)
    reason = (
        f"needs {format_size(needed)} ({format_size(missing)} to download"
        f" + {format_size(margin)} margin), {format_size(free)} free on {where}"
    )
    raise InsufficientDisk(reason, needed=needed, free=free, path=str(where))
