import subprocess
import sys

import pytest
from click.testing import CliRunner

from finpulse.cli import main

GROUPS = ["stack", "db", "model", "ingest", "pipeline", "alerts"]


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


def _finpulse(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("FINPULSE_DATABASE_URL",)}
    environ.update({"FINPULSE_HOME": str(tmp_path / "home"), **env})
    return subprocess.run([sys.executable, "-m", "finpulse", *args], capture_output=True, text=True, env=environ,
                          timeout=120)


@pytest.mark.parametrize("args", [["db", "migrate"], ["db", "status"], ["alerts", "check", "--once"]])
def test_an_unreachable_database_is_one_line_naming_address_and_setting(tmp_path, args):
    out = _finpulse(tmp_path, *args, FINPULSE_DATABASE_URL="postgresql+psycopg2://u:s3cretpw@127.0.0.1:1/x")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: Postgres not reachable at 127.0.0.1:1/x ("), out.stderr
    assert "FINPULSE_DATABASE_URL" in lines[-1]
    assert "Traceback" not in out.stderr and "s3cretpw" not in out.stderr + out.stdout


def test_an_uninitialised_embedded_database_says_to_start_the_stack(tmp_path):
    out = _finpulse(tmp_path, "db", "status")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"Error: embedded Postgres is not initialised under {tmp_path / 'home'}: run `finpulse stack up`")
