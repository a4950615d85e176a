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
import copy
import math
import os
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# Dynamic padding makes nearly every batch a new shape, and under bf16 oneDNN keeps a primitive (with its own
# reordered weights) per shape, up to 1,024 by default: a scoring process grew 995 -> 1,355 MB in 30 batches
# with that cache, and 976 -> 1,107 MB with 8 entries at the same speed (probe of the fp32/bf16 Scorer on demo
# tweets). Read by oneDNN when it first builds a primitive, so it is set before torch computes anything.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")

import torch  # noqa: E402 - after the oneDNN setting above

from models.network import (ENTITY_TASK, LoadedModel, MultiHeadEncoder, bf16_supported, entity_input, load_model,
                            model_languages, resolve_model_dir)
from models.results import STATUS_NOT_FOUND, STATUS_OK, EntityArrays, Prediction, ScoreArrays
from models.text import model_text

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


PRECISIONS = ("auto", "fp32", "bf16", "int8")


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """What ``auto`` means on ``device``: ``bf16`` on CUDA with native bf16 (Ampere and later), else ``fp16``
    (the encoder's LayerNorm and softmax stay fp32 under autocast); on a CPU with native bf16
    (AVX512-BF16/AMX) ``bf16``, elsewhere ``int8``: the encoder in ONNX Runtime with dynamic int8 weights and
    activations in its linear layers (``models.onnx_int8``, exported once per host and model version), because
    there fp32 is the alternative, and emulated bf16 is slower than fp32. An explicit choice is kept (``int8``
    only on CPU: it is a CPU kernel)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"int8 runs on CPU only, not {device}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if bf16_supported(device) else "int8"


def autocast_dtype_for(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: no autocast, fp32 or int8 kernels)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(device, precision))


# Torch int8 (``quantize_encoder``) keeps the FFN output projections fp32: their inputs (the GELU outputs) have
# the outlier channels that per-tensor dynamic activation scales handle worst; quantizing them too lost 0.7 point
# of sentiment macro-F1 on our test split, without them it lost none (bench/README.md, int8). ONNX Runtime's
# int8, what precision ``int8`` runs, quantizes them too: its per-channel weight scales keep the loss within the
# bound, and excluding them took it from 1.9x to 1.4x fp32's speed (bench/README.md, bench_onnx.py).
INT8_KEEP_FP32 = re.compile(r"^encoder\.layer\.\d+\.output\.dense$")


def quantize_encoder(network: MultiHeadEncoder) -> MultiHeadEncoder:
    """A copy of ``network`` whose encoder linear layers (but ``INT8_KEEP_FP32``) run dynamic int8 (torch's
    fbgemm/x86 kernels: int8 weights, activations quantized per batch); the heads stay fp32. A copy,
    because the loaded fp32 network stays what the explainer differentiates through.

    Precision ``int8`` ran this until ONNX Runtime's int8 (``models.onnx_int8``) measured faster; it stays as the
    yardstick ``bench/bench_onnx.py`` measures that against."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    quantized = copy.deepcopy(network)
    chosen = {name: default_dynamic_qconfig for name, module in quantized.encoder.named_modules()
              if isinstance(module, torch.nn.Linear) and not INT8_KEEP_FP32.match(name)}
    with warnings.catch_warnings():
        # torch announces the eager quantization API's move to torchao; it is what torch 2.x ships and runs
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao")
        quantize_dynamic(quantized.encoder, chosen, dtype=torch.qint8, inplace=True)
    return quantized.eval()


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


def word_pieces(tokenizer, texts: list[str], *, max_length: int, max_chunks: int,
                offsets: bool = False) -> tuple[list[list[int]], np.ndarray] | tuple[list[list[int]], np.ndarray, list]:
    """Word pieces (no special tokens) of each text, cut to ``max_chunks`` chunks' worth, and a truncated flag;
    with ``offsets``, also each kept piece's (start, end) character offsets in its text."""
    prefix, suffix = special_tokens(tokenizer)
    per_chunk = max_length - len(prefix) - len(suffix)
    if per_chunk < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text between the special tokens")
    capacity = per_chunk * max_chunks
    char_cap = capacity * CHARS_PER_TOKEN_CAP
    clipped = [t[:char_cap] for t in texts]
    encoded = (tokenizer(clipped, add_special_tokens=False, truncation=False, verbose=False,
                         return_offsets_mapping=offsets) if texts else {"input_ids": [], "offset_mapping": []})
    pieces = encoded["input_ids"]
    truncated = np.array([len(p) > capacity or len(c) < len(t) for p, c, t in zip(pieces, clipped, texts)], dtype=bool)
    if offsets:
        return [p[:capacity] for p in pieces], truncated, [o[:capacity] for o in encoded["offset_mapping"]]
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


