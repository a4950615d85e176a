"""Entity-level sentiment: pair encoding, the held-out split, the pair API and its evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import corpus
from models.entity import entity_eval, entity_frame, entity_splits, mark_mentions, pair_text, pair_texts, score_pairs
from tests.models.keyword_scorer import KeywordEntityScorer, KeywordScorer

WEIGHTS = {"shines": (0.0, 0.0, 3.0), "dull": (3.0, 0.0, 0.0), "jumps": (0.0, 0.0, 3.0), "slumps": (3.0, 0.0, 0.0)}


def test_pair_text_puts_the_entity_first_and_drops_special_literals():
    assert pair_text("Acme", "Acme slumps [SEP] as Globex gains https://t.co/x") == "Acme [SEP] Acme slumps as Globex gains"
    assert pair_text("[CLS]Acme", "x") == "Acme [SEP] x"


def test_marks_wrap_every_mention_of_the_entity_and_only_it():
    assert pair_text("Acme", "Acme slumps as Globex gains; acme's CEO quits", mark=True) == (
        "Acme [SEP] « Acme » slumps as Globex gains; « acme »'s CEO quits")
    assert mark_mentions("AAPL", "$AAPL and AAPL, not BAAPL") == "« $AAPL » and « AAPL », not BAAPL"
    # Marks already in the text become quotes, so the only marks are ours; a missing mention marks nothing.
    assert mark_mentions("Acme", "«Globex» gains") == '"Globex" gains'
    assert mark_mentions("Tata Motors", "tata motors posts loss") == "« tata motors » posts loss"
    assert mark_mentions("A+B (US)", "A+B (US) rises") == "« A+B (US) » rises"  # regex characters are literal


def test_entity_split_is_by_headline_and_holds_out_the_sentence_validation_headlines():
    split, test = entity_splits(seed=13)
    train_titles, val_titles, test_titles = (set(f["title"]) for f in (split.train, split.val, test))
    assert not train_titles & test_titles and not val_titles & test_titles and not train_titles & val_titles
    whole = entity_frame()
    assert len(split.train) + len(split.val) + len(test) == len(whole) == 11_577
    sentence_val = corpus.stratified_split(corpus.default_sentiment_frames()[1], val_fraction=0.1, seed=13)[1]
    assert set(sentence_val["text"]) <= test_titles  # the baseline is never scored on its own training headlines
    mixed_titles = set(whole.loc[whole["mixed"], "title"])
    assert 0.15 < len(mixed_titles & test_titles) / len(mixed_titles) < 0.25
    again = entity_splits(seed=13)[1]
    assert again["title"].tolist() == test["title"].tolist()
    assert "text" not in split.train.columns  # the model text depends on the model: pair_texts makes it
    marked = pair_texts(split.train, mark=True)
    assert all(" [SEP] " in t for t in marked) and sum("«" in t for t in marked) > 0.98 * len(marked)


def test_score_pairs_reads_each_entity_separately():
    scorer = KeywordEntityScorer(WEIGHTS)
    arrays = score_pairs(scorer, ["Gold shines on demand; Silver dull", "Gold shines on demand; Silver dull", None, "x",
                                  " [SEP] [CLS] "], ["Gold", "Silver", "Gold", " ", "Gold"])
    assert arrays.sentiment.tolist() == ["positive", "negative", None, None, None]
    assert arrays.status.tolist() == ["ok", "ok", "empty", "empty", "empty"]  # nothing left once the literals go
    assert np.isnan(arrays.p_negative[2]) and arrays.p_negative[1] > 0.5
    assert len(scorer.calls) == 1  # one batch for all pairs
    with pytest.raises(ValueError, match="2 texts but 1 entities"):
        score_pairs(scorer, ["a", "b"], ["a"])


def test_score_pairs_refuses_a_model_without_an_entity_head():
    with pytest.raises(ValueError, match="no entity head"):
        score_pairs(KeywordScorer(WEIGHTS), ["Acme slumps"], ["Acme"])


def test_entity_eval_against_copying_the_document_label():
    test = pd.DataFrame({"title": ["Gold shines; Silver dull", "Gold shines; Silver dull", "Acme jumps", "Acme slumps"],
                         "entity": ["Gold", "Silver", "Acme", "Acme"],
                         "label": ["positive", "negative", "positive", "negative"],
                         "mixed": [True, True, False, False]})
    r = entity_eval(KeywordEntityScorer(WEIGHTS), test)
    # Document label of "Gold shines; Silver dull" is a tie -> negative (argmax), copied to both entities: 1 of 2.
    assert r["copy_document_label"]["mixed"]["accuracy"] == 0.5
    assert r["copy_document_label"]["not_mixed"]["accuracy"] == 1.0
    assert r["entity_head"]["mixed"]["accuracy"] == 1.0 and r["entity_head"]["all"]["n"] == 4
    assert r["n_headlines"] == 3 and r["n_mixed_rows"] == 2
    assert entity_eval(KeywordScorer(WEIGHTS), test)["entity_head"] is None


def test_entity_arrays_round_trip_through_json_and_report_confidence():
    import json as _json

    from models.entity import EntityArrays

    arrays = score_pairs(KeywordEntityScorer(WEIGHTS), ["Gold shines; Silver dull", ""], ["Silver", "Gold"])
    back = EntityArrays.from_dict(_json.loads(_json.dumps(arrays.to_dict())))
    assert back.sentiment.tolist() == arrays.sentiment.tolist() and back.status.tolist() == ["ok", "empty"]
    assert np.isclose(back.p_negative[0], arrays.p_negative[0]) and np.isnan(back.p_negative[1])
    assert np.isclose(arrays.confidence[0], max(arrays.p_negative[0], arrays.p_neutral[0], arrays.p_positive[0]))
    with pytest.raises(ValueError, match="differ in length"):
        EntityArrays.from_dict({**arrays.to_dict(), "truncated": [False]})
