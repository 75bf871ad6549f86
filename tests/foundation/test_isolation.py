"""Isolation (docs/architecture.md): bad input keeps the last valid version in force; the rest
applies.

The last valid versions live in the state database, so every test here goes through a real
Controller and a real SQLite file, and several reopen them as a restarted modelplane would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.control.controller import Controller
from reconciler.manifests.schema import ModelDoc
from tests.helpers import engine

from .conftest import ManifestDir, fake_engine_doc, model_doc, records


def spec_of(controller_models: dict, name: str) -> ModelDoc:
    doc = controller_models[name].doc
    assert isinstance(doc, ModelDoc)
    return doc


async def reopen(controller: Controller, manifests: ManifestDir, state_dir: Path) -> Controller:
    """A restarted modelplane: a new Controller and Store on the same state directory."""
    await controller.close()
    return await Controller.open(manifests.root, state_dir)


MODEL_A = """\
apiVersion: modelplane/v1
kind: Model
metadata: {name: a}
spec:
  source: {path: /srv/a.gguf}
  engine: llama-server
  args: ["--ctx-size", "4096"]
"""


async def test_an_invalid_document_keeps_its_last_valid_version(
    manifests: ManifestDir, controller: Controller
) -> None:
    manifests.write("a.yaml", MODEL_A)
    manifests.write("b.yaml", model_doc("b", engine="llama-server", args=["--one"]))
    await engine.apply(controller)

    manifests.write("a.yaml", MODEL_A.replace('"4096"]', '"8192"]') + "  stayWarm: soon\n")
    manifests.write("b.yaml", model_doc("b", engine="llama-server", args=["--two"]))
    result, desired = await controller.load()

    [error] = result.errors
    assert str(error).startswith(f"{manifests.path('a.yaml')}:8:13: Model/a: spec.stayWarm:")
    a = result.models["a"]
    assert a.stale == error
    assert spec_of(result.models, "a").spec.args == ["--ctx-size", "4096"]  # the old version
    assert desired.models["a"].stale == error
    # The valid change in the other file applies.
    assert result.models["b"].stale is None
    assert spec_of(result.models, "b").spec.args == ["--two"]


async def test_a_file_that_no_longer_parses_keeps_all_its_documents(
    manifests: ManifestDir, controller: Controller
) -> None:
    manifests.write(
        "many.yaml",
        fake_engine_doc("fake"),
        model_doc("a"),
        model_doc("b", engine="llama-server", aliases=["bee"]),
    )
    manifests.write("other.yaml", model_doc("c", engine="llama-server"))
    await engine.apply(controller)

    manifests.write("many.yaml", "apiVersion: modelplane/v1\nkind: [Model\n")
    manifests.write("other.yaml", model_doc("c", engine="llama-server", pin=False, args=["-x"]))
    result, _ = await controller.load()

    [error] = result.errors
    assert error.path == manifests.path("many.yaml") and error.message.startswith("YAML syntax")
    assert sorted(result.models) == ["a", "b", "c"]
    assert sorted(result.engine_docs) == ["fake"]
    assert result.models["a"].stale == error and result.models["b"].stale == error
    assert result.engine_docs["fake"].stale == error
    assert spec_of(result.models, "b").spec.aliases == ["bee"]
    assert spec_of(result.models, "c").spec.args == ["-x"]
    assert result.models["c"].stale is None


async def test_a_document_whose_name_cannot_be_read_keeps_the_files_others(
    manifests: ManifestDir, controller: Controller
) -> None:
    manifests.write("f.yaml", model_doc("a", engine="llama-server"), model_doc("b", engine="vllm"))
    await engine.apply(controller)
    # "b" lost its metadata: which document it was is unknown, so every missing one is kept.
    manifests.write(
        "f.yaml",
        model_doc("a", engine="llama-server", pin=False),
        "apiVersion: modelplane/v1\nkind: Model\nspec: {source: {path: /x}}\n",
    )
    result, _ = await controller.load()
    assert sorted(result.models) == ["a", "b"]
    assert result.models["a"].stale is None
    assert result.models["b"].stale is not None
    assert result.models["b"].stale.message == "missing field metadata"


async def test_a_cross_document_error_also_falls_back(
    manifests: ManifestDir, controller: Controller
) -> None:
    manifests.write("a.yaml", model_doc("a", engine="llama-server", aliases=["x"]))
    await engine.apply(controller)
    manifests.write("a.yaml", model_doc("a", engine="no-such-engine", aliases=["x"]))
    result, _ = await controller.load()
    a = result.models["a"]
    assert a.stale is not None and "engine 'no-such-engine' does not exist" in a.stale.message
    assert spec_of(result.models, "a").spec.engine == "llama-server"


async def test_a_new_invalid_document_has_nothing_to_fall_back_to(
    manifests: ManifestDir, controller: Controller
) -> None:
    manifests.write("a.yaml", model_doc("a", engine="llama-server"))
    await engine.apply(controller)
    manifests.write("b.yaml", model_doc("b", engine="llama-server", vram="lots"))
    result, _ = await controller.load()
    assert sorted(result.models) == ["a"]
    assert [e.name for e in result.errors] == ["b"]


async def test_a_valid_document_elsewhere_wins_over_a_broken_files_memory(
    manifests: ManifestDir, controller: Controller
) -> None:
    """Moving a model to another file while the old file is broken is no duplicate."""
    manifests.write("old.yaml", model_doc("a", engine="llama-server", args=["--old"]))
    await engine.apply(controller)
    manifests.write("old.yaml", "kind: [\n")
    manifests.write("new.yaml", model_doc("a", engine="llama-server", args=["--new"]))
    result, _ = await controller.load()
    assert [e.path for e in result.errors] == [manifests.path("old.yaml")]
    assert result.models["a"].stale is None
    assert spec_of(result.models, "a").spec.args == ["--new"]


async def test_status_shows_a_stale_model_with_the_errors_position(
    manifests: ManifestDir, controller: Controller
) -> None:
    manifests.write("a.yaml", MODEL_A)
    await engine.apply(controller)
    manifests.write("a.yaml", MODEL_A + "  gpus: some\n")
    [row] = await engine.status(controller)
    assert row.name == "a"
    assert row.sync == "Stale"
    assert f"{manifests.path('a.yaml')}:8:9: Model/a: spec.gpus:" in row.reason
    assert row.reason.startswith("manifest invalid, last valid version in force: ")


async def test_isolation_holds_across_restarts(
    manifests: ManifestDir, controller: Controller, state_dir: Path
) -> None:
    manifests.write("a.yaml", MODEL_A)
    manifests.write("b.yaml", model_doc("b", engine="llama-server"))
    await engine.apply(controller)
    controller = await reopen(controller, manifests, state_dir)
    try:
        manifests.write("a.yaml", MODEL_A + "  bogus: 1\n")
        manifests.write("b.yaml", "- not: [closed\n")
        await engine.apply(controller)  # remembers the fallbacks as the documents in force
        controller = await reopen(controller, manifests, state_dir)
        result, _ = await controller.load()
        assert sorted(result.models) == ["a", "b"]
        assert all(m.stale is not None for m in result.models.values())
        assert spec_of(result.models, "a").spec.args == ["--ctx-size", "4096"]
        [row_a, row_b] = await engine.status(controller)
        assert (row_a.sync, row_b.sync) == ("Stale", "Stale")
    finally:
        await controller.close()


async def test_isolation_holds_when_the_directory_is_named_differently(
    manifests: ManifestDir, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`apply manifests` from one folder, then `apply /abs/manifests`: the same files."""
    manifests.write("a.yaml", model_doc("a", engine="llama-server"))
    monkeypatch.chdir(manifests.root.parent)
    controller = await Controller.open(Path(manifests.root.name), state_dir)
    await engine.apply(controller)
    await controller.close()

    manifests.write("a.yaml", "kind: [\n")
    controller = await Controller.open(manifests.root, state_dir)
    try:
        result, _ = await controller.load()
        assert sorted(result.models) == ["a"]
    finally:
        await controller.close()


