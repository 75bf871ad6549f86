"""From a Model manifest to the docker runtime's create() arguments (pure, no daemon)."""

from __future__ import annotations

from pathlib import Path

from reconciler.control.controller import Controller
from reconciler.manifests import manifest_set as manifests
from reconciler.planning.desired import build_desired
from reconciler.planning.launch import launch_spec, weights_mount
from reconciler.planning.planner import plan, unseen
from reconciler.runtimes.base import ContainerOptions
from reconciler.runtimes.docker import container_kwargs
from tests.helpers.engine import status
from tests.helpers.manifests import ManifestDir, doc

ENGINE = doc(
    "Engine",
    "py",
    {
        "image": "example/py:1",
        "imagePull": "Always",
        "command": ["{python}", "-m", "server", "--model", "{model_path}", "--port", "{port}"],
    },
)


def desired_from(tmp_path: Path, *docs: str):
    mdir = ManifestDir(tmp_path / "m")
    mdir.write("all.yaml", *docs)
    loaded = manifests.load(mdir.root)
    assert not loaded.errors, loaded.errors
    return build_desired(loaded)


def test_spec_container_and_image_pull_reach_the_container_options(tmp_path):
    model = doc(
        "Model",
        "vl",
        {
            "source": {"path": "/srv/models/vl"},
            "engine": "py",
            "runtime": "docker",
            "imagePull": "Never",
            "container": {
                "shmSize": "16GiB",
                "memory": "64GiB",
                "user": "1000:1000",
                "volumes": ["/srv/cache:/cache"],
                "network": "bridge",
                "extraArgs": {"ipc_mode": "host"},
            },
        },
    )
    desired = desired_from(tmp_path, ENGINE, model)

    spec = launch_spec(desired.models["vl"], 4, None)

    assert spec.image == "example/py:1"
    assert spec.container == ContainerOptions(
        shm_size=16 * 2**30,
        memory=64 * 2**30,
        user="1000:1000",
        volumes=("/srv/cache:/cache",),
        extra_args={"ipc_mode": "host"},
        network="bridge",
        image_pull="Never",  # the model's setting wins over the engine's
    )
    assert spec.mounts == ("/srv/models/vl",)


def test_the_engines_image_pull_applies_when_the_model_says_nothing(tmp_path):
    model = doc("Model", "m", {"source": {"path": "/srv/m.gguf"}, "engine": "py"})

    spec = launch_spec(desired_from(tmp_path, ENGINE, model).models["m"], 1, None)

    assert spec.container.image_pull == "Always"
    assert spec.container == ContainerOptions(image_pull="Always")
    assert spec.mounts == ("/srv",)


def test_python_placeholder_is_the_images_python3_and_paths_are_the_same_inside(tmp_path):
    model = doc("Model", "m", {"source": {"path": "/srv/models/m.gguf"}, "engine": "py"})
    spec = launch_spec(desired_from(tmp_path, ENGINE, model).models["m"], 1, None)

    kwargs = container_kwargs(spec, 41000, "modelplane")

    assert kwargs["entrypoint"] == ["python3"]
    assert kwargs["command"] == ["-m", "server", "--model", "/srv/models/m.gguf", "--port", "41000"]
    (mount,) = kwargs["mounts"]
    assert (mount["Source"], mount["Target"], mount["ReadOnly"]) == ("/srv/models",) * 2 + (True,)


def test_a_hub_snapshot_mounts_its_whole_repo_folder_so_blob_links_resolve():
    repo = "/var/lib/modelplane/hf/hub/models--Qwen--Qwen2.5-7B-Instruct-GGUF"
    snapshot = f"{repo}/snapshots/0123456789abcdef0123456789abcdef01234567"

    assert weights_mount(snapshot) == repo
    assert weights_mount(f"{snapshot}/q4/sub") == repo
    assert weights_mount("/srv/models") == "/srv/models"
    assert weights_mount("/data/snapshots/x") == "/data/snapshots/x"  # not a hub cache


def test_a_hub_source_mounts_the_repo_folder(tmp_path):
    model = doc(
        "Model",
        "q",
        {"source": {"huggingface": {"repo": "Qwen/Q-GGUF", "files": ["*.gguf"]}}, "engine": "py"},
    )
    repo = tmp_path / "hf" / "models--Qwen--Q-GGUF"
    resolved = repo / "snapshots" / ("a" * 40) / "q.gguf"

    spec = launch_spec(desired_from(tmp_path, ENGINE, model).models["q"], 1, None, str(resolved))

    assert spec.mounts == (str(repo),)
    assert str(resolved) in spec.command


async def test_models_on_an_unreachable_runtime_are_unknown_with_the_reason(tmp_path):
    """A docker daemon that cannot be reached: its models are Unknown (with the reason), not
    seemingly Asleep; models on the process runtime are unaffected."""
    mdir = ManifestDir(tmp_path / "m")
    mdir.write(
        "all.yaml",
        doc("Node", "box", {"runtime": "docker", "dockerHost": f"unix://{tmp_path}/no.sock"}),
        ENGINE,
        doc("Model", "c", {"source": {"path": "/srv/c.gguf"}, "engine": "py"}),
        doc("Model", "p", {"source": {"path": "/p.gguf"}, "engine": "py", "runtime": "process"}),
    )
    async with await Controller.open(mdir.root, tmp_path / "state") as controller:
        rows = {r.name: r for r in await status(controller)}

    assert (rows["c"].phase, rows["c"].sync) == ("Unknown", "Unknown")
    assert rows["c"].reason.startswith("docker runtime unavailable: ")
    assert rows["c"].runtime == "docker"
    assert (rows["p"].phase, rows["p"].reason) == ("Asleep", "")


def test_no_action_touches_models_on_an_unreachable_runtime(tmp_path):
    docs = [
        doc("Node", "box", {"runtime": "docker"}),
        ENGINE,
        doc("Model", "c", {"source": {"path": "/c.gguf"}, "engine": "py", "pin": True}),
        doc("Model", "p", {"source": {"path": "/p.gguf"}, "engine": "py", "runtime": "process"}),
    ]
    desired = desired_from(tmp_path, *docs)

    assert unseen(desired, {"docker": "down"}) == {"c"}
    assert unseen(desired, {}) == set()
    assert [a.model for a in plan(desired, [], 0.0)] == ["c"]  # what the filter removes
