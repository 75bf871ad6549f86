"""The ``modelplane`` command line (the README's "Command line" table).

Exit codes are part of the contract: ``validate`` 0 valid / 1 invalid; ``plan`` 0 no changes /
2 changes pending / 1 invalid; ``apply`` 0 converged / 1 failures.

``plan``, ``apply``, ``run``, ``validate``, ``doctor`` and ``gc`` take the manifest directory
(``DIR``, default ``./manifests`` or ``$MODELPLANE_DIR``). The others talk about a modelplane
found by :mod:`.locate` and go through the running service's admin API when one is up (what they
print is then what the service sees), else read the state database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console

from reconciler.control.controller import Controller
from reconciler.control.engine import ApplyResult, Engine, PassReport
from reconciler.control.snapshot import take_snapshot
from reconciler.gitops.applied import applied_line, dirty_warning, history
from reconciler.gitops.pull_mode import attach_for_cli
from reconciler.gpus.pins import static_pins_problem
from reconciler.manifests import manifest_set as manifest_sets
from reconciler.manifests.loader import ManifestError
from reconciler.manifests.schema import json_schema
from reconciler.state import run_record
from reconciler.state.lock import StateLock
from reconciler.state.store import Store
from reconciler.units import parse_listen

from . import views
from .client import ServiceClient, ServiceError
from .locate import Located, NotFound, locate
from .plan_view import actions_table, plan_json

app = typer.Typer(
    name="modelplane",
    help="Declarative, GitOps-style model serving: manifests in, converged GPU box out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings' wrapped lines join; `code` renders as code
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
FindOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        "-d",
        help="Manifest directory (else $MODELPLANE_DIR, ./manifests, or the last run's state).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AllowEmpty = Annotated[
    bool,
    typer.Option("--allow-empty", help="Allow stopping every model when no manifest wants any."),
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("modelplane")
        except PackageNotFoundError:  # run from a checkout that is not installed
            number = "unknown (not installed)"
        sys.stdout.write(f"modelplane {number}\n")
        raise typer.Exit(0)


@app.callback()
def _options(
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Declarative, GitOps-style model serving: manifests in, converged GPU box out."""


def main() -> None:
    from reconciler.state.lock import StateDirLocked
    from reconciler.state.store import StateDatabaseError

    try:
        app()
    except (StateDatabaseError, StateDirLocked) as exc:  # the reason and the way out, exit 1
        err.print(f"error: {exc}", markup=False)
        sys.exit(1)
    except ServiceError as exc:  # the service refused (a bad key, an unknown model)
        err.print(f"modelplane run answered {exc}", markup=False, style="red")
        sys.exit(1)
    except httpx.HTTPError as exc:  # it went away in the middle
        err.print(f"lost modelplane run: {exc}", markup=False, style="red")
        sys.exit(1)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _fail(message: str) -> typer.Exit:
    err.print(message, markup=False, style="red")
    return typer.Exit(1)


def _print_errors(errors: list[ManifestError]) -> None:
    for error in errors:
        err.print(str(error), markup=False, style="red")


