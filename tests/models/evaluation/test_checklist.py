"""The checklist runner: it scores every text once and counts passes per capability correctly.

These tests check the runner and the case file, not that the model passes (its pass rates are
a report: bench/model_reports/round2/levers/shipped/checklist.json).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from models.evaluation.checklist import CHECKLIST_FILE, ENTITY_CHECKLIST_FILE, Case, EntityCase, load_cases, load_entity_cases, run_checklist, run_entity_checklist
from tests.models.keyword_scorer import KeywordEntityScorer, KeywordScorer

WEIGHTS = {"plunge": (4.0, 0.0, 0.0), "soar": (0.0, 0.0, 4.0), "puts": (0.8, 0.0, 0.0), "calls": (0.0, 0.0, 0.8),
           "meh": (0.0, 0.0, 0.0), "slight": (0.0, 0.0, 0.5)}


def cases() -> list[Case]:
    return [
        Case("a", "mft", "shares plunge", "negative"),                    # pass
        Case("a", "mft", "shares soar", "negative"),                      # fail
        Case("a", "mft", "meh", "neutral"),                               # pass
        Case("b", "mft", "buying puts", "leans_negative"),                # pass: argmax neutral, but p_neg > p_pos
        Case("b", "mft", "buying puts", "negative"),                      # fail: argmax is neutral
        Case("b", "dir", "bought options", "more_positive", "bought calls"),   # pass: polarity rises by ~0.2
        Case("c", "dir", "bought options", "more_positive", "bought slight"),  # fail: rises, but below the margin? see below
        Case("c", "dir", "shares soar", "more_negative", "shares plunge"),     # pass
        Case("c", "inv", "shares plunge", "same", "stocks plunge"),           # pass
        Case("c", "inv", "shares plunge", "same", "shares soar"),             # fail
    ]


def test_runner_counts_passes_per_capability_and_type():
    scorer = KeywordScorer(WEIGHTS)
    slight = scorer.distribution("bought slight")
    assert 0 < slight[2] - slight[0] < 0.2  # the "slight" edit moves polarity, but by less than the margin below
    report = run_checklist(scorer, cases(), margin=0.15)
    assert [c["passed"] for c in report["cases"]] == [True, False, True, True, False, True, False, True, True, False]
    assert report["n"] == 10 and report["passed"] == 6 and report["pass_rate"] == pytest.approx(0.6)
    assert report["by_capability"] == {
        "a": {"n": 3, "passed": 2, "pass_rate": pytest.approx(2 / 3)},
        "b": {"n": 3, "passed": 2, "pass_rate": pytest.approx(2 / 3)},
        "c": {"n": 4, "passed": 2, "pass_rate": pytest.approx(0.5)},
    }
    assert report["by_type"]["inv"] == {"n": 2, "passed": 1, "pass_rate": 0.5}
    # One batch: every text and every perturbed text, scored once.
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 10 + 5


def test_dir_margin_decides():
    scorer = KeywordScorer(WEIGHTS)
    case = [Case("c", "dir", "bought options", "more_positive", "bought slight")]
    assert run_checklist(scorer, case, margin=0.0)["passed"] == 1
    assert run_checklist(scorer, case, margin=0.5)["passed"] == 0


def test_unreadable_case_text_is_an_error_not_a_pass_or_fail():
    with pytest.raises(ValueError, match="could not read"):
        run_checklist(KeywordScorer(WEIGHTS), [Case("a", "mft", "   ", "neutral")], margin=0.05)


@pytest.mark.parametrize("bad, message", [
    ("{capability: x, type: mft, text: t, expect: bullish}", "expect 'bullish'"),
    ("{capability: x, type: dir, text: t, expect: more_positive}", "need `perturbed`"),
    ("{capability: x, type: mft, text: t, expect: negative, perturbed: u}", "take no `perturbed`"),
    ("{capability: x, type: xyz, text: t, expect: same}", "type 'xyz'"),
])
def test_malformed_cases_are_rejected(tmp_path, bad, message):
    path = tmp_path / "cases.yaml"
    path.write_text(f"cases:\n  - {bad}\n")
    with pytest.raises(ValueError, match=message):
        load_cases(path)


def test_bundled_checklist_covers_the_issue_capabilities():
    cases, margin = load_cases(CHECKLIST_FILE)
    capabilities = {c.capability for c in cases}
    assert {"slang", "emojis", "price_targets", "options", "sarcasm", "negation", "news_vs_comment"} <= capabilities
    assert len(cases) >= 36 and 0 < margin < 0.5
    assert len({(c.text, c.perturbed, c.expect) for c in cases}) == len(cases)  # no duplicates


def test_checklist_command_on_the_shipped_model(tmp_path):
    import json

    from models.cli import cli

    out = tmp_path / "checklist.json"
    result = CliRunner().invoke(cli, ["checklist", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n"] == len(load_cases(CHECKLIST_FILE)[0])
    assert sum(r["n"] for r in report["by_capability"].values()) == report["n"]
    assert report["model_version"].startswith("finpulse-minilm")
    assert "price_targets" in result.output and "all" in result.output
    # The shipped model has an entity head, so its cases run too.
    assert report["entity"]["n"] == len(load_entity_cases()) and "entity: contrast" in result.output


def test_entity_runner_scores_pairs_in_one_call_and_counts_contrast_texts():
    scorer = KeywordEntityScorer({"soar": (0.0, 0.0, 4.0), "plunge": (4.0, 0.0, 0.0)})
    entity_cases = [
        EntityCase("contrast", "Gold soar; Silver plunge", "Gold", "positive"),     # pass
        EntityCase("contrast", "Gold soar; Silver plunge", "Silver", "negative"),   # pass: both right
        EntityCase("contrast", "Tin plunge; Zinc soar", "Tin", "negative"),         # pass
        EntityCase("contrast", "Tin plunge; Zinc soar", "Zinc", "negative"),        # fail: one of two right
        EntityCase("single", "Lead quiet", "Lead", "neutral"),                      # pass
    ]
    report = run_entity_checklist(scorer, entity_cases)
    assert len(scorer.calls) == 1
    assert (report["n"], report["passed"]) == (5, 4)
    assert report["by_capability"]["contrast"] == {"n": 4, "passed": 3, "pass_rate": 0.75}
    assert (report["contrast_texts"], report["contrast_texts_both_right"]) == (2, 1)


def test_bundled_entity_checklist_pairs_opposite_fates(tmp_path):
    entity_cases = load_entity_cases(ENTITY_CHECKLIST_FILE)
    assert len(entity_cases) >= 30
    by_text: dict[str, set[str]] = {}
    for c in entity_cases:
        assert c.entity.lower() in c.text.lower()  # the entity is named in its text
        if c.capability in ("contrast", "order"):
            by_text.setdefault(c.text, set()).add(c.expect)
    assert by_text and all(expects == {"negative", "positive"} for expects in by_text.values())
    bad = tmp_path / "cases.yaml"
    bad.write_text('cases:\n  - {capability: x, text: "a", entity: a, expect: bullish}\n')
    with pytest.raises(ValueError, match="expect 'bullish'"):
        load_entity_cases(bad)
