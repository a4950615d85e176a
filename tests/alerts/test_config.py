"""Rules files: the shipped one loads; an invalid one lists every error with file, line and field."""

from __future__ import annotations

import pytest

from alerts.config import SHIPPED_RULES, RulesError, load
from finpulse.durations import parse_seconds
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
    assert parse_seconds(value, whole=True, positive=True) == seconds


def test_bad_durations():
    for value in ("0", "-1h", "1.5s", "soon", True):
        with pytest.raises(ValueError):
            parse_seconds(value, whole=True, positive=True)


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


ROUTED = """\
route_defaults: {group_by: [alertname], group_interval: 30m}
rules:
  - name: a
    scope: {dimension: ticker}
    detector: negative_share
    routes:
      - log
      - receiver: hook
        matchers: ['key=~"A.*"', 'severity!="info"', 'key!~"AB.*"', 'dimension=ticker']
        group_by: ['...']
        group_wait: 1h
receivers:
  hook: {type: webhook, url: "http://127.0.0.1:1/x", allow_unsigned: true, send_resolved: false}
inhibit:
  - source_matchers: ['alertname="a"', 'key=~"SPY|QQQ"']
    target_matchers: ['dimension="ticker"']
    equal: [width]
"""


def test_routes_with_matchers_grouping_and_defaults(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(ROUTED)
    config = load(path, Settings())
    rule = config.rule("a")
    log, hook = rule.routes
    assert (log.receiver, log.group_by, log.group_wait, log.group_interval) == ("log", ["alertname"], 0, 1800)
    assert (hook.group_by, hook.group_wait, hook.group_interval) == (["..."], 3600, 1800)
    assert not config.receivers["hook"].send_resolved and config.receivers["log"].send_resolved

    def receivers(key, severity="warning"):
        labels = rule.labels(key) | {"severity": severity}
        return [r.name for _, r in config.routes(rule, labels)]

    assert receivers("ACME") == ["log", "hook"]
    assert receivers("BETA") == ["log"]                   # =~ is anchored: "A.*" does not match BETA
    assert receivers("ABC") == ["log"]                    # !~ "AB.*"
    assert receivers("ACME", severity="info") == ["log"]  # !=
    labels = rule.labels("ACME")
    assert log.group_key(labels) == '{}:{alertname="a"}'
    assert hook.group_key(labels) == ('{}/{key=~"A.*",severity!="info",key!~"AB.*",dimension="ticker"}:'
                                      '{alertname="a",dimension="ticker",key="ACME",severity="warning",width="3600"}')
    inhibit = config.inhibit[0]
    assert [str(m) for m in inhibit.source_matchers] == ['alertname="a"', 'key=~"SPY|QQQ"']


@pytest.mark.parametrize("text,key,matches", [
    ('key=~"AC"', "ACME", False), ('key=~"AC"', "AC", True),      # a regular expression matches the whole value
    ('key=~"C.*"', "ACME", False), ('key!~"AC"', "ACME", True),
    ('key="BRK \\"B\\""', 'BRK "B"', True), ("key=ACME", "ACME", True), ('key!=""', "", False),
    ('key=~"a|b"', "b", True), ('key=~"a|b"', "ab", False),
])
def test_matchers_follow_alertmanager(text, key, matches):
    from alerts.config import Matcher

    assert Matcher.parse(text).matches({"key": key}) is matches


def test_matcher_grouping_and_inhibit_errors_name_their_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("""\
rules:
  - name: a
    scope: {dimension: ticker}
    detector: negative_share
    routes:
      - receiver: log
        matchers: ['key=~"A(.*"', 'colour="red"', 'key=="A"', '{key="A"}', 'key=A B']
        group_by: [key, "..."]
        group_wait: soon
      - {receiver: log, group_by: [tier]}
inhibit:
  - source: {rule: a}
    target: {dimension: ticker}
""")
    with pytest.raises(RulesError) as info:
        load(path, Settings())
    errors = info.value.errors
    expected = [(7, "rules.0.routes.0.matchers.0", "bad regular expression"),
                (7, "rules.0.routes.0.matchers.1", "unknown label 'colour' (labels: alertname, dimension, key"),
                (7, "rules.0.routes.0.matchers.2", "quote a value with spaces or punctuation"),
                (7, "rules.0.routes.0.matchers.3", "one matcher per list item"),
                (7, "rules.0.routes.0.matchers.4", "quote a value with spaces or punctuation"),
                (8, "rules.0.routes.0.group_by", "'...' (every label) stands alone"),
                (9, "rules.0.routes.0.group_wait", "group_wait 'soon': expected a number and a unit"),
                (10, "rules.0.routes.1.group_by.0", "unknown label 'tier'"),
                (12, "inhibit.0.source", "replaced by source_matchers")]
    for line, field, message in expected:
        assert any(e.startswith(f"{path}:{line}: {field}: ") and message in e for e in errors), (field, errors)
    assert len(errors) == len(expected), errors


def test_routes_that_are_one_route_must_agree_on_their_timing(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("""\
rules:
  - {name: a, scope: {dimension: all}, detector: negative_share, routes: [{receiver: log, group_wait: 1h}]}
  - {name: b, scope: {dimension: all}, detector: negative_share, routes: [log]}
""")
    with pytest.raises(RulesError) as info:
        load(path, Settings())
    assert info.value.errors == [f"{path}:3: rules.1.routes.0: the same route as rules.0.routes.0 (receiver, "
                                 "matchers, group_by) with other group_wait/group_interval: one route has one timing"]


UNSIGNED = """\
rules:
  - {name: a, scope: {dimension: all}, detector: negative_share, routes: [hook, webhook]}
receivers:
  hook: {type: webhook, url: "http://127.0.0.1:1/x", secret_env: ALERTS_TEST_UNSET_SECRET}
"""


def test_a_webhook_without_a_secret_is_refused_in_one_line_naming_what_to_set(tmp_path, monkeypatch):
    from alerts.config import SigningError

    monkeypatch.delenv("ALERTS_TEST_UNSET_SECRET", raising=False)
    path = tmp_path / "rules.yaml"
    path.write_text(UNSIGNED)
    config = load(path, Settings(alerts_webhook_url="http://127.0.0.1:2/y"))
    with pytest.raises(SigningError) as info:
        config.check_signing()
    assert str(info.value).splitlines() == [
        f"{path}: webhook receiver webhook (FINPULSE_ALERTS_WEBHOOK_URL) has no signing secret: "
        "set FINPULSE_ALERTS_WEBHOOK_SECRET (or FINPULSE_ALERTS_WEBHOOK_ALLOW_UNSIGNED=true to send unsigned)",
        f"{path}:4: receivers.hook: webhook receiver hook has no signing secret: set ALERTS_TEST_UNSET_SECRET "
        "(named by its secret_env), or allow_unsigned: true to send unsigned"]
    # Saying so lets each send unsigned; a secret makes the question moot.
    path.write_text(UNSIGNED.replace("secret_env: ALERTS_TEST_UNSET_SECRET", "allow_unsigned: true"))
    load(path, Settings(alerts_webhook_url="http://127.0.0.1:2/y", alerts_webhook_allow_unsigned=True)).check_signing()
    from tests.alerts.conftest import SECRET

    monkeypatch.setenv("ALERTS_TEST_UNSET_SECRET", SECRET)
    path.write_text(UNSIGNED)
    load(path, Settings(alerts_webhook_url="http://127.0.0.1:2/y", alerts_webhook_secret=SECRET)).check_signing()


@pytest.mark.parametrize("command", [["validate"], ["run"], ["check", "--once"], ["start"]])
def test_every_command_that_sends_refuses_an_unsigned_webhook(tmp_path, monkeypatch, command):
    from click.testing import CliRunner

    from alerts.cli import cli
    from finpulse.settings import get_settings

    monkeypatch.delenv("ALERTS_TEST_UNSET_SECRET", raising=False)
    monkeypatch.setenv("FINPULSE_HOME", str(tmp_path))
    monkeypatch.delenv("FINPULSE_ALERTS_WEBHOOK_URL", raising=False)
    path = tmp_path / "rules.yaml"
    path.write_text(UNSIGNED.replace(", webhook]", "]"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, [*command, "--rules", str(path)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {path}:4: receivers.hook: webhook receiver hook has no signing secret: set ALERTS_TEST_UNSET_SECRET "
        "(named by its secret_env), or allow_unsigned: true to send unsigned"]
    assert not (tmp_path / "alerts" / "alerts.pid").exists()