async def test_a_removed_document_is_really_removed(
    manifests: ManifestDir, controller: Controller, state_dir: Path
) -> None:
    manifests.write("f.yaml", model_doc("a", engine="llama-server"), model_doc("b", engine="vllm"))
    manifests.write("g.yaml", model_doc("c", engine="vllm"))
    await engine.apply(controller)
    manifests.write("f.yaml", model_doc("a", engine="llama-server"))
    manifests.remove("g.yaml")
    await engine.apply(controller)
    result, _ = await controller.load()
    assert sorted(result.models) == ["a"]
    remembered = await controller.store.documents()
    assert sorted(remembered) == [("Model", "a")]
    # And a later broken file does not bring it back.
    manifests.write("f.yaml", "kind: [\n")
    controller2 = await reopen(controller, manifests, state_dir)
    try:
        result, _ = await controller2.load()
        assert sorted(result.models) == ["a"]
    finally:
        await controller2.close()


async def test_a_broken_file_does_not_stop_a_running_backend(
    manifests: ManifestDir, controller: Controller, state_dir: Path
) -> None:
    """Real processes: the pinned backend in the broken file keeps running, same pid."""
    manifests.write("engine.yaml", fake_engine_doc("fake"))
    manifests.write("a.yaml", model_doc("a", pin=True))
    manifests.write("b.yaml", model_doc("b"))  # unpinned: not started; keeps the prune guard off
    first = await engine.apply(controller)
    assert first.ok, first.failures
    pid = records(state_dir)["a"]["pid"]

    manifests.write("a.yaml", model_doc("a", pin=True) + "  oops: [\n")
    manifests.write("engine.yaml", fake_engine_doc("fake") + "  nope: 1\n")
    planned = await engine.plan(controller)
    assert planned.actions == []
    second = await engine.apply(controller)
    assert second.outcomes == [] and second.ok
    assert records(state_dir)["a"]["pid"] == pid
    row = {r.name: r for r in await engine.status(controller)}["a"]
    assert (row.phase, row.sync) == ("Ready", "Stale")

    manifests.remove("a.yaml")  # a real removal does stop it
    third = await engine.apply(controller)
    assert [str(o.action) for o in third.outcomes] == ["stop a (removed from manifests)"]
    assert records(state_dir) == {}


