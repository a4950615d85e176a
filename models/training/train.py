"""Multi-task training of the sentiment + topic model (``finpulse model train``).

Each batch mixes sentiment and topic examples; every example carries a label for one head and
``IGNORE`` for the other, so one forward serves both heads and each head's loss only sees its
own rows. Validation macro-F1 (mean over the heads) picks the best checkpoint and stops early;
per-head temperatures are then fit on the validation logits. With ``average_last`` the mean of the
weights at the last evaluations is also written (``OUT/averaged``), to be compared on held-out data.
With ``teacher`` the student also learns a trained model's calibrated sentiment and topic
probabilities (KL divergence) on the labelled rows and on the comments (distillation).
"""

from __future__ import annotations

import collections
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from models.text import model_text
from models.training.corpus import SENTIMENT_LABELS, TASKS, Split
from models.evaluation.metrics import classification_report, expected_calibration_error, fit_temperature
from models.entity import SpanText, pair_texts, span_text
from models.network import (DEFAULT_BASE, DEFAULT_LANGUAGES, ENTITY_TASK, MODEL_NAME, MultiHeadEncoder, bf16_supported,
                            model_version)
from models.training.model_folder import LORA_TARGETS, new_network, save_model
from models.scorer import autocast_context, batched_logits, batched_span_logits
from models.training.weak_labels import binary_tag_loss, class_weights, tag_ids

log = logging.getLogger(__name__)
IGNORE = -100
AVERAGED_DIR = "averaged"  # where --average-last writes the checkpoint average, inside --out


@dataclass(kw_only=True)
class TrainConfig:
    """Everything that determines a training run (recorded in the model's config.json)."""

    out: Path
    mode: str = "lora"
    base: str = DEFAULT_BASE
    seed: int = 13  # initialisation and batch order
    split_seed: int | None = None  # the data splits' seed, when not ``seed`` (recorded only: the caller splits)
    val_fraction: float = 0.1
    test_share: float = 0.0  # of the held-out rows: the test split, never read by training (recorded only)
    max_length: int = 64
    batch_size: int = 32
    epochs: int = 3
    max_steps: int | None = None
    lr_encoder: float | None = None  # default: 8e-4 for LoRA weights, 5e-5 for full fine-tuning
    lr_heads: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    lora_r: int = 16
    lora_alpha: int = 32
    class_weight_power: float = 0.5  # 0: plain CE, 1: inverse-frequency weights; 0.5 in between
    label_smoothing: float = 0.0  # of the labelled heads' cross-entropy (not the weak comment tags)
    evals_per_epoch: int = 2
    patience: int = 3  # evaluations without a better validation score before stopping
    sentiment_source: str = "bundled: tweets sentiment + SEntFiN headlines"
    comments_source: str | None = None  # weakly tagged comments (bullish/bearish) for the sentiment head
    comment_weight: float = 1.0  # their loss's weight against the labelled heads'
    entity_source: str | None = None  # (text, entity) pairs for the entity head
    # Also write OUT/averaged: the mean of the weights at the last N evaluations. The final step is
    # always evaluated, so it can sit a few steps after a regular evaluation and count twice.
    average_last: int = 0
    teacher: str | None = None  # a model folder whose sentiment/topic probabilities the student also learns
    distill_weight: float = 1.0  # the distillation loss's weight against the labelled heads'
    entity_mark: bool = True  # wrap the entity's mentions in the text in « » (models.entity.mark_mentions)
    entity_pooling: str = "mean"  # what the entity head reads (models.network.ENTITY_POOLINGS)
    progress: bool = True
    threads: int | None = None

    def encoder_lr(self) -> float:
        if self.lr_encoder is not None:
            return self.lr_encoder
        return 8e-4 if self.mode == "lora" else 5e-5


