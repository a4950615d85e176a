"""Entity-level sentiment at inference: pair encoding and the pair API."""

from __future__ import annotations

import numpy as np
import pytest

from models.entity import mark_mentions, pair_text, score_pairs
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


def test_entity_arrays_round_trip_through_json_and_report_confidence():
    import json as _json

    from models.results import EntityArrays

    arrays = score_pairs(KeywordEntityScorer(WEIGHTS), ["Gold shines; Silver dull", ""], ["Silver", "Gold"])
    back = EntityArrays.from_dict(_json.loads(_json.dumps(arrays.to_dict())))
    assert back.sentiment.tolist() == arrays.sentiment.tolist() and back.status.tolist() == ["ok", "empty"]
    assert np.isclose(back.p_negative[0], arrays.p_negative[0]) and np.isnan(back.p_negative[1])
    assert np.isclose(arrays.confidence[0], max(arrays.p_negative[0], arrays.p_neutral[0], arrays.p_positive[0]))
    with pytest.raises(ValueError, match="differ in length"):
        EntityArrays.from_dict({**arrays.to_dict(), "truncated": [False]})


def test_mentions_of_tickers_are_whole_words_names_any_case_and_the_longer_name_wins():
    from models.entity import mention_spans, span_text

    text = "T-Mobile and $T fall; Tesla up, tesla's CEO; PSBs slide; SBI Life IPO; Tata Motors and Tata Steel"
    spans = mention_spans(text, [["T"], ["TSLA", "Tesla"], ["PSB"], ["SBI Life"], ["SBI"], ["Tata Motors"], ["Tata"],
                                 ["IBM"]])
    said = [[text[a:b] for a, b in entity] for entity in spans]
    assert said[0] == ["$T"]  # not the T of T-Mobile, nor any word starting with t
    assert said[1] == ["Tesla", "tesla"]  # a name matches in any case and runs on into "'s"
    assert said[2] == ["PSBs"]  # a ticker-like name's plural
    assert said[3] == ["SBI Life"] and said[4] == ["SBI Life"]  # named only inside another's mention: reads it
    assert said[5] == ["Tata Motors"] and said[6] == ["Tata"]  # "Tata" of "Tata Motors" belongs to the longer
    assert said[7] == []
    marked = span_text("SBI Life IPO; SBI down", [["SBI Life"], ["SBI"]], mark=True)
    assert marked.text == "« SBI Life » IPO; « SBI » down"  # a shared mention is marked once
    assert [[marked.text[a:b] for a, b in e] for e in marked.spans] == [["« SBI Life »"], ["« SBI »"]]
    assert span_text("a « quoted » [SEP] word", [["word"]], mark=False).text == 'a " quoted " word'
