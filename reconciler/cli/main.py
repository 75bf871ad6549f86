"""The ``modelplane`` command line (DESIGN.md §3).

Exit codes are part of the contract: ``validate`` 0 valid / 1 invalid; ``plan`` 0 no changes /
2 changes pending / 1 invalid; ``apply`` 0 converged / 1 failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reconciler.control.controller import Controller, PassResult, PlanResult
from reconciler.control.gpuplan import (
    GpuState,
    estimate_json,
    placement_text,
    schedule_json,
    static_pins_problem,
)
from reconciler.manifests import manifest_set as manifest_sets
from reconciler.manifests.loader import ManifestError
from reconciler.manifests.schema import json_schema
from reconciler.units import format_duration, format_size

app = typer.Typer(
    name="modelplane",
    help="Declarative, GitOps-style model serving: manifests in, converged GPU box out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (scripts, CI logs) gets wide tables instead of rich's 80-column default.
out = Console(
    highlight=False,
    soft_wrap=True,
    width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")
DEFAULT_DIR = os.environ.get("MODELPLANE_DIR", "manifests")

DirArg = Annotated[
    Path, typer.Argument(help="Manifest directory (env MODELPLANE_DIR).", show_default=True)
]
DirOption = Annotated[
    Path, typer.Option("--dir", "-d", help="Manifest directory (finds the Node's stateDir).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AllowEmpty = Annotated[
    bool,
    typer.Option("--allow-empty", help="Allow stopping every model when no manifest wants any."),
]


def main() -> None:
    app()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _print_errors(errors: list[ManifestError]) -> None:
    for error in errors:
        err.print(str(error), markup=False, style="red")


# --- validate / schema -----------------------------------------------------------------------


@app.command()
def validate(directory: DirArg = Path(DEFAULT_DIR)) -> None:
    """Parse and validate every manifest; print each error as path:line:col: Kind/name: message."""
    try:
        result = manifest_sets.load(directory)
    except FileNotFoundError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    _print_errors(result.errors)
    counts = f"{len(result.models)} models, {len(result.engine_docs)} engines"
    if result.errors:
        err.print(f"{len(result.errors)} error(s) in {directory} ({counts} valid)", markup=False)
        raise typer.Exit(1)
    pins = static_pins_problem(result)
    if pins is not None:
        _print_errors([pins])
        err.print(f"1 error in {directory}: the pinned models do not fit the Node's GPUs")
        raise typer.Exit(1)
    out.print(f"{directory}: valid ({counts}, node {'set' if result.node_doc else 'default'})")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the manifest kinds (for yaml-language-server and editors)."""
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


# --- plan / apply ----------------------------------------------------------------------------


def _plan_json(result: PlanResult) -> dict[str, Any]:
    """Starts that wait for evictions or cannot be placed are listed too (apply would try
    them); ``gpus`` says where each start goes, or why it waits or cannot."""
    actions = [*result.actions, *result.gpus.deferred]
    return {
        "actions": [{"kind": a.kind, "model": a.model, "cause": a.cause} for a in actions],
        "errors": [str(e) for e in result.manifests.errors],
        "refused": result.refused,
        "unavailable": result.unavailable,
        "weightsProblems": result.weights_problems,
        "models": {
            name: {
                "specHash": m.spec_hash,
                "runtime": m.runtime,
                "pinned": m.pinned,
                "estimate": estimate_json(result.gpus.estimates.get(name)),
            }
            for name, m in result.desired.models.items()
        },
        "gpus": schedule_json(result.gpus),
    }


def _actions_table(result: PlanResult) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ACTION", "MODEL", "CAUSE"):
        table.add_column(column)
    for action in [*result.actions, *result.gpus.deferred]:
        where = placement_text(action, result.gpus)
        table.add_row(
            action.kind, action.model, f"{action.cause}; {where}" if where else action.cause
        )
    return table


@app.command("plan")
def plan_command(
    directory: DirArg = Path(DEFAULT_DIR),
    as_json: JsonOption = False,
    allow_empty: AllowEmpty = False,
) -> None:
    """Show what apply would do, with each action's cause. Changes nothing.

    Exit 0: no changes; 2: changes pending; 1: invalid manifests (or prune refused).
    """

    async def go() -> PlanResult:
        async with await Controller.open(directory) as controller:
            await _pull(controller, fetch=False)
            return await controller.plan(allow_empty=allow_empty)

    try:
        result = _run(go())
    except FileNotFoundError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(_plan_json(result), indent=2) + "\n")
    else:
        _print_errors(result.manifests.errors)
        for runtime, why in result.unavailable.items():
            err.print(f"runtime {runtime} unavailable: {why}", markup=False)
        if result.refused:
            err.print(result.refused, markup=False)
        for name, problem in result.weights_problems.items():
            err.print(f"{name}: weights unavailable: {problem}", markup=False)
        if result.gpus.pins:
            err.print(f"error: {result.gpus.pins}", markup=False)
        if result.actions or result.gpus.deferred:
            out.print(_actions_table(result))
        elif not result.refused:
            out.print("no changes: everything is as the manifests say")
    if result.manifests.errors or result.refused or result.gpus.pins or result.weights_problems:
        raise typer.Exit(1)
    raise typer.Exit(2 if result.actions or result.gpus.deferred else 0)


