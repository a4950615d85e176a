"""How the entity head should read an entity: entity-only training runs side by side (issues 10 and 16).

Each variant fine-tunes all-MiniLM-L6-v2 (full mode) on the SEntFiN entity training rows alone,
same split, seed, epochs and learning rates, and differs only in its entity input:

- ``mean``: ``entity [SEP] text``, all-token mean (the round-2 shipped model's entity input);
- ``mark``: the entity's mentions in the text wrapped in ``« »``, all-token mean;
- ``segment``: no marks, all-token mean + the entity's own word pieces' mean;
- ``mark_segment``: both;
- ``span``: one pass over the text alone (no pair): the text's mean + the mean of the entity's mention
  pieces (what lets one encoder pass per document serve every entity it names);
- ``span_mark``: the same with every entity of the headline marked ``« »``.

Scored on the held-out entity rows (all / mixed headlines; the copy-the-document-label baseline
uses the shipped model) and on the entity checklist (``models/evaluation/data/entity_checklist.yaml``).
Entity-only training is a proxy for the multi-task run (sentiment, topic and comments share the
encoder there): it ranks the inputs cheaply (minutes per variant on 2 cores), and the chosen one is
then trained the full way.

    .venv/bin/python bench/entity_input_ablation.py --out var/entity-ablation [--epochs 3] [--threads 2]

Writes bench/results/entity-ablation-<UTC>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_model  # noqa: E402
from models.evaluation.checklist import load_entity_cases, run_entity_checklist
from models.evaluation.entity_eval import entity_eval
from models.training.entity_data import entity_splits
from models.scorer import Scorer
from models.training.train import TrainConfig, train

VARIANTS = {"mean": (False, "mean"), "mark": (True, "mean"), "segment": (False, "segment"),
            "span": (False, "span"), "span_mark": (True, "span"),
            "mark_segment": (True, "segment")}
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the variants' models.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split, test = entity_splits(seed=13)
    cases = load_entity_cases()
    document_scorer = Scorer.load(device="cpu")
    report = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
              "threads": args.threads, "epochs": args.epochs, "train_rows": len(split.train), "val_rows": len(split.val),
              "test_rows": len(test), "document_model": document_scorer.version, "variants": {}}
    for name in args.variants:
        mark, pooling = VARIANTS[name]
        config = TrainConfig(out=args.out / name, mode="full", epochs=args.epochs, seed=13, threads=args.threads,
                             progress=False, entity_mark=mark, entity_pooling=pooling,
                             entity_source="bundled: SEntFiN entity rows, training headlines")
        started = time.monotonic()
        result = train(config, sentiment=None, topic=None, entity=split)
        seconds = time.monotonic() - started
        scorer = Scorer.load(args.out / name, device="cpu")
        evaluation = entity_eval(scorer, test, document_scorer=document_scorer)
        checklist = run_entity_checklist(scorer, cases)
        report["variants"][name] = {
            "mark": mark, "pooling": pooling, "train_seconds": round(seconds, 1), "version": result.version,
            "validation": {k: round(v, 4) for k, v in result.metrics["entity"].items() if isinstance(v, float)},
            "test": {subset: {k: evaluation["entity_head"][subset][k] for k in ("n", "accuracy", "macro_f1")}
                     for subset in ("all", "mixed", "not_mixed")},
            "checklist": {k: checklist[k] for k in ("n", "passed", "by_capability", "contrast_texts",
                                                    "contrast_texts_both_right")},
        }
        report["copy_document_label"] = {subset: {k: evaluation["copy_document_label"][subset][k]
                                                  for k in ("n", "accuracy", "macro_f1")}
                                         for subset in ("all", "mixed", "not_mixed")}
        print(json.dumps({name: report["variants"][name]["test"] | {"checklist": checklist["passed"],
                                                                   "seconds": round(seconds)}}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"entity-ablation-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'variant':<14}{'acc all':>9}{'F1 all':>8}{'acc mixed':>11}{'F1 mixed':>10}{'checklist':>11}{'contrast':>10}")
    rows = [(k, v["test"], f"{v['checklist']['passed']}/{v['checklist']['n']}",
             f"{v['checklist']['contrast_texts_both_right']}/{v['checklist']['contrast_texts']}")
            for k, v in report["variants"].items()]
    rows.append(("copy label", report["copy_document_label"], "", ""))
    for name, t, checks, contrast in rows:
        print(f"{name:<14}{t['all']['accuracy']:>9.3f}{t['all']['macro_f1']:>8.3f}{t['mixed']['accuracy']:>11.3f}"
              f"{t['mixed']['macro_f1']:>10.3f}{checks:>11}{contrast:>10}")
    print(path)


if __name__ == "__main__":
    main()
