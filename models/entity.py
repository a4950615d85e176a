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

Training data and its split: ``models.training.entity_data``; evaluation: ``models.evaluation.entity_eval``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.network import ENTITY_TASK
from models.scorer import ColumnArrays
from models.text import model_text

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


