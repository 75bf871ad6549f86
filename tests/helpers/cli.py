"""Run the ``modelplane`` CLI as a real subprocess (``python -m reconciler.cli``) in tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.manifests import REPO


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(
    *args: str | Path,
    cwd: Path,
    state_dir: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    inherit: bool = True,
    stdin: str | None = None,
    prefix: Sequence[str] = (),
) -> CliResult:
    """``modelplane ARGS`` with the repo importable, wide tables (rich wraps at the terminal's
    width) and ``MODELPLANE_STATE_DIR``; ``env`` is laid over this process's environment (or
    over nothing but PATH-like basics when ``inherit`` is false and ``env`` is complete).
    ``stdin``: what the command reads (else nothing); ``prefix``: a command it runs under."""
    environment = {**os.environ} if inherit else {}
    environment.update(PYTHONPATH=str(REPO), COLUMNS="250")
    if state_dir is not None:
        environment["MODELPLANE_STATE_DIR"] = str(state_dir)
    environment.update(env or {})
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "reconciler.cli", *map(str, args)],
        cwd=cwd,
        env=environment,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)
