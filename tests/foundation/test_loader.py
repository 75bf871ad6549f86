"""Manifest loading and validation: one test per error kind, each with its exact position."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.manifests.engines import BUILTIN_ENGINES
from reconciler.manifests.loader import manifest_paths
from reconciler.manifests.manifest_set import InForce, ManifestSet, load
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


def _doc(spec: str, metadata: str = "{name: qwen}", kind: str = "Model") -> str:
    return f"apiVersion: modelplane/v1\nkind: {kind}\nmetadata: {metadata}\nspec:\n{spec}"


# (what m.yaml holds, its one error as "line:col: message")
ONE_ERROR = {
    "duplicate key": (
        MODEL + "  pin: true\n  pin: false\n",
        "9:3: YAML syntax: while constructing a mapping "
        'found duplicate key "pin" with value "False" (original value: "True")',
    ),
    "unknown field": (
        MODEL + "  stayWarn: 10m\n",
        "8:3: Model/qwen: unknown field spec.stayWarn (did you mean stayWarm?)",
    ),
    "unknown nested field": (
        _doc("  source:\n    huggingface:\n      repo: Qwen/Q-GGUF\n      revison: main\n"),
        "8:7: Model/qwen: unknown field spec.source.huggingface.revison (did you mean revision?)",
    ),
    "unknown field, no close match": (
        MODEL + "  zzzzzz: 1\n",
        "8:3: Model/qwen: unknown field spec.zzzzzz",
    ),
    "missing field": (
        _doc("  engine: llama-server\n"),
        "4:1: Model/qwen: missing field spec.source",
    ),
    "missing name": (
        _doc("  command: [x]\n", metadata="\n  labels: {a: b}", kind="Engine"),
        "3:1: Engine/?: missing field metadata.name",
    ),
    "not an integer": (
        MODEL + "  maxConcurrency: many\n",
        "8:19: Model/qwen: spec.maxConcurrency: should be a valid integer, "
        "unable to parse string as an integer (got 'many')",
    ),
    "not a boolean": (
        MODEL + "  pin: maybe\n",
        "8:8: Model/qwen: spec.pin: should be a valid boolean, "
        "unable to interpret input (got 'maybe')",
    ),
    "not a list": (
        MODEL + "  args: --ctx-size 8192\n",
        "8:9: Model/qwen: spec.args: should be a valid list (got '--ctx-size 8192')",
    ),
    "not a choice": (
        MODEL + "  priority: highest\n",
        "8:13: Model/qwen: spec.priority: "
        "should be 'urgent', 'high', 'normal', 'low' or 'batch' (got 'highest')",
    ),
    "bad duration": (
        MODEL + "  stayWarm: 10 minutes\n",
        "8:13: Model/qwen: spec.stayWarm: not a duration: "
        "'10 minutes' (use a number with a unit: 90s, 15m, 2h, 1h30m, or 0)",
    ),
    "bad size": (
        MODEL + "  vram: 6GX\n",
        "8:9: Model/qwen: spec.vram: not a size: '6GX' "
        "(use a number with a unit: 512MiB, 6GiB, 24GB)",
    ),
    "unknown kind": (
        MODEL.replace("kind: Model", "kind: Modle"),
        "2:1: unknown kind 'Modle' (did you mean Model?) (one of Model, Engine, Node)",
    ),
    "missing kind": (
        MODEL.replace("kind: Model\n", ""),
        "1:1: missing field 'kind' (one of Model, Engine, Node)",
    ),
    "wrong apiVersion": (
        MODEL.replace("modelplane/v1", "modelplane/v2"),
        "1:13: Model/qwen: apiVersion must be 'modelplane/v1', got 'modelplane/v2'",
    ),
    "missing apiVersion, reported once": (
        MODEL.replace("apiVersion: modelplane/v1\n", ""),
        "1:1: Model/qwen: apiVersion must be 'modelplane/v1'",
    ),
    "source naming no kind": (
        _doc("  source: {prefetch: false}\n"),
        "5:11: Model/qwen: spec.source: "
        "source names no kind: give exactly one of huggingface, path",
    ),
    "source naming two kinds": (
        _doc("  source: {path: /x, huggingface: {repo: a/b}}\n"),
        "5:11: Model/qwen: spec.source: "
        "source names two kinds (huggingface and path): give exactly one",
    ),
    "a document that is not a mapping": (
        MODEL + "---\n- just\n- a list\n",
        "9:1: a manifest document must be a mapping, not a list",
    ),
    "a name with a space": (
        MODEL.replace("name: qwen", "name: 'q wen'"),
        "4:9: Model/q wen: metadata.name: 'q wen' is not a valid name: use up to 100 letters, "
        "digits, '.', '_' or '-', starting with a letter or digit",
    ),
    "a name with a slash (aliases may have one, names not)": (
        MODEL.replace("name: qwen", "name: Qwen/Qwen2.5"),
        "4:9: Model/Qwen/Qwen2.5: metadata.name: 'Qwen/Qwen2.5' is not a valid name: use up to "
        "100 letters, digits, '.', '_' or '-', starting with a letter or digit",
    ),
}

ALIAS_RULE = (
    "use up to 100 letters, digits, '.', '_' or '-', starting with a letter or digit; "
    "'/' may join such parts (as in Qwen/Qwen2.5-7B-Instruct)"
)


@pytest.mark.parametrize(("text", "expected"), ONE_ERROR.values(), ids=ONE_ERROR.keys())
def test_one_error_at_its_position(manifests: ManifestDir, text: str, expected: str) -> None:
    manifests.write("m.yaml", text)
    assert only_error(manifests) == f"{manifests.path('m.yaml')}:{expected}"


@pytest.mark.parametrize(
    ("written", "alias"),
    [
        ('""', ""),
        ('" "', " "),
        ('"a\\r\\nb"', "a\r\nb"),
        ("a/../../b", "a/../../b"),
        ("/abs", "/abs"),
        ("a//b", "a//b"),
        ("'q\"uote'", 'q"uote'),
        ("x" * 101, "x" * 101),
    ],
)
def test_aliases_follow_the_rules_of_names(
    manifests: ManifestDir, written: str, alias: str
) -> None:
    manifests.write("m.yaml", MODEL + f"  aliases: [ok, {written}]\n")
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:8:17: Model/qwen: spec.aliases.1: "
        f"{alias!r} is not a valid alias: {ALIAS_RULE}"
    )


def test_an_alias_may_name_a_hub_repo(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  aliases: [Qwen/Qwen2.5-7B-Instruct, gpt-4o-mini]\n")
    result = load(manifests.root)
    assert errors(result) == []
    spec = result.models["qwen"].doc.spec
    assert spec.aliases == ["Qwen/Qwen2.5-7B-Instruct", "gpt-4o-mini"]


def test_good_durations_and_sizes_are_converted(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  stayWarm: 1h30m\n  startupTimeout: 0\n  vram: 6GiB\n")
    result = load(manifests.root)
    assert errors(result) == []
    spec = result.models["qwen"].doc.spec
    assert (spec.stay_warm, spec.startup_timeout, spec.vram) == (5400.0, 0.0, 6 * 2**30)


def test_one_document_reports_all_its_errors(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  stayWarn: 10m\n  vram: lots\n  pin: maybe\n")
    found = errors(load(manifests.root))
    assert [e.split(": ", 2)[0].rsplit(":", 2)[1:] for e in found] == [
        ["8", "3"],
        ["9", "9"],
        ["10", "8"],
    ]


# --- limits: depth, alias bombs, file size ------------------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_document_nested_too_deep_is_an_error_of_that_document_only(
    manifests: ManifestDir,
) -> None:
    """300 levels used to raise RecursionError out of the loader (and jam the service)."""
    manifests.write(
        "m.yaml",
        model_doc("before", engine="llama-server"),
        MODEL + f"  env: {_nested(300)}\n",
        model_doc("after", engine="llama-server"),
    )
    result = load(manifests.root)
    assert errors(result) == [f"{manifests.path('m.yaml')}:13:70: nested deeper than 64 levels"]
    assert sorted(result.models) == ["after", "before"]


def test_nesting_within_the_limit_is_read(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + f"  container: {{extraArgs: {{x: {_nested(50)}}}}}\n")
    assert errors(load(manifests.root)) == []


def _bomb(levels: int) -> str:
    """The "billion laughs": each level is nine aliases of the one before."""
    lines = ["    x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"    x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]")
    return MODEL + "  container:\n   extraArgs:\n" + "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(manifests: ManifestDir) -> None:
    text = _bomb(9)  # 9**10 values once expanded; about 600 bytes as written
    assert len(text) < 1000
    manifests.write("m.yaml", text, model_doc("fine", engine="llama-server"))
    result = load(manifests.root)
    assert errors(result) == [
        f"{manifests.path('m.yaml')}:1:1: holds more than 10000 values once its aliases are "
        "expanded (an alias bomb?)"
    ]
    assert sorted(result.models) == ["fine"]


def test_aliases_within_the_limit_are_expanded(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", _bomb(2))  # 1 + 9 + 81 + 729 values
    result = load(manifests.root)
    assert errors(result) == []
    extra = result.models["qwen"].doc.spec.container.extra_args
    assert extra["x2"][8][8] == ["lol"] * 9


def test_an_alias_that_contains_itself_is_an_error(manifests: ManifestDir) -> None:
    manifests.write("m.yaml", MODEL + "  container: {extraArgs: &a {x: *a}}\n")
    assert only_error(manifests) == (
        f"{manifests.path('m.yaml')}:8:26: an alias refers to a value that contains it"
    )


def test_aliases_cannot_nest_deeper_than_the_limit(manifests: ManifestDir) -> None:
    """Each anchor is shallow, but each one nests the one before 40 levels down."""
    lines = [f"    a0: &a0 {_nested(40)}"]
    for i in range(1, 4):
        lines.append(f"    a{i}: &a{i} {'[' * 40}*a{i - 1}{']' * 40}")
    manifests.write("m.yaml", MODEL + "  container:\n   extraArgs:\n" + "\n".join(lines) + "\n")
    [error] = errors(load(manifests.root))
    assert error.endswith("nested deeper than 64 levels (through aliases)")


def test_a_file_larger_than_the_limit_is_not_read(
    manifests: ManifestDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests.write("big.yaml", MODEL + "#" * 2**20 + "\n")
    manifests.write("small.yaml", model_doc("small", engine="llama-server"))
    result = load(manifests.root)
    assert errors(result) == [
        f"{manifests.path('big.yaml')}:1:1: file is 1.0 MiB, more than the 1.0 MiB a manifest "
        "file may hold (raise it with MODELPLANE_MAX_MANIFEST_SIZE)"
    ]
    assert sorted(result.models) == ["small"]
    monkeypatch.setenv("MODELPLANE_MAX_MANIFEST_SIZE", "2MiB")
    result = load(manifests.root)
    assert errors(result) == []
    assert sorted(result.models) == ["qwen", "small"]


def test_a_bad_size_limit_keeps_everything_in_force(
    manifests: ManifestDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests.write("a.yaml", model_doc("a", engine="llama-server"))
    last = {key: item.stored() for key, item in _in_force(load(manifests.root)).items()}
    monkeypatch.setenv("MODELPLANE_MAX_MANIFEST_SIZE", "lots")
    result = load(manifests.root, last)
    assert errors(result) == [
        f"{manifests.root}:1:1: MODELPLANE_MAX_MANIFEST_SIZE='lots': not a size: 'lots' "
        "(use a number with a unit: 512MiB, 6GiB, 24GB)"
    ]
    assert result.models["a"].stale is not None


def _in_force(result: ManifestSet) -> dict[tuple[str, str], InForce]:
    return {(i.kind, i.name): i for i in result.in_force()}


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
