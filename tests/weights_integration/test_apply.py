"""``modelplane apply`` with a hub source: resolve, download the files a glob selects, start."""

from __future__ import annotations

from pathlib import Path

from reconciler.weights import MirrorServer, read_gguf_metadata
from reconciler.weights.layout import snapshot_dir
from tests.weights.hubgen import HubRepos

from .conftest import Box, backend_stats, file_gets, hub_model


def test_apply_downloads_the_selected_files_then_starts_the_engine_on_them(
    box: Box, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    commit = repos.commit(
        "org/tiny",
        {
            "tiny-q4_k_m.gguf": gguf_bytes,
            "tiny-q8_0.gguf": gguf_bytes + b"\0" * 64,
            "README.md": b"# tiny\n",
        },
    )
    box.write(hub_model("m", "org/tiny", ["*q4_k_m*.gguf"], pin=True))

    plan = box.cli("plan", box.manifests.root)
    assert plan.code == 2, plan.output
    assert "download" in plan.stdout and "fetch 1 file" in plan.stdout
    assert f"org/tiny@{commit[:12]}" in plan.stdout

    done = box.cli("apply", box.manifests.root)

    assert done.code == 0, done.output
    lines = [line for line in done.stdout.splitlines() if line.startswith("ok")]
    assert [line.split()[1:3] for line in lines] == [["download", "m"], ["start", "m"]]
    assert file_gets(hub) == [f"/org/tiny/resolve/{commit}/tiny-q4_k_m.gguf"]  # the glob only
    expected = snapshot_dir(box.hub_cache, "org/tiny", commit) / "tiny-q4_k_m.gguf"
    status = box.status()["m"]
    stats = backend_stats(status["endpoint"])
    assert Path(stats["model_path"]) == expected
    assert expected.read_bytes() == gguf_bytes
    assert (status["phase"], status["revision"], status["size"]) == (
        "Ready",
        commit,
        len(gguf_bytes),
    )
    quantization = read_gguf_metadata(expected)["quantization"]
    assert quantization and status["quantization"] == quantization
    table = box.cli("status", "--dir", box.manifests.root)
    row = next(line for line in table.stdout.splitlines() if line.startswith("m "))
    assert commit[:12] in row.split() and quantization in row.split()
    events = box.events("m")
    assert f"org/tiny@main is commit {commit[:12]}" in events
    assert "Downloaded" in events and "downloaded 1 file(s)" in events

    again = box.cli("apply", box.manifests.root)  # idempotent: verified once, nothing to fetch
    assert again.code == 0, again.output
    assert "nothing to do" in again.stdout
    assert len(file_gets(hub)) == 1
    assert box.cli("plan", box.manifests.root).code == 0
