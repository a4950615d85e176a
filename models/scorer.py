"""Fast batched inference: the ``Scorer`` the pipeline and ``finpulse model predict`` use.

Built to be constructed once per executor process (``Scorer.load`` or the cached
``get_scorer``) from files on disk, so nothing model-sized is ever pickled into a Spark task.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.corpus import normalize_text
from models.network import LoadedModel, MultiHeadEncoder, bf16_supported, load_model

# A token is rarely shorter than one character and usually 4+, so this many characters per
# allowed token always covers max_length tokens while sparing the tokenizer a 100k-char text.
CHARS_PER_TOKEN_CAP = 32


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def batched_logits(
    network: MultiHeadEncoder,
    tokenizer,
    texts: list[str],
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
    bf16: bool,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Logits per head for non-empty, normalised ``texts``, in input order, and a truncated flag each.

    Texts are tokenised once without padding, sorted by length and cut into batches, so each
    batch pads only to its own longest text (dynamic padding); results go back to input order.
    """
    if not texts:
        return {task: torch.empty(0, head.out_features) for task, head in network.heads.items()}, np.zeros(0, bool)
    clipped = [t[: max_length * CHARS_PER_TOKEN_CAP] for t in texts]
    full = tokenizer(clipped, truncation=False, add_special_tokens=True)["input_ids"]
    truncated = np.array([len(ids) > max_length for ids in full])
    # Cut here rather than tokenising a second time with truncation=True: for one sequence
    # that keeps the leading tokens and the closing [SEP], exactly as the tokenizer would.
    encoded = [ids[: max_length - 1] + ids[-1:] if cut else ids for ids, cut in zip(full, truncated)]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    outputs: dict[str, list[torch.Tensor]] = {task: [] for task in network.heads}
    with torch.inference_mode(), autocast_context(device, bf16):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
            logits = network(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            for task, value in logits.items():
                outputs[task].append(value.float().cpu())
    inverse = torch.from_numpy(np.argsort(order, kind="stable"))
    return {task: torch.cat(parts)[inverse] for task, parts in outputs.items()}, truncated


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """One scored text.

    ``status`` is ``ok`` or ``empty`` (None, empty or whitespace-only input). Empty input gets
    no sentiment and NaN probabilities: a text we could not read is never reported as neutral.
    ``truncated`` says the text was longer than the model's max length and only its start was read.
    """

    sentiment: str | None
    p_negative: float
    p_neutral: float
    p_positive: float
    topic: str | None
    topic_confidence: float
    model_version: str
    status: str
    truncated: bool = False


PREDICTION_COLUMNS = [
    "sentiment", "p_negative", "p_neutral", "p_positive", "topic", "topic_confidence", "model_version",
    "status", "truncated",
]


class Scorer:
    """Scores texts for sentiment and topic with calibrated probabilities, in length-sorted batches."""

    def __init__(self, *, model: LoadedModel, device: torch.device, batch_size: int = 64, bf16: bool | None = None):
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.bf16 = bf16_supported(device) if bf16 is None else bf16
        self.network = model.network.to(device).eval()
        self.max_length = int(model.config["max_length"])
        self.labels = model.config["labels"]
        self.temperature = model.config.get("temperature", {})
        self.version = model.version

    @classmethod
    def load(
        cls, model_dir: str | Path | None = None, *, device: str | torch.device | None = None,
        batch_size: int = 64, bf16: bool | None = None,
    ) -> Scorer:
        """Load a model folder (``None``: FINPULSE_MODEL_DIR or the shipped model) onto ``device``.

        ``device=None`` picks CUDA when present; ``bf16=None`` uses bf16 autocast where the
        device supports it natively and fp32 elsewhere.
        """
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model=load_model(None if model_dir is None else Path(model_dir)), device=torch.device(device),
                   batch_size=batch_size, bf16=bf16)

    def probabilities(self, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Calibrated probabilities per head for non-empty texts, plus the truncated flags."""
        normalized = [normalize_text(t) for t in texts]
        logits, truncated = batched_logits(
            self.network, self.model.tokenizer, normalized, max_length=self.max_length,
            batch_size=self.batch_size, device=self.device, bf16=self.bf16,
        )
        probs = {
            task: torch.softmax(value / float(self.temperature.get(task, 1.0)), dim=-1).numpy()
            for task, value in logits.items()
        }
        return probs, truncated

    def score(self, texts: list[str | None]) -> list[Prediction]:
        """One ``Prediction`` per input, in input order; bad input never fails the batch."""
        texts = list(texts)
        keep = [i for i, t in enumerate(texts) if isinstance(t, str) and normalize_text(t)]
        probs, truncated = self.probabilities([texts[i] for i in keep])
        results: list[Prediction | None] = [None] * len(texts)
        sentiment_names, topic_names = self.labels["sentiment"], self.labels["topic"]
        for row, i in enumerate(keep):
            p_sent, p_topic = probs["sentiment"][row], probs["topic"][row]
            results[i] = Prediction(
                sentiment=sentiment_names[int(p_sent.argmax())],
                **{f"p_{name}": float(p_sent[k]) for k, name in enumerate(sentiment_names)},
                topic=topic_names[int(p_topic.argmax())],
                topic_confidence=float(p_topic.max()),
                model_version=self.version,
                status="ok",
                truncated=bool(truncated[row]),
            )
        empty = Prediction(sentiment=None, p_negative=math.nan, p_neutral=math.nan, p_positive=math.nan,
                           topic=None, topic_confidence=math.nan, model_version=self.version, status="empty")
        return [r if r is not None else empty for r in results]

    def score_frame(self, texts: list[str | None] | pd.Series) -> pd.DataFrame:
        """``score`` as a DataFrame with ``PREDICTION_COLUMNS``, index 0..n-1 (for pandas UDFs)."""
        predictions = self.score(list(texts))
        return pd.DataFrame([asdict(p) for p in predictions], columns=PREDICTION_COLUMNS)


@functools.lru_cache(maxsize=4)
def get_scorer(model_dir: str | None = None, device: str | None = None) -> Scorer:
    """A Scorer per (model_dir, device), built once per process: call it inside ``mapInPandas``."""
    return Scorer.load(model_dir, device=device)
