"""Throughput of the Scorer against a naive baseline, on the same texts in the same run.

Naive baseline: a transformers ``pipeline("text-classification")`` called one text at a time
in fp32. It is built from the *same* model: the shipped LoRA merged into MiniLM, saved to a
temporary HF folder as ``BertForSequenceClassification`` with the sentiment head as its
classifier. (That class pools the [CLS] token through BERT's pooler instead of our mean pooling,
so its labels are not ours; its compute is the same encoder forward, which is what is timed.)
Both sides get the same normalised texts, so they read the same number of tokens.

    .venv/bin/python bench/bench_scorer.py [--n 512] [--threads 2] [--model DIR]

For a model with an entity head it also times ``score_pairs`` on SEntFiN (headline, entity) rows.

Writes bench/results/scorer-<UTC timestamp>.json and prints a table. Reads the bundled models/training/data.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "models" / "training" / "data"  # the bundled copies (the same rows as ../shared/data)
RESULTS = REPO / "bench" / "results"


def bench_texts(n: int, seed: int = 0) -> list[str]:
    """Half financial-news tweets, half SEntFiN headlines: the two kinds of text we score."""
    tweets = pd.read_csv(DATA / "twitter_financial_news_sentiment_train.csv.gz")["text"]
    headlines = pd.read_csv(DATA / "sentfin_headlines.csv.gz")["title"]
    texts = pd.concat([tweets.sample(n=n // 2, random_state=seed), headlines.sample(n=n - n // 2, random_state=seed)])
    return texts.sample(frac=1.0, random_state=seed).tolist()


def timed(fn, *, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls (the machine is shared; the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def naive_pipeline(scorer, folder: Path):
    """The merged encoder + sentiment head as a stock HF text-classification pipeline (fp32, CPU)."""
    from transformers import AutoModelForSequenceClassification, pipeline

    encoder = scorer.model.network.encoder  # the fp32 network, whatever precision the scorer runs
    encoder.save_pretrained(folder)
    scorer.model.tokenizer.save_pretrained(folder)
    labels = scorer.labels["sentiment"]
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
    )
    head = scorer.model.network.heads["sentiment"]
    with torch.no_grad():
        model.classifier.weight.copy_(head.weight)
        model.classifier.bias.copy_(head.bias)
    model.eval().float()
    return pipeline("text-classification", model=model, tokenizer=scorer.model.tokenizer, device=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=512, help="texts per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from models.text import model_text
    from models.network import bf16_supported
    from models.scorer import Scorer

    texts = bench_texts(args.n)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scorer = Scorer.load(args.model, device=device)
    max_length = scorer.max_length
    normalized = [model_text(t) for t in texts]
    scorer.score(texts[:64])  # warm-up: first oneDNN kernels are compiled lazily

    results: dict[str, dict] = {}
    for bf16 in sorted({False, scorer.bf16}):
        for batch_size in (1, 8, 32, 128):
            run = Scorer(model=scorer.model, device=scorer.device, batch_size=batch_size, bf16=bf16)
            run.score(texts[:batch_size])
            seconds = timed(lambda r=run: r.score(texts), repeats=args.repeats)
            key = f"scorer_{'bf16' if bf16 else 'fp32'}_batch{batch_size}"
            results[key] = {"texts_per_s": round(len(texts) / seconds, 1), "seconds": round(seconds, 3)}
            print(f"{key:28} {results[key]['texts_per_s']:8.1f} texts/s", flush=True)

    # The default Scorer (token-budget batches), as the pipeline calls it: the yardstick for pairs.
    seconds = timed(lambda: scorer.score_arrays(texts), repeats=args.repeats)
    results["scorer_default"] = {"texts_per_s": round(len(texts) / seconds, 1), "seconds": round(seconds, 3)}
    print(f"{'scorer_default':28} {results['scorer_default']['texts_per_s']:8.1f} texts/s", flush=True)
    pairs_rate = None
    if "entity" in scorer.labels:
        # Entity-level sentiment: (headline, entity) rows of SEntFiN, one score_pairs call, default batching.
        rows = pd.read_csv(DATA / "sentfin_entities.csv.gz").sample(n=args.n, random_state=0)
        titles, entities = rows["title"].tolist(), rows["entity"].tolist()
        scorer.score_pairs(titles[:32], entities[:32])
        seconds = timed(lambda: scorer.score_pairs(titles, entities), repeats=args.repeats)
        pairs_rate = round(len(titles) / seconds, 1)
        results["entity_pairs_default"] = {"pairs_per_s": pairs_rate, "seconds": round(seconds, 3)}
        print(f"{'entity_pairs_default':28} {pairs_rate:8.1f} pairs/s", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        pipe = naive_pipeline(scorer, Path(folder))
        for t in normalized[:8]:
            pipe(t, truncation=True, max_length=max_length)

        def naive() -> None:
            for t in normalized:
                pipe(t, truncation=True, max_length=max_length)

        seconds = timed(naive, repeats=args.repeats)
    results["naive_pipeline_fp32_one_at_a_time"] = {"texts_per_s": round(len(texts) / seconds, 1),
                                                    "seconds": round(seconds, 3)}
    naive_rate = results["naive_pipeline_fp32_one_at_a_time"]["texts_per_s"]
    print(f"{'naive_pipeline_fp32_1x1':28} {naive_rate:8.1f} texts/s", flush=True)
    best_key = max((k for k in results if k.startswith("scorer_")), key=lambda k: results[k]["texts_per_s"])
    ratios = {k: round(v["texts_per_s"] / naive_rate, 2) for k, v in results.items() if k.startswith("scorer_")}

    stamp = datetime.now(timezone.utc)
    report = {
        "benchmark": "bench/bench_scorer.py",
        "at": stamp.isoformat(timespec="seconds"),
        "model_version": scorer.version,
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bf16_native": bf16_supported(scorer.device),
        "n_texts": len(texts),
        "max_length": max_length,
        "mean_tokens": round(sum(len(scorer.model.tokenizer(t, truncation=True, max_length=max_length)["input_ids"])
                                 for t in normalized) / len(normalized), 1),
        "texts": "half tweets (sentiment set), half SEntFiN headlines, seed 0, normalised identically for both sides",
        "baseline": "transformers pipeline('text-classification'), one text per call, fp32, same merged encoder",
        "results": results,
        "ratio_vs_naive": ratios,
        "best": {"config": best_key, "texts_per_s": results[best_key]["texts_per_s"], "ratio": ratios[best_key]},
        "entity_pairs_per_s": pairs_rate,
        "entity_pairs_vs_default_texts": None if pairs_rate is None
        else round(pairs_rate / results["scorer_default"]["texts_per_s"], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"scorer-{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"best {best_key}: {ratios[best_key]}x the naive baseline; wrote {out}")


if __name__ == "__main__":
    main()
