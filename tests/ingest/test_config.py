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
