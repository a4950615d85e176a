"""Calibration of each head: expected calibration error before and after temperature scaling,
and a reliability plot (``finpulse model calibration``).

The shipped temperatures were fit on the validation split that also picked the checkpoint, so
"after" on that split is optimistic. The report therefore also gives a two-fold cross-fit figure
(fit T on one half of the split, measure ECE on the other, and the reverse) and, when given,
the ECE on out-of-domain labelled data at T=1 and at the shipped temperature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.training import corpus
from models.text import model_text
from models.training.corpus import TASKS
from models.evaluation.metrics import expected_calibration_error, fit_temperature
from models.scorer import batched_logits

BINS = 15


def head_logits(scorer, texts: list[str], task: str) -> torch.Tensor:
    """Uncalibrated logits of one head for the first chunk of each text (what training's validation reads)."""
    cleaned = [model_text(t) for t in texts]
    logits, _ = batched_logits(scorer.network, scorer.model.tokenizer, cleaned, max_length=scorer.max_length,
                               batch_size=128, device=scorer.device, bf16=scorer.bf16)
    return logits[task]


def entity_logits(scorer, frame) -> torch.Tensor:
    """Uncalibrated entity-head logits of each (``entity``, ``title``) row, read the way training's validation
    reads them: a ``span`` head from the headline's own pass, the others from the (entity, text) pair."""
    from models.entity import ENTITY_TASK, pair_texts

    mark = scorer.entity_input["mark"]
    if scorer.entity_input.get("pooling") == "span":
        from models.scorer import batched_span_logits
        from models.training.train import entity_span_inputs

        return batched_span_logits(scorer.network, scorer.model.tokenizer, entity_span_inputs(frame, mark=mark),
                                   max_length=scorer.max_length, batch_size=128, device=scorer.device, bf16=scorer.bf16)
    return head_logits(scorer, pair_texts(frame, mark=mark), ENTITY_TASK)


def reliability_bins(probs: np.ndarray, targets: np.ndarray, *, bins: int = BINS) -> list[dict]:
    """Per equal-width confidence bin: rows, mean confidence, accuracy (the bins ECE averages over)."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == targets
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        out.append({"lo": float(lo), "hi": float(hi), "n": int(in_bin.sum()),
                    "confidence": float(confidence[in_bin].mean()) if in_bin.any() else None,
                    "accuracy": float(correct[in_bin].mean()) if in_bin.any() else None})
    return out


def _nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / temperature, targets))


def cross_fit_ece(logits: torch.Tensor, targets: torch.Tensor, *, seed: int = 0) -> dict:
    """Two-fold: T fit on each half, ECE measured on the other half, pooled over both halves."""
    order = np.random.default_rng(seed).permutation(len(targets))
    halves = [order[: len(order) // 2], order[len(order) // 2:]]
    pooled, temperatures = [], []
    for fit_half, test_half in ((0, 1), (1, 0)):
        fit_index, test_index = torch.from_numpy(halves[fit_half]), torch.from_numpy(halves[test_half])
        t = fit_temperature(logits[fit_index], targets[fit_index])
        temperatures.append(t)
        pooled.append(torch.softmax(logits[test_index] / t, -1).numpy())
    probs = np.concatenate(pooled)
    pooled_targets = np.concatenate([targets.numpy()[halves[1]], targets.numpy()[halves[0]]])
    return {"ece": expected_calibration_error(probs, pooled_targets, bins=BINS), "temperatures": temperatures}


def head_calibration(logits: torch.Tensor, labels: list[str], names: list[str], *, shipped_temperature: float) -> dict:
    """ECE/NLL/accuracy at T=1, at the shipped T, at T refit here, and cross-fit; reliability bins before/after."""
    targets = torch.tensor([names.index(x) for x in labels])
    refit = fit_temperature(logits, targets)
    result = {"n": len(labels), "accuracy": float((logits.argmax(1) == targets).float().mean()),
              "shipped_temperature": shipped_temperature, "refit_temperature": refit, "bins": BINS}
    for name, t in (("before", 1.0), ("after", shipped_temperature), ("refit", refit)):
        probs = torch.softmax(logits / t, -1).numpy()
        result[name] = {"temperature": t, "ece": expected_calibration_error(probs, targets.numpy(), bins=BINS),
                        "nll": _nll(logits, targets, t)}
        if name != "refit":
            result[name]["reliability"] = reliability_bins(probs, targets.numpy())
    result["cross_fit"] = cross_fit_ece(logits, targets)
    return result


def calibration_report(scorer, *, seed: int = 13, val_fraction: float = 0.1,
                       ood: dict[str, tuple[list[str], list[str]]] | None = None) -> dict:
    """Per head on the bundled validation split (``finpulse model split``; the whole held-out share, test
    part included), the entity head (when the model has one) on its validation and held-out test pairs,
    plus sentiment on ``ood`` sets (name -> (texts, negative/neutral/positive labels))."""
    report: dict = {"model_version": scorer.version, "split": {"seed": seed, "val_fraction": val_fraction},
                    "validation": {}, "out_of_domain": {}}
    frames = {"sentiment": corpus.default_sentiment_frames(), "topic": corpus.default_topic_frames()}
    for task, task_frames in frames.items():
        split = corpus.build_split(task, task_frames, val_fraction=val_fraction, seed=seed)
        logits = head_logits(scorer, split.val["text"].tolist(), task)
        report["validation"][task] = head_calibration(logits, split.val["label"].tolist(), list(TASKS[task]),
                                                      shipped_temperature=float(scorer.temperature.get(task, 1.0)))
    from models.entity import ENTITY_TASK
    from models.scorer import has_entity_head
    from models.training.entity_data import entity_splits

    if has_entity_head(scorer):
        # The entity head on its own pairs: validation (where its T was fit) and the held-out test rows.
        entity_split, entity_test = entity_splits(seed=seed, sentence_val_fraction=val_fraction)
        names = list(scorer.labels[ENTITY_TASK])
        t_entity = float(scorer.temperature.get(ENTITY_TASK, 1.0))
        report["validation"][ENTITY_TASK] = head_calibration(
            entity_logits(scorer, entity_split.val), entity_split.val["label"].tolist(), names, shipped_temperature=t_entity)
        report["test"] = {ENTITY_TASK: head_calibration(
            entity_logits(scorer, entity_test), entity_test["label"].tolist(), names, shipped_temperature=t_entity)}
    for name, (texts, labels) in (ood or {}).items():
        logits = head_logits(scorer, texts, "sentiment")
        report["out_of_domain"][name] = head_calibration(
            logits, labels, list(TASKS["sentiment"]), shipped_temperature=float(scorer.temperature.get("sentiment", 1.0)))
    return report


def plot_reliability(report: dict, out: str | Path) -> Path:
    """Reliability diagram (accuracy against confidence per bin, before/after scaling), one panel per head/set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"{task} (validation)", r) for task, r in report["validation"].items()]
    panels += [(f"{task} (test)", r) for task, r in report.get("test", {}).items()]
    panels += [(f"sentiment ({name})", r) for name, r in report["out_of_domain"].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.6), squeeze=False)
    for ax, (title, r) in zip(axes[0], panels, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        for key, colour, marker in (("before", "tab:red", "o"), ("after", "tab:blue", "s")):
            filled = [b for b in r[key]["reliability"] if b["n"]]
            ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], color=colour, marker=marker,
                    markersize=4, label=f"{key}: T={r[key]['temperature']:.2f}, ECE={r[key]['ece']:.3f}")
        ax.set_title(f"{title}, n={r['n']}", fontsize=10)
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability, {report['model_version']} ({BINS} equal-width bins)", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
