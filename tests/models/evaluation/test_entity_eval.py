"""The entity head's evaluation against copying the document label."""

from __future__ import annotations

import pandas as pd

from models.evaluation.entity_eval import entity_eval
from tests.models.keyword_scorer import KeywordEntityScorer, KeywordScorer
from tests.models.test_entity import WEIGHTS


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
