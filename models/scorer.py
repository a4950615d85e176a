"""Fast batched inference: the ``Scorer`` the pipeline, the model server and ``finpulse model predict`` use.

Built to be constructed once per executor process (``get_scorer``, a module-level cache) from
files on disk, so nothing model-sized is ever pickled into a Spark task, and the LoRA adapter is
merged without peft at load (``models.network.merge_lora``).

Long texts are read in chunks: a document (title + "\\n" + body) is cut into consecutive windows of
``max_length`` word pieces ([CLS] + up to ``max_length - 2`` pieces + [SEP]), at most
``max_chunks`` of them, so chunk 1 is the title and lead. Each chunk gets calibrated
probabilities from both heads; a document's probabilities are the weighted mean of its chunks'
(see ``chunk_weights``). Chunks of all texts of a call are sorted by length and cut into batches
by a token budget (rows x padded length), each padded only to its own longest chunk.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.text import model_text
from models.network import LoadedModel, MultiHeadEncoder, bf16_supported, entity_input, load_model, resolve_model_dir

# A word piece is rarely shorter than one character and usually 4+, so this many characters per
# allowed piece always covers what we read while sparing the tokenizer a 10 MB text.
CHARS_PER_TOKEN_CAP = 32
DEFAULT_MAX_CHUNKS = 4
# Chunk 1 (title + lead) counts this many times its token share. The model was trained on
# headlines and tweets, i.e. on text like chunk 1, and a news lead states what the article is
# about; body chunks are out of its training distribution, and there are several of them.
# 2.0 keeps the lead the largest single voice of a 4-chunk article (2/5 of the weight when all
# chunks are full) without letting it outvote a body that is negative throughout.
FIRST_CHUNK_WEIGHT = 2.0
# Default token budgets per batch (rows x padded length). CPU: 64 rows of 64 pieces, where the
# bench found batches of 32-128 short texts equally fast. CUDA: large batches keep a GPU busy;
# MiniLM at 64 pieces uses well under 1 GB of activations for 64k tokens.
DEFAULT_TOKEN_BUDGET = {"cpu": 4096, "cuda": 65536}
STATUS_OK = "ok"
STATUS_EMPTY = "empty"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` -> CUDA when present else CPU; ``"cuda"`` -> the current CUDA device (``cuda:N``).

    Spark hands each task its GPU address (``TaskContext.resources()["gpu"].addresses[0]``), so
    the pipeline passes ``cuda:<address>``; a bare ``cuda`` is pinned to an index here so that
    the scorer cache has one key per physical device.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def autocast_dtype_for(device: torch.device, bf16: bool | None = None) -> torch.dtype | None:
    """The autocast dtype to run on ``device`` (None: plain fp32).

    ``bf16=None`` (auto): on CUDA bf16 where the GPU has it natively (Ampere and later), else
    fp16 (the encoder's LayerNorm and softmax stay fp32 under autocast, so fp16 is safe for
    inference); on CPU bf16 only where it is native (AVX512-BF16/AMX), else fp32, because
    emulated bf16 is slower than fp32. ``bf16=False`` forces fp32, ``bf16=True`` forces bf16.
    """
    if bf16 is False:
        return None
    if bf16 is True:
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and bf16_supported(device):
        return torch.bfloat16
    return None


def autocast_context(device: torch.device, enabled: bool | torch.dtype | None):
    """Autocast on ``device`` (``True``: bf16; a dtype: that dtype), else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if enabled is True else enabled
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- chunking -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunks:
    """The chunks of a list of texts, in text order (a text's chunks are contiguous).

    ``ids`` are model inputs with special tokens; ``owner[i]`` is the text chunk ``i`` belongs to;
    ``weight[i]`` its share in its text's probabilities (summing to 1 per text); ``n_chunks`` and
    ``truncated`` are per text.
    """

    ids: list[list[int]]
    owner: np.ndarray
    weight: np.ndarray
    n_chunks: np.ndarray
    truncated: np.ndarray


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a single sequence starts and ends with: [CLS] and [SEP] for the BERT family we use."""
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no [CLS]/[SEP]: the scorer supports BERT-family encoders")
    return [tokenizer.cls_token_id], [tokenizer.sep_token_id]


def word_pieces(tokenizer, texts: list[str], *, max_length: int, max_chunks: int) -> tuple[list[list[int]], np.ndarray]:
    """Word pieces (no special tokens) of each text, cut to ``max_chunks`` chunks' worth, and a truncated flag."""
    prefix, suffix = special_tokens(tokenizer)
    per_chunk = max_length - len(prefix) - len(suffix)
    if per_chunk < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text between the special tokens")
    capacity = per_chunk * max_chunks
    char_cap = capacity * CHARS_PER_TOKEN_CAP
    clipped = [t[:char_cap] for t in texts]
    pieces = tokenizer(clipped, add_special_tokens=False, truncation=False, verbose=False)["input_ids"] if texts else []
    truncated = np.array([len(p) > capacity or len(c) < len(t) for p, c, t in zip(pieces, clipped, texts)], dtype=bool)
    return [p[:capacity] for p in pieces], truncated


