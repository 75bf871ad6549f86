"""Time ``modelplane run`` on the docker runtime against a private dockerd (numbers, no asserts).

    PYTHONPATH=. python tests/bench/docker_service.py [--rounds 3]

Measures, through the real service: startup to /readyz, a pinned container to Ready, the first
request through the proxy, a killed container back to Ready (event stream + 2 s backoff), a spec
change to the new container Ready, the daemon stopped until /readyz says so and started until
the model is Ready again, and a restart of modelplane until the container is adopted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker

from tests.docker.manifests import docker_engine, docker_model, docker_node, weights_file
from tests.docker_env import DockerDaemon, ensure_image, remove_test_leftovers, start_daemon
from tests.helpers.manifests import ManifestDir
from tests.helpers.service import ServiceProcess, start_service


def until(predicate: Callable[[], object], timeout: float = 120.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError
        time.sleep(0.02)
    return time.monotonic() - started


def phase(svc: ServiceProcess, model: str) -> str:
    return svc.model(model)["phase"]


def container(client: docker.DockerClient) -> str | None:
    found = client.containers.list(filters={"label": "modelplane.model=tiny"})
    return found[0].id if found else None


def one_round(root: Path, daemon: DockerDaemon) -> dict[str, float]:
    host, client = daemon.host, daemon.client()
    times: dict[str, float] = {}
    mdir = ManifestDir(root / "manifests")
    weights = weights_file(root / "models")
    write = lambda *args: mdir.write(  # noqa: E731
        "box.yaml", docker_node(host), docker_engine(), docker_model("tiny", weights, args=args)
    )
    write()
    started = time.monotonic()
    svc = start_service(mdir.root, root / "state")
    try:
        times["run → /readyz"] = time.monotonic() - started
        times["pinned → Ready"] = until(lambda: phase(svc, "tiny") == "Ready")
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        began = time.monotonic()
        svc.request("POST", "/v1/chat/completions", body)
        times["first request"] = time.monotonic() - began

        old = container(client)
        client.containers.get(old).kill()
        times["kill → Ready (2 s backoff)"] = until(
            lambda: container(client) not in (None, old) and phase(svc, "tiny") == "Ready"
        )

        old = container(client)
        write("--tokens", "4")
        times["spec change → new Ready"] = until(
            lambda: container(client) not in (None, old) and phase(svc, "tiny") == "Ready"
        )
        svc.stop()
        started = time.monotonic()
        svc = start_service(mdir.root, root / "state")
        times["restart → adopted Ready"] = (
            time.monotonic() - started + until(lambda: phase(svc, "tiny") == "Ready")
        )
    finally:
        svc.stop()
    return times


def daemon_round(root: Path, daemon: DockerDaemon) -> dict[str, float]:
    mdir = ManifestDir(root / "manifests")
    weights = weights_file(root / "models")
    mdir.write("box.yaml", docker_node(daemon.host), docker_engine(), docker_model("tiny", weights))
    svc = start_service(mdir.root, root / "state")
    times = {}
    try:
        until(lambda: phase(svc, "tiny") == "Ready")
        daemon.stop()
        times["daemon stopped → /readyz 503"] = until(
            lambda: svc.request("GET", "/readyz")[0] == 503
        )
        started = time.monotonic()
        daemon.start()
        times["dockerd start"] = time.monotonic() - started
        times["daemon back → /readyz 200"] = until(lambda: svc.request("GET", "/readyz")[0] == 200)
        times["daemon back → model Ready"] = until(lambda: phase(svc, "tiny") == "Ready")
    finally:
        svc.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    daemon = start_daemon()
    results: dict[str, list[float]] = {}
    try:
        ensure_image(daemon.client())
        for _ in range(args.rounds):
            for measure in (one_round, daemon_round):
                with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
                    for name, value in measure(Path(tmp), daemon).items():
                        results.setdefault(name, []).append(value)
                    remove_test_leftovers(daemon.client())
    finally:
        daemon.close()
    for name, values in results.items():
        print(f"{name:32} median {statistics.median(values):6.3f}s  max {max(values):6.3f}s")


if __name__ == "__main__":
    main()
