"""Every ready-to-copy manifest set under examples/ is valid, as `modelplane validate` says."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.manifests import manifest_set as manifests
from reconciler.planning.desired import build_desired
from reconciler.planning.launch import launch_spec
from reconciler.runtimes.docker import container_kwargs
from tests.helpers.service import modelplane_command, service_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SETS = sorted(p for p in EXAMPLES.iterdir() if p.is_dir())


def test_there_are_examples():
    assert {p.name for p in SETS} >= {"quickstart", "gpu-box"}


@pytest.mark.parametrize("directory", SETS, ids=[p.name for p in SETS])
def test_example_validates(directory: Path, tmp_path: Path):
    done = subprocess.run(
        modelplane_command("validate", directory),
        env=service_env(tmp_path / "state"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout and not done.stderr


def test_gpu_box_runs_everything_in_containers_of_its_images():
    desired = build_desired(manifests.load(EXAMPLES / "gpu-box"))

    assert desired.node.runtime == "docker"
    for name, model in desired.models.items():
        resolved = f"/var/lib/modelplane/hf/models--x--y/snapshots/{'0' * 40}/{name}.gguf"
        spec = launch_spec(model, 1, (0,), resolved)
        kwargs = container_kwargs(spec, 41000, "modelplane")
        assert model.runtime == "docker", name
        # the image's entrypoint is replaced: the binary must be on the image's PATH or absolute
        assert kwargs["entrypoint"][0] in ("/app/llama-server", "vllm"), name
        assert [m["Source"] for m in kwargs["mounts"]] == ["/var/lib/modelplane/hf/models--x--y"]
    vllm = launch_spec(desired.models["llama-3.1-8b-instruct"], 1, (1,), "/hf/snap")
    assert vllm.image == "vllm/vllm-openai:v0.8.5"
    assert vllm.container.shm_size == 16 * 2**30
