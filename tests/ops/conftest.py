"""Fixtures for the ops tests: real git repositories made in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ops.gitrepo import commit_file, git


@pytest.fixture
def work_repo(tmp_path: Path) -> Path:
    """A work tree on branch ``main`` with one commit of ``manifests/a.yaml``."""
    repo = tmp_path / "work"
    repo.mkdir()
    git(repo, "init", "--quiet", "-b", "main")
    commit_file(repo, "manifests/a.yaml", "kind: Model\n", "add model a")
    return repo
