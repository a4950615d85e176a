import subprocess
import sys

import pytest
from click.testing import CliRunner

from finpulse.cli import main

GROUPS = ["stack", "db", "model", "ingest"]


def test_top_level_help_lists_every_group():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for group in GROUPS + ["run", "config"]:
        assert group in result.output


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_has_help(group):
    result = CliRunner().invoke(main, [group, "--help"])
    assert result.exit_code == 0, result.output
    assert "unavailable" not in result.output
    assert "Usage:" in result.output


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "finpulse", "--help"], capture_output=True, text=True, check=True)
    assert "finpulse" in out.stdout


def test_config_masks_secrets(monkeypatch):
    monkeypatch.setenv("FINPULSE_DATABASE_URL", "postgresql://u:topsecret@h/db")
    from finpulse.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["config"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0
    assert "topsecret" not in result.output and "FINPULSE_DATABASE_URL" in result.output
