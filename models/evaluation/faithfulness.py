"""Is ``--explain`` faithful? Delete the evidence words it reports and re-score (``finpulse model faithfulness``).

``models.explain`` reports the words that push toward the predicted sentiment. If that is true,
deleting them should lower the probability of the predicted class, more than deleting as many
other words picked at random from the same text. Per text we delete (a) the top evidence word,
(b) every reported evidence word, and the same numbers of random non-evidence words (several
draws), and report how often the predicted class's probability falls, the mean fall
(ERASER's "comprehensiveness", DeYoung et al. 2020) and how often the label flips.

Words are the explainer's words: runs of letters and digits (the encoder's pre-tokenizer splits
on whitespace and punctuation), located in the cleaned text (``model_text``).
"""

from __future__ import annotations

import re

import numpy as np

from models.text import model_text

WORD = re.compile(r"[^\W_]+")
_SPACE = re.compile(r"\s+")


def words_of(text: str) -> list[tuple[int, int, str]]:
    """(start, end, word) of every word of ``text``, in order."""
    return [(m.start(), m.end(), m.group()) for m in WORD.finditer(text)]


def delete_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the given character spans, whitespace collapsed."""
    out, last = [], 0
    for start, end in sorted(spans):
        out.append(text[last:start])
        last = end
    out.append(text[last:])
    return _SPACE.sub(" ", " ".join(out)).strip()


def evidence_spans(text: str, evidence_words: list[str]) -> list[tuple[int, int]]:
    """The span of each evidence word: its first occurrence among the text's words not already taken."""
    taken: set[int] = set()
    spans = []
    words = words_of(text)
    for word in evidence_words:
        for k, (start, end, w) in enumerate(words):
            if k not in taken and w == word:
                taken.add(k)
                spans.append((start, end))
                break
    return spans


def random_spans(text: str, exclude: list[tuple[int, int]], n: int, rng: np.random.Generator) -> list[tuple[int, int]] | None:
    """``n`` random words of ``text`` outside ``exclude`` (None when the text has fewer such words)."""
    excluded = set(exclude)
    pool = [(s, e) for s, e, _ in words_of(text) if (s, e) not in excluded]
    if len(pool) < n:
        return None
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def stream_evidence(scorer, texts: list[str], *, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The evidence the stream stores (``Scorer`` ``evidence=True``: the head's parts of the pass it ran anyway),
    in the explainer's form, read from one chunk as the deletion test reads the texts."""
    arrays = scorer.score_arrays(texts, max_chunks=1, evidence=True)
    return [[(word, share) for word, share in (e or [])][:top_k] for e in arrays.evidence]


EXPLAINERS = {"integrated-gradients": None, "stream": stream_evidence}  # None: models.explain.explain


def faithfulness_report(scorer, texts: list[str], *, top_k: int = 5, random_draws: int = 3, seed: int = 0,
                        explain_fn=None) -> dict:
    """Deletion test of the explainer on ``texts`` (see the module doc). ``explain_fn`` defaults to ``models.explain.explain``
    (integrated gradients, what ``predict --explain`` reports); ``stream_evidence`` is what the pipeline stores."""
    if explain_fn is None:
        from models.explain import explain as explain_fn

    rng = np.random.default_rng(seed)
    names = list(scorer.labels["sentiment"])
    cleaned = [model_text(t) if isinstance(t, str) else "" for t in texts]
    base = scorer.score_arrays(cleaned, max_chunks=1)
    evidence = explain_fn(scorer, cleaned, top_k=top_k)

    # Every edited text, scored in one batch at the end: (row, variant, edited text).
    jobs: list[tuple[int, str, str]] = []
    rows = []
    for i, text in enumerate(cleaned):
        if base.status[i] != "ok" or not evidence[i]:
            continue
        spans = evidence_spans(text, [w for w, _ in evidence[i]])
        if not spans:
            continue
        rows.append(i)
        jobs.append((i, "top1", delete_spans(text, spans[:1])))
        jobs.append((i, "all", delete_spans(text, spans)))
        for draw in range(random_draws):
            for variant, n in (("random_top1", 1), ("random_all", len(spans))):
                picked = random_spans(text, spans, n, rng)
                if picked is not None:
                    jobs.append((i, variant, delete_spans(text, picked)))
    edited = scorer.score_arrays([j[2] for j in jobs], max_chunks=1)

    def p_of(arrays, k: int, label: str) -> float:
        return float(getattr(arrays, f"p_{label}")[k])

    per_variant: dict[str, list[tuple[float, bool, str]]] = {v: [] for v in ("top1", "all", "random_top1", "random_all")}
    for k, (i, variant, _) in enumerate(jobs):
        label = base.sentiment[i]
        if edited.status[k] != "ok":  # everything deleted: the model has nothing to read, count it as a fall
            per_variant[variant].append((p_of(base, i, label), True, label))
            continue
        drop = p_of(base, i, label) - p_of(edited, k, label)
        per_variant[variant].append((drop, edited.sentiment[k] != label, label))

    def summary(values: list[tuple[float, bool, str]]) -> dict:
        if not values:
            return {"n": 0}
        drops = np.array([v[0] for v in values])
        flips = np.array([v[1] for v in values])
        by_label = {name: float((drops[[v[2] == name for v in values]] > 0).mean())
                    for name in names if any(v[2] == name for v in values)}
        return {"n": len(values), "share_probability_falls": float((drops > 0).mean()),
                "mean_fall": float(drops.mean()), "median_fall": float(np.median(drops)),
                "share_label_flips": float(flips.mean()), "share_falls_by_predicted_label": by_label}

    return {
        "model_version": scorer.version,
        "texts": len(texts), "texts_tested": len(rows), "top_k": top_k, "random_draws": random_draws, "seed": seed,
        "predicted": {name: int(sum(base.sentiment[i] == name for i in rows)) for name in names},
        "mean_evidence_words": float(np.mean([len(evidence_spans(cleaned[i], [w for w, _ in evidence[i]]))
                                              for i in rows])) if rows else 0.0,
        "delete_top1_evidence": summary(per_variant["top1"]),
        "delete_random_word": summary(per_variant["random_top1"]),
        "delete_all_evidence": summary(per_variant["all"]),
        "delete_as_many_random_words": summary(per_variant["random_all"]),
        "rule": "the evidence is right for a text when deleting it lowers the predicted class's probability "
                "(texts scored as one chunk, as the explainer reads them)",
    }
