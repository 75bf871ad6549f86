"""Manifests that run the fake backend in containers on the test dockerd, via ``modelplane run``.

The Node names the test daemon's private socket (``dockerHost``) and the docker runtime; the
Engine runs ``tests/fakebackend.py`` with ``{python}`` in the imported test image (``imagePull:
Never``: the image is local only); each Model is pinned (started on apply), has no GPU, and reads
the fake backend from the checkout's ``tests`` directory, mounted read-only by ``spec.container``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.docker_env import IMAGE
from tests.helpers.backend import FAKEBACKEND
from tests.helpers.manifests import doc, fake_engine_doc, node_doc

TESTS_DIR = FAKEBACKEND.parent


def docker_node(host: str, resync: str = "5m", **spec: Any) -> str:
    """A long ``resync`` proves that reactions come from the daemon's event stream."""
    return node_doc(runtime="docker", dockerHost=host, resync=resync, **spec)


def docker_engine(
    name: str = "fake", *extra: str, image: str = IMAGE, image_pull: str = "Never"
) -> str:
    """The fake engine in the test image; it reports ``{model_path}`` (``--model``)."""
    return fake_engine_doc(
        name, "--model", "{model_path}", *extra, image=image, imagePull=image_pull
    )


def docker_model(name: str, weights: Path, engine: str = "fake", **spec: Any) -> str:
    """A pinned Model on a local weights file; keyword arguments are more spec fields."""
    container = {"volumes": [f"{TESTS_DIR}:{TESTS_DIR}:ro"], **spec.pop("container", {})}
    fields = {
        "source": {"path": str(weights)},
        "engine": engine,
        "gpus": "none",
        "pin": True,
        "startupTimeout": "60s",
        "container": container,
        **spec,
    }
    return doc("Model", name, fields)


def weights_file(directory: Path, name: str = "tiny.gguf") -> Path:
    """A stand-in weights file (the fake backend only reports its path)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"not really a model\n")
    return path