def chunk_weights(lengths: list[int], *, first_chunk_weight: float = FIRST_CHUNK_WEIGHT) -> np.ndarray:
    """Weights of one text's chunks: word pieces read, chunk 1 times ``first_chunk_weight``, normalised.

    By tokens, so a 5-piece tail chunk does not count as much as a full 62-piece paragraph; and
    a weighted mean of calibrated probabilities (not of logits), so one overconfident chunk cannot
    drown the others and the result stays a distribution.
    """
    weights = np.asarray(lengths, dtype=np.float64)
    weights = np.maximum(weights, 1.0)
    weights[0] *= first_chunk_weight
    return weights / weights.sum()


def make_chunks(
    tokenizer, pieces: list[list[int]], truncated: np.ndarray, *, max_length: int,
    first_chunk_weight: float = FIRST_CHUNK_WEIGHT,
) -> Chunks:
    """Cut each text's word pieces into consecutive chunks of ``max_length`` with special tokens (at least one each)."""
    prefix, suffix = special_tokens(tokenizer)
    per_chunk = max_length - len(prefix) - len(suffix)
    ids: list[list[int]] = []
    owner: list[int] = []
    weights: list[np.ndarray] = []
    n_chunks = np.zeros(len(pieces), dtype=np.int32)
    for text_index, text_pieces in enumerate(pieces):
        windows = [text_pieces[start : start + per_chunk] for start in range(0, len(text_pieces), per_chunk)] or [[]]
        ids.extend(prefix + w + suffix for w in windows)
        owner.extend([text_index] * len(windows))
        weights.append(chunk_weights([len(w) for w in windows], first_chunk_weight=first_chunk_weight))
        n_chunks[text_index] = len(windows)
    weight = np.concatenate(weights) if weights else np.zeros(0)
    return Chunks(ids=ids, owner=np.asarray(owner, dtype=np.int64), weight=weight, n_chunks=n_chunks,
                  truncated=np.asarray(truncated, dtype=bool))


def token_budget_batches(lengths: Sequence[int], *, token_budget: int, max_rows: int | None = None) -> list[np.ndarray]:
    """Indices of ``lengths`` sorted by length and cut into batches of at most ``token_budget`` padded tokens.

    A batch's cost is rows x its longest sequence (dynamic padding); lengths ascend within the
    sorted order, so adding a row costs (rows + 1) x its own length. A sequence longer than the
    budget gets a batch of its own. ``max_rows`` optionally caps rows per batch too.
    """
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    for position in range(len(order)):
        rows = position - start + 1
        too_many = max_rows is not None and rows > max_rows
        if rows > 1 and (too_many or rows * lengths[order[position]] > token_budget):
            batches.append(order[start:position])
            start = position
    if start < len(order):
        batches.append(order[start:])
    return batches