def _count(number: int, noun: str) -> str:
    """``1 model``, ``2 models``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _warn(warning: str) -> None:
    err.print(f"warning: {warning}", markup=False, style="yellow")


def _find(directory: Path | None) -> tuple[Located, ServiceClient | None]:
    """The modelplane a command talks about, and a client of its service when one is up."""
    try:
        found = locate(directory)
    except NotFound as exc:
        raise _fail(str(exc)) from None
    return found, ServiceClient.find(found.state_dir)


def _offline_manifests(found: Located) -> Path:
    if found.manifests is None:
        raise _fail(
            f"no modelplane run is up and the manifest directory is unknown ({found.how});"
            " pass --dir DIR"
        )
    return found.manifests


# --- validate / schema -----------------------------------------------------------------------


@app.command()
def validate(directory: DirArg = Path(DEFAULT_DIR)) -> None:
    """Parse and validate every manifest; print each error as path:line:col: Kind/name: message."""
    try:
        result = manifest_sets.load(directory)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    _print_errors(result.errors)
    counts = f"{_count(len(result.models), 'model')}, {_count(len(result.engine_docs), 'engine')}"
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


async def _pull(controller: Controller, fetch: bool) -> str | None:
    """Pull mode (Node.git): ``apply`` fetches once, ``plan``/``status`` use what is checked out.
    Returns the warning, if any."""
    _, warning = await attach_for_cli(
        controller.source, controller.store, controller.state_dir, fetch
    )
    return warning


@app.command("plan")
def plan_command(
    directory: DirArg = Path(DEFAULT_DIR),
    as_json: JsonOption = False,
    allow_empty: AllowEmpty = False,
) -> None:
    """Show what apply would do, with each action's cause. Changes nothing.

    Exit 0: no changes; 2: changes pending; 1: invalid manifests (or prune refused).
    """

    async def go() -> tuple[Engine, PassReport, str | None]:
        async with await Controller.open(directory) as controller:
            warning = await _pull(controller, fetch=False)
            engine = await Engine.offline(controller, allow_empty=allow_empty)
            return engine, await engine.plan(), warning

    try:
        engine, report, warning = _run(go())
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    if engine.manifests is None:
        raise _fail(engine.load_error or f"cannot read {directory}")
    if warning:
        _warn(warning)
    if as_json:
        sys.stdout.write(json.dumps(plan_json(engine, report), indent=2) + "\n")
    else:
        _print_errors(engine.manifests.errors)
        for runtime, why in engine.unavailable.items():
            err.print(f"runtime {runtime} unavailable: {why}", markup=False)
        if report.refused:
            err.print(report.refused, markup=False)
        for name, problem in engine.weights_problems.items():
            err.print(f"{name}: weights unavailable: {problem}", markup=False)
        if engine.pins:
            err.print(f"error: {engine.pins}", markup=False)
        if report.actions or report.deferred:
            out.print(actions_table(report, bool(engine.inventory.gpus)))
        elif not report.refused:
            out.print("no changes: everything is as the manifests say")
    if engine.manifests.errors or report.refused or engine.pins or engine.weights_problems:
        raise typer.Exit(1)
    raise typer.Exit(2 if report.actions or report.deferred else 0)


@app.command()
def apply(directory: DirArg = Path(DEFAULT_DIR), allow_empty: AllowEmpty = False) -> None:
    """Converge once: download weights, start pinned models, recreate changed ones, prune
    removed ones, unload idle ones, until nothing is left to do.

    Exit 0: converged; 1: something failed (with the reason).
    """
    from reconciler.ops.alerts import EventNotifications

    from .weights import DownloadBars

    pull_warning: str | None = None

    async def go() -> ApplyResult:
        nonlocal pull_warning
        notifications = EventNotifications()
        async with await Controller.open(directory) as controller:
            lock = StateLock(controller.state_dir)
            try:
                lock.acquire()  # one apply (or run) per state directory
                manifests = manifest_sets.load(directory, await controller.store.documents())
                node_name = manifests.node_doc.name if manifests.node_doc else None
                notifications.configure(manifests.node.notify, node_name)
                controller.store.listeners.append(notifications.on_event)
                pull_warning = await _pull(controller, fetch=True)
                engine = await Engine.offline(controller, allow_empty=allow_empty)
                with DownloadBars(err) as bars:
                    engine.on_progress = bars.update
                    result = await engine.apply()
                outcome = "refused" if result.refused else "ok" if result.ok else "failed"
                await controller.store.update_generation(
                    result.generation, outcome, _summary(result)
                )
                return result
            finally:
                lock.release()
                await notifications.aclose()

    started = time.monotonic()
    try:
        result = _run(go())
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    if pull_warning:
        _warn(pull_warning)
    _print_errors(result.manifests.errors)
    if result.manifests.errors:
        err.print("invalid documents keep their last valid version; the rest was applied")
    for runtime, why in result.unavailable.items():
        err.print(f"runtime {runtime} unavailable: {why}", markup=False)
    if result.refused:
        err.print(result.refused, markup=False)
    for name, problem in result.weights_problems.items():
        err.print(f"FAIL  {name}: weights unavailable: {problem}", markup=False)
    if result.pins:
        err.print(f"error: {result.pins}", markup=False)
    for outcome in result.outcomes:
        if outcome.ok:
            where = f" → {outcome.instance.endpoint}" if outcome.instance else ""
            gpus = outcome.action.placement.gpus if outcome.action.placement else ()
            on = f" on GPU {','.join(map(str, gpus))}" if gpus else ""
            out.print(f"ok    {outcome.action}{on}{where}", markup=False)
        else:
            err.print(f"FAIL  {outcome.action}: {outcome.message}", markup=False)
    for action, reason in result.unschedulable:
        err.print(f"FAIL  {action}: unschedulable: {reason}", markup=False)
    took = time.monotonic() - started
    if not result.ok or result.manifests.errors or pull_warning:
        err.print(f"generation {result.generation}: not converged ({took:.1f}s)", markup=False)
        raise typer.Exit(1)
    what = f"{len(result.outcomes)} action(s)" if result.outcomes else "nothing to do"
    out.print(f"generation {result.generation}: converged, {what} ({took:.1f}s)")


def _summary(result: ApplyResult) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "models": {name: m.spec_hash for name, m in result.desired.models.items()},
        "errors": [str(e) for e in result.manifests.errors],
        "actions": [str(o.action) for o in result.outcomes],
        "failures": [f"{o.action}: {o.message}" for o in result.failures],
    }
    if result.refused:
        summary["refused"] = result.refused
    return summary


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
    try:
        if listen is not None:  # (the Node's own listen address is checked when it loads)
            parse_listen(listen)
    except ValueError as exc:
        err.print(f"--listen: {exc}", markup=False)
        raise typer.Exit(2) from None
    code = run_loop(serve(directory, listen, log_format, allow_empty, grace))
    raise typer.Exit(code)


@app.command()
def down(directory: FindOption = None) -> None:
    """Stop and remove every backend modelplane manages (processes, containers, Ray actors); a
    running ``modelplane run`` stops them and then exits."""
    found, client = _find(directory)
    if client is not None:
        with client:
            try:
                result = client.down()
            except ServiceError as exc:
                raise _fail(str(exc)) from None
        for inst in result["stopped"]:
            where = f" on {inst['node']}" if inst.get("node") else ""
            out.print(
                f"stopped {inst['model']} ({inst['runtime']} {inst['id']}{where})", markup=False
            )
        _wait_exit(client.record.pid)
        out.print(
            f"{len(result['stopped'])} backend(s) stopped; modelplane run (pid {client.record.pid})"
            " exited"
        )
        unavailable = result["unavailable"]
    else:
        stopped, unavailable = _run(_down_offline(found))
        out.print(f"{stopped} backend(s) stopped")
    for runtime, why in unavailable.items():
        err.print(f"runtime {runtime} unavailable: {why}", markup=False)
    if unavailable:
        raise typer.Exit(1)


async def _down_offline(found: Located) -> tuple[int, dict[str, str]]:
    directory = found.manifests or Path(DEFAULT_DIR)
    async with await Controller.open(directory, found.state_dir) as controller:
        with StateLock(controller.state_dir):  # not while an apply starts them
            return await _stop_all(controller)


async def _stop_all(controller: Controller) -> tuple[int, dict[str, str]]:
    instances, unavailable = await controller.managed_backends()
    for inst in instances:
        await controller.runtimes.get(inst.runtime).stop(inst)
        await controller.store.add_event("Stopped", "stopped by modelplane down", inst.model)
        where = f" on {inst.node}" if inst.node else ""
        out.print(f"stopped {inst.model} ({inst.runtime} {inst.ident}{where})", markup=False)
    return len(instances), unavailable


def _wait_exit(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while run_record.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


# --- status / events / logs / history ----------------------------------------------------------


@app.command()
def status(directory: FindOption = None, as_json: JsonOption = False) -> None:
    """Models (phase, sync, endpoint, idle time, why) and GPUs: the running service's view
    when ``modelplane run`` is up, else the runtimes and the database."""
    data = _status_data(directory)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    cluster = data.get("cluster")
    out.print(views.models_table(data["models"], nodes=cluster is not None))
    if data["gpus"].get("gpus"):
        out.print(views.gpu_table(data["gpus"]))
    if cluster is not None and cluster["nodes"]:
        out.print(views.node_table(cluster))
    out.print(data["applied"]["text"] if data.get("applied") else applied_line(None), markup=False)
    sys.stdout.flush()  # the errors and warnings below (stderr) must not land inside this line
    for error in data.get("errors", []):
        err.print(error, markup=False, style="red")
    for warning in data.get("warnings", []):
        _warn(warning)


def _status_data(directory: Path | None) -> dict[str, Any]:
    """``/api/status`` of the running service, or the same JSON built offline."""
    found, client = _find(directory)
    if client is not None:
        with client:
            return client.status()
    return _run(_offline_status(_offline_manifests(found), found.state_dir))


async def _offline_status(directory: Path, state_dir: Path) -> dict[str, Any]:
    """What a fresh ``run`` would see now (phases it left in the database included)."""
    async with await Controller.open(directory, state_dir) as controller:
        warning = await _pull(controller, fetch=False)
        engine = await Engine.offline(controller, online=False)
        await engine.plan()
        if engine.manifests is None:
            raise _fail(engine.load_error or f"cannot read {directory}")
        if warning is None and controller.source.revision is None:
            # the work tree as it is now, not as it was applied
            warning = dirty_warning(await controller.source.git_info())
        snapshot = take_snapshot(
            engine,
            generation=await controller.store.last_generation(),
            warnings=(warning,) if warning else (),
        )
        return snapshot.as_json()


@app.command()
def events(
    directory: FindOption = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
) -> None:
    """The event log: what modelplane did and why."""
    found, client = _find(directory)
    with contextlib.suppress(KeyboardInterrupt):
        if client is not None:
            with client:
                if follow:
                    for event in client.follow_events(model, limit):
                        out.print(views.event_line(event), markup=False)
                else:
                    for event in client.events(model, limit):
                        out.print(views.event_line(event), markup=False)
            return
        _run(_offline_events(found.state_dir, model, follow, limit))


async def _offline_events(state_dir: Path, model: str | None, follow: bool, limit: int) -> None:
    async with await Store.open(state_dir / "modelplane.db") as store:
        last_id = 0
        for event in await store.events(model=model, limit=limit):
            out.print(views.event_line(event.as_dict()), markup=False)
            last_id = event.id
        while follow:
            await asyncio.sleep(0.5)
            for event in await store.events(model=model, after_id=last_id):
                out.print(views.event_line(event.as_dict()), markup=False)
                last_id = event.id


@app.command()
def logs(
    model: str,
    directory: FindOption = None,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
) -> None:
    """The tail of a model backend's log; -f follows it (Ctrl-C ends)."""
    found, client = _find(directory)
    with contextlib.suppress(KeyboardInterrupt):
        if client is not None and follow:
            with client:
                for line in client.follow_logs(model, lines):
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
            return
        if follow:
            _run(_offline_logs(found, model, lines, follow=True))
            return
        if client is not None:
            with client:
                text = client.logs(model, lines)
        else:
            text = _run(_offline_logs(found, model, lines))
        if not text:
            raise _fail(f"no log for {model}")
        sys.stdout.write(text + "\n")


