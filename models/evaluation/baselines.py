"""The two baselines the model card compares against, on the same validation split.

- ``vader``: the VADER lexicon (``vaderSentiment``, MIT), compound >= 0.05 positive,
  <= -0.05 negative, else neutral (the thresholds its authors recommend). Sentiment only.
- ``frozen``: the untuned base encoder (mean-pooled embeddings, frozen) with a multinomial
  logistic-regression head per task, fit on the training split (L2, LBFGS).
"""

from __future__ import annotations

import numpy as np
import torch

from models.text import model_text
from models.training.corpus import TASKS, Split
from models.evaluation.metrics import classification_report
from models.network import DEFAULT_BASE, base_encoder, bf16_supported, mean_pool, resolve_base
from models.scorer import autocast_context

VADER_THRESHOLD = 0.05


def vader_report(split: Split) -> dict:
    """VADER on the sentiment validation split."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def label(text: str) -> str:
        compound = analyzer.polarity_scores(model_text(text))["compound"]
        if compound >= VADER_THRESHOLD:
            return "positive"
        if compound <= -VADER_THRESHOLD:
            return "negative"
        return "neutral"

    predicted = [label(t) for t in split.val["text"]]
    return classification_report(split.val["label"].tolist(), predicted, labels=list(TASKS["sentiment"]))


def frozen_embeddings(texts: list[str], *, base: str = DEFAULT_BASE, max_length: int = 64,
                      batch_size: int = 128) -> np.ndarray:
    """Mean-pooled embeddings of the untuned base encoder, in input order."""
    from transformers import AutoTokenizer

    folder = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = base_encoder(folder).eval()
    device = torch.device("cpu")
    normalized = [model_text(t) for t in texts]
    encoded = tokenizer(normalized, truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(x) for x in encoded], kind="stable")
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode(), autocast_context(device, bf16_supported(device)):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            out[chunk] = mean_pool(hidden, batch["attention_mask"]).float().numpy()
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, *, n_classes: int, l2: float = 1e-4) -> torch.nn.Linear:
    """Multinomial logistic regression (standardised features are not needed: MiniLM's are small)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], n_classes)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(xt), yt) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def frozen_report(split: Split, *, base: str = DEFAULT_BASE, max_length: int = 64) -> dict:
    """Untuned base + a logistic-regression head fit on ``split.train``, scored on ``split.val``."""
    names = list(TASKS[split.task])
    train_x = frozen_embeddings(split.train["text"].tolist(), base=base, max_length=max_length)
    val_x = frozen_embeddings(split.val["text"].tolist(), base=base, max_length=max_length)
    train_y = split.train["label"].map({n: i for i, n in enumerate(names)}).to_numpy()
    head = fit_logistic(train_x, train_y, n_classes=len(names))
    with torch.no_grad():
        predicted = head(torch.from_numpy(val_x)).argmax(1).tolist()
    return classification_report(split.val["label"].tolist(), [names[i] for i in predicted], labels=names)