def forward_chunks(
    network: MultiHeadEncoder,
    ids: list[list[int]],
    *,
    pad_id: int,
    token_budget: int,
    device: torch.device,
    autocast: torch.dtype | bool | None,
    max_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """Logits per head (fp32, on CPU) for each chunk of ``ids``, in the order of ``ids``."""
    if not ids:
        return {task: torch.empty(0, head.out_features) for task, head in network.heads.items()}
    lengths = [len(x) for x in ids]
    cuda = device.type == "cuda"
    outputs: dict[str, list[torch.Tensor]] = {task: [] for task in network.heads}
    order: list[np.ndarray] = []
    with torch.inference_mode(), autocast_context(device, autocast):
        for batch in token_budget_batches(lengths, token_budget=token_budget, max_rows=max_rows):
            width = max(lengths[i] for i in batch)
            input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                input_ids[row, : lengths[i]] = ids[i]
                mask[row, : lengths[i]] = 1
            input_tensor, mask_tensor = torch.from_numpy(input_ids), torch.from_numpy(mask)
            if cuda:
                # Page-locked host memory lets the copy run asynchronously with the previous batch.
                input_tensor = input_tensor.pin_memory().to(device, non_blocking=True)
                mask_tensor = mask_tensor.pin_memory().to(device, non_blocking=True)
            logits = network(input_tensor, mask_tensor)
            for task, value in logits.items():
                outputs[task].append(value.float())  # stays on the device until the end: one sync
            order.append(batch)
    inverse = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
    return {task: torch.cat(parts).cpu()[inverse] for task, parts in outputs.items()}


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
    """Logits per head of the first chunk of each non-empty, cleaned text, in input order, and a truncated flag each.

    What training's validation reads (one chunk, the same inputs training saw); ``truncated``
    means the text had more than one chunk. ``batch_size`` caps rows per batch.
    """
    pieces, truncated = word_pieces(tokenizer, texts, max_length=max_length, max_chunks=1)
    chunks = make_chunks(tokenizer, pieces, truncated, max_length=max_length)
    logits = forward_chunks(network, chunks.ids, pad_id=tokenizer.pad_token_id, token_budget=batch_size * max_length,
                            device=device, autocast=bool(bf16), max_rows=batch_size)
    return logits, chunks.truncated


# --- results --------------------------------------------------------------------------------


PROBABILITY_FIELDS = ("p_negative", "p_neutral", "p_positive", "topic_confidence")


class ColumnArrays:
    """Equal-length column arrays plus a ``model_version``: what ``ScoreArrays`` and
    ``models.entity.EntityArrays`` share (length check, slicing, the JSON form the model server sends).

    A subclass is a frozen dataclass with the ``model_version`` field and one field per name in
    ``ARRAY_FIELDS``; ``DTYPES`` gives the numpy dtype of the columns that are not object
    columns (probabilities are float32, NaN where there is none).
    """

    ARRAY_FIELDS: tuple[str, ...] = ()
    DTYPES: dict[str, type] = {}

    def __post_init__(self) -> None:
        lengths = {name: len(getattr(self, name)) for name in self.ARRAY_FIELDS}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{type(self).__name__} columns differ in length: {lengths}")

    def __len__(self) -> int:
        return len(getattr(self, self.ARRAY_FIELDS[0]))

    def rows(self, start: int, stop: int):
        """Rows ``start:stop`` as a new instance (the model server splits a merged batch back)."""
        return type(self)(model_version=self.model_version,
                          **{name: getattr(self, name)[start:stop] for name in self.ARRAY_FIELDS})

    def to_dict(self) -> dict:
        """JSON-able: lists, NaN as None."""
        out: dict = {"model_version": self.model_version}
        for name in self.ARRAY_FIELDS:
            values = getattr(self, name).tolist()
            if self.DTYPES.get(name) is np.float32:
                values = [None if math.isnan(v) else float(v) for v in values]
            out[name] = values
        return out

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of ``to_dict`` (None -> NaN for probabilities); a missing field is a KeyError, columns of
        unequal length a ValueError."""
        columns = {}
        for name in cls.ARRAY_FIELDS:
            values, dtype = d[name], cls.DTYPES.get(name, object)
            if dtype is np.float32:
                values = [np.nan if v is None else v for v in values]
            columns[name] = np.array(values, dtype=dtype)
        return cls(model_version=str(d["model_version"]), **columns)


@dataclass(frozen=True)
class ScoreArrays(ColumnArrays):
    """Scores of n texts as column arrays aligned with the input (no per-row objects).

    ``status`` is ``ok`` or ``empty`` (None, blank, or nothing left after ``model_text``). Where
    not ok: sentiment and topic None, probabilities NaN, ``n_chunks`` 0 — an unread text is
    never reported as neutral. ``truncated``: text beyond ``max_chunks`` chunks was left unread.
    """

    model_version: str
    status: np.ndarray
    sentiment: np.ndarray
    p_negative: np.ndarray
    p_neutral: np.ndarray
    p_positive: np.ndarray
    topic: np.ndarray
    topic_confidence: np.ndarray
    n_chunks: np.ndarray
    truncated: np.ndarray

    ARRAY_FIELDS = ("status", "sentiment", "p_negative", "p_neutral", "p_positive", "topic", "topic_confidence",
                    "n_chunks", "truncated")
    DTYPES = {**{name: np.float32 for name in PROBABILITY_FIELDS}, "n_chunks": np.int32, "truncated": bool}

    @classmethod
    def empty(cls, n: int, *, model_version: str) -> ScoreArrays:
        """n rows of status ``empty``."""
        nan = np.full(n, np.nan, dtype=np.float32)
        none = np.full(n, None, dtype=object)
        return cls(model_version=model_version, status=np.full(n, STATUS_EMPTY, dtype=object), sentiment=none.copy(),
                   p_negative=nan.copy(), p_neutral=nan.copy(), p_positive=nan.copy(), topic=none.copy(),
                   topic_confidence=nan.copy(), n_chunks=np.zeros(n, dtype=np.int32), truncated=np.zeros(n, dtype=bool))

    def to_frame(self) -> pd.DataFrame:
        """The arrays as a DataFrame with ``PREDICTION_COLUMNS``, index 0..n-1."""
        frame = pd.DataFrame({name: getattr(self, name) for name in self.ARRAY_FIELDS})
        frame["model_version"] = self.model_version
        return frame[PREDICTION_COLUMNS]


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """One scored text (``Scorer.score``; the stream uses ``ScoreArrays``). Fields as in ``ScoreArrays``."""

    sentiment: str | None
    p_negative: float
    p_neutral: float
    p_positive: float
    topic: str | None
    topic_confidence: float
    model_version: str
    status: str
    truncated: bool = False
    n_chunks: int = 0


PREDICTION_COLUMNS = [
    "sentiment", "p_negative", "p_neutral", "p_positive", "topic", "topic_confidence", "model_version",
    "status", "truncated", "n_chunks",
]


class Scorer:
    """Scores texts for sentiment and topic with calibrated probabilities, over up to ``max_chunks`` chunks each."""

    def __init__(
        self,
        *,
        model: LoadedModel,
        device: torch.device | str | None = None,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        token_budget: int | None = None,
        batch_size: int | None = None,
        bf16: bool | None = None,
        first_chunk_weight: float = FIRST_CHUNK_WEIGHT,
    ):
        """``token_budget``: padded tokens per batch (default per device type, ``DEFAULT_TOKEN_BUDGET``);
        ``batch_size``: optional cap on rows per batch; ``bf16``: see ``autocast_dtype_for``."""
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, not {max_chunks}")
        self.model = model
        self.device = resolve_device(device)
        self.max_chunks = max_chunks
        self.max_length = int(model.config["max_length"])
        self.token_budget = token_budget or DEFAULT_TOKEN_BUDGET.get(self.device.type, 4096)
        if self.token_budget < self.max_length:
            raise ValueError(f"token_budget {self.token_budget} is below one chunk ({self.max_length} tokens)")
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype_for(self.device, bf16)
        self.first_chunk_weight = first_chunk_weight
        self.network = model.network.to(self.device).eval()
        self.labels = model.config["labels"]
        self.temperature = model.config.get("temperature", {})
        self.entity_input = entity_input(model.config)  # how score_pairs builds a pair for this model
        self.version = model.version

    @property
    def bf16(self) -> bool:
        return self.autocast_dtype == torch.bfloat16

    @classmethod
    def load(
        cls, model_dir: str | Path | None = None, *, device: str | torch.device | None = None,
        max_chunks: int = DEFAULT_MAX_CHUNKS, token_budget: int | None = None, batch_size: int | None = None,
        bf16: bool | None = None,
    ) -> Scorer:
        """Load a model folder (``None``: FINPULSE_MODEL_DIR or the shipped model) onto ``device``.

        ``device=None`` picks CUDA when present. No peft import: LoRA is merged at load.
        """
        return cls(model=load_model(None if model_dir is None else Path(model_dir)), device=device,
                   max_chunks=max_chunks, token_budget=token_budget, batch_size=batch_size, bf16=bf16)

    def score_arrays(self, texts: Sequence[str | None], *, max_chunks: int | None = None) -> ScoreArrays:
        """Scores aligned with ``texts``; non-str, blank or unreadable entries get status ``empty``."""
        return self._score(texts, max_chunks=max_chunks)[0]

    def _score(self, texts: Sequence[str | None], *, max_chunks: int | None) -> tuple[ScoreArrays, dict[str, np.ndarray]]:
        """``score_arrays`` plus each head's full aggregated distribution (n x classes, NaN rows where empty)."""
        max_chunks = self.max_chunks if max_chunks is None else int(max_chunks)
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, not {max_chunks}")
        texts = list(texts)
        result = ScoreArrays.empty(len(texts), model_version=self.version)
        distributions = {task: np.full((len(texts), len(names)), np.nan) for task, names in self.labels.items()}
        cleaned = [model_text(t) if isinstance(t, str) else "" for t in texts]
        candidates = [i for i, t in enumerate(cleaned) if t]
        tokenizer = self.model.tokenizer
        pieces, truncated = word_pieces(tokenizer, [cleaned[i] for i in candidates], max_length=self.max_length,
                                        max_chunks=max_chunks)
        # A text of only characters the tokenizer drops (zero-width spaces, control characters)
        # has nothing for the model to read: empty, like a blank one.
        readable = [k for k, p in enumerate(pieces) if p]
        keep = np.asarray([candidates[k] for k in readable], dtype=np.int64)
        if len(keep) == 0:
            return result, distributions
        chunks = make_chunks(tokenizer, [pieces[k] for k in readable], truncated[readable],
                             max_length=self.max_length, first_chunk_weight=self.first_chunk_weight)
        logits = forward_chunks(self.network, chunks.ids, pad_id=tokenizer.pad_token_id,
                                token_budget=self.token_budget, device=self.device, autocast=self.autocast_dtype,
                                max_rows=self.batch_size)
        starts = np.concatenate([[0], np.cumsum(chunks.n_chunks)[:-1]]).astype(np.int64)
        probs = {}
        for task, value in logits.items():
            per_chunk = torch.softmax(value / float(self.temperature.get(task, 1.0)), dim=-1).numpy().astype(np.float64)
            probs[task] = np.add.reduceat(per_chunk * chunks.weight[:, None], starts, axis=0)
        sentiment_names = np.asarray(self.labels["sentiment"], dtype=object)
        topic_names = np.asarray(self.labels["topic"], dtype=object)
        result.status[keep] = STATUS_OK
        result.sentiment[keep] = sentiment_names[probs["sentiment"].argmax(1)]
        for k, name in enumerate(self.labels["sentiment"]):
            getattr(result, f"p_{name}")[keep] = probs["sentiment"][:, k]
        result.topic[keep] = topic_names[probs["topic"].argmax(1)]
        result.topic_confidence[keep] = probs["topic"].max(1)
        result.n_chunks[keep] = chunks.n_chunks
        result.truncated[keep] = chunks.truncated
        for task, values in probs.items():
            distributions[task][keep] = values
        return result, distributions

    def probabilities(self, texts: list[str | None], *, max_chunks: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each head's calibrated, chunk-aggregated distribution (n x classes, label order; NaN rows where
        empty) and the truncated flags."""
        arrays, distributions = self._score(texts, max_chunks=max_chunks)
        return distributions, arrays.truncated

    def score(self, texts: list[str | None], *, max_chunks: int | None = None) -> list[Prediction]:
        """One ``Prediction`` per input, in input order; bad input never fails the batch."""
        arrays = self.score_arrays(texts, max_chunks=max_chunks)
        return [
            Prediction(
                sentiment=arrays.sentiment[i], p_negative=float(arrays.p_negative[i]),
                p_neutral=float(arrays.p_neutral[i]), p_positive=float(arrays.p_positive[i]), topic=arrays.topic[i],
                topic_confidence=float(arrays.topic_confidence[i]), model_version=arrays.model_version,
                status=arrays.status[i], truncated=bool(arrays.truncated[i]), n_chunks=int(arrays.n_chunks[i]),
            )
            for i in range(len(arrays))
        ]

    def score_pairs(self, texts: Sequence[str | None], entities: Sequence[str | None]):
        """Sentiment towards ``entities[i]`` in ``texts[i]`` for all pairs in one batch (``models.entity.EntityArrays``);
        the model needs an ``entity`` head (ValueError otherwise)."""
        from models.entity import score_pairs

        return score_pairs(self, texts, entities)

    def score_frame(self, texts: list[str | None] | pd.Series, *, max_chunks: int | None = None) -> pd.DataFrame:
        """``score_arrays`` as a DataFrame with ``PREDICTION_COLUMNS``, index 0..n-1 (for pandas UDFs)."""
        return self.score_arrays(list(texts), max_chunks=max_chunks).to_frame()


_CACHE: dict[tuple[str, str], Scorer] = {}
_CACHE_LOCK = threading.Lock()


def get_scorer(model_dir: str | None = None, device: str | None = None, *, threads: int | None = None) -> Scorer:
    """The Scorer for (model folder, device), loaded once per process and reused: call it inside ``mapInPandas``.

    Keyed by the resolved model folder and device, so ``None``/``FINPULSE_MODEL_DIR``/the explicit
    path share one instance, as do ``cuda`` and ``cuda:0``. ``max_chunks`` is chosen per call
    (``score_arrays(..., max_chunks=K)``). On CPU with ``threads`` given, torch uses that many
    threads (the task's CPUs: no oversubscription when several tasks share a host); it is set on
    every call because a reused Python worker can serve tasks of other sizes.
    """
    resolved_device = resolve_device(device)
    if resolved_device.type == "cpu" and threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    key = (str(resolve_model_dir(model_dir)), str(resolved_device))
    with _CACHE_LOCK:
        scorer = _CACHE.get(key)
        if scorer is None:
            scorer = Scorer.load(key[0], device=resolved_device)
            _CACHE[key] = scorer
    return scorer
