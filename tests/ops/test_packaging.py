"""The packaging works where ``docker build`` cannot run: the wheel builds from exactly the files
the Dockerfile's build context holds, the Dockerfile's stages and paths are consistent, and the
systemd unit verifies and keeps the settings adoption depends on.

With ``MODELPLANE_TEST_DOCKER_HOST`` set (a daemon that has or can pull ``python:3.11-slim``),
``test_docker_build`` builds the image for real and imports modelplane in it as its user.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# --- .dockerignore: which files reach the build context -----------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``*`` stays within a path segment, ``**`` crosses."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        rules.append((include, _glob_regex(line.lstrip("!").strip("/"))))
    return rules


def in_context(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    keep = True
    for include, regex in rules:
        if any(regex.match(p) for p in prefixes):
            keep = include
    return keep


def context_files() -> list[str]:
    rules = dockerignore_rules()
    files = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and not rel.startswith(".git/") and in_context(rel, rules):
            files.append(rel)
    return sorted(files)


def test_dockerignore_keeps_the_packages_and_drops_the_rest() -> None:
    files = context_files()
    assert "pyproject.toml" in files
    assert "reconciler/gitops/worktree.py" in files and "proxy/__init__.py" in files
    assert not [f for f in files if f.startswith(("tests/", "systemd/", ".git"))]
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    rules = dockerignore_rules()
    assert not in_context("reconciler/__pycache__/x.cpython-311.pyc", rules)
    assert not in_context("Dockerfile", rules)


def _backend_installed() -> bool:
    """setuptools builds wheels by itself from 70.1 on; older versions need ``wheel`` too."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    from importlib.metadata import version

    major, minor = (int(p) for p in version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project wheel, built from a copy of the docker build context."""
    context = tmp_path_factory.mktemp("context")
    for rel in context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    out = context / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "-w", str(out)]
    if _backend_installed():
        cmd.append("--no-build-isolation")  # offline and fast when the backend is installed
    proc = subprocess.run(cmd, cwd=context, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("modelplane-*.whl")
    return built


def test_wheel_holds_every_module_and_the_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    sources = {f for f in context_files() if f.endswith(".py")}
    assert sources and sources <= names, f"not packaged: {sorted(sources - names)}"
    assert re.search(r"^modelplane = reconciler\.cli\.main:main$", scripts, re.M)


def test_wheel_metadata_matches_pyproject(wheel: Path) -> None:
    """The image installs the wheel without extras: every runtime dependency is a plain
    requirement, and only the test and quickstart tools and Ray (``runtime: ray``) are extras."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))
    lines = metadata.decode().splitlines()
    plain = {line.split(": ", 1)[1] for line in lines if line.startswith("Requires-Dist: ")}
    plain = {r for r in plain if "extra ==" not in r}

    def names(requirements: set[str] | list[str]) -> set[str]:  # PEP 503 normalised
        bare = (re.split(r"[\s\[<>=!~;]", r)[0] for r in requirements)
        return {re.sub(r"[-_.]+", "-", n).lower() for n in bare}

    assert names(plain) == names(project["dependencies"])
    extras = {line.split(": ", 1)[1] for line in lines if line.startswith("Provides-Extra: ")}
    assert extras == set(project["optional-dependencies"]) == {"test", "quickstart", "ray"}


# --- Dockerfile -----------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, args)

    def runs(self) -> str:
        return " ".join(args for keyword, args in self.instructions if keyword == "RUN")


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's stages, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        else:
            stages[-1].instructions.append((keyword.upper(), args.strip()))
    return stages


def test_dockerfile_stages_reference_real_paths() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a final stage"
    by_name = {s.name: s for s in stages if s.name}
    context = context_files()
    for stage in stages:
        for keyword, args in stage.instructions:
            if keyword != "COPY":
                continue
            words = args.split()
            sources = [w for w in words if not w.startswith("--")][:-1]
            origin = next((w.removeprefix("--from=") for w in words if w.startswith("--from=")), "")
            if origin:
                assert origin in by_name, f"COPY --from={origin}: no such stage"
                for src in sources:
                    assert src in by_name[origin].runs(), f"{src} is not made in stage {origin}"
            else:
                for src in (s.rstrip("/") for s in sources):
                    assert src == "." or any(f == src or f.startswith(src + "/") for f in context)
    final = stages[-1]
    assert final.base == "python:3.11-slim"
    settings = dict(final.instructions)
    # state (SQLite, the pull-mode clone, the default HF cache) goes to the volume
    env = dict(re.findall(r"(\w+)=(\S+)", settings["ENV"]))
    assert settings["VOLUME"] == f'["{env["MODELPLANE_STATE_DIR"]}"]'
    assert settings["USER"] not in ("root", "0")
    assert settings["ENTRYPOINT"] == '["modelplane"]'
    assert settings["CMD"] == '["run", "/manifests"]'
    for tool in ("gcc", "build-essential", "pip wheel"):
        assert tool not in final.runs(), f"build tool {tool!r} in the final stage"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("MODELPLANE_TEST_DOCKER_HOST"), reason="set MODELPLANE_TEST_DOCKER_HOST"
)
def test_docker_build() -> None:
    env = {**os.environ, "DOCKER_HOST": os.environ["MODELPLANE_TEST_DOCKER_HOST"]}
    tag = "modelplane:packaging-test"
    build = subprocess.run(
        ["docker", "build", "--network", "host", "-t", tag, "."],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    script = "import reconciler.doctor, reconciler.gitsync, os; print(os.getuid())"
    run = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python", tag, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "10001"


# --- systemd ------------------------------------------------------------------------------------


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "systemd" / "modelplane.service")
    return parser


def test_unit_settings_that_adoption_and_notify_depend_on() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["KillMode"] == "process"  # process backends must outlive a restart
    assert service["Restart"] == "on-failure"
    assert service["WatchdogSec"] == "60s"
    assert service["SupplementaryGroups"] == "docker"
    assert service["StateDirectory"] == "modelplane"
    assert service["EnvironmentFile"] == "-/etc/modelplane/env"
    assert service["ExecStart"].endswith("modelplane run /etc/modelplane/manifests")
    assert service.get("PrivateDevices", "no") == "no"  # the GPUs stay visible
    assert service.get("DevicePolicy", "auto") == "auto"
    assert service.get("MemoryDenyWriteExecute", "no") == "no"  # CUDA/JIT need W+X


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` prints nothing for a clean unit (it warns on unknown keys)."""
    text = (ROOT / "systemd" / "modelplane.service").read_text()
    # the binary is not installed on a test machine; everything else is checked as written
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={shutil.which('true')}", text, flags=re.M)
    copy = tmp_path / "modelplane.service"
    copy.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
