"""Training data: the bundled data sets, label maps and the train / validation / test splits.

Everything the shipped model was trained on is in ``models/training/data/`` (see its README for the
licences), so training never reads ``../shared`` at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


DATA_DIR = Path(__file__).resolve().parent / "data"
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
TOPIC_LABELS: tuple[str, ...] = tuple(
    line.strip() for line in (DATA_DIR / "topic_labels.txt").read_text().splitlines() if line.strip()
)
TASKS: dict[str, tuple[str, ...]] = {"sentiment": SENTIMENT_LABELS, "topic": TOPIC_LABELS}

# Tweet set label ids -> our names (the set's card: 0 bearish, 1 bullish, 2 neutral).
TWEET_SENTIMENT_MAP = {"0": "negative", "1": "positive", "2": "neutral"}

@dataclass(frozen=True)
class Split:
    """A labelled text set for one task: train, validation and (optionally) test frames.

    Each frame has the columns ``text``, ``label`` (a label name) and ``source`` (an entity split has
    ``title`` and ``entity`` in place of ``text``: ``models.entity.pair_texts`` makes the model text). Validation picks
    checkpoints and fits temperatures; test is never looked at by training, so its figures are
    the ones not flattered by that selection. ``test`` is empty when no test share was carved.
    """

    task: str
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame | None = None


def parse_label_map(spec: str | None) -> dict[str, str] | None:
    """``"0=negative,1=positive,2=neutral"`` -> ``{"0": "negative", ...}``."""
    if not spec:
        return None
    pairs = (item.split("=", 1) for item in spec.split(",") if item.strip())
    return {raw.strip(): name.strip() for raw, name in pairs}


def map_labels(raw: pd.Series, *, task: str, label_map: dict[str, str] | None = None) -> pd.Series:
    """Raw labels -> label names of ``task``; unknown labels raise, naming them.

    Without a map, names are accepted case-insensitively and, for topic, integer ids too.
    """
    names = TASKS[task]
    values = raw.astype(str).str.strip()
    if label_map:
        mapped = values.map(label_map)
    else:
        by_lower = {name.lower(): name for name in names}
        if task == "topic":
            by_lower.update({str(i): name for i, name in enumerate(names)})
        mapped = values.str.lower().map(by_lower)
    bad = sorted(set(values[mapped.isna() | ~mapped.isin(names)]))
    if bad:
        raise ValueError(f"unknown {task} labels {bad[:10]}; expected {list(names)} or a --label-map")
    return mapped


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV (optionally .gz) or JSON-lines file as a frame of strings."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if ".jsonl" in suffixes or ".json" in suffixes:
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def labelled_frame(
    path: str | Path,
    *,
    text_column: str,
    label_column: str,
    task: str,
    label_map: dict[str, str] | None = None,
    drop_labels: tuple[str, ...] = (),
    group_column: str | None = None,
) -> pd.DataFrame:
    """Read a labelled file into the ``text, label, source`` frame (rows with empty text dropped); with
    ``group_column``, that column of the file comes along as ``group``."""
    table = read_table(path)
    missing = {text_column, label_column, *([group_column] if group_column else [])} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}; has {list(table.columns)}")
    table = table[~table[label_column].astype(str).str.strip().isin(drop_labels)]
    frame = pd.DataFrame(
        {
            "text": table[text_column].astype(str),
            "label": map_labels(table[label_column], task=task, label_map=label_map).values,
            "source": Path(path).name,
        }
    )
    if group_column:
        frame["group"] = table[group_column].astype(str).values
    return frame[frame["text"].str.strip() != ""].reset_index(drop=True)


def stratified_split(frame: pd.DataFrame, *, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-label random split: ``round(n * val_fraction)`` rows of each label go to validation.

    Depends only on the frame's row order, the fraction and the seed, so the split is the same
    on every machine.
    """
    rng = np.random.default_rng(seed)
    val_index: list[int] = []
    for label in sorted(frame["label"].unique()):
        index = np.flatnonzero((frame["label"] == label).to_numpy())
        rng.shuffle(index)
        val_index.extend(index[: int(round(len(index) * val_fraction))].tolist())
    is_val = np.zeros(len(frame), dtype=bool)
    is_val[val_index] = True
    return frame[~is_val].reset_index(drop=True), frame[is_val].reset_index(drop=True)


def default_sentiment_frames() -> list[pd.DataFrame]:
    """The bundled sentiment sets: financial news tweets and SEntFiN headlines (``mixed`` dropped)."""
    return [
        labelled_frame(
            DATA_DIR / "twitter_financial_news_sentiment_train.csv.gz",
            text_column="text",
            label_column="label",
            task="sentiment",
            label_map=TWEET_SENTIMENT_MAP,
        ),
        labelled_frame(
            DATA_DIR / "sentfin_headlines.csv.gz",
            text_column="title",
            label_column="headline_label",
            task="sentiment",
            drop_labels=("mixed",),
        ),
    ]


def default_topic_frames() -> list[pd.DataFrame]:
    """The bundled topic set (financial news tweets, 20 topics)."""
    return [
        labelled_frame(
            DATA_DIR / "twitter_financial_news_topic_train.csv.gz",
            text_column="text",
            label_column="label",
            task="topic",
        )
    ]


def build_split(task: str, frames: list[pd.DataFrame], *, val_fraction: float, seed: int,
                test_share: float = 0.0) -> Split:
    """Split each source separately (so each keeps its share of held-out rows), then concatenate.

    ``val_fraction`` of each source is held out from training; ``test_share`` of that held-out
    part (per label, seed + 1) becomes the test frame and the rest validation. Carving test out
    of the held-out part keeps the training rows the same as with ``test_share=0``, so models
    trained either way are compared on rows that neither trained on. Held-out rows that retell a training
    row (``models.training.near_duplicates``) are then dropped from validation and test, not moved.
    """
    from models.training.near_duplicates import drop_near_duplicates

    parts = [stratified_split(frame, val_fraction=val_fraction, seed=seed) for frame in frames]
    train = pd.concat([p[0] for p in parts], ignore_index=True)
    if test_share <= 0:
        val = pd.concat([p[1] for p in parts], ignore_index=True)
        return Split(task=task, train=train, val=drop_near_duplicates(val, train))
    held = [stratified_split(p[1], val_fraction=test_share, seed=seed + 1) for p in parts]
    val = pd.concat([h[0] for h in held], ignore_index=True)
    test = pd.concat([h[1] for h in held], ignore_index=True)
    return Split(task=task, train=train, val=drop_near_duplicates(val, train), test=drop_near_duplicates(test, train))