@app.command()
def apply(directory: DirArg = Path(DEFAULT_DIR), allow_empty: AllowEmpty = False) -> None:
    """One converging pass: start pinned models, recreate changed ones, prune removed ones.

    Exit 0: converged; 1: something failed (with the reason).
    """

    pull_warning: str | None = None
    from .weights import DownloadBars

    async def go() -> PassResult:
        nonlocal pull_warning
        from reconciler.ops.alerts import EventNotifications

        notifications = EventNotifications()
        async with await Controller.open(directory) as controller:
            try:
                manifests, _ = await controller.load(online=False, persist=False)
                node_name = manifests.node_doc.name if manifests.node_doc else None
                notifications.configure(manifests.node.notify, node_name)
                controller.store.listeners.append(notifications.on_event)
                pull_warning = await _pull(controller, fetch=True)
                with DownloadBars(err) as bars:
                    return await controller.apply(allow_empty=allow_empty, on_progress=bars.update)
            finally:
                await notifications.aclose()

    started = time.monotonic()
    try:
        result = _run(go())
    except FileNotFoundError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    _print_errors(result.manifests.errors)
    if result.manifests.errors:
        err.print("invalid documents keep their last valid version; the rest was applied")
    for runtime, why in result.unavailable.items():
        err.print(f"runtime {runtime} unavailable: {why}", markup=False)
    if result.refused:
        err.print(result.refused, markup=False)
    for name, problem in result.weights_problems.items():
        err.print(f"FAIL  {name}: weights unavailable: {problem}", markup=False)
    if result.gpus.pins:
        err.print(f"error: {result.gpus.pins}", markup=False)
    for outcome in result.outcomes:
        if outcome.ok:
            where = f" → {outcome.instance.endpoint}" if outcome.instance else ""
            gpus = (outcome.action.placement or (None, ()))[0]
            on = f" on GPU {','.join(map(str, gpus))}" if gpus else ""
            out.print(f"ok    {outcome.action}{on}{where}", markup=False)
        else:
            err.print(f"FAIL  {outcome.action}: {outcome.message}", markup=False)
    took = time.monotonic() - started
    if not result.ok or result.manifests.errors or pull_warning:
        err.print(f"generation {result.generation}: not converged ({took:.1f}s)", markup=False)
        raise typer.Exit(1)
    what = f"{len(result.outcomes)} action(s)" if result.outcomes else "nothing to do"
    out.print(f"generation {result.generation}: converged, {what} ({took:.1f}s)")


async def _pull(controller: Controller, fetch: bool) -> str | None:
    """Pull mode (Node.git): ``apply`` fetches once, ``plan``/``status`` use what is checked out.
    Prints and returns the warning, if any."""
    from reconciler.control.pull_mode import attach_for_cli

    _, warning = await attach_for_cli(controller, fetch)
    if warning:
        err.print(f"warning: {warning}", markup=False, style="yellow")
    return warning


# --- run / down ------------------------------------------------------------------------------


@app.command()
def run(
    directory: DirArg = Path(DEFAULT_DIR),
    listen: Annotated[
        str | None, typer.Option(help="Override the Node's listen address (host:port).")
    ] = None,
    log_format: Annotated[str, typer.Option(help="text or json (JSON lines on stderr).")] = "text",
    allow_empty: AllowEmpty = False,
    grace: Annotated[
        float, typer.Option(help="Seconds SIGTERM waits for requests in flight.")
    ] = 30.0,
) -> None:
    """The service: OpenAI proxy + reconcile loop + manifest watcher, until SIGTERM."""
    from reconciler.control.serve import run as run_loop
    from reconciler.control.serve import serve

    if log_format not in ("text", "json"):
        err.print("--log-format must be text or json", markup=False)
        raise typer.Exit(2)
    code = run_loop(serve(directory, listen, log_format, allow_empty, grace))
    raise typer.Exit(code)


