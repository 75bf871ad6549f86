"""Free-space checks before a download, so a full disk fails early with a reason and no damage."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import InsufficientDisk

FreeSpace = Callable[[Path], int]

#: Kept free on top of what a download needs: logs, the state database and temporary files live
#: on the same disk on most boxes, and filling it to the last byte breaks them.
DEFAULT_MARGIN = 512 * 2**20


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


def format_bytes(size: float) -> str:
    """``14.2 GiB``: binary units with one decimal, as people read disk sizes."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value = float(size)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


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
        f"needs {format_bytes(needed)} ({format_bytes(missing)} to download"
        f" + {format_bytes(margin)} margin), {format_bytes(free)} free on {where}"
    )
    raise InsufficientDisk(reason, needed=needed, free=free, path=str(where))
