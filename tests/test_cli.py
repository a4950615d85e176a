import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from finpulse.cli import main

REPO = Path(__file__).resolve().parents[1]
# The CLI lists its own groups plus every `finpulse.commands` entry point pyproject.toml declares.
PLUGINS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["finpulse.commands"])
COMMANDS = sorted({"config", "db", "status", *PLUGINS})
GROUPS = sorted(set(COMMANDS) - {"config", "run", "status", "report"})  # the commands that are not groups


def _listed(help_text: str) -> list[str]:
    """The command names of a click help page's "Commands:" section, in order."""
    lines = help_text.split("\nCommands:\n", 1)[1].splitlines()
    return [line.split()[0] for line in lines if line.startswith("  ") and line.strip()]


def test_top_level_help_lists_exactly_the_commands():
    result = CliRunner().invoke(main, ["--help"], prog_name="finpulse")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: finpulse [OPTIONS] COMMAND [ARGS]...")
    assert _listed(result.output) == COMMANDS


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_loads_and_its_help_lists_its_subcommands(group):
    import click

    command = main.get_command(click.Context(main), group)
    assert isinstance(command, click.Group), f"{group} did not load: {command.help}"  # not the 'unavailable' stub
    result = CliRunner().invoke(main, [group, "--help"], prog_name="finpulse")
    assert result.exit_code == 0, result.output
    # `finpulse dashboard` runs without a subcommand too (the dashboard in the foreground): [COMMAND]
    usage = result.output.splitlines()[0]
    assert usage in (f"Usage: finpulse {group} [OPTIONS] COMMAND [ARGS]...",
                     f"Usage: finpulse {group} [OPTIONS] [COMMAND] [ARGS]..."), usage
    subcommands = sorted(command.list_commands(click.Context(command)))
    assert subcommands and _listed(result.output) == subcommands


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "finpulse"  # the entry point pip wrote, not `python -m finpulse`
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: finpulse [OPTIONS] COMMAND [ARGS]...")
    assert _listed(out.stdout) == COMMANDS


def _config(monkeypatch, **env: str) -> dict[str, str]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from finpulse.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["config"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return dict(line.split(None, 1) for line in result.output.splitlines())


def test_config_masks_secrets_and_the_credentials_in_urls(monkeypatch):
    shown = _config(
        monkeypatch,
        FINPULSE_DATABASE_URL="postgresql://u:topsecret@h/db",
        FINPULSE_ALERTS_WEBHOOK_URL="https://hooks.slack.com/services/T0AAA/B0BBB/slacktoken123",
        FINPULSE_ALERTS_EXTERNAL_URL="https://ops:opspw@grafana.example.com/d/abc?orgId=1&token=gtoken",
        FINPULSE_ALERTS_WEBHOOK_SECRET="whsec_c2VjcmV0",
        FINPULSE_KAFKA_BOOTSTRAP="k1:9093,k2:9093",
        FINPULSE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        FINPULSE_KAFKA_SASL_USERNAME="ingest",
        FINPULSE_KAFKA_SASL_PASSWORD="kafkapw",
    )
    assert shown["FINPULSE_DATABASE_URL"] == "**********"
    assert shown["FINPULSE_ALERTS_WEBHOOK_URL"] == "https://hooks.slack.com/***"
    assert shown["FINPULSE_ALERTS_EXTERNAL_URL"] == "https://***@grafana.example.com/***?orgId=***&token=***"
    assert shown["FINPULSE_ALERTS_WEBHOOK_SECRET"] == shown["FINPULSE_KAFKA_SASL_PASSWORD"] == "**********"
    assert shown["FINPULSE_KAFKA_SASL_USERNAME"] == "ingest"  # not a secret: shown
    assert shown["FINPULSE_KAFKA_BOOTSTRAP"] == "k1:9093,k2:9093"
    assert shown["FINPULSE_ALERTS_SMTP_PASSWORD"] == "(unset)"


def test_bad_settings_are_one_line_naming_the_variable(tmp_path):
    out = _finpulse(tmp_path, "config", FINPULSE_TOPIC_PARTITIONS="0")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "Error: invalid settings: FINPULSE_TOPIC_PARTITIONS: Input should be greater than or equal to 1"]
    out = _finpulse(tmp_path, "config", FINPULSE_KAFKA_SECURITY_PROTOCOL="SASL_SSL", FINPULSE_KAFKA_SASL_PASSWORD="pw-in-env")
    assert out.returncode == 1 and "Traceback" not in out.stderr and "pw-in-env" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "Error: invalid settings: FINPULSE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs FINPULSE_KAFKA_SASL_USERNAME and FINPULSE_KAFKA_SASL_PASSWORD; "
        "FINPULSE_KAFKA_SECURITY_PROTOCOL=SASL_SSL: the embedded broker has no TLS listener; set "
        "FINPULSE_KAFKA_BOOTSTRAP to the external brokers"]


def _finpulse(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
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


@pytest.mark.parametrize("url", ["postgresql+psycopg://u:s3cretpw@127.0.0.1:1/x", "mysql://u:s3cretpw@127.0.0.1/x"])
def test_another_database_driver_is_refused_in_one_line(tmp_path, url):
    out = _finpulse(tmp_path, "db", "status", FINPULSE_DATABASE_URL=url)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    scheme = url.split("://")[0]
    assert out.stderr.strip().splitlines() == [
        f"Error: invalid settings: FINPULSE_DATABASE_URL: scheme '{scheme}' is not supported: write "
        "postgresql://user:password@host:5432/database (or postgresql+psycopg2://...; finpulse talks to Postgres "
        "through psycopg2)"]
    assert "s3cretpw" not in out.stderr + out.stdout


def test_an_uninitialised_embedded_database_says_to_start_the_stack(tmp_path):
    out = _finpulse(tmp_path, "db", "status")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"Error: embedded Postgres is not initialised under {tmp_path / 'home'}: run `finpulse stack up`")