@app.command()
def down(directory: DirOption = Path(DEFAULT_DIR)) -> None:
    """Stop and remove every backend modelplane manages (processes and containers)."""

    async def go() -> tuple[int, dict[str, str]]:
        async with await Controller.open(directory) as controller:
            try:
                _, desired = await controller.load(online=False)
                names = {"process", desired.node.runtime}
                names |= {m.runtime for m in desired.models.values()}
            except FileNotFoundError:
                names = {"process"}
            instances, unavailable = await controller.runtimes.list(names)
            stopped = 0
            for inst in instances:
                if inst.managed:
                    await controller.runtimes.get(inst.runtime).stop(inst)
                    await controller.store.add_event(
                        "Stopped", "stopped by modelplane down", inst.model
                    )
                    out.print(f"stopped {inst.model} ({inst.runtime} {inst.ident})", markup=False)
                    stopped += 1
            return stopped, unavailable

    stopped, unavailable = _run(go())
    for runtime, why in unavailable.items():
        err.print(f"runtime {runtime} unavailable: {why}", markup=False)
    out.print(f"{stopped} backend(s) stopped")
    if unavailable:
        raise typer.Exit(1)


# --- status / events / logs ------------------------------------------------------------------


@app.command()
def status(directory: DirOption = Path(DEFAULT_DIR), as_json: JsonOption = False) -> None:
    """Models (phase, sync, endpoint, idle time) as the runtimes and the database see them."""

    from reconciler.control.pull_mode import attach_for_cli
    from reconciler.gitops.applied import applied, applied_line, dirty_warning
    from reconciler.gpus.inventory import gpu_table, inventory_json

    async def go() -> tuple[list[Any], GpuState, Any, list[str]]:
        async with await Controller.open(directory) as controller:
            mode, warning = await attach_for_cli(controller, fetch=False)
            rows, gpus = await controller.status(), await controller.gpu_state()
            generation = await controller.store.last_generation()
            if mode is None:  # the work tree as it is now, not as it was applied
                warning = dirty_warning(await controller.git_info())
            return rows, gpus, generation, [warning] if warning else []

    try:
        rows, gpus, generation, warnings = _run(go())
    except FileNotFoundError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    if as_json:
        data = {
            "models": [r.as_dict() for r in rows],
            "gpus": inventory_json(gpus.inventory, gpus.all_claims),
            "applied": applied(generation),
            "warnings": warnings,
        }
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    table = Table(box=None, pad_edge=False)
    columns = ("MODEL", "PHASE", "SYNC", "RUNTIME", "GPUS", "ENDPOINT", "IDLE", "REVISION")
    for column in (*columns, "SIZE", "QUANT", "REASON"):
        table.add_column(column, overflow="fold")
    for row in rows:
        idle = format_duration(row.idle_for) if row.idle_for is not None else "-"
        name = row.name + (" (pinned)" if row.pinned else "")
        name += " (loaded by hand)" if row.override else ""
        table.add_row(
            name,
            row.phase,
            row.sync,
            row.runtime,
            ",".join(map(str, row.gpus)) or "-",
            row.endpoint or "-",
            idle,
            (row.revision or "-")[:12],
            format_size(row.size) if row.size is not None else "-",
            row.quantization or "-",
            escape(row.reason),
        )
    out.print(table)
    out.print(gpu_table(gpus.inventory, gpus.all_claims, gpus.reserve))
    out.print(applied_line(generation), markup=False)
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False, style="yellow")


@app.command()
def events(
    directory: DirOption = Path(DEFAULT_DIR),
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
) -> None:
    """The event log: what modelplane did and why."""

    async def go() -> None:
        async with await Controller.open(directory) as controller:
            last_id = 0
            for event in await controller.store.events(model=model, limit=limit):
                _print_event(event.as_dict())
                last_id = event.id
            while follow:
                await asyncio.sleep(0.5)
                for event in await controller.store.events(model=model, after_id=last_id):
                    _print_event(event.as_dict())
                    last_id = event.id

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


def _print_event(event: dict[str, Any]) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["time"]))
    model = event["model"] or "-"
    out.print(f"{when}  {event['kind']:<12} {model:<20} {event['message']}", markup=False)


@app.command()
def logs(
    model: str,
    directory: DirOption = Path(DEFAULT_DIR),
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
) -> None:
    """The tail of a model backend's log."""

    async def go() -> str:
        async with await Controller.open(directory) as controller:
            _, desired = await controller.load(online=False)
            runtime = desired.models[model].runtime if model in desired.models else "process"
            return await controller.runtimes.get(runtime).logs(model, lines)

    text = _run(go())
    if not text:
        err.print(f"no log for {model}", markup=False)
        raise typer.Exit(1)
    sys.stdout.write(text + "\n")


