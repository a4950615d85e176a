"""Torch vs ONNX Runtime, fp32 and int8, for the Scorer's encoder work: one process, side by side, interleaved.

Four encoders under the same Scorer (the same tokenisation, chunks, token-budget batches, heads): torch fp32
(precision ``fp32``), torch dynamic int8 (``models.scorer.quantize_encoder``, the FFN output projections fp32),
ONNX Runtime fp32 (``models.onnx_int8.export_encoder``, unquantised) and ONNX Runtime int8 (precision
``int8``: ``models.onnx_int8``). For each thread count (``--threads``, default 2 and 1; torch's threads and
ORT's intra-op threads alike), every encoder is timed in turn, ``--repeats`` rounds, best of:

- ``scorer``: ``Scorer.score_arrays(texts)``, what the pipeline calls (tokenising included);
- ``forward``: ``models.scorer.forward_chunks`` on the texts' chunks made beforehand (encoder + heads only).

Texts: ``bench_scorer.bench_texts(--n)`` (half financial-news tweets, half SEntFiN headlines, seed 0). Then
label agreement with fp32 on those texts, and, unless ``--skip-accuracy``, ``bench_pipeline.bench_accuracy``
for fp32 and int8 (sentiment macro-F1 on the model's test split, entity accuracy on the held-out rows).

    .venv/bin/python bench/bench_onnx.py [--n 512] [--threads 2 1] [--repeats 2] [--skip-accuracy]

Writes bench/results/onnx-<UTC>.json (with the CPU's name and its SIMD flags: int8 speed depends on VNNI)
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
# What decides int8 and bf16 speed on x86: VNNI (vpdpbusd) for int8, AVX512-BF16/AMX for bf16.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")

from bench.bench_scorer import bench_texts  # noqa: E402
from bench.machine import cpu_model  # noqa: E402


def cpu_flags() -> list[str]:
    """Which of ``SIMD_FLAGS`` this CPU has (from /proc/cpuinfo)."""
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [f for f in SIMD_FLAGS if f in flags]


def encoders(scratch: Path) -> dict:
    """The four Scorers, sharing one loaded model: name -> Scorer."""
    import copy

    from models.network import load_model
    from models.onnx_int8 import OrtEncoder, export_encoder
    from models.scorer import Scorer, quantize_encoder

    model = load_model()
    fp32 = Scorer(model=model, device="cpu", precision="fp32")
    torch_int8 = Scorer(model=model, device="cpu", precision="fp32")
    torch_int8.network = quantize_encoder(model.network)
    ort_fp32 = Scorer(model=model, device="cpu", precision="fp32")
    export_encoder(model.network.encoder, scratch / "encoder-fp32.onnx")
    network = copy.copy(model.network)
    network._modules = dict(model.network._modules)
    network.encoder = OrtEncoder(scratch / "encoder-fp32.onnx")
    ort_fp32.network = network
    ort_int8 = Scorer(model=model, device="cpu", precision="int8")  # exports once per host (models.onnx_int8 cache)
    return {"torch_fp32": fp32, "torch_int8": torch_int8, "ort_fp32": ort_fp32, "ort_int8": ort_int8}


def bench_speed(scorers: dict, texts: list[str], thread_counts: list[int], repeats: int) -> dict:
    import torch

    from models.scorer import forward_chunks, make_chunks, word_pieces
    from models.text import model_text

    any_scorer = next(iter(scorers.values()))
    tokenizer = any_scorer.model.tokenizer
    pieces, truncated = word_pieces(tokenizer, [model_text(t) for t in texts], max_length=any_scorer.max_length,
                                    max_chunks=any_scorer.max_chunks)
    chunks = make_chunks(tokenizer, pieces, truncated, max_length=any_scorer.max_length)

    def forward(scorer) -> None:
        forward_chunks(scorer.network, chunks.ids, pad_id=tokenizer.pad_token_id, token_budget=scorer.token_budget,
                       device=scorer.device, autocast=scorer.autocast_dtype, max_rows=scorer.batch_size)

    runs = {"scorer": lambda s: s.score_arrays(texts), "forward": forward}
    out: dict = {"chunks": len(chunks.ids), "token_budget": any_scorer.token_budget,
                 "mean_pieces_per_chunk": round(sum(map(len, chunks.ids)) / len(chunks.ids), 1)}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        best = {(kind, name): float("inf") for kind in runs for name in scorers}
        for name, scorer in scorers.items():  # warm-up at this thread count (ORT opens a session per count)
            scorer.score_arrays(texts[:64])
        for _ in range(repeats):
            for kind, run in runs.items():
                for name, scorer in scorers.items():
                    start = time.perf_counter()
                    run(scorer)
                    best[kind, name] = min(best[kind, name], time.perf_counter() - start)
        table = {}
        for kind in runs:
            base = best[kind, "torch_fp32"]
            table[kind] = {name: {"texts_per_s": round(len(texts) / best[kind, name], 1),
                                  "seconds": round(best[kind, name], 3),
                                  "vs_torch_fp32": round(base / best[kind, name], 2)} for name in scorers}
        out[f"threads_{threads}"] = table
        for kind, rows in table.items():
            for name, row in rows.items():
                print(f"{threads} thread(s) {kind:8} {name:11} {row['texts_per_s']:8.1f} texts/s "
                      f"{row['vs_torch_fp32']:5.2f}x torch fp32", flush=True)
    return out


def agreement(scorers: dict, texts: list[str]) -> dict:
    """Share of texts whose sentiment / topic label equals fp32's, and the largest change of a probability."""
    import numpy as np

    reference, _ = scorers["torch_fp32"].probabilities(texts)
    out = {}
    for name, scorer in scorers.items():
        if name == "torch_fp32":
            continue
        probs, _ = scorer.probabilities(texts)
        same = {task: probs[task].argmax(1) == reference[task].argmax(1) for task in ("sentiment", "topic")}
        out[name] = {f"{task}_label_agreement": round(float(same[task].mean()), 4) for task in same}
        change = np.nanmax(np.abs(probs["sentiment"] - reference["sentiment"]))
        out[name]["max_abs_probability_change"] = round(float(change), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512, help="texts per measurement")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-accuracy", action="store_true", help="no test-split F1 / entity accuracy (~1 min)")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from models.onnx_int8 import INT8_RECIPE

    texts = bench_texts(args.n)
    with tempfile.TemporaryDirectory() as scratch:
        scorers = encoders(Path(scratch))
        speed = bench_speed(scorers, texts, args.threads, args.repeats)
        torch.set_num_threads(max(args.threads))
        agree = agreement(scorers, texts)
    print(json.dumps(agree, indent=1))
    accuracy = None
    if not args.skip_accuracy:
        from bench.bench_pipeline import bench_accuracy

        accuracy = bench_accuracy(["fp32", "int8"])
        for precision, row in accuracy.items():
            print(f"{precision:5} sentiment test macro-F1 {row['sentiment_test_macro_f1']:.4f} "
                  f"(n {row['sentiment_test_n']}), entity accuracy all {row['entity_accuracy_all']:.4f} / mixed "
                  f"{row['entity_accuracy_mixed']:.4f} (n {row['entity_n']})", flush=True)
        accuracy["int8_minus_fp32_points"] = {
            key: round(100 * (accuracy["int8"][key] - accuracy["fp32"][key]), 2)
            for key in ("sentiment_test_macro_f1", "entity_accuracy_all", "entity_accuracy_mixed")}

    stamp = datetime.now(timezone.utc)
    report = {
        "benchmark": "bench/bench_onnx.py",
        "at": stamp.isoformat(timespec="seconds"),
        "model_version": scorers["torch_fp32"].version,
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "int8_recipe": INT8_RECIPE,
        "n_texts": len(texts),
        "repeats": args.repeats,
        "texts": "bench_scorer.bench_texts: half tweets, half SEntFiN headlines, seed 0",
        "encoders": {"torch_fp32": "precision fp32", "torch_int8": "models.scorer.quantize_encoder (FFN outputs fp32)",
                     "ort_fp32": "models.onnx_int8.export_encoder, not quantised",
                     "ort_int8": f"precision int8 ({INT8_RECIPE})"},
        "speed": speed,
        "agreement_with_torch_fp32": agree,
        "accuracy": accuracy,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"onnx-{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
