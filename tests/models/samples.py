"""Small per-label samples of the bundled training data, for the tiny models the tests train."""

from __future__ import annotations

from models.training import corpus


def per_label(frames, n: int):
    """``n`` rows of each label of each frame (random_state 0)."""
    return [f.groupby("label").sample(n=n, random_state=0).reset_index(drop=True) for f in frames]


def tiny_splits(sentiment_per_label: int, topic_per_label: int):
    """(sentiment, topic) splits of per-label samples of the bundled data: 20% validation, seed 1."""
    sentiment = corpus.build_split("sentiment", per_label(corpus.default_sentiment_frames(), sentiment_per_label),
                                   val_fraction=0.2, seed=1)
    topic = corpus.build_split("topic", per_label(corpus.default_topic_frames(), topic_per_label), val_fraction=0.2, seed=1)
    return sentiment, topic
