"""A deterministic stand-in for ``Scorer`` (in addition to the real one): probabilities from keywords.

Lets the evaluation code's counting be checked against hand-computed answers, independent of
what the real model happens to predict.
"""

from __future__ import annotations

import numpy as np

from models.scorer import STATUS_OK, ScoreArrays

LABELS = ["negative", "neutral", "positive"]


class KeywordScorer:
    """Each word in ``weights`` adds its (negative, neutral, positive) logits; blank text is ``empty``."""

    version = "keyword-stub"
    labels = {"sentiment": LABELS}

    def __init__(self, weights: dict[str, tuple[float, float, float]], neutral_bias: float = 1.0):
        self.weights = weights
        self.neutral_bias = neutral_bias
        self.calls: list[list[str]] = []

    def distribution(self, text: str) -> np.ndarray:
        logits = np.array([0.0, self.neutral_bias, 0.0])
        for word in text.lower().replace(",", " ").split():
            logits += np.asarray(self.weights.get(word, (0.0, 0.0, 0.0)))
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def score_arrays(self, texts, *, max_chunks=None) -> ScoreArrays:
        texts = list(texts)
        self.calls.append(texts)
        result = ScoreArrays.empty(len(texts), model_version=self.version)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                continue
            p = self.distribution(text)
            result.status[i] = STATUS_OK
            result.sentiment[i] = LABELS[int(p.argmax())]
            result.p_negative[i], result.p_neutral[i], result.p_positive[i] = p
            result.n_chunks[i] = 1
        return result


class KeywordEntityScorer(KeywordScorer):
    """A KeywordScorer with an ``entity`` head: the keywords of the ``;``-clause that names the entity."""

    labels = {"sentiment": LABELS, "entity": LABELS}
    entity_input = {"mark": False, "pooling": "mean"}

    def probabilities(self, texts, *, max_chunks=None):
        texts = list(texts)
        self.calls.append(texts)
        n = len(texts)
        sentiment, entity = np.full((n, 3), np.nan), np.full((n, 3), np.nan)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                continue
            sentiment[i] = self.distribution(text)
            if " [SEP] " in text:
                name, body = text.split(" [SEP] ", 1)
                clause = next((c for c in body.split(";") if name.lower() in c.lower()), body)
                entity[i] = self.distribution(clause)
        return {"sentiment": sentiment, "entity": entity}, np.zeros(n, dtype=bool)

    def score_pairs(self, texts, entities):
        from models.entity import score_pairs

        return score_pairs(self, texts, entities)
