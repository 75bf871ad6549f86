"""Every command's ``--help`` reads as prose: the docstrings' wrapped lines are joined and no
reStructuredText markup (````modelplane run````) shows through."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from reconciler.cli.main import app

COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


def test_every_command_is_listed() -> None:
    assert {"run", "apply", "status", "ps", "requests", "reset-db", "hash-key"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_prose(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "``" not in result.output
    summary = get_command(app).commands[command].help or ""  # type: ignore[attr-defined]
    first_sentence = " ".join(summary.split("\n\n")[0].split())  # the docstring's first paragraph
    flat = " ".join(result.output.split())
    assert first_sentence.replace("``", "").replace("`", "") in flat.replace("`", "")
