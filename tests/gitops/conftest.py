"""Fixtures: a state directory whose backends are killed at teardown, and git repositories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.service import cleanup
from tests.ops.gitrepo import git


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The state directory of the box; every backend recorded in it is killed afterwards."""
    path = tmp_path / "state"
    path.mkdir()
    yield path
    cleanup(path)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty work tree on branch ``main`` (the user's checkout of the manifests repository)."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "--quiet", "-b", "main")
    return path
