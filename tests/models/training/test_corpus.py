"""Bundled data, label mapping and the stratified split."""

from __future__ import annotations

import pandas as pd
import pytest

from models.training import corpus


def test_bundled_data_maps_tweet_labels_and_drops_mixed():
    tweets, headlines = corpus.default_sentiment_frames()
    assert set(tweets["label"]) == set(headlines["label"]) == {"negative", "neutral", "positive"}
    # 0 bearish -> negative: the first rows of the tweet file are bearish.
    assert tweets["label"].iloc[0] == "negative"
    assert not headlines["text"].str.strip().eq("").any()
    raw = pd.read_csv(corpus.DATA_DIR / "sentfin_headlines.csv.gz")
    assert len(headlines) == (raw["headline_label"] != "mixed").sum()
    (topic,) = corpus.default_topic_frames()
    assert set(topic["label"]) == set(corpus.TOPIC_LABELS) and len(corpus.TOPIC_LABELS) == 20


def test_stratified_split_is_deterministic_and_proportional():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(1000)], "label": ["a"] * 800 + ["b"] * 200})
    train, val = corpus.stratified_split(frame, val_fraction=0.1, seed=5)
    again_train, again_val = corpus.stratified_split(frame, val_fraction=0.1, seed=5)
    assert val["text"].tolist() == again_val["text"].tolist()
    assert val["label"].value_counts().to_dict() == {"a": 80, "b": 20}
    assert len(train) + len(val) == 1000 and not set(train["text"]) & set(val["text"])
    other = corpus.stratified_split(frame, val_fraction=0.1, seed=6)[1]
    assert set(other["text"]) != set(val["text"])


def test_label_map_and_unknown_labels(tmp_path):
    path = tmp_path / "mine.csv"
    pd.DataFrame({"body": ["up", "down", " "], "y": ["bull", "bear", "bull"]}).to_csv(path, index=False)
    frame = corpus.labelled_frame(path, text_column="body", label_column="y", task="sentiment",
                                label_map=corpus.parse_label_map("bull=positive,bear=negative"))
    assert frame["label"].tolist() == ["positive", "negative"]  # whitespace-only text dropped
    with pytest.raises(ValueError, match="unknown sentiment labels"):
        corpus.labelled_frame(path, text_column="body", label_column="y", task="sentiment")
    with pytest.raises(ValueError, match="missing columns"):
        corpus.labelled_frame(path, text_column="text", label_column="y", task="sentiment")


def test_topic_labels_accept_ids_and_names():
    mapped = corpus.map_labels(pd.Series(["0", "Earnings", "19"]), task="topic")
    assert mapped.tolist() == [corpus.TOPIC_LABELS[0], "Earnings", corpus.TOPIC_LABELS[19]]


def test_test_share_is_carved_from_the_held_out_rows_and_leaves_training_unchanged():
    frames = corpus.default_sentiment_frames()
    plain = corpus.build_split("sentiment", frames, val_fraction=0.1, seed=13)
    split = corpus.build_split("sentiment", frames, val_fraction=0.1, seed=13, test_share=0.5)
    assert plain.test is None
    assert split.train["text"].tolist() == plain.train["text"].tolist()
    assert sorted(split.val["text"].tolist() + split.test["text"].tolist()) == sorted(plain.val["text"].tolist())
    # about half of each label of each source (near-duplicates of training rows dropped from both halves)
    for source in split.test["source"].unique():
        counts = split.test[split.test["source"] == source]["label"].value_counts()
        held = plain.val[plain.val["source"] == source]["label"].value_counts()
        assert ((counts - held / 2).abs() <= 0.1 * held + 2).all()
    again = corpus.build_split("sentiment", frames, val_fraction=0.1, seed=13, test_share=0.5)
    assert again.test["text"].tolist() == split.test["text"].tolist()
