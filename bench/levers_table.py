"""The table of ``bench/train_levers.sh OUT_DIR``: one row per run, the figures side by side.

    .venv/bin/python bench/levers_table.py OUT_DIR [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TWEETS, HEADLINES = "twitter_financial_news_sentiment_train.csv.gz", "sentfin_headlines.csv.gz"

COLUMNS = [
    ("train s", lambda r: r["train_seconds"]),
    ("val score", lambda r: r["validation_score"]),
    ("sent test acc", lambda r: r["sentiment_test"]["accuracy"]),
    ("sent test F1", lambda r: r["sentiment_test"]["macro_f1"]),
    ("sent val F1", lambda r: r["sentiment_val"]["macro_f1"]),
    ("tweets test F1", lambda r: r["sentiment_test"]["by"]["groups"][TWEETS]["macro_f1"]),
    ("SEntFiN test acc", lambda r: r["sentiment_test"]["by"]["groups"][HEADLINES]["accuracy"]),
    ("topic test acc", lambda r: r["topic_test"]["accuracy"]),
    ("topic val acc", lambda r: r["topic_val"]["accuracy"]),
    ("2020 acc", lambda r: r["ood"]["three_class"]["stock_market_tweets_2020.csv"]["accuracy"]),
    ("2020 F1", lambda r: r["ood"]["three_class"]["stock_market_tweets_2020.csv"]["macro_f1"]),
    ("2020 neg found", lambda r: r["ood"]["three_class"]["stock_market_tweets_2020.csv"]["negatives_found"]),
    ("comments bal acc", lambda r: _comments(r)["balanced_accuracy"]),
    ("bearish lean neg", lambda r: _comments(r)["negative_tagged_leaning_negative"]),
    ("surge bal acc", lambda r: r["ood"]["binary"]["surge_stock_tweets.csv"]["balanced_accuracy"]),
    ("checklist", lambda r: r["checklist"]["passed"]),
    ("entity acc", lambda r: (r["entity"]["entity_head"] or {}).get("all", {}).get("accuracy")),
    ("entity F1", lambda r: (r["entity"]["entity_head"] or {}).get("all", {}).get("macro_f1")),
    ("mixed acc", lambda r: (r["entity"]["entity_head"] or {}).get("mixed", {}).get("accuracy")),
    ("mixed F1", lambda r: (r["entity"]["entity_head"] or {}).get("mixed", {}).get("macro_f1")),
    ("copy acc", lambda r: r["entity"]["copy_document_label"]["all"]["accuracy"]),
    ("copy mixed acc", lambda r: r["entity"]["copy_document_label"]["mixed"]["accuracy"]),
    ("entity checklist", lambda r: (r["checklist"].get("entity") or {}).get("passed")),
    ("contrast texts", lambda r: (r["checklist"].get("entity") or {}).get("contrast_texts_both_right")),
]


def _comments(r: dict) -> dict:
    return next(v for k, v in r["ood"]["binary"].items() if k.startswith("comments_heldout"))


def load_run(folder: Path) -> dict | None:
    reports = folder / "reports"
    if not (reports / "entity.json").is_file():
        return None
    run = {path.stem: json.loads(path.read_text()) for path in reports.glob("*.json")}
    config_path = folder / "model" / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    run["train_seconds"] = config["train"]["seconds"] if config else None
    # what training selects checkpoints on: the mean of the heads' validation macro-F1
    heads = config["metrics"]["validation"].values() if config else []
    run["validation_score"] = sum(m["macro_f1"] for m in heads) / len(heads) if heads else None
    run["model_version"] = run["sentiment_test"]["model_version"]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs = {folder.name: run for folder in sorted(args.out.iterdir()) if folder.is_dir()
            for run in [load_run(folder)] if run is not None}
    header = ["run"] + [name for name, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = {}
    for name, run in runs.items():
        values = {}
        for column, get in COLUMNS:
            try:
                values[column] = get(run)
            except (KeyError, TypeError, StopIteration):
                values[column] = None
        table[name] = {"model_version": run["model_version"], **values}
        cells = ["" if v is None else (f"{v:.3f}" if isinstance(v, float) and v < 1.5 else f"{v:.0f}"
                                       if isinstance(v, float) else str(v)) for v in values.values()]
        lines.append("| " + " | ".join([name] + cells) + " |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
