"""``modelplane doctor``: is this box ready to run models? Each check says ok, warn or fail, and
how to fix it.

Every check is a small function that never raises and answers within a few seconds (short
timeouts), so ``doctor`` is safe to run on a broken box; :func:`run_doctor` runs them in parallel
threads. ``fail`` means modelplane cannot do its job as configured; ``warn`` means it can, with a
limitation worth knowing (no GPU: models run on the CPU; hub unreachable: only cached weights).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from reconciler.gitops.worktree import git_info, why_not_git
from reconciler.units import GiB, format_size, parse_listen

Status = Literal["ok", "warn", "fail"]
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
HF_FIX = "set HF_ENDPOINT to a reachable mirror, or HF_HUB_OFFLINE=1 to use cached weights only"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# --- docker -------------------------------------------------------------------------------------


def check_docker(
    docker_host: str | None = None, *, required: bool = True, timeout: float = 3.0
) -> Check:
    """The docker daemon answers (``docker_host``, else ``$DOCKER_HOST``, else the local socket).

    ``required``: the Node's runtime is docker (else an unreachable daemon is fine).
    """
    import docker  # the SDK is slow to import; only doctor and the docker runtime need it

    try:
        if docker_host:
            client = docker.DockerClient(base_url=docker_host, timeout=int(timeout))
        else:
            client = docker.from_env(timeout=int(timeout))
        with contextlib.closing(client):
            version = client.version()
    except Exception as exc:  # the SDK wraps socket errors in several exception types
        where = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if not required:
            return Check("docker", "ok", f"not reachable at {where}; not needed (runtime: process)")
        text = str(exc)
        if "Permission denied" in text:
            return Check(
                "docker",
                "fail",
                f"permission denied on {where}",
                "add the user to the docker group (the systemd unit has SupplementaryGroups=docker;"
                " in a container: --group-add $(stat -c %g /var/run/docker.sock))",
            )
        reason = "no docker socket there" if "No such file" in text else _short(text)
        return Check(
            "docker",
            "fail",
            f"daemon not reachable at {where}: {reason}",
            "start it (systemctl start docker) or set DOCKER_HOST; "
            "or use the process runtime (Node spec.runtime: process)",
        )
    return Check(
        "docker",
        "ok",
        f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})",
    )


# --- GPUs ---------------------------------------------------------------------------------------


def check_nvml(*, required: bool = False) -> Check:
    """NVML loads and sees GPUs. ``required``: the Node lists GPUs (else no GPU is a warning)."""
    import pynvml

    bad: Status = "fail" if required else "warn"
    fix = (
        "install the NVIDIA driver (nvidia-smi must work); in a container run with --gpus all; "
        "on a CPU-only box set Node spec.gpus: none"
    )
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Check("gpu", bad, f"NVML unavailable: {exc}; models run on the CPU", fix)
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(f"{i}: {pynvml.nvmlDeviceGetName(handle)} {format_size(memory)}")
    except pynvml.NVMLError as exc:
        return Check("gpu", bad, f"NVML error: {exc}", fix)
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    if not gpus:
        return Check("gpu", bad, f"driver {driver}, but no GPUs found", fix)
    return Check("gpu", "ok", f"driver {driver}; " + "; ".join(gpus))


# --- disk ---------------------------------------------------------------------------------------


def check_disk(
    cache_dir: str | os.PathLike[str],
    *,
    warn_below: int = 20 * GiB,
    fail_below: int = 2 * GiB,
) -> Check:
    """Free space where weights are downloaded, and that modelplane can write there."""
    path = Path(cache_dir)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        return Check("disk", "fail", f"{existing} is not a directory", "fix Node spec.cacheDir")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == path else f"does not exist and its parent {existing} is"
        return Check(
            "disk",
            "fail",
            f"cache dir {path} {what} not writable",
            f"create it and give it to the service user: mkdir -p {path} && chown <user> {path}",
        )
    usage = shutil.disk_usage(existing)
    detail = f"{format_size(usage.free)} free of {format_size(usage.total)} at {path}"
    fix = (
        "free space, or point Node spec.cacheDir at a bigger disk; "
        "`modelplane gc` removes unused weights"
    )
    if usage.free < fail_below:
        return Check("disk", "fail", detail, fix)
    if usage.free < warn_below:
        return Check("disk", "warn", detail, fix)
    return Check("disk", "ok", detail)


# --- listen address -----------------------------------------------------------------------------


def check_listen(listen: str, *, timeout: float = 2.0) -> Check:
    """The proxy's address can be bound, or is already served by a running modelplane."""
    try:
        host, port = parse_listen(listen)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (ValueError, OSError) as exc:
        return Check("listen", "fail", str(exc), "set Node spec.listen to HOST:PORT")
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as exc:
            bind_error = exc
        else:
            return Check("listen", "ok", f"{listen} is free")
    if bind_error.errno == errno.EADDRINUSE:
        if _is_modelplane(host, port, timeout):
            return Check("listen", "ok", f"{listen} is served by a running modelplane")
        return Check(
            "listen",
            "fail",
            f"{listen} is in use by another program",
            f"stop it (ss -ltnp 'sport = :{port}' shows which) or change Node spec.listen",
        )
    if bind_error.errno == errno.EACCES:
        return Check(
            "listen",
            "fail",
            f"no permission to bind {listen}",
            "use a port >= 1024, or grant CAP_NET_BIND_SERVICE",
        )
    return Check(
        "listen",
        "fail",
        f"cannot bind {listen}: {bind_error.strerror}",
        "use an address of this host (127.0.0.1 for local clients only)",
    )


