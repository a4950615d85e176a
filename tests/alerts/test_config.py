"""Rules files: the shipped one loads; an invalid one lists every error with file, line and field."""

from __future__ import annotations

import pytest

from alerts.config import SHIPPED_RULES, RulesError, load, parse_duration
from finpulse.settings import Settings

BAD = """\
rules:
  - name: Bad Name
    scope: {dimension: tickers}
    width: 1x
    detector: negative_share
  - name: ok
    scope: {dimension: ticker}
    detector: nope
    severity: huge
    surprise: 1
"""


def test_shipped_rules_load_and_route_to_log_when_nothing_is_configured():
    config = load(SHIPPED_RULES, Settings())
    assert {r.name for r in config.rules} >= {"market-negative-share", "ticker-negative-share"}
    assert list(config.receivers) == ["log"]
    assert set(config.unconfigured) == {"email", "webhook"}


def test_every_error_is_reported_with_file_line_and_field(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(BAD)
    with pytest.raises(RulesError) as info:
        load(path, Settings())
    errors = info.value.errors
    assert f"{path}:2: rules.0.name" in "\n".join(errors)
    expected = [(2, "rules.0.name"), (3, "rules.0.scope.dimension"), (4, "rules.0.width"),
                (8, "rules.1.detector"), (9, "rules.1.severity"), (10, "rules.1.surprise")]
    for line, field in expected:
        assert any(e.startswith(f"{path}:{line}: {field}:") for e in errors), (line, field, errors)
    assert len(errors) == len(expected)


def test_cross_field_errors_name_their_line(tmp_path, monkeypatch):
    path = tmp_path / "rules.yaml"
    path.write_text("""\
rules:
  - name: a
    scope: {dimension: all}
    detector: negative_volume
    params: {alpha: 2}
  - name: b
    scope: {dimension: all}
    detector: negative_share
    routes: [pager]
""")
    with pytest.raises(RulesError) as info:
        load(path, Settings())
    text = "\n".join(info.value.errors)
    assert f"{path}:5: rules.0.params.alpha: must be between 0 and 1" in text
    assert f"{path}:9: rules.1.routes.0: unknown receiver 'pager'" in text


def test_unknown_route_and_unset_env_reference(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_URL", raising=False)
    path = tmp_path / "rules.yaml"
    path.write_text("""\
rules:
  - name: b
    scope: {dimension: all}
    detector: negative_share
    routes: [pager]
receivers:
  hook: {type: webhook, url: "${ENV:NOPE_URL}"}
""")
    with pytest.raises(RulesError) as info:
        load(path, Settings())
    text = "\n".join(info.value.errors)
    assert f"{path}:7: receivers.hook.url: environment variable NOPE_URL is not set" in text


def test_syntax_error_and_missing_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: [unclosed\n")
    with pytest.raises(RulesError, match=r"rules.yaml:\d+: \(syntax\)"):
        load(path, Settings())
    with pytest.raises(RulesError, match="cannot read"):
        load(tmp_path / "missing.yaml", Settings())


@pytest.mark.parametrize("value,seconds", [(60, 60), ("90s", 90), ("15m", 900), ("1h", 3600), ("1d", 86400)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


def test_bad_durations():
    for value in ("0", "-1h", "1.5s", "soon", True):
        with pytest.raises(ValueError):
            parse_duration(value)


def test_a_malformed_signing_secret_is_refused_at_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "not-a-secret!")
    path = tmp_path / "rules.yaml"
    path.write_text("""\
rules:
  - name: a
    scope: {dimension: all}
    detector: negative_share
    routes: [hook]
receivers:
  hook: {type: webhook, url: "http://127.0.0.1:1/x", secret_env: HOOK_SECRET}
""")
    with pytest.raises(RulesError) as info:
        load(path, Settings())
    assert info.value.errors == [f"{path}:7: receivers.hook: signing secret is not a Standard Webhooks secret "
                                 "(whsec_ + base64)"]
    assert "not-a-secret" not in str(info.value)
