"""finpulse.yamlconf: YAML with the line of every value, ${ENV:...}, and pydantic errors mapped back to lines."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from finpulse import yamlconf


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rss(_M):
    type: Literal["rss"]
    name: str
    every: int = 1


class Json(_M):
    type: Literal["json"]
    name: str


class Item(_M):
    name: str
    low: int = 0
    high: int = 10

    @model_validator(mode="after")
    def _order(self):
        if self.low > self.high:
            raise ValueError("high: must not be below low")  # names its field: reported on high's line
        return self


class File(_M):
    items: list[Item]
    sources: list[Annotated[Rss | Json, Field(discriminator="type")]] = []
    token: str = ""
    url: str | None = Field(None, pattern=r"^https?://")
    count: int = 0

    @model_validator(mode="after")
    def _cross(self):
        if len(self.items) > 2:
            raise ValueError("items.2.name: at most two items; items.1.name: (the second one)")
        return self


TEXT = """\
items:
  - name: a
    low: 5
    high: 1
  - name: b
    low: x
sources:
  - type: rss
    name: wire
    every: soon
token: "Bearer ${ENV:YAMLCONF_TEST_TOKEN}"
url: "${ENV:YAMLCONF_TEST_TOKEN}"
count:
  a: 1
"""


def test_every_problem_on_its_line_with_its_field(monkeypatch):
    monkeypatch.delenv("YAMLCONF_TEST_TOKEN", raising=False)
    doc = yamlconf.parse(TEXT)
    model, problems = doc.validate(File)
    assert model is None
    assert [(p.line, p.field) for p in problems] == [
        (4, "items.0.high"),        # a validator's "high: ..." lands on high's line
        (6, "items.1.low"),
        (10, "sources.0.every"),    # the union's tag ("rss") is not in the file: left out of the path
        (11, "token"),              # the missing variable ...
        (12, "url"),                # ... once, not also the pattern the empty value then fails
        (13, "count"),              # a mapping where a number belongs: the key's line, not its value's
    ]
    assert problems[0].message == "must not be below low"
    assert problems[3].message == "environment variable YAMLCONF_TEST_TOKEN is not set"
    assert problems[1].format("f.yaml").startswith("f.yaml:6: items.1.low: ")


def test_env_references_defaults_and_top_level_paths_in_messages(monkeypatch):
    monkeypatch.setenv("YAMLCONF_TEST_TOKEN", "s3cret")
    doc = yamlconf.parse("items:\n  - name: a\n  - name: b\n  - name: c\ntoken: ${ENV:YAMLCONF_NOPE:-dflt}\n")
    assert doc.data["token"] == "dflt" and not doc.problems
    _, problems = doc.validate(File)
    assert [(p.line, p.field, p.message) for p in problems] == [
        (3, "items.1.name", "(the second one)"), (4, "items.2.name", "at most two items")]
    ok = yamlconf.parse("items: [{name: a}]\ntoken: ${ENV:YAMLCONF_TEST_TOKEN}\n")
    model, problems = ok.validate(File)
    assert not problems and model.token == "s3cret"


def test_missing_field_is_named_on_its_parents_line_and_duplicates_are_refused():
    doc = yamlconf.parse("items:\n  - low: 1\n    low: 2\n")
    _, problems = doc.validate(File)
    assert [(p.line, p.field, p.message) for p in problems] == [
        (2, "items.0.name", "Field required"), (3, "items.0.low", "duplicate key")]


def test_data_built_in_code_keeps_its_paths_without_lines(monkeypatch):
    monkeypatch.delenv("YAMLCONF_TEST_TOKEN", raising=False)
    doc = yamlconf.from_data({"items": [{"name": "a", "low": "x"}], "token": "${ENV:YAMLCONF_TEST_TOKEN}"})
    _, problems = doc.validate(File)
    assert [(p.line, p.field) for p in problems] == [(None, "token"), (None, "items.0.low")]


def test_syntax_errors_and_unreadable_files(tmp_path):
    with pytest.raises(yamlconf.SourceError) as info:
        yamlconf.parse("items:\n  - name: [unclosed\n")
    assert info.value.line == 3 and info.value.message
    with pytest.raises(yamlconf.SourceError, match="cannot read"):
        yamlconf.read(tmp_path / "missing.yaml")
    assert yamlconf.parse("").data is None
