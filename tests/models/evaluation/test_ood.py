"""Out-of-domain evaluation: the comments split, the weak-binary rule and the three-class counts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from models.evaluation.ood import binary_report, three_class_report
from models.training.comments import COMMENTS_FILE, comments_frame, comments_split
from tests.models.keyword_scorer import KeywordScorer

WEIGHTS = {"crash": (3.0, 0.0, 0.0), "puts": (0.6, 0.0, 0.0), "moon": (0.0, 0.0, 3.0), "calls": (0.0, 0.0, 0.6)}


def test_comments_split_is_stratified_disjoint_and_reproducible():
    train, heldout = comments_split(heldout_fraction=0.2, seed=13)
    again_train, again_heldout = comments_split(heldout_fraction=0.2, seed=13)
    assert heldout["text"].tolist() == again_heldout["text"].tolist()
    assert train["text"].tolist() == again_train["text"].tolist()
    assert not set(train["text"]) & set(heldout["text"])
    whole = comments_frame()
    dropped = heldout.attrs["near_duplicates_dropped"]
    assert len(train) + len(heldout) + dropped == len(whole) > 13_000
    for tag in ("bullish", "bearish"):
        n = int((whole["label"] == tag).sum())
        assert round(n * 0.2) - dropped <= int((heldout["label"] == tag).sum()) <= round(n * 0.2)
    # Templated bot posts retold with another cashtag sit in training: their held-out copies are gone.
    for template in ("Overvalued Signal Alert", "PivotPoint bottom Signal Alert", "TD SELL"):
        assert train["text"].str.contains(template).sum() >= 5 and not heldout["text"].str.contains(template).any()
    assert 0.05 * len(heldout) < dropped < 0.3 * len(heldout)
    other_seed = comments_split(heldout_fraction=0.2, seed=14)[1]
    assert set(other_seed["text"]) != set(heldout["text"])


def test_comments_frame_dedupes_and_drops_conflicting_tags(tmp_path):
    path = tmp_path / "c.csv"
    pd.DataFrame({"text": ["$X to the moon https://t.co/a", "$X to the moon", "$Y dumping", "$Y dumping",
                           "$Z ok", "  "],
                  "label": ["bullish", "bullish", "bullish", "bearish", "Bearish", "bullish"]}).to_csv(path, index=False)
    frame = comments_frame(path)
    assert frame.to_dict("records") == [{"text": "$X to the moon https://t.co/a", "label": "bullish"},
                                        {"text": "$Z ok", "label": "bearish"}]
    pd.DataFrame({"text": ["a"], "label": ["neutral"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="unknown comment tags"):
        comments_frame(path)


def test_binary_report_compares_negative_with_positive_ignoring_neutral():
    scorer = KeywordScorer(WEIGHTS)
    # "buying puts": argmax neutral but p_negative > p_positive, so it leans negative (a bearish tag is matched).
    assert scorer.distribution("buying puts").argmax() == 1
    frame = pd.DataFrame({"text": ["buying puts", "market crash", "to the moon", "buying calls", "crash incoming",
                                   "nothing here"],
                          "label": ["bearish", "Bearish", "bullish", "bearish", "bullish", "bullish"]})
    r = binary_report(scorer, frame=frame)
    # leans: neg, neg, pos, pos, neg, tie -> positive (ties lean positive: p_negative must exceed p_positive)
    assert r["n"] == 6 and r["tags"] == {"negative": 3, "positive": 3}
    assert r["negative_tagged_leaning_negative"] == pytest.approx(2 / 3)  # puts, crash yes; calls no
    assert r["positive_tagged_leaning_positive"] == pytest.approx(2 / 3)  # moon, tie yes; crash no
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["balanced_accuracy"] == pytest.approx(2 / 3)
    assert r["argmax_counts"]["negative"] == {"negative": 1, "neutral": 2, "positive": 0}


def test_binary_report_rejects_unknown_tags():
    with pytest.raises(ValueError, match="unknown binary tags"):
        binary_report(KeywordScorer(WEIGHTS), frame=pd.DataFrame({"text": ["a"], "label": ["neutral"]}))


def test_three_class_report_skips_unlabelled_rows_and_counts_negatives(tmp_path):
    path = tmp_path / "tweets.csv"
    pd.DataFrame({"text": ["market crash", "buying puts", "to the moon", "unlabelled crash", "hello", "crash"],
                  "sentiment": ["negative", "negative", "positive", "", "neutral", "positive"]}).to_csv(path, index=False)
    r = three_class_report(KeywordScorer(WEIGHTS), path)
    assert r["labelled_rows"] == 5 and r["n"] == 5
    assert r["negatives"] == 2 and r["negatives_found"] == 1
    assert r["predicted_counts"] == {"negative": 2, "neutral": 2, "positive": 1}
    assert r["true_counts"] == {"negative": 2, "neutral": 1, "positive": 2}
    assert r["accuracy"] == pytest.approx(3 / 5)


def test_eval_ood_command_with_the_shipped_model(tmp_path):
    from models.cli import cli

    three = tmp_path / "three.csv"
    pd.DataFrame({"text": ["Shares plunge after the company misses earnings and cuts guidance",
                           "Profit jumps 40% on record sales", "no label here"],
                  "sentiment": ["negative", "positive", ""]}).to_csv(three, index=False)
    binary = tmp_path / "binary.csv"
    pd.DataFrame({"text": ["$XYZ is going to zero, sell everything", "$XYZ record revenue, buying more"],
                  "sentiment": ["Negative", "Positive"]}).to_csv(binary, index=False)
    out = tmp_path / "ood.json"
    result = CliRunner().invoke(cli, ["eval-ood", "--three-class", str(three), "--binary", str(binary),
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["three_class"]["three.csv"]["n"] == 2
    assert report["binary"]["binary.csv"]["n"] == 2
    assert np.isfinite(report["binary"]["binary.csv"]["accuracy"])


def test_bundled_comments_carry_their_licence():
    assert COMMENTS_FILE.is_file()
    assert "MIT License" in (COMMENTS_FILE.parent / "LICENSE-stocktwits.txt").read_text()
