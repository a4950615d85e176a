"""Every `finpulse model <command>` the model's docs name is a real command (the docs once named `export-split`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from models.cli import cli

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "models" / "MODEL_CARD.md", REPO / "models" / "training" / "data" / "README.md", REPO / "bench" / "model_reports" / "README.md", REPO / "README.md",
        REPO / "bench" / "README.md"]
COMMAND = re.compile(r"finpulse model ([a-z][a-z-]*)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_model_commands_exist(doc):
    named = set(COMMAND.findall(doc.read_text()))
    assert not named - set(cli.commands), f"{doc.name} names missing commands: {sorted(named - set(cli.commands))}"
