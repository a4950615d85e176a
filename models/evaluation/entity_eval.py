"""Entity head evaluation: held-out SEntFiN (headline, entity) rows, against copying the document label."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.entity import score_pairs
from models.scorer import has_entity_head
from models.evaluation.metrics import classification_report
from models.training.corpus import SENTIMENT_LABELS


UNREAD = "(not read)"  # an entity the model did not find in the text: counted as a wrong answer


def _report(y_true, y_pred) -> dict:
    """The report over every row, an unread entity (no prediction) counting as wrong; macro-F1 over the
    sentiment labels (the unread column lowers their recall, it is not a class of its own)."""
    predicted = [UNREAD if p is None else p for p in y_pred]
    r = classification_report(list(y_true), predicted, labels=[*SENTIMENT_LABELS, UNREAD])
    f1 = [r["per_class"][name]["f1"] for name in SENTIMENT_LABELS
          if r["per_class"][name]["support"] or name in predicted]
    out = {k: r[k] for k in ("n", "accuracy", "per_class", "confusion_matrix")}
    out["per_class"] = {name: out["per_class"][name] for name in SENTIMENT_LABELS}
    out["macro_f1"] = float(np.mean(f1)) if f1 else 0.0
    out["n_unread"] = predicted.count(UNREAD)
    return out


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