@dataclass
class TrainResult:
    out: Path
    version: str
    metrics: dict
    seconds: float
    history: list[dict] = field(default_factory=list)


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same keys (floating tensors; others from the last)."""
    if not states:
        raise ValueError("no state dicts to average")
    return {key: (torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
                  if value.is_floating_point() else value)
            for key, value in states[-1].items()}


# Which training rows the teacher labels for each head: the head's own rows and the comments, whose
# 3-class sentiment (and topic) no label gives: that is the unlabelled text distillation adds.
DISTILL_ROWS = {"sentiment": ("sentiment", "comments"), "topic": ("topic", "comments")}


def teacher_targets(teacher_dir: str | Path, table: pd.DataFrame, *, device: torch.device) -> dict[str, torch.Tensor]:
    """The teacher's calibrated probabilities per head for the rows ``DISTILL_ROWS`` names (NaN rows elsewhere).

    One chunk per text, as training reads it. The teacher needs the student's labels for those heads.
    """
    from models.scorer import Scorer

    teacher = Scorer.load(teacher_dir, device=device, max_chunks=1)
    tasks = {task: row_tasks for task, row_tasks in DISTILL_ROWS.items() if task in teacher.labels}
    for task in tasks:
        if teacher.labels[task] != task_labels(task):
            raise ValueError(f"teacher {teacher.version}: {task} labels {teacher.labels[task]} differ from the student's")
    wanted = {task: table["task"].isin(row_tasks).to_numpy() for task, row_tasks in tasks.items()}
    rows = np.flatnonzero(np.logical_or.reduce(list(wanted.values()))) if wanted else np.array([], dtype=int)
    # One teacher forward per text for all heads (a comment serves both).
    distributions, _ = teacher.probabilities(table["text"].iloc[rows].tolist(), max_chunks=1) if len(rows) else ({}, None)
    out = {}
    for task, mask in wanted.items():
        probs = np.full((len(table), len(task_labels(task))), np.nan, dtype=np.float32)
        if len(rows):
            probs[rows] = distributions[task]
        probs[~mask] = np.nan
        out[task] = torch.from_numpy(probs)
    log.info("teacher %s: soft targets for %s", teacher.version, {t: int((~v.isnan().any(1)).sum()) for t, v in out.items()})
    return out


def distill_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over the rows with a target (NaN rows skipped); zero with a graph when none."""
    has = ~target.isnan().any(1)
    if not bool(has.any()):
        return logits.sum() * 0.0
    log_student = torch.log_softmax(logits[has].float(), -1)
    return torch.nn.functional.kl_div(log_student, target[has].float(), reduction="batchmean")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches(lengths: np.ndarray, *, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within pools of 50 batches, shuffle batches.

    Similar lengths mean little padding, which is most of the speed on a CPU.
    """
    index = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches = []
    for start in range(0, len(index), pool):
        chunk = index[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def model_texts(task: str, frame: pd.DataFrame, config: TrainConfig) -> list[str]:
    """What the network reads for each row: the cleaned text, or for a pair-mode entity head the pair text
    (``models.entity.pair_text`` of the ``entity`` and ``title`` columns, marked as ``config`` says); for a
    ``span`` entity head the headline itself (``entity_span_inputs``)."""
    if task == ENTITY_TASK:
        if config.entity_pooling == "span":
            return [st.text for st in entity_span_inputs(frame, mark=config.entity_mark)]
        return pair_texts(frame, mark=config.entity_mark)
    return [model_text(t) for t in frame["text"]]


def entity_span_inputs(frame: pd.DataFrame, *, mark: bool) -> list[SpanText]:
    """For a ``span`` entity head: each row's headline as the model reads it and its entity's mention spans.
    With ``mark``, every entity the headline names (its rows in ``frame``) is marked, as at inference, where
    every entity linked in a document is."""
    by_title = frame.groupby("title", sort=False)["entity"].agg(list).to_dict()
    out = []
    for title, entity in zip(frame["title"], frame["entity"], strict=True):
        others = [e for e in dict.fromkeys(by_title[title]) if e != entity]
        prepared = span_text(title, [[entity], *[[e] for e in others]], mark=mark)
        out.append(SpanText(prepared.text, prepared.spans[:1]))
    return out


def span_positions(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Token positions (special tokens excluded) whose characters overlap ``spans``."""
    return [i for i, (start, end) in enumerate(offsets)
            if end > start and any(start < span_end and end > span_start for span_start, span_end in spans)]


def evaluate(network: MultiHeadEncoder, tokenizer, splits: dict[str, Split], *, config: TrainConfig,
             device: torch.device, bf16: bool) -> dict[str, torch.Tensor]:
    """Validation logits per head, in the order of ``split.val``."""
    network.eval()
    logits_by_task = {}
    for task, split in splits.items():
        if task == ENTITY_TASK and config.entity_pooling == "span":
            logits_by_task[task] = batched_span_logits(network, tokenizer, entity_span_inputs(split.val, mark=config.entity_mark),
                                                       max_length=config.max_length, batch_size=128, device=device,
                                                       bf16=bf16)
            continue
        texts = model_texts(task, split.val, config)
        logits_by_task[task] = batched_logits(network, tokenizer, texts, max_length=config.max_length,
                                              batch_size=128, device=device, bf16=bf16)[0][task]
    network.train()
    return logits_by_task


def task_labels(task: str) -> list[str]:
    """A head's label names: the entity head reads sentiment towards an entity, so it has the sentiment labels."""
    return list(TASKS.get(task, SENTIMENT_LABELS))


def report(task: str, logits: torch.Tensor, split: Split, *, temperature: float = 1.0) -> dict:
    """Classification report of one head on its validation split, plus NLL and ECE at ``temperature``."""
    names = task_labels(task)
    targets = torch.tensor([names.index(x) for x in split.val["label"]])
    predicted = [names[i] for i in logits.argmax(1).tolist()]
    result = classification_report(split.val["label"].tolist(), predicted, labels=names)
    scaled = logits / temperature
    result["nll"] = float(torch.nn.functional.cross_entropy(scaled, targets))
    result["ece"] = expected_calibration_error(torch.softmax(scaled, -1).numpy(), targets.numpy())
    return result


def _score(metrics: dict) -> float:
    """Model selection: validation macro-F1, averaged over the trained heads."""
    return float(np.mean([m["macro_f1"] for m in metrics.values()]))


def train(config: TrainConfig, *, sentiment: Split | None, topic: Split | None, entity: Split | None = None,
          comments: pd.DataFrame | None = None) -> TrainResult:
    """Train, select on validation, calibrate and save to ``config.out``.

    ``entity``: a split of entity rows (``models.entity.entity_splits``: ``title``, ``entity``, ``label``)
    for a third head, ``entity``; ``config.entity_mark`` and ``config.entity_pooling`` say how it reads them.
    ``comments``: weakly tagged texts (``text``, ``label`` bullish/bearish) that train the sentiment
    head through ``models.training.weak_labels.binary_tag_loss`` (they are not in validation: hold them out
    with ``models.evaluation.ood.comments_split`` and evaluate with ``finpulse model eval-ood``).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    started = time.monotonic()
    splits = {s.task: s for s in (sentiment, topic, entity) if s is not None}
    labels = {task: list(names) for task, names in TASKS.items()}
    if entity is not None:
        labels[entity.task] = task_labels(entity.task)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = bf16_supported(device)
    network, tokenizer = new_network(base=config.base, labels=labels, mode=config.mode, lora_r=config.lora_r,
                                     lora_alpha=config.lora_alpha, entity_pooling=config.entity_pooling)
    network.to(device).train()

    # One table of training rows: text, and a label id for one head (IGNORE for the other).
    rows = []
    span_mode = entity is not None and config.entity_pooling == "span"
    for task, split in splits.items():
        ids = split.train["label"].map({n: i for i, n in enumerate(task_labels(task))}).to_numpy()
        if task == ENTITY_TASK and span_mode:
            prepared = entity_span_inputs(split.train, mark=config.entity_mark)
            rows.append(pd.DataFrame({"text": [p.text for p in prepared], "task": task, "y": ids,
                                      "spans": [p.spans[0] for p in prepared]}))
            continue
        rows.append(pd.DataFrame({"text": model_texts(task, split.train, config), "task": task, "y": ids}))
    if comments is not None and len(comments):
        rows.append(pd.DataFrame({"text": comments["text"].map(model_text), "task": "comments",
                                  "y": tag_ids(comments["label"])}))
    table = pd.concat(rows, ignore_index=True)
    table = table[table["text"] != ""].reset_index(drop=True)
    tokenized = tokenizer(table["text"].tolist(), truncation=True, max_length=config.max_length,
                          return_offsets_mapping=span_mode)
    encoded = tokenized["input_ids"]
    lengths = np.array([len(x) for x in encoded])
    targets = {task: np.where(table["task"] == task, table["y"], IGNORE).astype(np.int64) for task in labels}
    # span mode: each entity row's mention tokens; a row whose mention was cut off or not found is not trained on
    entity_positions: list[list[int]] = [[] for _ in range(len(table))]
    if span_mode:
        for i in np.flatnonzero((table["task"] == ENTITY_TASK).to_numpy()):
            entity_positions[i] = span_positions(tokenized["offset_mapping"][i], table["spans"].iloc[i])
        unread = [i for i in np.flatnonzero((table["task"] == ENTITY_TASK).to_numpy()) if not entity_positions[i]]
        targets[ENTITY_TASK][unread] = IGNORE
        log.info("entity rows without a readable mention (not trained on): %d", len(unread))
    comment_tags = np.where(table["task"] == "comments", table["y"], IGNORE).astype(np.int64)
    comment_weights = class_weights(comment_tags, 2, power=config.class_weight_power).to(device)
    soft = teacher_targets(config.teacher, table, device=device) if config.teacher else {}
    teacher_record = {"teacher_version": model_version(Path(config.teacher))} if config.teacher else {}
    losses = {
        task: torch.nn.CrossEntropyLoss(
            weight=class_weights(targets[task], len(names), power=config.class_weight_power).to(device),
            ignore_index=IGNORE,
            label_smoothing=config.label_smoothing,
        )
        for task, names in labels.items()
    }

    head_params = list(network.heads.parameters())
    encoder_params = [p for p in network.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": config.encoder_lr()}, {"params": head_params, "lr": config.lr_heads}],
        weight_decay=config.weight_decay,
        # One fused kernel over all parameters: the per-tensor loop was a quarter of a full
        # fine-tuning step on 2 CPU cores (py-spy), most of it on the 11.7M-row embedding matrix.
        fused=True,
    )
    steps_per_epoch = -(-len(table) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    warmup = max(1, int(total_steps * config.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    eval_every = max(1, steps_per_epoch // max(1, config.evals_per_epoch))
    rng = np.random.default_rng(config.seed)

    best = {"score": -1.0, "step": 0}
    history: list[dict] = []
    stale = step = 0
    running = None
    bar = tqdm(total=total_steps, desc=f"train ({config.mode})", disable=not config.progress, dynamic_ncols=True)

    snapshots: collections.deque = collections.deque(maxlen=max(1, config.average_last))

    def calibrate_and_save(logits: dict, out: Path, *, extra: dict) -> tuple[dict, str]:
        """Fit each head's temperature on the validation logits, write the model folder ``out``."""
        temperature = {task: 1.0 for task in labels}
        for task, value in logits.items():
            y = torch.tensor([task_labels(task).index(x) for x in splits[task].val["label"]])
            temperature[task] = fit_temperature(value, y)
        calibrated = {task: report(task, value, splits[task], temperature=temperature[task])
                      for task, value in logits.items()}
        seconds = time.monotonic() - started
        model_config = _model_config(config, labels=labels, temperature=temperature, metrics=calibrated,
                                     history=history, extra={**extra, "seconds": round(seconds, 1),
                                     "device": device.type, "bf16": bf16, "threads": torch.get_num_threads(),
                                     "train_rows": {**{t: len(s.train) for t, s in splits.items()},
                                                    "comments": int((comment_tags != IGNORE).sum())},
                                     "val_rows": {t: len(s.val) for t, s in splits.items()},
                                     "test_rows": {t: len(s.test) for t, s in splits.items() if s.test is not None}})
        version = save_model(network, out=out, config=model_config)
        (out / "val_metrics.json").write_text(json.dumps(calibrated, indent=2) + "\n")
        return calibrated, version

    def checkpoint() -> dict:
        """Evaluate; on a new best, calibrate and save, so --out always holds the best model so far."""
        nonlocal stale
        logits = evaluate(network, tokenizer, splits, config=config, device=device, bf16=bf16)
        metrics = {task: report(task, value, splits[task]) for task, value in logits.items()}
        score = _score(metrics)
        entry = {"step": step, "epoch": round(step / steps_per_epoch, 2), "loss": running, "score": score,
                 **{f"{t}_macro_f1": m["macro_f1"] for t, m in metrics.items()},
                 **{f"{t}_accuracy": m["accuracy"] for t, m in metrics.items()}}
        history.append(entry)
        log.info("eval %s", entry)
        bar.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
        if config.average_last:
            snapshots.append((step, {k: v.detach().float().cpu().clone() for k, v in network.state_dict().items()}))
        if score <= best["score"]:
            stale += 1
            return best
        stale = 0
        calibrated, version = calibrate_and_save(logits, Path(config.out), extra={"best_step": step, **teacher_record})
        return {"score": score, "step": step, "metrics": calibrated, "version": version}

    done = False
    for epoch in range(config.epochs):
        for batch_index in _batches(lengths, batch_size=config.batch_size, rng=rng):
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in batch_index]}, return_tensors="pt")
            entity_mask = None
            if span_mode:
                entity_mask = torch.zeros_like(batch["attention_mask"])
                for row, i in enumerate(batch_index):
                    entity_mask[row, entity_positions[i]] = 1
                entity_mask = entity_mask.to(device)
            with autocast_context(device, bf16):
                logits = network(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                 entity_mask=entity_mask)
            loss = torch.zeros((), device=device)
            for task in splits:
                y = torch.from_numpy(targets[task][batch_index]).to(device)
                if (y != IGNORE).any():
                    loss = loss + losses[task](logits[task], y)
            tags = torch.from_numpy(comment_tags[batch_index]).to(device)
            if (tags != IGNORE).any():
                loss = loss + config.comment_weight * binary_tag_loss(logits["sentiment"], tags, weights=comment_weights)
            for task, targets_soft in soft.items():
                loss = loss + config.distill_weight * distill_loss(logits[task], targets_soft[batch_index].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder_params + head_params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}", epoch=epoch + 1, best=f"{max(best['score'], 0):.3f}")
            last = step >= total_steps
            if step % eval_every == 0 or last:
                best = checkpoint()
                if stale >= config.patience:
                    bar.write(f"early stop: no better validation macro-F1 for {stale} evaluations")
                    done = True
            if done or last:
                done = True
                break
        if done:
            break
    bar.close()
    if config.average_last and len(snapshots) > 1:
        steps = [at for at, _ in snapshots]
        network.load_state_dict(average_state_dicts([state for _, state in snapshots]))
        logits = evaluate(network, tokenizer, splits, config=config, device=device, bf16=bf16)
        score = _score({task: report(task, value, splits[task]) for task, value in logits.items()})
        history.append({"averaged_steps": steps, "score": score})
        bar.write(f"checkpoint average of steps {steps}: validation score {score:.4f} (best single {best['score']:.4f})")
        calibrate_and_save(logits, Path(config.out) / AVERAGED_DIR, extra={"averaged_steps": steps, **teacher_record})
    seconds = time.monotonic() - started
    return TrainResult(out=Path(config.out), version=best["version"], metrics=best["metrics"], seconds=seconds,
                       history=history)


def _model_config(config: TrainConfig, *, labels: dict, temperature: dict, metrics: dict, history: list,
                  extra: dict) -> dict:
    """The config.json of a model folder: what inference needs, and the record of how it was made."""
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
              if k not in ("out", "progress", "threads")}
    return {
        "name": MODEL_NAME,
        "base_model": config.base,
        "mode": config.mode,
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "target_modules": list(LORA_TARGETS)}
        if config.mode == "lora" else None,
        "max_length": config.max_length,
        "labels": labels,
        "languages": list(DEFAULT_LANGUAGES),  # every bundled training set is English
        "temperature": temperature,
        **({"entity_input": {"mark": config.entity_mark, "pooling": config.entity_pooling}} if ENTITY_TASK in labels else {}),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train": {**record, **extra},
        "metrics": {"validation": _summary(metrics)},
        "history": list(history),
    }


def _summary(metrics: dict) -> dict:
    return {task: {k: m[k] for k in ("n", "accuracy", "macro_f1", "nll", "ece")} for task, m in metrics.items()}
