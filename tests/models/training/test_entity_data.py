"""The SEntFiN entity rows and their split by headline."""

from __future__ import annotations

from models.entity import pair_texts
from models.training import corpus
from models.training.entity_data import entity_frame, entity_splits


def test_entity_split_is_by_headline_and_holds_out_the_sentence_validation_headlines():
    split, test = entity_splits(seed=13)
    train_titles, val_titles, test_titles = (set(f["title"]) for f in (split.train, split.val, test))
    assert not train_titles & test_titles and not val_titles & test_titles and not train_titles & val_titles
    whole = entity_frame()
    dropped = split.val.attrs["near_duplicates_dropped"] + test.attrs["near_duplicates_dropped"]
    assert len(split.train) + len(split.val) + len(test) + dropped == len(whole) == 11_577 and dropped > 0
    sentence_val = corpus.stratified_split(corpus.default_sentiment_frames()[1], val_fraction=0.1, seed=13)[1]
    # the baseline is never scored on its own training headlines (what is not in test was dropped as a retelling)
    assert not set(sentence_val["text"]) & (train_titles | val_titles)
    mixed_titles = set(whole.loc[whole["mixed"], "title"])
    assert 0.15 < len(mixed_titles & test_titles) / len(mixed_titles) < 0.25
    again = entity_splits(seed=13)[1]
    assert again["title"].tolist() == test["title"].tolist()
    assert "text" not in split.train.columns  # the model text depends on the model: pair_texts makes it
    marked = pair_texts(split.train, mark=True)
    assert all(" [SEP] " in t for t in marked) and sum("«" in t for t in marked) > 0.98 * len(marked)
