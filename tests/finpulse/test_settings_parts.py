"""Each component owns its part of the settings: ``Settings`` composes the parts, every field sits in exactly
one, and a component's code reads only its own part and the shared ones (stack, and the stores it talks to)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from finpulse import settings as S

REPO = Path(__file__).resolve().parents[2]
PARTS = (S.StackSettings, S.PostgresSettings, S.KafkaSettings, S.ModelSettings, S.PipelineSettings,
         S.AlertSettings, S.AnalystSettings)
# What each component may read besides its own part: where it keeps state, and the stores and model it uses.
ALLOWED = {
    "ingest": {S.StackSettings, S.KafkaSettings},
    "models": {S.StackSettings, S.ModelSettings},
    "pipeline": {S.StackSettings, S.KafkaSettings, S.PostgresSettings, S.ModelSettings, S.PipelineSettings},
    "alerts": {S.StackSettings, S.PostgresSettings, S.AlertSettings},
    "dashboard": {S.StackSettings, S.PostgresSettings, S.AnalystSettings},
}


def test_settings_is_the_parts_composed_and_each_field_has_one_owner():
    owners: dict[str, list[str]] = {}
    for part in PARTS:
        assert issubclass(S.Settings, part)
        for name in part.model_fields:
            owners.setdefault(name, []).append(part.__name__)
    assert set(owners) == set(S.Settings.model_fields)
    assert {name: parts for name, parts in owners.items() if len(parts) > 1} == {}


def _fields_read(component: str) -> set[str]:
    names = set()
    for path in (REPO / component).rglob("*.py"):
        names |= {m.group(1) for m in re.finditer(r"\.(\w+)\b", path.read_text())}
    return names & set(S.Settings.model_fields)


@pytest.mark.parametrize("component", sorted(ALLOWED))
def test_a_component_reads_only_its_own_part_and_the_shared_ones(component):
    allowed = set().union(*(part.model_fields for part in ALLOWED[component]))
    assert _fields_read(component) - allowed == set()


def test_a_part_loads_on_its_own_from_the_environment(monkeypatch):
    monkeypatch.setenv("FINPULSE_ALERTS_INTERVAL_SECONDS", "7")
    monkeypatch.setenv("FINPULSE_PIPELINE_MAX_OFFSETS_PER_TRIGGER", "")
    assert S.AlertSettings().alerts_interval_seconds == 7.0
    assert S.PipelineSettings().pipeline_max_offsets_per_trigger is None  # empty = no limit, in the part too
    assert not hasattr(S.AlertSettings(), "pipeline_lateness")
