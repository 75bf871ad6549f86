"""The weights parts of the command line: ``apply``'s download bars, ``gc`` and ``mirror``."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as Bars
from rich.table import Table

from reconciler.control.controller import Controller
from reconciler.manifests import manifest_set as manifest_sets
from reconciler.state import paths
from reconciler.units import format_size, is_loopback, parse_listen
from reconciler.weights import MirrorServer, Progress, TokenFileError, read_token_file


class DownloadBars:
    """One progress bar per model downloading during ``apply`` (on stderr)."""

    def __init__(self, console: Console) -> None:
        self.bars = Bars(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> DownloadBars:
        self.bars.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.bars.stop()

    def update(self, model: str, progress: Progress) -> None:
        if model not in self.tasks:
            self.tasks[model] = self.bars.add_task(f"download {model}", total=progress.total)
        self.bars.update(self.tasks[model], completed=progress.done, total=progress.total)


async def gc_command(
    directory: Path, delete: bool, allow_empty: bool, out: Console, err: Console
) -> int:
    """List (and with ``delete``, remove) cached revisions nothing uses. Returns the exit code.

    What is in use comes from the manifests in force (with the last valid version of a broken
    one), the commits they last resolved to, and what every managed backend runs. Anything
    uncertain — no manifest directory, a runtime that cannot be listed, an empty manifest set —
    deletes nothing.
    """
    try:
        controller = await Controller.open(directory)
    except FileNotFoundError as exc:
        err.print(f"{exc}; nothing deleted", markup=False)
        return 1
    try:
        try:
            _, desired = await controller.load(online=False, persist=False)
        except FileNotFoundError as exc:
            err.print(f"{exc}; nothing deleted", markup=False)
            return 1
        if not desired.models and not allow_empty:
            err.print(
                f"refusing: {directory} declares no models, so every cached revision would be"
                " unreferenced (empty or wrong directory?). Pass --allow-empty to go on.",
                markup=False,
            )
            return 1
        actual, unavailable = await controller.observe(desired)
        if unavailable:
            for runtime, why in unavailable.items():
                err.print(f"runtime {runtime} unavailable: {why}", markup=False)
            err.print("cannot tell which revisions run; nothing deleted", markup=False)
            return 1
        plan = await controller.weights.gc(desired, actual, delete=delete)
        cache = controller.weights.cache_dir
    finally:
        await controller.close()
    for warning in plan.warnings:
        err.print(f"skipped (unreadable): {warning}", markup=False)
    if not plan.candidates:
        out.print(f"{cache}: nothing to collect ({len(plan.kept)} revision(s) in use)")
        return 0
    table = Table(box=None, pad_edge=False)
    for column in ("REPO", "REVISION", "REFS", "SIZE", "LAST MODIFIED"):
        table.add_column(column)
    for c in plan.candidates:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.last_modified))
        refs = ", ".join(c.refs) or "-"
        table.add_row(c.repo, c.commit[:12], refs, format_size(c.size), when)
    out.print(table)
    count, freed = len(plan.candidates), format_size(plan.reclaimable)
    if delete:
        out.print(f"deleted {count} unreferenced revision(s), freed {freed}")
    else:
        out.print(
            f"{count} unreferenced revision(s), {freed} reclaimable; run with --yes to delete them"
        )
    return 0


def mirror_command(
    directory: Path, listen: str, token_file: Path | None, out: Console, err: Console
) -> int:
    """Serve ``cacheDir/hub`` read-only as a hub endpoint until SIGTERM or Ctrl-C."""
    try:
        node = manifest_sets.load(directory).node
    except FileNotFoundError:
        node = manifest_sets.NodeSpec()
    cache = paths.hub_cache(node)
    try:
        host, port = parse_listen(listen)
        token = read_token_file(token_file) if token_file else None
        server = MirrorServer(cache, host, port, token=token)
    except (ValueError, TokenFileError, OSError) as exc:
        err.print(f"mirror: {exc}", markup=False)
        return 2
    if not cache.is_dir():
        err.print(f"note: {cache} does not exist yet: nothing to serve", markup=False)
    if not is_loopback(host) and not token:
        err.print(
            f"warning: listening on {listen} without --token-file: anyone who can reach it"
            " can read every cached model",
            markup=False,
        )
    out.print(f"mirror of {cache} at {server.url} (read-only)", markup=False)
    out.file.flush()

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.httpd.server_close()
    return 0
