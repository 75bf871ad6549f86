"""A real ``dockerd`` for the tests, on a private socket, and the test image it runs.

The docker tests never use the machine's own daemon: they start Debian's ``dockerd`` as root on a
socket under a short temp dir (``--bridge=none --iptables=false``, so it changes nothing on the
host's network), and import a tiny Debian image built once per machine with ``debootstrap``:

* ``MODELPLANE_TEST_DOCKER_HOST=unix:///...`` reuses a daemon someone else runs (nothing is started
  or stopped, only containers carrying :data:`TEST_LABEL` or the managed label are cleaned up);
* ``MODELPLANE_TEST_CACHE`` (default ``~/.cache/modelplane-test``) keeps the rootfs tarball and a
  persistent data-root, so a second run imports nothing;
* ``MODELPLANE_TEST_DOCKER_FRESH=1`` uses a throwaway data-root instead (the image is imported
  again from the cached tarball, a few seconds);
* ``MODELPLANE_TEST_REQUIRE_DOCKER=1``, or ``CI`` set (unless that variable is ``0``), turns
  "cannot start dockerd" from a skip into a failure.

It is also a small command line, so CI can warm the cache before the tests run::

    python -m tests.docker_env build-image     # debootstrap + tar (cached), prints the timings

(as a module from the checkout's root: run as a script, ``tests/docker/`` would shadow the
``docker`` SDK on ``sys.path``)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

IMAGE = "modelplane-test/python:bookworm"
TEST_LABEL = "modelplane-test"  # containers the tests create by hand carry it, for cleanup
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SLIM_EXCLUDES = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/share/locale",
    "usr/share/doc",
    "usr/share/man",
)


class DockerUnavailable(Exception):
    """No docker daemon can be had here; the message says why (the tests skip with it)."""


def docker_required(environ: Mapping[str, str] = os.environ) -> bool:
    """``MODELPLANE_TEST_REQUIRE_DOCKER=1``, or a CI (``CI`` set, as CI services do) unless
    ``MODELPLANE_TEST_REQUIRE_DOCKER=0`` says otherwise."""
    explicit = environ.get("MODELPLANE_TEST_REQUIRE_DOCKER")
    if explicit is not None and explicit != "":
        return explicit == "1"
    return environ.get("CI", "").lower() not in ("", "0", "false")


def cache_dir() -> Path:
    path = Path(os.environ.get("MODELPLANE_TEST_CACHE") or Path.home() / ".cache/modelplane-test")
    path.mkdir(parents=True, exist_ok=True)
    return path


def debian_mirror(sources: tuple[Path, ...] = ()) -> str:
    """The Debian mirror this machine's apt uses (deb822 ``URIs:`` or one-line ``deb`` entries)."""
    if not sources:
        files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
        sources = tuple(f for f in files if f.is_file() and not f.name.endswith(".disabled"))
    for source in sources:
        text = source.read_text(errors="replace")
        for uri in re.findall(r"^\s*URIs:\s*(\S+)", text, re.M) + re.findall(
            r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", text, re.M
        ):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


# --- the image ---------------------------------------------------------------------------------