async def _offline_logs(found: Located, model: str, lines: int, follow: bool = False) -> str:
    from reconciler.runtimes.log_follow import follow_logs

    directory = found.manifests or Path(DEFAULT_DIR)
    async with await Controller.open(directory, found.state_dir) as controller:
        runtime = "process"
        with contextlib.suppress(FileNotFoundError):
            _, desired = await controller.load(online=False, persist=False)
            if model in desired.models:
                runtime = desired.models[model].runtime
        if not follow:
            return await controller.runtimes.get(runtime).logs(model, lines)
        async for line in follow_logs(controller.runtimes.get(runtime), model, lines):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        return ""


@app.command()
def ps(directory: FindOption = None, as_json: JsonOption = False) -> None:
    """The models loaded now (as Ollama's ps): where they run, their size, and UNTIL when they
    stay loaded if no request comes."""
    data = _status_data(directory)
    loaded = [m for m in data["models"] if m["phase"] in views.LOADED]
    if as_json:
        sys.stdout.write(json.dumps(loaded, indent=2) + "\n")
        return
    if not loaded:
        out.print("no model is loaded")
        return
    out.print(views.ps_table(loaded, data.get("time") or time.time()))


@app.command()
def requests(
    directory: FindOption = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")] = None,
    client_name: Annotated[
        str | None, typer.Option("--client", "-c", help="Only this client (x_client_id or IP).")
    ] = None,
    status_filter: Annotated[
        str | None,
        typer.Option("--status", "-s", help="A status code (429) or a class (5xx, 4xx)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The request log, newest first: time, client, model, status, latency, tokens."""
    code = _status_filter(status_filter)
    found, client = _find(directory)
    filters = {"model": model, "client": client_name, "status": code, "limit": limit}
    if client is not None:
        with client:
            rows = client.requests(**filters)
    else:

        async def go() -> list[dict[str, Any]]:
            async with await Store.open(found.state_dir / "modelplane.db") as store:
                found_rows = await store.requests(
                    model=model, client=client_name, status=code, limit=limit
                )
                return [r.as_dict() for r in found_rows]

        rows = _run(go())
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        out.print("no requests logged" + (" that match" if model or client_name or code else ""))
        return
    out.print(views.requests_table(rows))


def _status_filter(text: str | None) -> int | None:
    """``429`` → 429; ``5xx`` (or ``5``) → 5, a class the API understands."""
    if text is None:
        return None
    value = text.lower().removesuffix("xx")
    if not value.isdigit() or not (len(value) == 1 or len(value) == 3):
        raise _fail(f"--status takes a code (429) or a class (5xx), not {text!r}")
    return int(value)


@app.command("history")
def history_command(
    directory: FindOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
) -> None:
    """Applied generations: time, git commit, outcome, and which models changed."""
    found, client = _find(directory)
    if client is not None:
        with client:
            rows = client.history(limit)
    else:

        async def go() -> list[dict[str, Any]]:
            async with await Store.open(found.state_dir / "modelplane.db") as store:
                return history(await store.generations(limit=limit + 1), limit)

        rows = _run(go())
    out.print(views.history_table(rows))


# --- load / unload -----------------------------------------------------------------------------


def _by_hand(action: str, model: str, directory: Path | None) -> None:
    found, client = _find(directory)
    if client is None:
        raise _fail(
            f"no modelplane run is up ({found.how}): {action} acts on the running service;"
            " start it with `modelplane run`"
        )
    with client:
        try:
            result = client.load(model) if action == "load" else client.unload(model)
        except ServiceError as exc:
            raise _fail(f"{action} {model}: {exc}") from None
    out.print(f"{result['model']}: {result['phase']}", markup=False)


@app.command()
def load(model: str, directory: FindOption = None) -> None:
    """Start a model and keep it loaded (like a pin) until unloaded or its manifest changes."""
    _by_hand("load", model, directory)


@app.command()
def unload(model: str, directory: FindOption = None) -> None:
    """Unload a model now (requests in flight finish first); the next request wakes it."""
    _by_hand("unload", model, directory)


# --- operations ----------------------------------------------------------------------------------


@app.command()
def doctor(directory: DirArg = Path(DEFAULT_DIR)) -> None:
    """Check docker, NVML, disk, the listen port, git and the HF endpoint; print the fixes."""
    from reconciler.ops import doctor as checks
    from reconciler.state import paths

    try:
        manifests = manifest_sets.load(directory)
    except FileNotFoundError:
        manifests = manifest_sets.ManifestSet()
    node = manifests.node
    specs = [m.doc.spec for m in manifests.models.values()]
    engines = manifests.engines
    local = [s.engine for s in specs if (s.runtime or node.runtime) == "process"]
    if not specs and node.runtime == "process":
        local = ["llama-server"]  # the engine a first model gets unless it names one
    results = checks.run_doctor(
        manifests_dir=directory,
        cache_dir=paths.cache_dir(node),
        listen=node.listen,
        runtime=node.runtime,
        gpus_required=isinstance(node.gpus, list),
        docker_host=node.docker_host,
        hf_endpoint=os.environ.get("HF_ENDPOINT"),
        gpus_none=node.gpus == "none",
        uses_hub=any(s.source.huggingface is not None for s in specs),
        engines={name: engines[name].command for name in local if name in engines},
    )
    checks.render(results, out)
    raise typer.Exit(checks.exit_code(results))


@app.command()
def gpus(directory: FindOption = None, as_json: JsonOption = False) -> None:
    """The GPU inventory as NVML (or the Node manifest's static list) reports it, with what
    the models modelplane runs claim on each GPU."""
    from reconciler.gpus.inventory import inventory_json, read_inventory

    try:
        found: Located | None = locate(directory)
    except NotFound:
        found = None  # no state anywhere: the inventory alone
    client = ServiceClient.find(found.state_dir) if found else None
    if client is not None:
        with client:
            data = client.status()["gpus"]
    elif found is not None and found.manifests is not None:
        data = _run(_offline_status(found.manifests, found.state_dir))["gpus"]
    else:
        try:
            node = manifest_sets.load(directory or Path(DEFAULT_DIR)).node
        except FileNotFoundError:
            node = manifest_sets.NodeSpec()
        data = inventory_json(read_inventory(node.gpus), (), node.vram_reserve)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    if not data.get("gpus"):  # a CPU-only box: say so, rather than draw an empty table
        messages = [m.removeprefix("no GPUs: ") for m in data.get("messages", [])]
        why = "; ".join(messages) or "NVML sees none"
        out.print(f"no GPUs: {why}", markup=False)
        return
    out.print(views.gpu_table(data))


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
    directory: FindOption = None,
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

    raise typer.Exit(mirror_command(directory or Path(DEFAULT_DIR), listen, token_file, out, err))


@app.command("reset-db")
def reset_db(
    directory: FindOption = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="The state directory (else found as status finds it).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Start a new one even if it is healthy.")] = False,
) -> None:
    """Move a corrupt state database aside and start a new one; running models keep running
    and are adopted again. The old file is kept; what can still be read of it is copied."""
    from .state import reset_db_command

    if state_dir is not None:
        manifests = directory if directory is not None and directory.is_dir() else None
    else:
        found, _ = _find(directory)
        state_dir, manifests = found.state_dir, found.manifests
    raise typer.Exit(_run(reset_db_command(manifests, state_dir, force, out, err)))


@app.command("hash-key")
def hash_key(
    key: Annotated[
        str | None,
        typer.Argument(help="Leave it out: a key on the command line shows in ps and history."),
    ] = None,
) -> None:
    """Print the sha256 of an API key, for Node.apiKeys (the key itself never goes in a file).

    The key is read from stdin (``modelplane hash-key < keyfile``), or at a prompt that does not
    echo it on a terminal.
    """
    import getpass
    import hashlib

    if key is not None:
        err.print(
            "warning: a key on the command line shows in ps and the shell's history; "
            "pipe it in instead (modelplane hash-key < keyfile)",
            markup=False,
            style="yellow",
        )
    elif sys.stdin.isatty():
        key = getpass.getpass("API key: ")
    else:
        key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        err.print("no key given: pipe it in (modelplane hash-key < keyfile)", markup=False)
        raise typer.Exit(1)
    sys.stdout.write(hashlib.sha256(key.encode()).hexdigest() + "\n")


if __name__ == "__main__":
    main()
