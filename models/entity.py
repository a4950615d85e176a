"""Entity-level (target-dependent) sentiment: the sentiment of a text *towards one entity*.

Design: the same encoder reads the pair as one sequence ``[CLS] entity [SEP] text [SEP]`` (the
tokenizer maps the literal ``[SEP]`` to its special token) and a third head, ``entity``
(negative / neutral / positive), reads it. A model's ``entity_input`` (``models.network.entity_input``)
says how: ``mark`` wraps each mention of the entity in the text in ``« »``, so the encoder sees
where the text speaks of it; ``pooling`` ``segment`` adds the mean of the entity's own word pieces
to the all-token mean the head reads. A model folder has the head when its ``config.json`` labels
include ``entity``; ``score_pairs`` refuses a model without one rather than guess. Pairs are read
as one chunk of the model's max length with the entity first, so the entity is never cut off;
text past the first chunk is not read (flagged ``truncated``).

Data: SEntFiN 1.0 entity rows (``models/data/sentfin_entities.csv.gz``, MIT; one row per
headline and entity). Held-out test headlines (never trained or tuned on) are the SEntFiN
headlines of the sentence head's validation split (so the copy-the-document-label baseline is
not flattered by headlines it trained on) plus a seeded share of the ``mixed`` headlines (whose
entities disagree, the cases that matter; the sentence head never trains on them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from models import corpus
from models.corpus import DATA_DIR, SENTIMENT_LABELS, Split, model_text
from models.metrics import classification_report
from models.network import ENTITY_TASK
from models.scorer import ColumnArrays

ENTITIES_FILE = DATA_DIR / "sentfin_entities.csv.gz"
HEADLINES_FILE = DATA_DIR / "sentfin_headlines.csv.gz"
_SPECIAL = ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")
MARK_OPEN, MARK_CLOSE = "«", "»"  # one word piece each in the BERT vocabulary, and rare in financial text


def _strip_special(text: str) -> str:
    for token in _SPECIAL:
        text = text.replace(token, " ")
    return model_text(text)


def mark_mentions(entity: str, text: str) -> str:
    """``text`` with each mention of ``entity`` wrapped in ``« »`` (case-insensitive; a mention starts at a
    word start, may carry a leading ``$`` and run on into a suffix: "Acme's", "$AAPL"); marks already in
    the text become quotes so only ours remain."""
    text = text.replace(MARK_OPEN, '"').replace(MARK_CLOSE, '"')
    if not entity:
        return text
    pattern = re.compile(r"(?<![\w$])\$?" + re.escape(entity), re.IGNORECASE)
    return pattern.sub(lambda m: f"{MARK_OPEN} {m.group(0)} {MARK_CLOSE}", text)


def pair_text(entity: str, text: str, *, mark: bool = False) -> str:
    """The one sequence the entity head reads: ``entity [SEP] text`` (special-token literals in the inputs removed;
    with ``mark`` the entity's mentions in the text wrapped in ``« »``)."""
    return _join(_strip_special(entity), _strip_special(text), mark=mark)


def _join(entity: str, text: str, *, mark: bool) -> str:
    """``pair_text`` of an entity and a text already stripped of special-token literals."""
    return f"{entity} [SEP] {mark_mentions(entity, text) if mark else text}"


def pair_texts(frame: pd.DataFrame, *, mark: bool) -> list[str]:
    """``pair_text`` of each row of an entity frame (columns ``entity`` and ``title``)."""
    return [pair_text(e, t, mark=mark) for e, t in zip(frame["entity"], frame["title"], strict=True)]


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
    (for checkpoint choice and the temperature): ``val_fraction`` of the remaining headlines.
    """
    frame = entity_frame() if frame is None else frame
    sentfin = corpus.default_sentiment_frames()[1]
    sentence_val_titles = set(corpus.stratified_split(sentfin, val_fraction=sentence_val_fraction, seed=seed)[1]["text"])
    mixed_titles = frame.loc[frame["mixed"], "title"]
    test_titles = sentence_val_titles | _group_sample(mixed_titles, mixed_test_fraction, seed)
    is_test = frame["title"].isin(test_titles)
    rest = frame[~is_test]
    val_titles = _group_sample(rest["title"], val_fraction, seed + 1)
    is_val = rest["title"].isin(val_titles)
    split = Split(task=ENTITY_TASK, train=rest[~is_val].reset_index(drop=True), val=rest[is_val].reset_index(drop=True))
    return split, frame[is_test].reset_index(drop=True)


@dataclass(frozen=True)
class EntityArrays(ColumnArrays):
    """Entity-level scores aligned with the input pairs; ``status`` ``empty`` where text or entity is blank
    (its probabilities NaN, its sentiment None)."""

    model_version: str
    status: np.ndarray
    sentiment: np.ndarray
    p_negative: np.ndarray
    p_neutral: np.ndarray
    p_positive: np.ndarray
    truncated: np.ndarray

    ARRAY_FIELDS = ("status", "sentiment", "p_negative", "p_neutral", "p_positive", "truncated")
    DTYPES = {"p_negative": np.float32, "p_neutral": np.float32, "p_positive": np.float32, "truncated": bool}

    @property
    def confidence(self) -> np.ndarray:
        """The probability of the predicted class (NaN where empty)."""
        return np.stack([self.p_negative, self.p_neutral, self.p_positive], 1).max(1)

    def to_frame(self, prefix: str = "entity_") -> pd.DataFrame:
        return pd.DataFrame({f"{prefix}{name}": getattr(self, name) for name in self.ARRAY_FIELDS})


def has_entity_head(scorer) -> bool:
    """Whether ``scorer`` (a ``Scorer`` or a ``RemoteScorer``) serves a model with an entity head."""
    return ENTITY_TASK in scorer.labels


def score_pairs(scorer, texts: Sequence[str | None], entities: Sequence[str | None]) -> EntityArrays:
    """Sentiment towards ``entities[i]`` in ``texts[i]``, one batch for all pairs (what the pipeline calls per Arrow batch)."""
    if not has_entity_head(scorer):
        raise ValueError(f"model {scorer.version} has no entity head (labels {sorted(scorer.labels)}); "
                         "train one with `finpulse model train --with-entities`")
    texts, entities = list(texts), list(entities)
    if len(texts) != len(entities):
        raise ValueError(f"{len(texts)} texts but {len(entities)} entities")
    n = len(texts)
    # cleaned once: a pair is readable when both its entity and its text keep something
    cleaned = [(_strip_special(e), _strip_special(t)) if isinstance(t, str) and isinstance(e, str) else ("", "")
               for t, e in zip(texts, entities, strict=True)]
    mark = scorer.entity_input["mark"]
    pairs = [_join(e, t, mark=mark) if e and t else None for e, t in cleaned]
    distributions, truncated = scorer.probabilities(pairs, max_chunks=1)
    probs = distributions[ENTITY_TASK]
    ok = ~np.isnan(probs).any(1)
    names = np.asarray(scorer.labels[ENTITY_TASK], dtype=object)
    sentiment = np.full(n, None, dtype=object)
    sentiment[ok] = names[probs[ok].argmax(1)]
    column = {name: probs[:, k].astype(np.float32) for k, name in enumerate(scorer.labels[ENTITY_TASK])}
    return EntityArrays(model_version=scorer.version, status=np.where(ok, "ok", "empty").astype(object),
                        sentiment=sentiment, p_negative=column["negative"], p_neutral=column["neutral"],
                        p_positive=column["positive"], truncated=np.asarray(truncated, dtype=bool))


def _report(y_true, y_pred) -> dict:
    r = classification_report(list(y_true), list(y_pred), labels=list(SENTIMENT_LABELS))
    return {k: r[k] for k in ("n", "accuracy", "macro_f1", "per_class", "confusion_matrix")}


def entity_eval(scorer, test: pd.DataFrame, *, document_scorer=None) -> dict:
    """Accuracy / macro-F1 on held-out entity rows, overall and on mixed headlines: the entity head (when the
    model has one) against copying the document-level sentiment of the headline to every entity.

    ``document_scorer`` gives the document label (default: ``scorer``).
    """
    document_scorer = document_scorer or scorer
    titles = test["title"].tolist()
    document = document_scorer.score_arrays(titles)
    subsets = {"all": np.ones(len(test), dtype=bool), "mixed": test["mixed"].to_numpy(),
               "not_mixed": ~test["mixed"].to_numpy()}
    result: dict = {"n_rows": len(test), "n_headlines": int(test["title"].nunique()),
                    "n_mixed_rows": int(test["mixed"].sum()), "document_model_version": document_scorer.version,
                    "copy_document_label": {}, "entity_head": None}
    gold = test["label"].to_numpy()
    for name, mask in subsets.items():
        result["copy_document_label"][name] = _report(gold[mask], document.sentiment[mask])
    if has_entity_head(scorer):
        arrays = score_pairs(scorer, titles, test["entity"].tolist())
        result["entity_head"] = {"model_version": scorer.version}
        for name, mask in subsets.items():
            result["entity_head"][name] = _report(gold[mask], arrays.sentiment[mask])
    return result
