"""What a backend gets for a hub source: placeholders and (docker) the folder to mount. Pure."""

from __future__ import annotations

from reconciler.planning.launch import launch_spec
from tests.foundation.planning import desired_model

SNAPSHOT = "/var/lib/modelplane/hf/hub/models--org--tiny/snapshots/" + "a" * 40


def test_a_hub_file_fills_the_placeholders_and_mounts_its_whole_repo_folder() -> None:
    model = desired_model("m", source={"huggingface": {"repo": "org/tiny", "files": ["*.gguf"]}})
    spec = launch_spec(model, 1, None, f"{SNAPSHOT}/q4/tiny.gguf")
    assert "--model" in spec.command
    assert spec.command[spec.command.index("--model") + 1] == f"{SNAPSHOT}/q4/tiny.gguf"
    # snapshot entries are symlinks into ../../blobs: a container needs the repo folder
    assert spec.mounts == ("/var/lib/modelplane/hf/hub/models--org--tiny",)


def test_a_local_path_is_mounted_as_it_is() -> None:
    model = desired_model("m", source={"path": "/srv/models/tiny.gguf"})
    assert launch_spec(model, 1, None).mounts == ("/srv/models",)
