from __future__ import annotations

import pytest

from ingest.config import JsonApiConfig, RssConfig, load_config, parse_config
from ingest.errors import ConfigError

BASE = {
    "sources": [
        {"name": "wire", "type": "rss", "kind": "news", "url": "http://127.0.0.1/feed.rss"},
        {
            "name": "comments",
            "type": "json",
            "kind": "comment",
            "url": "http://127.0.0.1/api",
            "headers": {"Authorization": "Bearer ${ENV:FP_TEST_TOKEN}"},
            "mapping": {"items": "data", "text": "body"},
            "pagination": {"type": "cursor", "cursor_path": "next"},
        },
    ]
}


def test_env_references_are_resolved_and_masked(monkeypatch):
    monkeypatch.setenv("FP_TEST_TOKEN", "s3cret")
    config = parse_config(BASE)
    rss, api = config.sources
    assert isinstance(rss, RssConfig) and isinstance(api, JsonApiConfig)
    assert api.header_values() == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(config)


def test_missing_env_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("FP_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="FP_TEST_TOKEN"):
        parse_config(BASE)


def test_env_default(monkeypatch):
    monkeypatch.delenv("FP_TEST_TOKEN", raising=False)
    data = {"sources": [dict(BASE["sources"][0], url="${ENV:FP_TEST_TOKEN:-http://127.0.0.1:9/x}")]}
    assert parse_config(data).sources[0].url == "http://127.0.0.1:9/x"


@pytest.mark.parametrize(
    "patch",
    [
        {"timezone": "Nowhere/City"},
        {"kind": "tweet"},
        {"url": "ftp://x"},
        {"type": "soap"},
        {"interval": 0},
        {"unknown_key": 1},
    ],
)
def test_invalid_sources_are_rejected(patch, monkeypatch):
    monkeypatch.setenv("FP_TEST_TOKEN", "x")
    data = {"sources": [dict(BASE["sources"][0], **patch)]}
    with pytest.raises(ConfigError):
        parse_config(data)


def test_duplicate_names_rejected():
    src = BASE["sources"][0]
    with pytest.raises(ConfigError, match="duplicate"):
        parse_config({"sources": [src, src]})


def test_example_config_loads(monkeypatch):
    from pathlib import Path

    import ingest

    monkeypatch.setenv("COMMENTS_API_TOKEN", "x")
    config = load_config(Path(ingest.__file__).parent / "sources.example.yaml")
    assert {s.kind for s in config.sources} == {"news", "comment"}


def test_bad_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("sources: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(path)


def test_every_problem_is_reported_at_once_with_its_yaml_line(tmp_path, monkeypatch):
    monkeypatch.delenv("FP_MISSING_TOKEN", raising=False)
    path = tmp_path / "s.yaml"
    path.write_text(
        "sources:\n"
        "  - name: wire\n"
        "    type: rss\n"
        "    kind: news\n"
        "    url: http://127.0.0.1/feed.rss\n"
        "    timezone: Nowhere/City\n"
        "  - name: api\n"
        "    type: json\n"
        "    kind: tweet\n"
        "    url: ftp://x\n"
        "    headers:\n"
        "      Authorization: \"Bearer ${ENV:FP_MISSING_TOKEN}\"\n"
        "    interval: 0\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    # the missing variable does not hide the other four problems, and each names its line
    assert "5 problems" in message
    for expected in ("line 6: sources[0].timezone:", "line 9: sources[1].kind:", "line 10: sources[1].url:",
                     "line 12: sources[1].headers.Authorization: environment variable FP_MISSING_TOKEN is not set",
                     "line 13: sources[1].interval:"):
        assert expected in message, message
