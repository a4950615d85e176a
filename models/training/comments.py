"""The weakly tagged retail comments (StockTwits authors' bullish / bearish tags) and their held-out split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.text import model_text
from models.training.corpus import DATA_DIR, read_table, stratified_split
from models.training.near_duplicates import drop_near_duplicates

COMMENTS_FILE = DATA_DIR / "stocktwits_selftagged_2020.csv.gz"


def comments_frame(path: str | Path = COMMENTS_FILE) -> pd.DataFrame:
    """The self-tagged comments as ``text, label`` (label bullish/bearish), one row per distinct model text.

    Texts that are the same once cleaned (``model_text``) are kept once, so a post cannot sit
    on both sides of the split; a text tagged both ways is dropped (no usable label).
    """
    table = read_table(path)
    frame = pd.DataFrame({"text": table["text"].astype(str), "label": table["label"].astype(str).str.strip().str.lower()})
    bad = sorted(set(frame["label"]) - {"bullish", "bearish"})
    if bad:
        raise ValueError(f"{path}: unknown comment tags {bad[:10]}; expected bullish/bearish")
    key = frame["text"].map(model_text).str.lower()
    frame = frame[key != ""]
    key = key[key != ""]
    conflicting = frame.groupby(key)["label"].transform("nunique") > 1
    frame = frame[~conflicting.to_numpy()]
    key = key[~conflicting.to_numpy()]
    return frame[~key.duplicated().to_numpy()].reset_index(drop=True)


def comments_split(*, heldout_fraction: float = 0.2, seed: int = 13, path: str | Path = COMMENTS_FILE
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out) comments, stratified by tag with a fixed seed: the same rows on every machine. Held-out
    comments that retell a training comment (``models.training.near_duplicates``: templates with another
    cashtag or price) are dropped, so the held-out figure is not flattered by them."""
    train, heldout = stratified_split(comments_frame(path), val_fraction=heldout_fraction, seed=seed)
    return train, drop_near_duplicates(heldout, train)