# --- gitops and operations ----------------------------------------------------------------------


@app.command()
def history(
    directory: DirOption = Path(DEFAULT_DIR),
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
) -> None:
    """Applied generations: time, git commit, outcome, and which models changed."""
    from reconciler.gitops.worktree import changes_between

    async def go() -> list[Any]:
        async with await Controller.open(directory) as controller:
            return await controller.store.generations(limit=limit + 1)

    generations = list(reversed(_run(go())))
    table = Table(box=None, pad_edge=False)
    for column in ("GEN", "TIME", "COMMIT", "OUTCOME", "CHANGES"):
        table.add_column(column)
    rows = []
    for before, gen in zip([None, *generations], generations, strict=False):
        old = before.summary.get("models", {}) if before else {}
        changes = changes_between(old, gen.summary.get("models", {}))
        commit = (gen.git_commit or "-")[:12] + (" (dirty)" if gen.git_dirty else "")
        subject = gen.summary.get("git", {}).get("subject", "")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(gen.time))
        detail = changes.summary() + (f"  [{subject}]" if subject else "")
        rows.append((str(gen.id), when, commit, gen.outcome, detail))
    for row in rows[-limit:]:
        table.add_row(*(escape(cell) for cell in row))  # "[subject]" is not rich markup
    out.print(table)


@app.command()
def doctor(directory: DirArg = Path(DEFAULT_DIR)) -> None:
    """Check docker, NVML, disk, the listen port, git and the HF endpoint; print the fixes."""
    from reconciler.ops import doctor as checks
    from reconciler.state import paths

    try:
        node = manifest_sets.load(directory).node
    except FileNotFoundError:
        node = manifest_sets.NodeSpec()
    results = checks.run_doctor(
        manifests_dir=directory,
        cache_dir=paths.cache_dir(node),
        listen=node.listen,
        runtime=node.runtime,
        gpus_required=isinstance(node.gpus, list),
        docker_host=node.docker_host,
        hf_endpoint=os.environ.get("HF_ENDPOINT"),
    )
    checks.render(results, out)
    raise typer.Exit(checks.exit_code(results))


@app.command()
def gpus(directory: DirOption = Path(DEFAULT_DIR), as_json: JsonOption = False) -> None:
    """The GPU inventory as NVML (or the Node manifest's static list) reports it, with what
    the models modelplane runs claim on each GPU."""
    from reconciler.gpus.inventory import gpu_table, inventory_json, node_gpus, read_inventory

    async def go() -> GpuState:
        async with await Controller.open(directory) as controller:
            return await controller.gpu_state()

    try:
        state = _run(go())
    except (OSError, sqlite3.Error):  # no manifests or state here: the inventory alone
        try:
            node = manifest_sets.load(directory).node
        except FileNotFoundError:
            node = manifest_sets.NodeSpec()
        state = GpuState(read_inventory(node_gpus(node)), reserve=node.vram_reserve)
    if as_json:
        data = inventory_json(state.inventory, state.all_claims)
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    out.print(gpu_table(state.inventory, state.all_claims, state.reserve))


@app.command()
def gc(
    directory: DirArg = Path(DEFAULT_DIR),
    yes: Annotated[bool, typer.Option("--yes", help="Delete them (else only list them).")] = False,
    allow_empty: AllowEmpty = False,
) -> None:
    """List cached revisions no manifest or running model uses, with sizes; delete with --yes."""
    from .weights import gc_command

    raise typer.Exit(_run(gc_command(directory, yes, allow_empty, out, err)))


@app.command()
def mirror(
    directory: DirOption = Path(DEFAULT_DIR),
    listen: Annotated[
        str, typer.Option(help="HOST:PORT; loopback unless told otherwise (port 0: any free).")
    ] = "127.0.0.1:8401",
    token_file: Annotated[
        Path | None, typer.Option(help="Require this bearer token (a file holding it).")
    ] = None,
) -> None:
    """Serve this box's weights cache as a Hugging Face endpoint for air-gapped boxes (read-only).

    On the other box: HF_ENDPOINT=http://THIS-BOX:8401 modelplane run ...
    """
    from .weights import mirror_command

    raise typer.Exit(mirror_command(directory, listen, token_file, out, err))


@app.command("hash-key")
def hash_key(key: str) -> None:
    """Print the sha256 of an API key, for Node.apiKeys (the key itself never goes in a file)."""
    import hashlib

    sys.stdout.write(hashlib.sha256(key.encode()).hexdigest() + "\n")


if __name__ == "__main__":
    main()
