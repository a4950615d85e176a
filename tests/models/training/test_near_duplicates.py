"""Near-duplicates across splits: templates retold with another cashtag or price are the same text."""

from __future__ import annotations

import pandas as pd

from models.training.near_duplicates import drop_near_duplicates, jaccard, near_duplicates_of, shingles

TRAIN = [
    "Oh wow this is big! $GGAL enters a Downtrend because Momentum Indicator dropped below the 0 level.",
    "TD SELL $CMG at 1339.68, Supp 1238.02 Resis 1343.25",
    "Apple shares jump after record iPhone sales",
]


def test_cashtags_and_numbers_are_masked_so_templates_match():
    assert shingles("$AAPL up 3.5% today") == shingles("$TSLA up 12% today")
    assert jaccard(shingles(TRAIN[0]), shingles(TRAIN[0].replace("$GGAL", "$CATB"))) == 1.0


def test_retold_templates_are_found_and_other_texts_are_not():
    held = ["Oh wow this is big! $CATB enters a Downtrend because Momentum Indicator dropped below the 0 level.",
            "TD SELL $AAPL at 172.10, Supp 160.00 Resis 175.50",
            "Apple shares slump after weak iPhone sales",  # shares words, tells another story
            "Microsoft beats on cloud revenue",
            "   "]
    assert near_duplicates_of(TRAIN, held).tolist() == [True, True, False, False, False]
    assert 0.1 < jaccard(shingles(TRAIN[2]), shingles(held[2])) < 0.5  # similar words, below the threshold


def test_drop_near_duplicates_keeps_the_rest_in_order_and_counts_what_it_dropped():
    held = pd.DataFrame({"text": ["Microsoft beats on cloud revenue", "TD SELL $X at 1.0, Supp 2.0 Resis 3.0",
                                  "Oil slips"], "label": ["positive", "negative", "negative"]})
    kept = drop_near_duplicates(held, pd.DataFrame({"text": TRAIN}))
    assert kept["text"].tolist() == ["Microsoft beats on cloud revenue", "Oil slips"]
    assert kept.attrs["near_duplicates_dropped"] == 1
