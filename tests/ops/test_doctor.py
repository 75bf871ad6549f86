"""doctor's checks against what this machine really has (and real sockets the tests open)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from reconciler.ops import doctor
from reconciler.ops.doctor import (
    HF_FIX,
    Check,
    check_disk,
    check_docker,
    check_git,
    check_hf_endpoint,
    check_listen,
    check_nvml,
    exit_code,
    render,
    run_doctor,
)
from reconciler.units import format_size
from tests.ops.gitrepo import git


class Server:
    """A local HTTP server; ``modelplane=True`` answers like a running modelplane's admin API."""

    def __init__(self, modelplane: bool = False) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                if modelplane and self.path in ("/healthz", "/api/status"):
                    body = json.dumps({"models": []} if self.path == "/api/status" else "ok")
                    status = 200
                else:
                    body, status = "not here", 404
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body.encode())

            do_GET = do_HEAD = _reply

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- docker ---


def test_docker_unreachable_fails_with_the_fix(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/no-docker.sock"
    check = check_docker(host, timeout=2)
    assert check.status == "fail"
    assert check.detail.startswith(f"daemon not reachable at {host}")
    assert "DOCKER_HOST" in check.fix and "runtime: process" in check.fix
    optional = check_docker(host, required=False, timeout=2)
    assert optional.status == "ok" and "not needed" in optional.detail


def test_docker_host_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/env.sock")
    check = check_docker(timeout=2)
    assert check.status == "fail" and f"{tmp_path}/env.sock" in check.detail


@pytest.mark.docker
@pytest.mark.skipif(
    not os.environ.get("MODELPLANE_TEST_DOCKER_HOST"), reason="set MODELPLANE_TEST_DOCKER_HOST"
)
def test_docker_reachable() -> None:
    check = check_docker(os.environ["MODELPLANE_TEST_DOCKER_HOST"], timeout=10)
    assert check.status == "ok" and check.detail.startswith("Docker ")


# --- GPU ---


def nvidia_smi_works() -> bool:
    """Independent of NVML bindings: does the driver's own tool see a GPU?"""
    if shutil.which("nvidia-smi") is None:
        return False
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and "GPU 0" in proc.stdout


def test_nvml_matches_the_machine() -> None:
    check = check_nvml()
    if nvidia_smi_works():
        assert check.status == "ok" and "driver" in check.detail
    else:
        assert check.status == "warn"
        assert "models run on the CPU" in check.detail or "no GPUs" in check.detail
        assert "spec.gpus: none" in check.fix and "--gpus all" in check.fix
        assert check_nvml(required=True).status == "fail"


# --- disk ---


def test_disk_space_thresholds(tmp_path: Path) -> None:
    cache = tmp_path / "hf" / "not-yet"
    ok = check_disk(cache, warn_below=1, fail_below=0)
    usage = shutil.disk_usage(tmp_path)
    figures = f"{format_size(usage.free)} free of {format_size(usage.total)}"
    assert ok.status == "ok" and ok.detail == f"{figures} at {cache}"
    total = usage.total
    warn = check_disk(tmp_path, warn_below=total + 1, fail_below=0)
    assert warn.status == "warn" and "modelplane gc" in warn.fix
    assert check_disk(tmp_path, fail_below=total + 1).status == "fail"


def test_disk_under_a_file_fails(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    check = check_disk(tmp_path / "file" / "hf")
    assert check.status == "fail" and "is not a directory" in check.detail


# --- listen ---


def test_listen_free_port() -> None:
    listen = f"127.0.0.1:{free_port()}"
    assert check_listen(listen) == Check("listen", "ok", f"{listen} is free")


def test_listen_in_use_by_another_program() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        check = check_listen(f"127.0.0.1:{port}", timeout=1)
    assert check.status == "fail" and "in use by another program" in check.detail
    assert f":{port}" in check.fix


def test_listen_in_use_by_modelplane() -> None:
    running = Server(modelplane=True)
    try:
        check = check_listen(f"127.0.0.1:{running.port}")
    finally:
        running.close()
    assert check.status == "ok" and "served by a running modelplane" in check.detail


def test_listen_bad_addresses() -> None:
    unparsable = check_listen("localhost")
    assert unparsable.status == "fail" and "is not HOST:PORT" in unparsable.detail
    foreign = check_listen("192.0.2.1:8400")  # TEST-NET-1: never an address of this host
    assert foreign.status == "fail" and foreign.detail.startswith("cannot bind 192.0.2.1:8400")
    bad_port = check_listen("127.0.0.1:99999")
    assert bad_port.status == "fail" and "from 0 to 65535" in bad_port.detail


# --- git ---


def test_git_clean_dirty_and_not_a_repo(
    tmp_path: Path, work_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = check_git(work_repo / "manifests")
    assert clean.status == "ok" and clean.detail.endswith("(add model a) on main")
    (work_repo / "manifests" / "new.yaml").write_text("kind: Model\n")
    dirty = check_git(work_repo / "manifests")
    assert dirty.status == "warn" and "uncommitted: manifests/new.yaml" in dirty.detail
    assert "git -C" in dirty.fix
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repo above tmp_path
    outside = check_git(plain)
    assert outside.status == "warn"
    assert outside.detail == f"{plain}: not inside a git work tree: no commit is recorded"
    assert "git -C" in outside.fix and "init" in outside.fix
    missing = check_git(tmp_path / "nope")
    assert missing.status == "fail" and "does not exist" in missing.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_git_repo_of_another_user(work_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mounted repo owned by another uid: git refuses it, doctor says how to allow it."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)  # no safe.directory from the machine
    for path in [work_repo, *work_repo.rglob("*")]:
        os.lchown(path, 12345, 12345)
    check = check_git(work_repo / "manifests")
    assert check.status == "warn" and "dubious ownership" in check.detail
    assert check.fix.endswith(f"git config --global --add safe.directory {work_repo}")


def test_git_without_commits(tmp_path: Path) -> None:
    git(tmp_path, "init", "--quiet", "-b", "main")
    check = check_git(tmp_path)
    assert check.status == "warn" and check.detail == "no commits yet on main"


# --- Hugging Face ---


def test_hf_endpoint_reachable(server: Server) -> None:
    check = check_hf_endpoint(f"http://127.0.0.1:{server.port}")
    assert check.status == "ok" and "answered HTTP 404" in check.detail


def test_hf_endpoint_from_env_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    check = check_hf_endpoint(timeout=2)
    assert check.status == "warn" and check.detail.startswith(f"{url} not reachable")
    assert check.fix == HF_FIX


def test_hf_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    check = check_hf_endpoint()
    assert check.status == "ok" and "HF_HUB_OFFLINE" in check.detail


# --- all together ---


def test_run_doctor_and_render(tmp_path: Path, work_repo: Path, server: Server) -> None:
    checks = run_doctor(
        manifests_dir=work_repo / "manifests",
        cache_dir=tmp_path / "hf",
        listen=f"127.0.0.1:{free_port()}",
        runtime="process",
        docker_host=f"unix://{tmp_path}/no.sock",
        hf_endpoint=f"http://127.0.0.1:{server.port}",
        timeout=2,
    )
    assert [c.name for c in checks] == ["docker", "gpu", "disk", "listen", "git", "huggingface"]
    by_name = {c.name: c for c in checks}
    assert by_name["docker"].status == "ok"  # not needed with the process runtime
    assert by_name["listen"].status == "ok" and by_name["git"].status == "ok"
    assert by_name["huggingface"].status == "ok"
    assert exit_code(checks) == 0
    failing = [*checks, Check("disk", "fail", "0.1 GiB free", "free space [now]")]
    assert exit_code(failing) == 1
    out = io.StringIO()
    render(failing, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "✗  disk" in text and "fix: free space [now]" in text  # markup-looking text kept
    assert text.rstrip().endswith("1 failed")


def test_a_crashing_check_becomes_a_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(**kw: object) -> Check:
        raise RuntimeError("bug")

    monkeypatch.setattr(doctor, "check_nvml", boom)
    checks = run_doctor(
        manifests_dir="/nonexistent", cache_dir="/tmp", listen="127.0.0.1:1", runtime="process"
    )
    crashed = checks[1]
    assert crashed.status == "fail" and "RuntimeError: bug" in crashed.detail
