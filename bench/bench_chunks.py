"""What chunking costs and changes, and the model server against the in-process Scorer, in one run.

1. **Chunking** on long pseudo-articles built from the bundled data (``models/training/data``): a title
   and lead of 4 texts of one label (~60-90 word pieces, so chunk 1 is about the lead) followed
   by a body of 6-8 texts of another (``GROUPS``: neutral lead with a negative, positive or
   neutral body; negative or positive lead with a neutral body). Each article is scored with K=1
   (the old behaviour: the first 64 word pieces) and K=4; reported: texts/s for each, and per
   group how often the label is the lead's or the body's, at K=1, K=4, and K=4 with the first
   chunk weighted 1 instead of 2.
2. **Server vs in-process** (CPU): ``finpulse model serve`` started here as a subprocess with the
   same torch threads; the same texts go through ``RemoteScorer`` in requests of
   ``--request-size`` texts (one request = one Arrow batch of the pipeline) and through
   ``Scorer.score_arrays`` in the same slices, one after the other, for short texts and for the
   long articles.

    .venv/bin/python bench/bench_chunks.py [--articles 300] [--short 1024] [--threads 2] [--repeats 2]

Writes bench/results/chunks-<UTC timestamp>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SEED = 0


def labelled_texts() -> pd.DataFrame:
    """The bundled sentiment texts (tweets + SEntFiN headlines) with label names."""
    from models.training import corpus

    return pd.concat(corpus.default_sentiment_frames(), ignore_index=True)


GROUPS = (  # (lead label, body label)
    ("neutral", "negative"), ("neutral", "positive"), ("neutral", "neutral"),
    ("negative", "neutral"), ("positive", "neutral"),
)


def pseudo_articles(n: int, frame: pd.DataFrame, *, seed: int = SEED) -> pd.DataFrame:
    """``n`` articles, a fifth per ``GROUPS`` entry: a title + 3-text lead of one label, then a body of 6-8 texts of another."""
    rng = np.random.default_rng(seed)
    by_label = {label: group["text"].tolist() for label, group in frame.groupby("label")}
    rows = []
    for i in range(n):
        lead_label, body_label = GROUPS[i % len(GROUPS)]
        lead_pool, body_pool = by_label[lead_label], by_label[body_label]
        title = lead_pool[rng.integers(len(lead_pool))]
        lead = " ".join(lead_pool[j] for j in rng.choice(len(lead_pool), size=3, replace=False))
        body = " ".join(body_pool[j] for j in rng.choice(len(body_pool), size=int(rng.integers(6, 9)), replace=False))
        rows.append({"text": f"{title}\n{lead} {body}", "lead_label": lead_label, "body_label": body_label})
    return pd.DataFrame(rows)


def best_rate(fn, n: int, repeats: int) -> tuple[float, list[float]]:
    """Best texts/s over ``repeats`` runs (shared machine: the best run is the least disturbed), and all runs."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - start))
    return max(rates), [round(r, 1) for r in rates]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(threads: int, max_batch_size: int) -> tuple[subprocess.Popen, str, Path]:
    import httpx

    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "serve.log"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-serve-metrics-")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "finpulse"), "model", "serve", "--device", "cpu", "--port", str(port),
             "--threads", str(threads), "--max-batch-size", str(max_batch_size), "--batch-timeout", "0.01"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url, log_path
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("server not healthy after 300 s")


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=300)
    parser.add_argument("--short", type=int, default=1024, help="short texts for the server comparison")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--request-size", type=int, default=256, help="texts per request / per in-process call")
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from models.network import bf16_supported
    from models.scorer import Scorer

    scorer = Scorer.load(device="cpu")
    tokenizer = scorer.model.tokenizer
    frame = labelled_texts()
    articles = pseudo_articles(args.articles, frame)
    texts = articles["text"].tolist()
    from models.text import model_text

    pieces = [len(ids) for ids in tokenizer([model_text(t) for t in texts], add_special_tokens=False)["input_ids"]]
    scorer.score_arrays(texts[:32])  # warm-up

    report: dict = {
        "benchmark": "bench/bench_chunks.py",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_version": scorer.version,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "autocast": str(scorer.autocast_dtype),
        "bf16_native": bf16_supported(torch.device("cpu")),
        "token_budget": scorer.token_budget,
        "load_average_at_start": os.getloadavg()[0],
    }

    # 1. chunking: cost and effect
    results = {}
    for k in (1, 4):
        rate, runs = best_rate(lambda k=k: scorer.score_arrays(texts, max_chunks=k), len(texts), args.repeats)
        results[k] = scorer.score_arrays(texts, max_chunks=k)
        report[f"articles_k{k}_texts_per_s"] = round(rate, 1)
        report[f"articles_k{k}_runs"] = runs
        print(f"long articles K={k}: {rate:7.1f} texts/s", flush=True)
    k1, k4 = results[1], results[4]
    # Sensitivity of the one judgement call: the first chunk counted once instead of twice.
    equal = Scorer(model=scorer.model, device="cpu", first_chunk_weight=1.0).score_arrays(texts, max_chunks=4)
    effect = {}
    for lead_label, body_label in GROUPS:
        rows = ((articles["lead_label"] == lead_label) & (articles["body_label"] == body_label)).to_numpy()
        group = {"articles": int(rows.sum())}
        for name, arrays in (("k1", k1), ("k4", k4), ("k4_first_chunk_weight_1", equal)):
            group[f"{name}_label_is_lead_label"] = int((arrays.sentiment == lead_label)[rows].sum())
            group[f"{name}_label_is_body_label"] = int((arrays.sentiment == body_label)[rows].sum())
            group[f"{name}_mean_p_body_label"] = round(float(getattr(arrays, f"p_{body_label}")[rows].mean()), 3)
        group["k1_to_k4_label_changed"] = int((k1.sentiment != k4.sentiment)[rows].sum())
        effect[f"lead_{lead_label}_body_{body_label}"] = group
    report["articles"] = {
        "n": len(texts),
        "construction": "title + 3 texts of the lead label, then 6-8 texts of the body label, a fifth of the "
                        "articles per (lead, body) group; texts from models/training/data (tweets + SEntFiN headlines), seed 0",
        "word_pieces_mean": round(float(np.mean(pieces)), 1),
        "word_pieces_p90": int(np.percentile(pieces, 90)),
        "n_chunks_k4_mean": round(float(k4.n_chunks.mean()), 2),
        "truncated_k4": int(k4.truncated.sum()),
        "truncated_k1": int(k1.truncated.sum()),
        "effect": effect,
    }
    report["chunking_cost_k4_over_k1"] = round(report["articles_k1_texts_per_s"] / report["articles_k4_texts_per_s"], 2)
    print(json.dumps(report["articles"]["effect"], indent=1), flush=True)

    # 2. server vs in-process, same texts, same slices, one after the other
    if not args.no_server:
        from models.training.corpus import DATA_DIR
        from models.remote import RemoteScorer

        tweets = pd.read_csv(DATA_DIR / "twitter_financial_news_sentiment_train.csv.gz")["text"]
        short = tweets.sample(n=min(args.short, len(tweets)), random_state=SEED).tolist()
        process, url, log_path = start_server(args.threads, max_batch_size=8)
        try:
            remote = RemoteScorer(url, timeout=300)
            remote.score_arrays(short[:32])  # warm-up
            comparison = {}
            for name, batch_texts in (("short", short), ("long_articles", texts)):
                slices = [batch_texts[i:i + args.request_size] for i in range(0, len(batch_texts), args.request_size)]
                local_rate, local_runs = best_rate(lambda s=slices: [scorer.score_arrays(x) for x in s],
                                                   len(batch_texts), args.repeats)
                remote_rate, remote_runs = best_rate(lambda s=slices: [remote.score_arrays(x) for x in s],
                                                     len(batch_texts), args.repeats)
                same = all(
                    (remote.score_arrays(x).sentiment == scorer.score_arrays(x).sentiment).all() for x in slices[:2]
                )
                comparison[name] = {"texts": len(batch_texts), "in_process_texts_per_s": round(local_rate, 1),
                                    "server_texts_per_s": round(remote_rate, 1),
                                    "server_over_in_process": round(remote_rate / local_rate, 2),
                                    "in_process_runs": local_runs, "server_runs": remote_runs,
                                    "same_labels_first_slices": bool(same)}
                print(f"{name:14} in-process {local_rate:7.1f} texts/s   server {remote_rate:7.1f} texts/s", flush=True)
            remote.close()
        finally:
            stop_server(process)
        report["server_vs_in_process"] = {
            "device": "cpu", "max_chunks": 4, "request_size": args.request_size, "server_threads": args.threads,
            "server_flags": "--device cpu --max-batch-size 8 --batch-timeout 0.01", "clients": 1, **comparison,
        }

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"chunks-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
