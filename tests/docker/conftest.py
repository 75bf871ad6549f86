"""Fixtures for the docker tests: one real dockerd per session, the test image, a runtime.

Every test here is marked ``docker``. Without root or Debian's ``docker.io`` they skip with the
reason; with ``MODELPLANE_TEST_REQUIRE_DOCKER=1`` or ``CI`` set (CI services set it) that reason
is a failure instead (``MODELPLANE_TEST_REQUIRE_DOCKER=0`` allows the skip on such a CI).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from reconciler.runtimes.base import LaunchSpec
from reconciler.runtimes.docker import DockerRuntime
from tests.docker.manifests import TESTS_DIR
from tests.docker_env import (
    IMAGE,
    DockerDaemon,
    DockerUnavailable,
    docker_required,
    ensure_image,
    remove_test_leftovers,
    start_daemon,
)
from tests.helpers.manifests import fake_launch_spec


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.docker)


def _unavailable(reason: str) -> None:
    if docker_required():
        pytest.fail(f"docker tests required but no daemon: {reason}", pytrace=False)
    pytest.skip(f"no docker daemon: {reason}")


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    try:
        daemon = start_daemon()
    except DockerUnavailable as exc:
        _unavailable(str(exc))
    try:
        client = daemon.client()
        remove_test_leftovers(client)
        ensure_image(client, log=lambda _: None)
    except DockerUnavailable as exc:
        daemon.close()
        _unavailable(str(exc))
    yield daemon
    with contextlib.suppress(docker.errors.DockerException):
        remove_test_leftovers(daemon.client())
    daemon.close()


@pytest.fixture
def docker_client(docker_daemon: DockerDaemon) -> Iterator[docker.DockerClient]:
    client = docker_daemon.client()
    yield client
    client.close()


@pytest.fixture
def runtime(docker_daemon: DockerDaemon) -> Iterator[DockerRuntime]:
    """A runtime on the test daemon; whatever a test leaves running is removed afterwards."""
    yield DockerRuntime(docker_daemon.host)
    if docker_daemon.owned and not docker_daemon.running:
        docker_daemon.start()  # a test that stopped the daemon failed before restarting it
    with contextlib.suppress(docker.errors.DockerException):
        remove_test_leftovers(docker_daemon.client())


def fake_spec(model: str = "tiny", *args: str, **overrides: object) -> LaunchSpec:
    """A spec running tests/fakebackend.py in the test image (tests dir mounted read-only)."""
    return fake_launch_spec(
        model,
        *args,
        **{
            "spec_hash": "h1",
            "spec": {"engine": "fake", "args": list(args)},
            "env": {"PYTHONUNBUFFERED": "1"},
            "image": IMAGE,
            "mounts": (str(TESTS_DIR),),
            **overrides,
        },
    )


@pytest.fixture
def make_spec():
    """``make_spec(model, *fakebackend_args, **LaunchSpec_overrides)``."""
    return fake_spec


@pytest.fixture
def clean_docker(docker_daemon: DockerDaemon) -> Iterator[None]:
    """After the test: the daemon running again, and no managed or test container left."""
    yield
    if docker_daemon.owned and not docker_daemon.running:
        docker_daemon.start()
    with contextlib.suppress(docker.errors.DockerException):
        remove_test_leftovers(docker_daemon.client())