async def test_a_refused_apply_does_not_forget_the_last_valid_documents(
    manifests: ManifestDir, controller: Controller
) -> None:
    """An emptied directory (a checkout half-way) is refused, and must not wipe the memory that
    keeps a file that comes back broken in force."""
    manifests.write("engine.yaml", fake_engine_doc("fake"))
    manifests.write("a.yaml", model_doc("a", pin=True))
    manifests.write("b.yaml", model_doc("b", pin=True))
    assert (await engine.apply(controller)).ok
    for name in ("engine.yaml", "a.yaml", "b.yaml"):
        manifests.remove(name)
    refused = await engine.apply(controller)
    assert refused.refused is not None and refused.outcomes == []

    manifests.write("engine.yaml", fake_engine_doc("fake"))
    manifests.write("a.yaml", model_doc("a", pin=True))
    manifests.write("b.yaml", "kind: [\n")  # comes back broken
    result = await engine.apply(controller)
    assert result.outcomes == []  # b is kept in force: nothing stopped, nothing started
    assert sorted(result.desired.models) == ["a", "b"]
    assert result.desired.models["b"].stale is not None


async def test_a_document_turning_invalid_is_an_event_once(
    manifests: ManifestDir, controller: Controller
) -> None:
    manifests.write("a.yaml", MODEL_A)
    first = await engine.apply(controller)
    manifests.write("a.yaml", MODEL_A + "  stayWarm: soon\n")
    second = await engine.apply(controller)
    third = await engine.apply(controller)  # the same broken file: no new generation, no new event
    invalid = [e for e in await controller.store.events() if e.kind == "Invalid"]
    assert len(invalid) == 1
    assert f"{manifests.path('a.yaml')}:8:13: Model/a: spec.stayWarm:" in invalid[0].message
    assert first.generation < second.generation == third.generation
    generation = await controller.store.last_generation()
    assert generation is not None and len(generation.summary["errors"]) == 1
