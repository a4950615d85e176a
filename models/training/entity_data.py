"""The SEntFiN entity rows the entity head trains and is evaluated on, and their split by headline.

Data: SEntFiN 1.0 entity rows (``models/training/data/sentfin_entities.csv.gz``, MIT; one row per
headline and entity). Held-out test headlines (never trained or tuned on) are the SEntFiN headlines
of the sentence head's validation split (so the copy-the-document-label baseline is not flattered
by headlines it trained on) plus a seeded share of the ``mixed`` headlines (whose entities disagree,
the cases that matter; the sentence head never trains on them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from models.network import ENTITY_TASK
from models.training import corpus
from models.training.corpus import DATA_DIR, Split

ENTITIES_FILE = DATA_DIR / "sentfin_entities.csv.gz"
HEADLINES_FILE = DATA_DIR / "sentfin_headlines.csv.gz"


def entity_frame(entities_path: str | Path = ENTITIES_FILE, headlines_path: str | Path = HEADLINES_FILE) -> pd.DataFrame:
    """One row per (headline, entity): ``s_no, title, entity, label, mixed, source``.

    No model text here: how a pair is read depends on the model (``pair_texts``).
    """
    entities = corpus.read_table(entities_path)
    headlines = corpus.read_table(headlines_path)[["s_no", "headline_label"]]
    frame = entities.merge(headlines, on="s_no", how="left", validate="many_to_one")
    frame["label"] = corpus.map_labels(frame["label"], task="sentiment").to_numpy()
    frame["mixed"] = frame["headline_label"].str.strip().str.lower() == "mixed"
    frame["source"] = Path(entities_path).name
    return frame[["s_no", "title", "entity", "label", "mixed", "source"]].reset_index(drop=True)


def _group_sample(titles: Sequence[str], fraction: float, seed: int) -> set[str]:
    unique = np.array(sorted(set(titles)), dtype=object)
    rng = np.random.default_rng(seed)
    return set(rng.choice(unique, size=int(round(len(unique) * fraction)), replace=False).tolist())


def entity_splits(*, seed: int = 13, sentence_val_fraction: float = 0.1, mixed_test_fraction: float = 0.2,
                  val_fraction: float = 0.1, frame: pd.DataFrame | None = None) -> tuple[Split, pd.DataFrame]:
    """(train/validation ``Split`` for training, held-out test rows), split by headline so no headline sits on two sides.

    Test: the titles of the sentence head's SEntFiN validation split (``corpus.build_split`` with
    the same seed and fraction) and ``mixed_test_fraction`` of the mixed headlines. Validation
    (for checkpoint choice and the temperature): ``val_fraction`` of the remaining headlines. Validation
    and test rows whose headline retells a training headline (``models.training.near_duplicates``) are
    dropped.
    """
    from models.training.near_duplicates import drop_near_duplicates

    frame = entity_frame() if frame is None else frame
    sentfin = corpus.default_sentiment_frames()[1]
    sentence_val_titles = set(corpus.stratified_split(sentfin, val_fraction=sentence_val_fraction, seed=seed)[1]["text"])
    mixed_titles = frame.loc[frame["mixed"], "title"]
    test_titles = sentence_val_titles | _group_sample(mixed_titles, mixed_test_fraction, seed)
    is_test = frame["title"].isin(test_titles)
    rest = frame[~is_test]
    val_titles = _group_sample(rest["title"], val_fraction, seed + 1)
    is_val = rest["title"].isin(val_titles)
    train = rest[~is_val].reset_index(drop=True)
    val = drop_near_duplicates(rest[is_val].reset_index(drop=True), train, column="title")
    test = drop_near_duplicates(frame[is_test].reset_index(drop=True), train, column="title")
    return Split(task=ENTITY_TASK, train=train, val=val), test
