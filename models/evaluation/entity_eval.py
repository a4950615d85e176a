"""Entity head evaluation: held-out SEntFiN (headline, entity) rows, against copying the document label."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.entity import score_pairs
from models.scorer import has_entity_head
from models.evaluation.metrics import classification_report
from models.training.corpus import SENTIMENT_LABELS


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
