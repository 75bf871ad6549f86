"""Manifest loading and validation: one test per error kind, each with its exact position."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.manifests.engines import BUILTIN_ENGINES
from reconciler.manifests.loader import manifest_paths
from reconciler.manifests.manifest_set import ManifestSet, load
from reconciler.manifests.schema import EngineSpec, ModelDoc

from .conftest import ManifestDir, fake_engine_doc, model_doc


def errors(result: ManifestSet) -> list[str]:
    return [str(e) for e in result.errors]


def only_error(manifests: ManifestDir) -> str:
    found = errors(load(manifests.root))
    assert len(found) == 1, found
    return found[0]


MODEL = """\
apiVersion: modelplane/v1
kind: Model
metadata:
  name: qwen
spec:
  source:
    path: /srv/models/qwen.gguf
"""


# --- per-document errors --------------------------------------------------------------------------


def test_invalid_yaml_makes_the_whole_file_unreadable(manifests: ManifestDir) -> None:
    manifests.write(
        "broken.yaml",
        model_doc("before", engine="llama-server"),
        """\
        apiVersion: modelplane/v1
        kind: Model
        metadata:
          name: after
          labels: [unclosed
        """,
    )
    manifests.write("fine.yaml", model_doc("other", engine="llama-server"))
    result = load(manifests.root)
    [error] = result.errors
    assert (error.path, error.line, error.col) == (manifests.path("broken.yaml"), 11, 1)
    assert error.message.startswith("YAML syntax: ")
    assert str(error).startswith(f"{manifests.path('broken.yaml')}:11:1: YAML syntax: ")
    # Not even the valid document before the mistake counts: the file is unreadable as a whole.
    assert sorted(result.models) == ["other"]


def test_invalid_yaml_points_at_the_offending_character(manifests: ManifestDir) -> None:
    manifests.write("tab.yaml", MODEL + "  args: [a, b\n  env: {}\n")
    error = only_error(manifests)
    assert error.startswith(f"{manifests.path('tab.yaml')}:9:")
    assert "YAML syntax:" in error


def test_a_duplicate_key_makes_the_file_unreadable(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  pin: true\n  pin: false\n")
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:9:3: YAML syntax: while constructing a mapping "
        'found duplicate key "pin" with value "False" (original value: "True")'
    )


def test_unknown_field_suggests_the_right_one(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  stayWarn: 10m\n")
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:8:3: Model/qwen: "
        "unknown field spec.stayWarn (did you mean stayWarm?)"
    )


def test_unknown_nested_field_suggests_the_right_one(manifests: ManifestDir) -> None:
    manifests.write(
        "m.yaml",
        """\
        apiVersion: modelplane/v1
        kind: Model
        metadata: {name: qwen}
        spec:
          source:
            huggingface:
              repo: Qwen/Qwen2.5-7B-Instruct-GGUF
              revison: main
        """,
    )
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:8:7: Model/qwen: "
        "unknown field spec.source.huggingface.revison (did you mean revision?)"
    )


def test_unknown_field_without_a_close_match_has_no_hint(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  zzzzzz: 1\n")
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:8:3: Model/qwen: unknown field spec.zzzzzz"
    )


def test_missing_field(manifests: ManifestDir) -> None:
    manifests.write(
        "m.yaml",
        """\
        apiVersion: modelplane/v1
        kind: Model
        metadata: {name: qwen}
        spec:
          engine: llama-server
        """,
    )
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:4:1: Model/qwen: missing field spec.source"
    )


def test_missing_name(manifests: ManifestDir) -> None:
    manifests.write(
        "m.yaml",
        """\
        apiVersion: modelplane/v1
        kind: Engine
        metadata:
          labels: {a: b}
        spec: {command: [x]}
        """,
    )
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:3:1: Engine/?: missing field metadata.name"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "  maxConcurrency: many",
            "8:19: Model/qwen: spec.maxConcurrency: should be a valid integer, "
            "unable to parse string as an integer (got 'many')",
        ),
        (
            "  pin: maybe",
            "8:8: Model/qwen: spec.pin: should be a valid boolean, "
            "unable to interpret input (got 'maybe')",
        ),
        (
            "  args: --ctx-size 8192",
            "8:9: Model/qwen: spec.args: should be a valid list (got '--ctx-size 8192')",
        ),
        (
            "  priority: highest",
            "8:13: Model/qwen: spec.priority: "
            "should be 'urgent', 'high', 'normal', 'low' or 'batch' (got 'highest')",
        ),
    ],
)
def test_wrong_type(manifests: ManifestDir, line: str, expected: str) -> None:
    manifests.write("m.yaml", MODEL + line + "\n")
    assert only_error(manifests) == f"{manifests.path('m.yaml')}:{expected}"


def test_bad_duration(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  stayWarm: 10 minutes\n")
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:8:13: Model/qwen: spec.stayWarm: not a duration: "
        "'10 minutes' (use a number with a unit: 90s, 15m, 2h, 1h30m, or 0)"
    )


def test_bad_size(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  vram: 6GX\n")
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:8:9: Model/qwen: spec.vram: not a size: '6GX' "
        "(use a number with a unit: 512MiB, 6GiB, 24GB)"
    )


def test_good_durations_and_sizes_are_converted(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  stayWarm: 1h30m\n  startupTimeout: 0\n  vram: 6GiB\n")
    result = load(manifests.root)
    assert errors(result) == []
    spec = result.models["qwen"].doc.spec
    assert (spec.stay_warm, spec.startup_timeout, spec.vram) == (5400.0, 0.0, 6 * 2**30)


def test_unknown_kind(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL.replace("kind: Model", "kind: Modle"))
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:2:1: unknown kind 'Modle' (did you mean Model?) "
        "(one of Model, Engine, Node)"
    )


def test_missing_kind(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL.replace("kind: Model\n", ""))
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:1:1: missing field 'kind' (one of Model, Engine, Node)"
    )


def test_wrong_api_version(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL.replace("modelplane/v1", "modelplane/v2"))
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:1:13: Model/qwen: "
        "apiVersion must be 'modelplane/v1', got 'modelplane/v2'"
    )


def test_missing_api_version_is_reported_once(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL.replace("apiVersion: modelplane/v1\n", ""))
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:1:1: Model/qwen: apiVersion must be 'modelplane/v1'"
    )


def test_source_naming_no_kind(manifests: ManifestDir) -> None:
    manifests.write(
        "m.yaml",
        "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: qwen}\n"
        "spec:\n  source: {prefetch: false}\n",
    )
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:5:11: Model/qwen: spec.source: "
        "source names no kind: give exactly one of huggingface, path"
    )


def test_source_naming_two_kinds(manifests: ManifestDir) -> None:
    manifests.write(
        "m.yaml",
        "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: qwen}\nspec:\n"
        "  source: {path: /x, huggingface: {repo: a/b}}\n",
    )
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:5:11: Model/qwen: spec.source: "
        "source names two kinds (huggingface and path): give exactly one"
    )


def test_document_that_is_not_a_mapping(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL, "- just\n- a list\n")
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:9:1: a manifest document must be a mapping, not a list"
    )


def test_one_document_reports_all_its_errors(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  stayWarn: 10m\n  vram: lots\n  pin: maybe\n")
    found = errors(load(manifests.root))
    assert [e.split(": ", 2)[0].rsplit(":", 2)[1:] for e in found] == [
        ["8", "3"],
        ["9", "9"],
        ["10", "8"],
    ]


# --- cross-document errors ----------------------------------------------------------------------


def test_duplicate_name_errors_on_the_second_with_the_firsts_position(
    manifests: ManifestDir,
) -> None:
    manifests.write("a.yaml", model_doc("qwen", engine="llama-server"))
    manifests.write(
        "b.yaml",
        model_doc("other", engine="llama-server"),
        model_doc("qwen", engine="llama-server", pin=True),
    )
    result = load(manifests.root)
    assert errors(result) == [
        f"{manifests.path('b.yaml')}:6:1: Model/qwen: "
        f"duplicate Model name (first at {manifests.path('a.yaml')}:1:1)"
    ]
    assert result.models["qwen"].path == manifests.path("a.yaml")
    assert not result.models["qwen"].doc.spec.pin


def test_the_same_name_in_two_kinds_is_fine(manifests: ManifestDir) -> None:
    manifests.write("a.yaml", fake_engine_doc("qwen"), model_doc("qwen", engine="qwen"))
    result = load(manifests.root)
    assert errors(result) == []
    assert "qwen" in result.models and "qwen" in result.engine_docs


def test_duplicate_name_in_the_same_file(manifests: ManifestDir) -> None:
    manifests.write("a.yaml", fake_engine_doc("fake"), fake_engine_doc("fake", "--tokens", "3"))
    assert only_error(manifests) == (
        f"{manifests.path('a.yaml')}:6:1: Engine/fake: "
        f"duplicate Engine name (first at {manifests.path('a.yaml')}:1:1)"
    )


def test_alias_colliding_with_another_alias(manifests: ManifestDir) -> None:
    manifests.write(
        "a.yaml",
        model_doc("one", engine="llama-server", aliases=["gpt-4o-mini"]),
        model_doc("two", engine="llama-server", aliases=["fast", "gpt-4o-mini"]),
    )
    result = load(manifests.root)
    assert errors(result) == [
        f"{manifests.path('a.yaml')}:6:1: Model/two: "
        f"alias 'gpt-4o-mini' is already an alias of Model/one ({manifests.path('a.yaml')}:1:1)"
    ]
    assert sorted(result.models) == ["one"]


def test_alias_colliding_with_a_model_name(manifests: ManifestDir) -> None:
    manifests.write("a.yaml", model_doc("one", engine="llama-server", aliases=["two"]))
    manifests.write("b.yaml", model_doc("two", engine="llama-server"))
    result = load(manifests.root)
    assert errors(result) == [
        f"{manifests.path('a.yaml')}:1:1: Model/one: "
        f"alias 'two' is already a model name ({manifests.path('b.yaml')}:1:1)"
    ]
    assert sorted(result.models) == ["two"]


def test_alias_repeated_within_a_model(manifests: ManifestDir) -> None:
    manifests.write("a.yaml", model_doc("one", engine="llama-server", aliases=["x", "x"]))
    assert only_error(manifests) == (
        f"{manifests.path('a.yaml')}:1:1: Model/one: aliases repeat a name"
    )


def test_model_naming_an_engine_that_does_not_exist(manifests: ManifestDir) -> None:
    manifests.write("a.yaml", fake_engine_doc("fake"), model_doc("one", engine="fkae"))
    result = load(manifests.root)
    assert errors(result) == [
        f"{manifests.path('a.yaml')}:6:1: Model/one: engine 'fkae' does not exist "
        "(known: fake, llama-cpp-python, llama-server, vllm)"
    ]
    assert result.models == {}


def test_explicit_gpus_the_node_does_not_have(manifests: ManifestDir) -> None:
    manifests.write(
        "node.yaml",
        """\
        apiVersion: modelplane/v1
        kind: Node
        metadata: {name: box}
        spec:
          gpus:
            - {index: 0, memory: 24GiB}
            - {index: 1, memory: 24GiB}
        """,
    )
    manifests.write(
        "m.yaml",
        model_doc("ok", engine="llama-server", gpus=[1]),
        model_doc("bad", engine="llama-server", gpus=[0, 2, 3]),
    )
    result = load(manifests.root)
    assert errors(result) == [
        f"{manifests.path('m.yaml')}:6:1: Model/bad: GPU 2, 3 not on this Node (it has: 0, 1)"
    ]
    assert sorted(result.models) == ["ok"]


def test_explicit_gpus_are_checked_against_a_discovered_inventory(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", model_doc("bad", engine="llama-server", gpus=[1]))
    assert errors(load(manifests.root, gpu_indices=[0, 1])) == []
    assert errors(load(manifests.root, gpu_indices=[])) == [
        f"{manifests.path('m.yaml')}:1:1: Model/bad: GPU 1 not on this Node (it has: none)"
    ]
    assert errors(load(manifests.root)) == []  # no inventory known: nothing to check against


def test_more_than_one_node(manifests: ManifestDir) -> None:
    manifests.write("a.yaml", "apiVersion: modelplane/v1\nkind: Node\nmetadata: {name: box}\n")
    manifests.write(
        "b.yaml",
        model_doc("m", engine="llama-server"),
        "kind: Node\napiVersion: modelplane/v1\nmetadata: {name: box2}\nspec: {runtime: docker}\n",
    )
    result = load(manifests.root)
    assert errors(result) == [
        f"{manifests.path('b.yaml')}:6:1: Node/box2: "
        f"more than one Node (the first is at {manifests.path('a.yaml')}:1:1)"
    ]
    assert result.node_doc is not None and result.node_doc.name == "box"
    assert result.node.runtime == "process"


def test_every_error_is_reported_in_one_run(manifests: ManifestDir) -> None:
    manifests.write("a.yaml", MODEL + "  stayWarn: 10m\n", model_doc("dup", engine="nope"))
    manifests.write("sub/b.yml", MODEL.replace("qwen", "dup") + "  vram: huge\n")
    manifests.write("sub/deeper/c.yaml", "kind: Model\nmetadata: [\n")
    manifests.write("d.yaml", model_doc("fine", engine="llama-server"))
    result = load(manifests.root)
    where = [e.split(": ")[0] for e in errors(result)]
    assert where == [
        f"{manifests.path('a.yaml')}:8:3",
        f"{manifests.path('a.yaml')}:10:1",
        f"{manifests.path('sub/b.yml')}:8:9",
        f"{manifests.path('sub/deeper/c.yaml')}:3:1",
    ]
    assert sorted(result.models) == ["fine"]


# --- discovery and built-ins --------------------------------------------------------------------


def test_discovery_is_recursive_and_reads_yml_yaml_and_multi_document_files(
    manifests: ManifestDir,
) -> None:
    manifests.write("top.yaml", model_doc("a", engine="llama-server"))
    manifests.write(
        "x/y/z/deep.yml",
        model_doc("b", engine="llama-server"),
        "# a comment only\n",
        model_doc("c", engine="llama-server"),
    )
    manifests.write("notes.txt", "not: a manifest\n")
    manifests.write("data.json", "{}\n")
    manifests.write("empty.yaml", "")
    result = load(manifests.root)
    assert errors(result) == []
    assert sorted(result.models) == ["a", "b", "c"]
    assert result.models["c"].where == f"{manifests.path('x/y/z/deep.yml')}:8:1"
    assert result.documents_seen == 3


def test_hidden_files_and_directories_are_skipped(manifests: ManifestDir) -> None:
    manifests.write("a.yaml", model_doc("a", engine="llama-server"))
    manifests.write(".hidden.yaml", "not a manifest")
    manifests.write(".github/workflows/ci.yml", "on: push\njobs: {}\n")
    assert manifest_paths(manifests.root) == [manifests.root / "a.yaml"]
    assert errors(load(manifests.root)) == []


def test_a_manifest_directory_inside_a_hidden_directory_is_read(tmp_path: Path) -> None:
    manifests = ManifestDir(tmp_path / ".config" / "manifests")
    manifests.write("a.yaml", model_doc("a", engine="llama-server"))
    assert sorted(load(manifests.root).models) == ["a"]


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nope")


def test_builtin_engines_exist_without_manifests(manifests: ManifestDir) -> None:
    manifests.write(
        "a.yaml",
        *(
            model_doc(f"m-{name}", engine=name)
            for name in ("llama-server", "llama-cpp-python", "vllm")
        ),
    )
    result = load(manifests.root)
    assert errors(result) == []
    assert len(result.models) == 3
    assert result.engine_docs == {}
    assert set(result.engines) == {"llama-server", "llama-cpp-python", "vllm"}


def test_a_manifest_engine_overrides_a_builtin_of_the_same_name(manifests: ManifestDir) -> None:
    manifests.write(
        "a.yaml", fake_engine_doc("llama-server"), model_doc("m", engine="llama-server")
    )
    result = load(manifests.root)
    assert errors(result) == []
    engine = result.engines["llama-server"]
    assert isinstance(engine, EngineSpec)
    assert engine != BUILTIN_ENGINES["llama-server"]
    assert "fakebackend.py" in engine.command[1]
    assert result.engines["vllm"] == BUILTIN_ENGINES["vllm"]
    assert isinstance(result.models["m"].doc, ModelDoc)
