"""``modelplane reset-db``: the way out of an unusable state database.

``Store.open`` refuses a corrupt database with a message naming this command. It moves the file
aside (kept, with what could still be read of it copied into the new one) and lists the backends
that run, which the next ``modelplane run`` adopts: no model is stopped or restarted.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from reconciler.control.controller import Controller
from reconciler.state.lock import StateLock
from reconciler.state.recovery import reset_database
from reconciler.state.store import StateDatabaseError, Store


async def reset_db_command(
    manifests: Path | None, state_dir: Path, force: bool, out: Console, err: Console
) -> int:
    database = state_dir / "modelplane.db"
    if not database.exists():
        out.print(f"no state database at {database}: nothing to do", markup=False)
        return 0
    if not force:
        try:
            await (await Store.open(database)).close()
        except StateDatabaseError as exc:
            if not exc.corrupt:  # a new file would not help (permissions, a full disk)
                err.print(str(exc), markup=False)
                return 1
            err.print(f"{database}: {exc.problem}", markup=False)
        else:
            out.print(
                f"{database} is healthy: nothing to do (--force starts a new one anyway)",
                markup=False,
            )
            return 0
    with StateLock(state_dir):  # never from under a run or an apply
        reset = await reset_database(database)
    out.print(f"new state database at {database}; the old one was {reset.summary()}", markup=False)
    await _adoptable(manifests, state_dir, out, err)
    return 0


async def _adoptable(manifests: Path | None, state_dir: Path, out: Console, err: Console) -> None:
    """The backends that run now: the next ``modelplane run`` adopts them as they are."""
    async with await Controller.open(manifests or Path("manifests"), state_dir) as controller:
        instances, unavailable = await controller.managed_backends()
    running = [i for i in instances if i.state == "running"]
    for inst in running:
        out.print(f"running: {inst.model} ({inst.runtime} {inst.ident})", markup=False)
    for runtime, why in unavailable.items():
        err.print(f"runtime {runtime} unavailable: {why}", markup=False)
    out.print(
        f"{len(running)} running backend(s); `modelplane run` adopts them as they are",
        markup=False,
    )
