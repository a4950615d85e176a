"""Out-of-domain evaluation: retail comments and stock-market tweets the model never trained on.

Two kinds of labels:

- three-class (negative / neutral / positive), e.g. the 1,300 human-labelled rows of
  ``stock_market_tweets_2020.csv``: the usual classification report plus how many negatives
  were found;
- weak binary tags (bullish / bearish, Positive / Negative), e.g. StockTwits authors' own tags:
  they say positive-vs-negative, not "not neutral", so a post "leans negative" when
  ``p_negative > p_positive`` whatever the neutral probability, and accuracy is measured on that.

The StockTwits comments ship in ``models/training/data/`` (see ``LICENSE-stocktwits.txt``);
``models.training.comments.comments_split`` carves the held-out part that training must never see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.evaluation.metrics import classification_report
from models.text import model_text
from models.training.corpus import SENTIMENT_LABELS, read_table

# Tag spellings of the binary sets we know -> the sentiment they claim.
BINARY_TAGS = {"bearish": "negative", "negative": "negative", "bullish": "positive", "positive": "positive"}


def _labelled_rows(path: str | Path, *, text_column: str, label_column: str) -> pd.DataFrame:
    table = read_table(path)
    missing = {text_column, label_column} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}; has {list(table.columns)}")
    labels = table[label_column].astype(str).str.strip().str.lower()
    texts = table[text_column].astype(str)
    keep = (labels != "") & (labels != "nan") & (texts.str.strip() != "")
    return pd.DataFrame({"text": texts[keep], "label": labels[keep]}).reset_index(drop=True)


def three_class_report(scorer, path: str | Path, *, text_column: str = "text", label_column: str = "sentiment") -> dict:
    """Sentiment report on a file with negative/neutral/positive labels (rows without a label skipped)."""
    frame = _labelled_rows(path, text_column=text_column, label_column=label_column)
    bad = sorted(set(frame["label"]) - set(SENTIMENT_LABELS))
    if bad:
        raise ValueError(f"{path}: unknown sentiment labels {bad[:10]}; expected {list(SENTIMENT_LABELS)}")
    arrays = scorer.score_arrays(frame["text"].tolist())
    ok = arrays.status == "ok"
    report = classification_report(frame["label"][ok].tolist(), arrays.sentiment[ok].tolist(),
                                   labels=list(SENTIMENT_LABELS))
    matrix = np.asarray(report["confusion_matrix"])
    negative = SENTIMENT_LABELS.index("negative")
    report.update({
        "data": str(path),
        "labelled_rows": len(frame),
        "unscored_rows": int((~ok).sum()),
        "predicted_counts": {name: int(matrix[:, i].sum()) for i, name in enumerate(SENTIMENT_LABELS)},
        "true_counts": {name: int(matrix[i].sum()) for i, name in enumerate(SENTIMENT_LABELS)},
        "negatives_found": int(matrix[negative, negative]),
        "negatives": int(matrix[negative].sum()),
    })
    return report


def binary_report(scorer, path: str | Path | None = None, *, frame: pd.DataFrame | None = None,
                  text_column: str = "text", label_column: str = "label") -> dict:
    """Weak binary tags against ``p_negative`` vs ``p_positive`` (neutral ignored: the tags do not say neutral)."""
    if frame is None:
        frame = _labelled_rows(path, text_column=text_column, label_column=label_column)
    else:
        frame = frame.assign(label=frame["label"].astype(str).str.strip().str.lower())
    bad = sorted(set(frame["label"]) - set(BINARY_TAGS))
    if bad:
        raise ValueError(f"{path}: unknown binary tags {bad[:10]}; expected one of {sorted(BINARY_TAGS)}")
    claimed = frame["label"].map(BINARY_TAGS).to_numpy()
    arrays = scorer.score_arrays(frame["text"].tolist())
    ok = arrays.status == "ok"
    leans = np.where(arrays.p_negative > arrays.p_positive, "negative", "positive")[ok]
    claimed, argmax = claimed[ok], arrays.sentiment[ok]
    negative, positive = claimed == "negative", claimed == "positive"
    negative_recall = float((leans[negative] == "negative").mean()) if negative.any() else float("nan")
    positive_recall = float((leans[positive] == "positive").mean()) if positive.any() else float("nan")
    return {
        "data": "<frame>" if path is None else str(path),
        "n": int(ok.sum()),
        "unscored_rows": int((~ok).sum()),
        "tags": {"negative": int(negative.sum()), "positive": int(positive.sum())},
        "accuracy": float((leans == claimed).mean()) if len(claimed) else float("nan"),
        "balanced_accuracy": float(np.nanmean([negative_recall, positive_recall])),
        "negative_tagged_leaning_negative": negative_recall,
        "positive_tagged_leaning_positive": positive_recall,
        "argmax_counts": {
            tag: {name: int((argmax[mask] == name).sum()) for name in SENTIMENT_LABELS}
            for tag, mask in (("negative", negative), ("positive", positive))
        },
        "rule": "a text leans negative when p_negative > p_positive (neutral probability ignored)",
    }
