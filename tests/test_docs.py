"""The docs stay true to the code: docs/cli.md carries every command's current --help."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from warmstart.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("command", sorted(main.commands))
def test_cli_reference_matches_help(command):
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0
    doc = _norm((ROOT / "docs" / "cli.md").read_text())
    assert f"## `warmstart {command}`" in (ROOT / "docs" / "cli.md").read_text(), \
        f"docs/cli.md has no section for `warmstart {command}`"
    for line in result.output.splitlines():
        if line.strip().startswith("-"):
            option = line.split()[0].rstrip(",")
            assert option in doc, f"docs/cli.md lacks {option} of `warmstart {command}`"


def test_readme_opens_with_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:10])
    assert "scripts/demo" in head and "scripts/test" in head


def test_readme_links_resolve():
    for link in re.findall(r"\]\((docs/[^)]+)\)", (ROOT / "README.md").read_text()):
        assert (ROOT / link).exists(), link
