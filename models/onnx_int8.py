"""The encoder as ONNX Runtime dynamic int8: what precision ``int8`` runs on a CPU (``models.scorer``).

At a Scorer's load the merged fp32 encoder is exported to ONNX once (TorchScript exporter, dynamic batch and
sequence axes, inputs ``input_ids`` and ``attention_mask``, output ``last_hidden_state``), checked against
torch on a shape other than the traced one, and quantised with ``onnxruntime.quantization.quantize_dynamic``
(``INT8_RECIPE``: int8 weights per output channel, uint8 activations quantised per batch, the word, position
and token-type embedding tables uint8). The result is cached on disk, keyed by the model version and the
recipe (``cached_int8_encoder``), under ``$FINPULSE_CACHE_DIR/onnx`` (default ``$FINPULSE_HOME/cache/onnx``),
so each host exports once and every later process, such as each Spark Python worker, only opens the
file; a file lock makes parallel workers wait for one export instead of racing, and the file is written
under a temporary name and renamed into place, so nobody ever opens half a file.

The heads stay torch: ``int8_network`` is the network with its encoder replaced by ``OrtEncoder``, which
has the call signature ``MultiHeadEncoder.encode`` uses and returns torch tensors.

Measured against torch's own dynamic int8 (``models.scorer.quantize_encoder``) by ``bench/bench_onnx.py``;
see bench/README.md ("bench_onnx.py") for the figures, and why all Linear layers are quantised here while
torch keeps the FFN output projections fp32.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17
# Part of the cache file's name: a change to the export or the quantisation must change it, so that no
# host keeps running a file made by the old recipe.
INT8_RECIPE = "ort-int8-qint8-perchannel-v1"
# The exported fp32 graph must reproduce torch to this much (largest absolute difference of a hidden
# state; the states are O(1), and fp32 reorderings differ by ~1e-5).
EXPORT_TOLERANCE = 1e-3


def cache_dir() -> Path:
    """Where exported encoders live: ``<settings.cache>/onnx`` (``FINPULSE_CACHE_DIR``, else
    ``$FINPULSE_HOME/cache``)."""
    from finpulse.settings import get_settings

    return get_settings().cache / "onnx"


class _Traced(nn.Module):
    """The encoder as a function of (ids, mask) returning its last hidden states: what the exporter traces."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _probe(batch: int, length: int, *, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and a mask with padding in every row but the first (the case dynamic padding makes)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, min(vocab, 20000), (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, length - row * length // (2 * batch) - 1:] = 0
        ids[row, mask[row] == 0] = 0
    return ids, mask