def rootfs_tarball(log=print) -> Path:
    """``debootstrap --variant=minbase --include=python3 bookworm`` as a tarball, built once."""
    tarball = cache_dir() / f"rootfs-{SUITE}-python3.tar"
    if tarball.exists():
        return tarball
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise DockerUnavailable("building the test image needs root and debootstrap")
    with _locked(cache_dir() / "rootfs.lock"):
        if tarball.exists():  # another process built it while we waited
            return tarball
        mirror = debian_mirror()
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=cache_dir()) as tmp:
            rootfs = Path(tmp) / "rootfs"
            started = time.monotonic()
            cmd = ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(rootfs)]
            done = subprocess.run([*cmd, mirror], capture_output=True, text=True)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
                raise DockerUnavailable(f"debootstrap from {mirror} failed:\n{tail}")
            log(f"debootstrap ({mirror}): {time.monotonic() - started:.0f}s")
            partial = tarball.with_suffix(".partial")
            # apt's lists and .debs, docs and locales are half the tree and never used here
            slim = [f"--exclude=./{d}/*" for d in SLIM_EXCLUDES]
            subprocess.run(["tar", "-C", str(rootfs), *slim, "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
    return tarball


def ensure_image(client: docker.DockerClient, log=print) -> None:
    """Import :data:`IMAGE` into the daemon unless it is already there."""
    try:
        client.images.get(IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    tarball = rootfs_tarball(log)
    started = time.monotonic()
    repo, tag = IMAGE.split(":")
    with tarball.open("rb") as data:
        client.api.import_image_from_data(data, repository=repo, tag=tag)
    client.images.get(IMAGE)
    log(f"docker import: {time.monotonic() - started:.1f}s")


# --- the daemon --------------------------------------------------------------------------------


@dataclass
class DockerDaemon:
    """A dockerd the tests talk to; ``owned`` when these tests started it (and may stop it)."""

    host: str
    owned: bool
    workdir: Path | None = None
    data_root: Path | None = None
    process: subprocess.Popen | None = None
    _lock: object = field(default=None, repr=False)

    def client(self, timeout: int = 30) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, version="auto", timeout=timeout)

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "dockerd.log" if self.workdir else None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start (or start again) the owned dockerd and wait until it answers a ping."""
        assert self.owned and self.workdir and self.data_root
        sock = self.workdir / "docker.sock"
        cmd = [
            "dockerd",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            f"--host=unix://{sock}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.workdir / 'exec'}",
            f"--pidfile={self.workdir / 'docker.pid'}",
            # if a system containerd runs, dockerd uses it: keep our containers apart from its
            "--containerd-namespace=modelplane-test",
            "--containerd-plugins-namespace=modelplane-test-plugins",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DockerUnavailable(
                    f"dockerd exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(docker.errors.DockerException):
                if sock.exists() and self.client(timeout=2).ping():
                    return
            time.sleep(0.1)
        self.stop()
        raise DockerUnavailable(f"dockerd did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the owned dockerd (SIGTERM; it stops its containers and its containerd)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        if not self.owned:
            return
        self.stop()
        if self.workdir:
            _unmount_under(self.workdir)  # dockerd leaves exec-root/netns/default mounted
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()


def _unmount_under(path: Path) -> None:
    prefix = str(path) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _why_not_root() -> str | None:
    if os.geteuid() != 0:
        return "dockerd must run as root (run the docker tests as root, as CI does)"
    for tool in ("dockerd", "containerd", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install docker.io)"
    return None


@contextlib.contextmanager
def _locked(path: Path):
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _persistent_data_root() -> tuple[Path | None, object]:
    """The cached data-root, if no other test session holds it (dockerd cannot share one)."""
    handle = (cache_dir() / "data-root.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None, None
    return cache_dir() / "data-root", handle


def start_daemon(persistent: bool | None = None) -> DockerDaemon:
    """Reuse ``MODELPLANE_TEST_DOCKER_HOST`` or start a private dockerd; raise DockerUnavailable."""
    host = os.environ.get("MODELPLANE_TEST_DOCKER_HOST")
    if host:
        daemon = DockerDaemon(host=host, owned=False)
        try:
            daemon.client(timeout=5).ping()
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(
                f"MODELPLANE_TEST_DOCKER_HOST={host} is unreachable: {exc}"
            ) from exc
        return daemon
    reason = _why_not_root()
    if reason:
        raise DockerUnavailable(reason)
    # unix socket paths are limited to 108 bytes: keep the dir short, not under pytest's tmp_path
    workdir = Path(tempfile.mkdtemp(prefix="mpd-", dir="/tmp"))
    if persistent is None:
        persistent = os.environ.get("MODELPLANE_TEST_DOCKER_FRESH") != "1"
    data_root, lock = _persistent_data_root() if persistent else (None, None)
    daemon = DockerDaemon(
        host=f"unix://{workdir / 'docker.sock'}",
        owned=True,
        workdir=workdir,
        data_root=data_root or workdir / "data",
        _lock=lock,
    )
    try:
        daemon.start()
    except BaseException:
        daemon.close()
        raise
    return daemon


def remove_test_leftovers(client: docker.DockerClient) -> None:
    """Remove what tests leave: managed containers and networks, and containers made by hand.

    A bridge network is a real interface on the host, recreated by every daemon start from a
    persistent data-root, so it is removed too.
    """
    for label in ("modelplane.managed=true", f"{TEST_LABEL}=true"):
        for container in client.containers.list(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
        for network in client.networks.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.remove()


def main(argv: list[str]) -> int:
    if argv[1:] == ["build-image"]:
        started = time.monotonic()
        print(rootfs_tarball())
        daemon = start_daemon()
        try:
            client = daemon.client()
            client.images.list()
            ensure_image(client)
        finally:
            daemon.close()
        print(f"total: {time.monotonic() - started:.0f}s")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