def _is_modelplane(host: str, port: int, timeout: float) -> bool:
    """A modelplane answers ``/healthz`` and serves its status API as JSON."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        with httpx.Client(base_url=base, timeout=timeout, trust_env=False) as client:
            if not client.get("/healthz").is_success:
                return False
            return isinstance(client.get("/api/status").json(), dict)
    except (httpx.HTTPError, ValueError):
        return False


# --- git ----------------------------------------------------------------------------------------


def check_git(manifests_dir: str | os.PathLike[str]) -> Check:
    """The manifests are committed: each generation can name the commit it applied."""
    path = Path(manifests_dir)
    if not path.is_dir():
        return Check(
            "git",
            "fail",
            f"manifests directory {path} does not exist",
            f"create it (mkdir -p {path}) or pass the right directory",
        )
    if shutil.which("git") is None:
        return Check("git", "warn", "git is not installed: no commit is recorded", "install git")
    info = git_info(path)
    if info is None:
        reason = why_not_git(path)
        if "dubious ownership" in reason:
            repo = reason.rpartition(" at ")[2].strip("'")
            return Check(
                "git",
                "warn",
                f"{reason}: no commit is recorded",
                f"as the service user: git config --global --add safe.directory {repo}",
            )
        return Check(
            "git",
            "warn",
            f"{path}: {reason}: no commit is recorded",
            f"git -C {path} init && git -C {path} add -A && git -C {path} commit -m manifests",
        )
    head = f"{info.short_sha} ({info.subject})" if info.sha else "no commits yet"
    head += f" on {info.branch}" if info.branch else " (detached HEAD)"
    if info.dirty:
        files = ", ".join(info.dirty_files[:5]) + (" …" if len(info.dirty_files) > 5 else "")
        return Check(
            "git",
            "warn",
            f"{head}; uncommitted: {files}",
            f"commit them (git -C {info.toplevel} status)",
        )
    if info.sha is None:
        return Check("git", "warn", head, f"git -C {info.toplevel} commit")
    return Check("git", "ok", head)


# --- Hugging Face -------------------------------------------------------------------------------


def check_hf_endpoint(endpoint: str | None = None, *, timeout: float = 3.0) -> Check:
    """The hub (or the mirror in ``$HF_ENDPOINT``) answers HTTP; any status counts as reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return Check("huggingface", "ok", "HF_HUB_OFFLINE is set: only cached weights are used")
    url = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")
    start = time.monotonic()
    try:
        # trust_env: the environment's proxy is how huggingface_hub reaches the hub too
        response = httpx.head(url + "/", timeout=timeout, follow_redirects=True, trust_env=True)
    except httpx.HTTPError as exc:
        reason = _short(str(exc)) or type(exc).__name__
        return Check("huggingface", "warn", f"{url} not reachable: {reason}", HF_FIX)
    took = time.monotonic() - start
    return Check("huggingface", "ok", f"{url} answered HTTP {response.status_code} in {took:.1f}s")


# --- all together -------------------------------------------------------------------------------


def run_doctor(
    *,
    manifests_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    listen: str,
    runtime: str = "docker",
    gpus_required: bool = False,
    docker_host: str | None = None,
    hf_endpoint: str | None = None,
    timeout: float = 3.0,
) -> list[Check]:
    """Every check, in a fixed order, run concurrently (bounded by the timeouts)."""
    checks: list[Callable[[], Check]] = [
        lambda: check_docker(docker_host, required=runtime == "docker", timeout=timeout),
        lambda: check_nvml(required=gpus_required),
        lambda: check_disk(cache_dir),
        lambda: check_listen(listen, timeout=timeout),
        lambda: check_git(manifests_dir),
        lambda: check_hf_endpoint(hf_endpoint, timeout=timeout),
    ]
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        return list(pool.map(_guarded, checks))


def _guarded(check: Callable[[], Check]) -> Check:
    """A check that crashes is itself a failed check, not a crashed doctor."""
    try:
        return check()
    except Exception as exc:
        return Check("doctor", "fail", f"check crashed: {type(exc).__name__}: {exc}", "report it")


def exit_code(checks: Sequence[Check]) -> int:
    """1 if any check failed, else 0 (warnings pass)."""
    return int(any(c.status == "fail" for c in checks))


_STYLE = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red")}


def render(checks: Sequence[Check], console: Any = None) -> None:
    """Print one line per check (rich), each problem followed by its fix."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, style="bold")
    table.add_column(overflow="fold")
    for c in checks:
        mark, colour = _STYLE[c.status]
        text = escape(c.detail) + (f"\n[dim]fix: {escape(c.fix)}[/]" if c.fix else "")
        table.add_row(f"[{colour}]{mark}[/]", c.name, text)
    console.print(table)
    counts = {s: sum(c.status == s for c in checks) for s in _STYLE}
    console.print(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