def export_encoder(encoder: nn.Module, path: Path) -> None:
    """Export ``encoder`` (fp32, CPU, eval) to ``path`` with dynamic batch and sequence axes, and check the graph
    against torch on a batch shape other than the traced one (a shape baked into the trace fails here)."""
    import onnxruntime as ort

    vocab = int(encoder.config.vocab_size)
    ids, mask = _probe(4, 16, vocab=vocab, seed=0)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter announces its deprecation, and transformers' mask code warns that the trace
        # fixes a Python bool: the key/value length offset of self-attention, which is always 0 for an encoder.
        warnings.simplefilter("ignore")
        torch.onnx.export(_Traced(encoder).eval(), (ids, mask), str(path), input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    check_ids, check_mask = _probe(3, 27, vocab=vocab, seed=1)
    with torch.inference_mode():
        expected = encoder(input_ids=check_ids, attention_mask=check_mask).last_hidden_state.numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": check_ids.numpy(), "attention_mask": check_mask.numpy()})[0]
    valid = check_mask.numpy().astype(bool)
    error = float(np.abs(got - expected)[valid].max())
    if error > EXPORT_TOLERANCE:
        raise RuntimeError(f"the exported encoder differs from torch by {error:.2e} (> {EXPORT_TOLERANCE})")


def quantize(source: Path, target: Path) -> None:
    """``INT8_RECIPE``: dynamic quantisation of every MatMul with a weight (int8, per output channel) and of the
    embedding tables (uint8, per tensor); activations uint8, their range measured per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # it logs "consider pre-processing" on the root logger; that note only
    root.addFilter(_no_preprocess_note)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=False)
    finally:
        root.removeFilter(_no_preprocess_note)


def _no_preprocess_note(record: logging.LogRecord) -> bool:
    return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``path`` (created if needed), across processes on this host."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_int8_encoder(encoder: nn.Module, version: str, *, cache: Path | None = None) -> Path:
    """The int8 ONNX file of the encoder of model ``version``: exported and quantised on first use, then reused.

    The file is named by ``version`` (a hash of the weights and inference settings, ``models.network.model_version``)
    and ``INT8_RECIPE``. Concurrent callers on one host take a lock, and the one that exports writes to a
    temporary file renamed into place; the others find the finished file when the lock is theirs.
    """
    folder = Path(cache) if cache is not None else cache_dir()
    target = folder / f"{version}.{INT8_RECIPE}.onnx"
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as error:
        if cache is not None:
            raise
        # E.g. an executor whose FINPULSE_HOME is read-only: export per user in the temp folder rather than fail.
        fallback = Path(tempfile.gettempdir()) / f"finpulse-onnx-{os.getuid()}"
        log.warning("ONNX cache %s unusable (%s); using %s", folder, error, fallback)
        return cached_int8_encoder(encoder, version, cache=fallback)
    with _file_lock(folder / f"{target.name}.lock"):
        if target.is_file():  # another process exported while we waited
            return target
        log.info("exporting the encoder of %s to ONNX int8 (%s), once per host: %s", version, INT8_RECIPE, target)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as scratch:
            fp32, int8 = Path(scratch) / "encoder-fp32.onnx", Path(scratch) / "encoder-int8.onnx"
            export_encoder(encoder, fp32)
            quantize(fp32, int8)
            os.replace(int8, target)
    return target


def _session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return options


class OrtEncoder(nn.Module):
    """An ONNX Runtime session in place of a transformers encoder: ``(input_ids=, attention_mask=)`` in, an object
    with ``last_hidden_state`` (a CPU float32 torch tensor) out.

    Runs with as many intra-op threads as torch has when it is called (``get_scorer(threads=...)`` sets torch's
    per task; a session's threads are fixed at its creation, so one session per thread count is kept).
    Ids only: ``inputs_embeds`` (the explainer's path) is refused, since an int8 graph has no gradients to
    integrate; the explainer reads the loaded fp32 network.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()
        self.session(torch.get_num_threads())  # opened at load, not inside the first batch

    def session(self, threads: int):
        with self._lock:
            session = self._sessions.get(threads)
            if session is None:
                import onnxruntime as ort

                session = ort.InferenceSession(str(self.path), _session_options(threads),
                                               providers=["CPUExecutionProvider"])
                self._sessions[threads] = session
        return session

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                inputs_embeds: torch.Tensor | None = None):
        from transformers.modeling_outputs import BaseModelOutput

        if inputs_embeds is not None or input_ids is None:
            raise ValueError("the ONNX int8 encoder reads input_ids only (inputs_embeds: use the fp32 network)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed = {"input_ids": input_ids.detach().cpu().to(torch.int64).numpy(),
                "attention_mask": attention_mask.detach().cpu().to(torch.int64).numpy()}
        hidden = self.session(torch.get_num_threads()).run([OUTPUT_NAME], feed)[0]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}"


def int8_network(network, version: str, *, cache: Path | None = None):
    """A shallow copy of ``network`` (a ``MultiHeadEncoder`` on CPU) whose encoder is the cached ONNX int8 one; the
    heads are the same torch modules. The loaded fp32 network is left as it was."""
    import copy

    path = cached_int8_encoder(network.encoder, version, cache=cache)
    quantized = copy.copy(network)
    quantized._modules = dict(network._modules)  # copy.copy shares the dict: replace the encoder in the copy only
    quantized.encoder = OrtEncoder(path)
    return quantized.eval()
