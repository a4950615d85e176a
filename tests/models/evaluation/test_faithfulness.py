"""The faithfulness check of --explain: deleting words and counting how the probability moves."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.faithfulness import delete_spans, evidence_spans, faithfulness_report, random_spans, words_of
from tests.models.keyword_scorer import KeywordScorer

WEIGHTS = {"plunge": (3.0, 0.0, 0.0), "cuts": (1.5, 0.0, 0.0), "soar": (0.0, 0.0, 3.0), "record": (0.0, 0.0, 1.5)}


def test_words_and_deletion():
    text = "Shares plunge 5%; $ACME cuts jobs, cuts pay"
    assert [w for _, _, w in words_of(text)] == ["Shares", "plunge", "5", "ACME", "cuts", "jobs", "cuts", "pay"]
    spans = evidence_spans(text, ["cuts", "plunge", "cuts", "missing"])
    assert delete_spans(text, spans) == "Shares 5%; $ACME jobs, pay"
    rng = np.random.default_rng(0)
    picked = random_spans(text, spans, 3, rng)
    assert len(picked) == 3 and not set(picked) & set(spans)
    assert random_spans("one two", [], 3, rng) is None


def truthful_explainer(scorer, texts, *, top_k=5):
    """Reports the words that really drive the keyword scorer."""
    return [[(w, 0.5) for w in t.split() if w.lower() in WEIGHTS][:top_k] for t in texts]


def lying_explainer(scorer, texts, *, top_k=5):
    """Reports the first word, whatever it is."""
    return [[(t.split()[0], 0.5)] if t.split() else [] for t in texts]


TEXTS = ["Shares plunge as the company cuts its outlook", "Profits soar to a record on strong demand",
         "Stocks plunge after the long weekend", "   "]


def test_truthful_evidence_always_lowers_the_predicted_probability():
    r = faithfulness_report(KeywordScorer(WEIGHTS), TEXTS, explain_fn=truthful_explainer, random_draws=2)
    assert r["texts"] == 4 and r["texts_tested"] == 3  # the blank text has nothing to explain
    assert r["delete_top1_evidence"]["share_probability_falls"] == 1.0
    assert r["delete_all_evidence"]["n"] == 3 and r["delete_all_evidence"]["share_label_flips"] == 1.0
    # Random non-evidence words carry no weight for this scorer: deleting them never lowers it.
    assert r["delete_random_word"]["n"] == 6 and r["delete_random_word"]["share_probability_falls"] == 0.0
    assert r["predicted"] == {"negative": 2, "neutral": 0, "positive": 1}


def test_wrong_evidence_is_not_counted_as_faithful():
    r = faithfulness_report(KeywordScorer(WEIGHTS), TEXTS, explain_fn=lying_explainer, random_draws=1)
    assert r["delete_top1_evidence"]["share_probability_falls"] == 0.0
    assert r["delete_top1_evidence"]["mean_fall"] == pytest.approx(0.0)


def test_explain_on_the_shipped_model_runs_through_the_check(shipped_scorer):
    r = faithfulness_report(shipped_scorer, ["Shares plunge after the company misses earnings and cuts guidance"],
                            random_draws=1)
    assert r["texts_tested"] == 1 and r["delete_all_evidence"]["n"] == 1
