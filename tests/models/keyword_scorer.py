"""A deterministic stand-in for ``Scorer`` (in addition to the real one): probabilities from keywords.

Lets the evaluation code's counting be checked against hand-computed answers, independent of
what the real model happens to predict.
"""

from __future__ import annotations

import numpy as np

from models.results import STATUS_OK, ScoreArrays

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

    def score_arrays(self, texts, *, max_chunks=None, evidence=False) -> ScoreArrays:
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
            if evidence:  # the words whose weights push towards the predicted label, strongest first
                label = int(p.argmax())
                pushes = {w: self.weights[w][label] - np.mean(np.delete(self.weights[w], label))
                          for w in dict.fromkeys(text.lower().replace(",", " ").split()) if w in self.weights}
                total = sum(abs(v) for v in pushes.values()) or 1.0
                result.evidence[i] = [[w, v / total] for w, v in sorted(pushes.items(), key=lambda kv: -kv[1]) if v > 0]
        return result


class KeywordEntityScorer(KeywordScorer):
    """A KeywordScorer with a ``span`` entity head: an entity's sentiment is the keywords of the ``;``-clause
    of the text where it is first mentioned (located as the real scorer locates mentions)."""

    labels = {"sentiment": LABELS, "entity": LABELS}
    entity_input = {"mark": False, "pooling": "span"}

    def score_documents(self, texts, entities, *, max_chunks=None, evidence=False):
        from models.entity import span_text
        from models.results import STATUS_NOT_FOUND, EntityArrays

        texts = list(texts)
        documents = self.score_arrays(texts, max_chunks=max_chunks, evidence=evidence)  # records the one call
        arrays = EntityArrays.empty(sum(len(e) for e in entities), model_version=self.version)
        k = 0
        for text, asked in zip(texts, entities, strict=True):
            prepared = span_text(text, asked, mark=False) if isinstance(text, str) else None
            if prepared is not None and not prepared.text:
                prepared = None  # nothing left to read: empty
            for j in range(len(asked)):
                if prepared is not None:
                    spans = prepared.spans[j]
                    if not spans:
                        arrays.status[k] = STATUS_NOT_FOUND
                    else:
                        start = spans[0][0]
                        clause_start = prepared.text.rfind(";", 0, start) + 1
                        clause_end = prepared.text.find(";", start)
                        clause = prepared.text[clause_start: None if clause_end < 0 else clause_end]
                        d = self.distribution(clause)
                        arrays.status[k] = STATUS_OK
                        arrays.sentiment[k] = LABELS[int(d.argmax())]
                        arrays.p_negative[k], arrays.p_neutral[k], arrays.p_positive[k] = d
                k += 1
        return documents, arrays

    def score_pairs(self, texts, entities):
        from models.entity import score_pairs

        return score_pairs(self, texts, entities)