@dataclass(frozen=True)
class SpanQuery:
    """One entity read from one chunk's pass (``span`` pooling): the chunk and its mention tokens' positions."""

    chunk: int
    positions: tuple[int, ...]


def forward_chunks(
    network: MultiHeadEncoder,
    ids: list[list[int]],
    *,
    pad_id: int,
    token_budget: int,
    device: torch.device,
    autocast: torch.dtype | bool | None,
    max_rows: int | None = None,
    queries: Sequence[SpanQuery] = (),
    contributions: list | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Logits per head (fp32, on CPU) for each chunk of ``ids``, in the order of ``ids``, and the entity logits
    of each span query (in query order) from the same passes: one encoder pass per chunk, whatever the
    number of entities. A list given as ``contributions`` is filled, per chunk in ``ids`` order, with each
    token's share of the sentiment head's logits (tokens x classes: the head reads the tokens' mean, so its
    logits are the sum of these plus the bias), the words behind a prediction at no extra pass."""
    n_queries = len(queries)
    span_head = network.heads[ENTITY_TASK].out_features if network.reads_spans else 0
    if not ids:
        return ({task: torch.empty(0, head.out_features) for task, head in network.heads.items()
                 if not (task == ENTITY_TASK and network.reads_spans)}, torch.empty(0, span_head))
    if n_queries and not network.reads_spans:
        raise ValueError("span queries need a model whose entity head reads spans (entity_input pooling 'span')")
    lengths = [len(x) for x in ids]
    by_chunk: dict[int, list[int]] = {}
    for q, query in enumerate(queries):
        by_chunk.setdefault(query.chunk, []).append(q)
    cuda = device.type == "cuda"
    outputs: dict[str, list[torch.Tensor]] = {}
    order: list[np.ndarray] = []
    span_parts: list[torch.Tensor] = []
    span_order: list[int] = []
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
            hidden, mean = network.encode(input_tensor, mask_tensor)
            for task, value in network.text_logits(hidden, mean, input_tensor, mask_tensor).items():
                outputs.setdefault(task, []).append(value.float())  # stays on the device until the end: one sync
            order.append(batch)
            if contributions is not None:
                head = network.heads["sentiment"]
                shares = (hidden.float() @ head.weight.float().T) / mask_tensor.sum(1, keepdim=True)[:, :, None]
                shares = shares.float().cpu().numpy()  # autocast runs the matmul in bf16; numpy has no bf16
                for row, i in enumerate(batch):
                    contributions.append((int(i), shares[row, : lengths[i]]))
            asked = [(row, q) for row, i in enumerate(batch) for q in by_chunk.get(int(i), ())]
            if asked:
                rows = torch.tensor([row for row, _ in asked], dtype=torch.long)
                span_mask = torch.zeros((len(asked), width), dtype=torch.long)
                for k, (_, q) in enumerate(asked):
                    span_mask[k, list(queries[q].positions)] = 1
                span_parts.append(network.span_logits(hidden, mean, rows.to(device), span_mask.to(device)).float())
                span_order.extend(q for _, q in asked)
    inverse = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
    logits = {task: torch.cat(parts).cpu()[inverse] for task, parts in outputs.items()}
    if contributions is not None:
        contributions.sort(key=lambda item: item[0])
        contributions[:] = [shares for _, shares in contributions]
    span_logits = torch.empty(0, span_head)
    if span_parts:
        span_logits = torch.cat(span_parts).cpu()[torch.from_numpy(np.argsort(np.asarray(span_order), kind="stable"))]
    return logits, span_logits


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
    logits, _ = forward_chunks(network, chunks.ids, pad_id=tokenizer.pad_token_id,
                               token_budget=batch_size * max_length, device=device, autocast=bool(bf16),
                               max_rows=batch_size)
    return logits, chunks.truncated


def batched_span_logits(network: MultiHeadEncoder, tokenizer, inputs: Sequence, *, max_length: int, batch_size: int,
                        device: torch.device, bf16: bool) -> torch.Tensor:
    """Entity logits of each input's first entity (``models.entity.SpanText``: text and mention spans), read from
    the text's first chunk as training reads it, in input order; zeros where no mention is read (what
    training's validation and the calibration of a ``span`` entity head use)."""
    pieces, truncated, offsets = word_pieces(tokenizer, [i.text for i in inputs], max_length=max_length,
                                             max_chunks=1, offsets=True)
    pieces = [p or [tokenizer.unk_token_id] for p in pieces]  # an unreadable text still gets its (zero) row
    chunks = make_chunks(tokenizer, pieces, truncated, max_length=max_length)
    queries, owners = [], []
    for index, item in enumerate(inputs):
        for query in span_queries(item.spans[0] if item.spans else [], offsets[index], first_chunk=index,
                                  per_chunk=max_length - 2):
            queries.append(query)
            owners.append(index)
    _, span = forward_chunks(network, chunks.ids, pad_id=tokenizer.pad_token_id, token_budget=batch_size * max_length,
                             device=device, autocast=bool(bf16), max_rows=batch_size, queries=queries)
    out = torch.zeros(len(inputs), network.heads[ENTITY_TASK].out_features)
    if owners:
        out[torch.tensor(owners)] = span
    return out


EVIDENCE_WORDS = 5
# Function words carry a share of every sentence's representation and no evidence a reader can use.
_FUNCTION_WORDS = frozenset("""a an the and or but of to in on at by for from with as is are was were be been being it
its this that these those than then so if into over after before about up down out off has have had do does did
will would can could may might shall should not no s amp via""".split())


def evidence_words(text: str, tokens: list[str], offsets: list[tuple[int, int]], chunk_shares: list[np.ndarray],
                   label: int, *, per_chunk: int, top_k: int = EVIDENCE_WORDS) -> list[list]:
    """The words of ``text`` that pushed its prediction to ``label``, [[word, share], ...] strongest first.

    The sentiment head reads the mean of the tokens' last hidden states, so its logit for a class is the sum
    of every token's part (``forward_chunks`` ``contributions``, already weighted per chunk as the document's
    probabilities are). A word's evidence is its pieces' part of ``label``'s logit less their mean part of the
    other classes; shares are of the text's total absolute evidence, and only words pushing toward ``label``
    are kept. Exact for the head, it says which tokens' representations carry the sentiment (after the
    encoder's attention has mixed them), so ``bench/model_reports`` tests it by deleting the words.
    """
    piece_scores = np.zeros(len(tokens))
    for chunk, shares in enumerate(chunk_shares):
        body = shares[1:-1]  # [CLS] and [SEP] are not words
        lo = chunk * per_chunk
        n = min(len(body), len(tokens) - lo)
        if n <= 0:
            continue
        other = np.delete(body[:n], label, axis=1).mean(1)
        piece_scores[lo: lo + n] += body[:n, label] - other
    words: list[tuple[int, int, float]] = []  # (start, end, score)
    for index, (token, (start, end)) in enumerate(zip(tokens, offsets)):
        if end <= start:
            continue
        if token.startswith("##") and words:
            s, _, score = words[-1]
            words[-1] = (s, end, score + piece_scores[index])
        else:
            words.append((start, end, piece_scores[index]))
    total = sum(abs(score) for _, _, score in words) or 1.0
    by_word: dict[str, list] = {}  # a word said twice counts once, with both parts
    for start, end, score in words:
        word = text[start:end]
        if word.lower() in _FUNCTION_WORDS or not any(ch.isalnum() for ch in word):
            continue
        entry = by_word.setdefault(word.lower(), [word, 0.0])
        entry[1] += score
    ranked = sorted((entry for entry in by_word.values() if entry[1] > 0), key=lambda entry: -entry[1])
    return [[word, round(float(score / total), 3)] for word, score in ranked[:top_k]]


def span_queries(spans: list[tuple[int, int]], offsets: list[tuple[int, int]], *, first_chunk: int,
                 per_chunk: int) -> list[SpanQuery]:
    """The queries that read one entity: per chunk holding any of its mention pieces, their positions
    (after [CLS]). ``offsets`` are the character offsets of the text's pieces that are read."""
    by_chunk: dict[int, list[int]] = {}
    for index, (start, end) in enumerate(offsets):
        if end > start and any(start < span_end and end > span_start for span_start, span_end in spans):
            by_chunk.setdefault(first_chunk + index // per_chunk, []).append(1 + index % per_chunk)
    return [SpanQuery(chunk, tuple(positions)) for chunk, positions in sorted(by_chunk.items())]


@dataclass(frozen=True)
class _Scored:
    documents: ScoreArrays
    distributions: dict[str, np.ndarray]
    entities: EntityArrays | None


def has_entity_head(scorer) -> bool:
    """Whether ``scorer`` (a ``Scorer`` or a ``RemoteScorer``) serves a model with an entity head."""
    return ENTITY_TASK in scorer.labels


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
        precision: str = "auto",
        first_chunk_weight: float = FIRST_CHUNK_WEIGHT,
    ):
        """``token_budget``: padded tokens per batch (default per device type, ``DEFAULT_TOKEN_BUDGET``);
        ``batch_size``: optional cap on rows per batch; ``precision``: see ``resolve_precision``."""
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
        self.precision = resolve_precision(self.device, precision)
        self.autocast_dtype = autocast_dtype_for(self.device, self.precision)
        self.first_chunk_weight = first_chunk_weight
        network = model.network.to(self.device).eval()
        if self.precision == "int8":
            from models.onnx_int8 import int8_network

            network = int8_network(network, model.version)  # a copy: the fp32 network stays what explain reads
        self.network = network
        self.labels = model.config["labels"]
        self.languages = model_languages(model.config)  # what it reads; other languages are not scored
        self.temperature = model.config.get("temperature", {})
        self.entity_input = entity_input(model.config)  # how score_pairs builds a pair for this model
        self.version = model.version
        self.passes = 0  # sequences run through the encoder (chunks, and pairs for a pair-mode entity head)

    @property
    def bf16(self) -> bool:
        return self.autocast_dtype == torch.bfloat16

    @classmethod
    def load(
        cls, model_dir: str | Path | None = None, *, device: str | torch.device | None = None,
        max_chunks: int = DEFAULT_MAX_CHUNKS, token_budget: int | None = None, batch_size: int | None = None,
        precision: str = "auto",
    ) -> Scorer:
        """Load a model folder (``None``: FINPULSE_MODEL_DIR or the shipped model) onto ``device``.

        ``device=None`` picks CUDA when present. No peft import: LoRA is merged at load.
        """
        return cls(model=load_model(None if model_dir is None else Path(model_dir)), device=device,
                   max_chunks=max_chunks, token_budget=token_budget, batch_size=batch_size, precision=precision)

    def score_arrays(self, texts: Sequence[str | None], *, max_chunks: int | None = None,
                     evidence: bool = False) -> ScoreArrays:
        """Scores aligned with ``texts``; non-str, blank or unreadable entries get status ``empty``. With
        ``evidence``, each text's evidence words too (``evidence_words``: no extra pass)."""
        return self._score(texts, max_chunks=max_chunks, evidence=evidence).documents

    def score_documents(self, texts: Sequence[str | None], entities: Sequence[Sequence[Sequence[str]]], *,
                        max_chunks: int | None = None, evidence: bool = False) -> tuple[ScoreArrays, EntityArrays]:
        """Each text's scores and the sentiment towards each entity it names, from one encoder pass per chunk.

        ``entities[i]`` lists the entities to read in ``texts[i]``, each as the names it goes by in text
        (``["AAPL", "Apple"]``: a cashtag ``$AAPL`` matches ``AAPL``). The ``EntityArrays`` rows follow
        text order, then entity order. An entity not mentioned in what the model read is ``not_found``.
        A model whose entity head reads pairs (made before ``span`` pooling) pays a pass per entity here.
        """
        if len(entities) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(entities)} entity lists")
        if not has_entity_head(self):
            raise ValueError(f"model {self.version} has no entity head (labels {sorted(self.labels)})")
        if not self.network.reads_spans:
            documents = self.score_arrays(texts, max_chunks=max_chunks, evidence=evidence)
            flat_texts = [t for t, names in zip(texts, entities) for _ in names]
            flat_names = [next((n for n in e if n and n.strip()), None) for names in entities for e in names]
            from models.entity import score_pairs

            return documents, score_pairs(self, flat_texts, flat_names)
        scored = self._score(texts, max_chunks=max_chunks, entities=entities, evidence=evidence)
        return scored.documents, scored.entities

    def _score(self, texts: Sequence[str | None], *, max_chunks: int | None,
               entities: Sequence[Sequence[Sequence[str]]] | None = None, evidence: bool = False) -> _Scored:
        """Documents' scores, each head's full aggregated distribution (n x classes, NaN rows where empty) and,
        with ``entities`` (``span`` models), the entities' scores read from the same passes; with ``evidence``
        each document's evidence words (``evidence_words``)."""
        max_chunks = self.max_chunks if max_chunks is None else int(max_chunks)
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, not {max_chunks}")
        texts = list(texts)
        n_entities = sum(len(e) for e in entities) if entities is not None else 0
        result = ScoreArrays.empty(len(texts), model_version=self.version)
        distributions = {task: np.full((len(texts), len(names)), np.nan) for task, names in self.labels.items()}
        entity_result = (EntityArrays.empty(n_entities, model_version=self.version) if entities is not None else None)
        if entities is not None:
            from models.entity import span_text

            prepared = [span_text(t, entities[i], mark=self.entity_input["mark"]) if isinstance(t, str) else None
                        for i, t in enumerate(texts)]
            cleaned = [st.text if st is not None else "" for st in prepared]
        else:
            # A span model reads documents without special-token literals (``models.entity.span_text``), with or
            # without entities asked about; other models read pairs built with them, so they keep them.
            if self.network.reads_spans:
                from models.entity import strip_special as clean
            else:
                clean = model_text
            cleaned = [clean(t) if isinstance(t, str) else "" for t in texts]
        candidates = [i for i, t in enumerate(cleaned) if t]
        tokenizer = self.model.tokenizer
        split = word_pieces(tokenizer, [cleaned[i] for i in candidates], max_length=self.max_length,
                            max_chunks=max_chunks, offsets=entities is not None or evidence)
        pieces, truncated = split[0], split[1]
        # A text of only characters the tokenizer drops (zero-width spaces, control characters)
        # has nothing for the model to read: empty, like a blank one.
        readable = [k for k, p in enumerate(pieces) if p]
        keep = np.asarray([candidates[k] for k in readable], dtype=np.int64)
        if len(keep) == 0:
            return _Scored(result, distributions, entity_result)
        chunks = make_chunks(tokenizer, [pieces[k] for k in readable], truncated[readable],
                             max_length=self.max_length, first_chunk_weight=self.first_chunk_weight)
        starts = np.concatenate([[0], np.cumsum(chunks.n_chunks)[:-1]]).astype(np.int64)
        queries, owners = [], []
        if entities is not None:
            entity_offset = np.concatenate([[0], np.cumsum([len(e) for e in entities])]).astype(np.int64)
            offsets = split[2]
            for position, k in enumerate(readable):
                text_index = candidates[k]
                for j, spans in enumerate(prepared[text_index].spans):
                    for query in span_queries(spans, offsets[k], first_chunk=int(starts[position]),
                                              per_chunk=self.max_length - 2):
                        queries.append(query)
                        owners.append(int(entity_offset[text_index]) + j)
            readable_texts = set(keep.tolist())
            for text_index in range(len(texts)):
                if text_index in readable_texts:
                    first, last = entity_offset[text_index], entity_offset[text_index + 1]
                    entity_result.status[first:last] = STATUS_NOT_FOUND
                    entity_result.truncated[first:last] = bool(truncated[candidates.index(text_index)])
        contributions: list | None = [] if evidence else None
        logits, span_logits = forward_chunks(self.network, chunks.ids, pad_id=tokenizer.pad_token_id,
                                             token_budget=self.token_budget, device=self.device,
                                             autocast=self.autocast_dtype, max_rows=self.batch_size, queries=queries,
                                             contributions=contributions)
        self.passes += len(chunks.ids)
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
        if queries:
            self._fill_entities(entity_result, span_logits, queries, owners)
        if evidence:
            predicted = probs["sentiment"].argmax(1)
            for position, k in enumerate(readable):
                first = int(starts[position])
                shares = contributions[first: first + int(chunks.n_chunks[position])]
                weights = chunks.weight[first: first + int(chunks.n_chunks[position])]
                result.evidence[candidates[k]] = evidence_words(
                    cleaned[candidates[k]], tokenizer.convert_ids_to_tokens(pieces[k]), split[2][k],
                    [w * c for w, c in zip(weights, shares)], int(predicted[position]), per_chunk=self.max_length - 2)
        return _Scored(result, distributions, entity_result)

    def _fill_entities(self, result: EntityArrays, span_logits: torch.Tensor, queries: list[SpanQuery],
                       owners: list[int]) -> None:
        """Each entity's probabilities: its chunks' calibrated distributions, weighted by mention tokens read."""
        per_query = torch.softmax(span_logits / float(self.temperature.get(ENTITY_TASK, 1.0)), dim=-1).numpy()
        weights = np.asarray([len(q.positions) for q in queries], dtype=np.float64)
        owner = np.asarray(owners, dtype=np.int64)
        totals = np.zeros((len(result), per_query.shape[1]))
        np.add.at(totals, owner, per_query * weights[:, None])
        mass = np.bincount(owner, weights=weights, minlength=len(result))
        found = np.flatnonzero(mass > 0)
        probs = totals[found] / mass[found, None]
        names = np.asarray(self.labels[ENTITY_TASK], dtype=object)
        result.status[found] = STATUS_OK
        result.sentiment[found] = names[probs.argmax(1)]
        for k, name in enumerate(self.labels[ENTITY_TASK]):
            getattr(result, f"p_{name}")[found] = probs[:, k]

    def probabilities(self, texts: list[str | None], *, max_chunks: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each head's calibrated, chunk-aggregated distribution (n x classes, label order; NaN rows where
        empty) and the truncated flags."""
        scored = self._score(texts, max_chunks=max_chunks)
        return scored.distributions, scored.documents.truncated

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

    def score_pairs(self, texts: Sequence[str | None], entities: Sequence[str | None]) -> EntityArrays:
        """Sentiment towards ``entities[i]`` in ``texts[i]`` for all pairs at once (``EntityArrays``); the model
        needs an ``entity`` head (ValueError otherwise). A ``span`` model reads each distinct text once for
        all the entities asked about in it."""
        from models.entity import score_pairs

        return score_pairs(self, texts, entities)

    def score_frame(self, texts: list[str | None] | pd.Series, *, max_chunks: int | None = None) -> pd.DataFrame:
        """``score_arrays`` as a DataFrame with ``PREDICTION_COLUMNS``, index 0..n-1 (for pandas UDFs)."""
        return self.score_arrays(list(texts), max_chunks=max_chunks).to_frame()


_CACHE: dict[tuple[str, str, str], Scorer] = {}
_CACHE_LOCK = threading.Lock()


def get_scorer(model_dir: str | None = None, device: str | None = None, *, threads: int | None = None,
               precision: str = "auto") -> Scorer:
    """The Scorer for (model folder, device, precision), loaded once per process and reused: call it inside
    ``mapInPandas``.

    Keyed by the resolved model folder, device and precision, so ``None``/``FINPULSE_MODEL_DIR``/the explicit
    path share one instance, as do ``cuda`` and ``cuda:0``. ``max_chunks`` is chosen per call
    (``score_arrays(..., max_chunks=K)``). On CPU with ``threads`` given, torch uses that many
    threads (the task's CPUs: no oversubscription when several tasks share a host); it is set on
    every call because a reused Python worker can serve tasks of other sizes.
    """
    resolved_device = resolve_device(device)
    if resolved_device.type == "cpu" and threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    key = (str(resolve_model_dir(model_dir)), str(resolved_device), resolve_precision(resolved_device, precision))
    with _CACHE_LOCK:
        scorer = _CACHE.get(key)
        if scorer is None:
            scorer = Scorer.load(key[0], device=resolved_device, precision=key[2])
            _CACHE[key] = scorer
    return scorer
