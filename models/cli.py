"""``finpulse model``: train, evaluate, predict with, serve and export the data of the sentiment + topic model."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


@click.group("model")
def cli() -> None:
    """The fine-tuned MiniLM sentiment + topic model."""


@cli.command("train")
@click.option("--mode", type=click.Choice(["lora", "full"]), default="lora", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model folder to write.")
@click.option("--base", default=None, help="Local HF encoder folder (default: the bundled all-MiniLM-L6-v2).")
@click.option("--sentiment-data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Your labelled CSV/JSONL; replaces the bundled sentiment data.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--label-map", default=None, help='Raw label -> name, e.g. "0=negative,1=positive,2=neutral".')
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-length", type=int, default=64, show_default=True)
@click.option("--lr", "lr_encoder", type=float, default=None, help="Encoder/LoRA learning rate (default per mode).")
@click.option("--lr-heads", type=float, default=2e-3, show_default=True)
@click.option("--lora-r", type=int, default=16, show_default=True)
@click.option("--lora-alpha", type=int, default=32, show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
              help="Label smoothing of the labelled heads' cross-entropy.")
@click.option("--class-weight-power", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Class balance of every loss: weights (mean count / count) ^ POWER; 0 is plain cross-entropy, "
                   "1 weighs each class the same in total.")
@click.option("--seed", type=int, default=13, show_default=True, help="Seed of training (and of the splits).")
@click.option("--split-seed", type=int, default=None,
              help="Seed of the data splits, when it differs from --seed (to compare training seeds on one split).")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Share of each bundled source held out from training.")
@click.option("--test-share", type=click.FloatRange(0, 0.9), default=0.5, show_default=True,
              help="Share of the held-out rows kept as a test split that training never looks at (the rest "
                   "selects checkpoints); `finpulse model split` writes it, `finpulse model eval` scores it.")
@click.option("--evals-per-epoch", type=int, default=2, show_default=True)
@click.option("--patience", type=int, default=3, show_default=True)
@click.option("--limit", type=int, default=None, help="Use only this many rows per source file (smoke tests).")
@click.option("--with-comments", is_flag=True,
              help="Also train the sentiment head on the bundled StockTwits comments' training part (weak bullish/bearish "
                   "tags, binary loss); their held-out part (comments-split, same --seed) is never trained on.")
@click.option("--comment-weight", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Weight of the comments' loss against the labelled heads'.")
@click.option("--with-entities", is_flag=True,
              help="Also train an entity head on the bundled SEntFiN (headline, entity) rows (held-out test headlines left out).")
@click.option("--average-last", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also write OUT/averaged: the mean of the weights at the last N evaluations (checkpoint averaging), calibrated the same way.")
@click.option("--teacher", type=click.Path(exists=True, file_okay=False), default=None,
              help="A model folder to distil from: the student also learns its sentiment and topic probabilities, on the labelled rows and the comments.")
@click.option("--distill-weight", type=float, default=1.0, show_default=True, help="Weight of the distillation loss (with --teacher).")
@click.option("--entity-mark/--no-entity-mark", default=True, show_default=True,
              help="With --with-entities: wrap the entity's mentions in the text in « » so the encoder sees where it is named.")
@click.option("--entity-pooling", type=click.Choice(["mean", "segment"]), default="mean", show_default=True,
              help="With --with-entities: the entity head reads the all-token mean (mean) or that plus the entity's own word pieces (segment).")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_command(mode, out, base, sentiment_data, text_column, label_column, label_map, epochs, max_steps,
                  batch_size, max_length, lr_encoder, lr_heads, lora_r, lora_alpha, class_weight_power, label_smoothing, seed, split_seed, val_fraction,
                  test_share, evals_per_epoch, patience, limit, with_comments, comment_weight, with_entities, average_last,
                  teacher, distill_weight, entity_mark, entity_pooling, threads, no_progress) -> None:
    """Train the two-head model (three with --with-entities) and write it (LoRA adapter or encoder, heads, config) to --out."""
    from models import corpus
    from models.network import DEFAULT_BASE
    from models.train import TrainConfig, train

    if sentiment_data is not None:
        sentiment_frames = [corpus.labelled_frame(sentiment_data, text_column=text_column, label_column=label_column,
                                                task="sentiment", label_map=corpus.parse_label_map(label_map))]
        source = f"user: {sentiment_data.name}"
    else:
        sentiment_frames, source = corpus.default_sentiment_frames(), "bundled: tweets sentiment + SEntFiN headlines"
    topic_frames = corpus.default_topic_frames()
    split_seed = seed if split_seed is None else split_seed
    if limit:
        sentiment_frames = [f.sample(n=min(limit, len(f)), random_state=split_seed) for f in sentiment_frames]
        topic_frames = [f.sample(n=min(limit, len(f)), random_state=split_seed) for f in topic_frames]
    sentiment = corpus.build_split("sentiment", sentiment_frames, val_fraction=val_fraction, seed=split_seed,
                                   test_share=test_share)
    topic = corpus.build_split("topic", topic_frames, val_fraction=val_fraction, seed=split_seed, test_share=test_share)
    comments = entity = None
    if with_comments:
        from models.evaluate_ood import comments_split

        comments = comments_split(seed=split_seed)[0]
        if limit:
            comments = comments.sample(n=min(limit, len(comments)), random_state=split_seed)
    if with_entities:
        from models.corpus import Split
        from models.entity import entity_splits

        entity = entity_splits(seed=split_seed, sentence_val_fraction=val_fraction)[0]
        if limit:
            entity = Split(task=entity.task, train=entity.train.sample(n=min(limit, len(entity.train)), random_state=split_seed),
                           val=entity.val.sample(n=min(limit, len(entity.val)), random_state=split_seed))
    config = TrainConfig(
        out=out, mode=mode, base=base or DEFAULT_BASE, seed=seed, split_seed=split_seed, val_fraction=val_fraction, test_share=test_share,
        max_length=max_length,
        batch_size=batch_size, epochs=epochs, max_steps=max_steps, lr_encoder=lr_encoder, lr_heads=lr_heads,
        lora_r=lora_r, lora_alpha=lora_alpha, class_weight_power=class_weight_power, label_smoothing=label_smoothing, evals_per_epoch=evals_per_epoch, patience=patience,
        sentiment_source=source, progress=not no_progress, threads=threads, comment_weight=comment_weight,
        comments_source="bundled: StockTwits self-tagged comments, training part" if with_comments else None,
        entity_source="bundled: SEntFiN entity rows, training headlines" if with_entities else None,
        entity_mark=entity_mark, entity_pooling=entity_pooling, average_last=average_last,
        teacher=teacher, distill_weight=distill_weight,
    )
    result = train(config, sentiment=sentiment, topic=topic, entity=entity, comments=comments)
    summary = {task: {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}
               for task, m in result.metrics.items()}
    click.echo(json.dumps({"out": str(result.out), "model_version": result.version,
                           "seconds": round(result.seconds, 1), "validation": summary}, indent=2))


def _print_report(report: dict, *, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{title}: n={report['n']}  accuracy={report['accuracy']:.4f}  "
                        f"macro-F1={report['macro_f1']:.4f}")
    for column in ("label", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, row in report["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    console.print(table)
    matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
    matrix.add_column("")
    for name in report["labels"]:
        matrix.add_column(name[:10], justify="right")
    for name, row in zip(report["labels"], report["confusion_matrix"], strict=True):
        matrix.add_row(name, *map(str, row))
    console.print(matrix)


@cli.command("eval")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--task", type=click.Choice(["sentiment", "topic"]), default="sentiment", show_default=True)
@click.option("--label-map", default=None, help='Raw label -> name, e.g. "0=negative,1=positive,2=neutral".')
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Model folder (default: FINPULSE_MODEL_DIR or the shipped model).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the metrics here as JSON.")
@click.option("--by", "group_column", default=None,
              help="Also report accuracy and macro-F1 per value of this column (e.g. `source` in the files "
                   "`finpulse model split` writes: tweets and SEntFiN headlines apart).")
@click.option("--threads", type=int, default=None)
def eval_command(data_path, text_column, label_column, task, label_map, model_dir, json_out, group_column, threads) -> None:
    """Accuracy, macro-F1, per-class P/R/F1 and the confusion matrix of one head on a labelled file."""
    from models import corpus
    from models.metrics import classification_report
    from models.scorer import Scorer

    _threads(threads)
    try:
        frame = corpus.labelled_frame(data_path, text_column=text_column, label_column=label_column, task=task,
                                    label_map=corpus.parse_label_map(label_map), group_column=group_column)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    scorer = Scorer.load(model_dir)
    predictions = scorer.score(frame["text"].tolist())
    predicted = [getattr(p, task) for p in predictions]
    keep = [i for i, p in enumerate(predicted) if p is not None]  # empty texts were dropped by labelled_frame
    report = classification_report([frame["label"][i] for i in keep], [predicted[i] for i in keep],
                                   labels=scorer.labels[task])
    report.update({"task": task, "data": str(data_path), "model_version": scorer.version})
    if group_column:
        report["by"] = {"column": group_column, "groups": {}}
        for group in sorted(frame["group"].unique()):
            rows = [i for i in keep if frame["group"][i] == group]
            part = classification_report([frame["label"][i] for i in rows], [predicted[i] for i in rows],
                                         labels=scorer.labels[task])
            report["by"]["groups"][group] = {k: part[k] for k in ("n", "accuracy", "macro_f1")}
    _print_report(report, title=f"{task} on {data_path.name}")
    for group, part in (report.get("by") or {}).get("groups", {}).items():
        click.echo(f"{group_column}={group}: n={part['n']} accuracy={part['accuracy']:.4f} macro_f1={part['macro_f1']:.4f}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@cli.command("predict")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A .csv or .jsonl file.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV to write.")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Model folder (default: FINPULSE_MODEL_DIR or the shipped model).")
@click.option("--explain", is_flag=True, help="Add an `evidence` column: top words behind the sentiment (read from the first chunk).")
@click.option("--max-chunks", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Read long texts over up to this many chunks of the model's max length.")
@click.option("--token-budget", type=click.IntRange(64), default=None,
              help="Padded tokens per model batch (default 4096 on CPU, 65536 on CUDA).")
@click.option("--entity-column", default=None,
              help="Also score sentiment towards the entity in this column (entity_* columns; needs a model with an entity head).")
@click.option("--threads", type=int, default=None)
def predict_command(input_path, text_column, output, model_dir, explain, max_chunks, token_budget, entity_column,
                    threads) -> None:
    """Score every row of a file; writes the input columns plus the prediction columns."""
    import pandas as pd

    from models.corpus import read_table
    from models.scorer import PREDICTION_COLUMNS, Scorer

    _threads(threads)
    table = read_table(input_path)
    if text_column not in table.columns:
        raise click.UsageError(f"{input_path} has no column {text_column!r}; columns: {list(table.columns)}")
    # Input columns that share a name with an output column keep their values under input_<name>.
    table = table.rename(columns={c: f"input_{c}" for c in table.columns if c in PREDICTION_COLUMNS + ["evidence"]})
    text_column = f"input_{text_column}" if text_column in PREDICTION_COLUMNS else text_column
    texts = [t if isinstance(t, str) else None for t in table[text_column].tolist()]
    if entity_column is not None and entity_column not in table.columns:
        raise click.UsageError(f"{input_path} has no column {entity_column!r}; columns: {list(table.columns)}")
    scorer = Scorer.load(model_dir, max_chunks=max_chunks, token_budget=token_budget)
    if entity_column is not None and "entity" not in scorer.labels:
        raise click.UsageError(f"model {scorer.version} has no entity head: train one with --with-entities")
    scored = scorer.score_frame(texts)
    if entity_column is not None:
        entities = [e if isinstance(e, str) else None for e in table[entity_column].tolist()]
        scored = pd.concat([scored, scorer.score_pairs(texts, entities).to_frame()], axis=1)
    if explain:
        from models.explain import explain as explain_texts, format_evidence

        scored["evidence"] = [format_evidence(e) for e in explain_texts(scorer, texts)]
    result = pd.concat([table.reset_index(drop=True), scored], axis=1)
    output.parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(output, index=False)
    counts = result["sentiment"].value_counts(dropna=False).to_dict()
    click.echo(f"wrote {len(result)} rows to {output} ({scorer.version}); sentiment counts {counts}")


@cli.command("serve")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Where the model runs (default: cuda when a GPU is visible, else cpu); with cuda, every visible GPU.")
@click.option("--host", type=click.Choice(["127.0.0.1", "0.0.0.0", "::"]), default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1024, 65535), default=8008, show_default=True)
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Model folder (default: FINPULSE_MODEL_DIR or the shipped model).")
@click.option("--max-batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Requests (each a list of texts) merged into one model pass.")
@click.option("--batch-timeout", type=click.FloatRange(0), default=0.01, show_default=True,
              help="Seconds a request waits for others to fill a batch.")
@click.option("--workers-per-device", type=click.IntRange(1), default=1, show_default=True)
@click.option("--max-chunks", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Chunks read per text when a request does not say.")
@click.option("--token-budget", type=click.IntRange(64), default=None,
              help="Padded tokens per model batch (default 4096 on CPU, 65536 on CUDA).")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads per CPU worker.")
@click.option("--request-timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds a request may wait and run before the server answers 504.")
def serve_command(device, host, port, model_dir, max_batch_size, batch_timeout, workers_per_device, max_chunks,
                  token_budget, threads, request_timeout) -> None:
    """Serve the model over HTTP (LitServe): POST /score, GET /health, /info, /metrics/."""
    from models.serve import default_device, run_server

    run_server(host=host, port=port, device=device or default_device(),
               model_dir=None if model_dir is None else str(model_dir), max_batch_size=max_batch_size,
               batch_timeout=batch_timeout, workers_per_device=workers_per_device, threads=threads,
               max_chunks=max_chunks, token_budget=token_budget, request_timeout=request_timeout)


@cli.command("split")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--test-share", type=click.FloatRange(0, 0.9), default=0.5, show_default=True)
def split_command(out, seed, val_fraction, test_share) -> None:
    """Write the bundled data's train/validation/test split (as training carves it) to CSV files."""
    from models import corpus

    out.mkdir(parents=True, exist_ok=True)
    for task, frames in (("sentiment", corpus.default_sentiment_frames()), ("topic", corpus.default_topic_frames())):
        split = corpus.build_split(task, frames, val_fraction=val_fraction, seed=seed, test_share=test_share)
        for part in ("train", "val", "test")[: 3 if test_share > 0 else 2]:
            path = out / f"{task}_{part}.csv"
            getattr(split, part).to_csv(path, index=False)
            click.echo(f"{path}: {len(getattr(split, part))} rows")


@cli.command("baselines")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--threads", type=int, default=None)
def baselines_command(json_out, seed, val_fraction, threads) -> None:
    """VADER and the frozen base + logistic-regression head, on the bundled validation split."""
    from models import baselines, corpus

    _threads(threads)
    sentiment = corpus.build_split("sentiment", corpus.default_sentiment_frames(), val_fraction=val_fraction, seed=seed)
    topic = corpus.build_split("topic", corpus.default_topic_frames(), val_fraction=val_fraction, seed=seed)
    results = {
        "vader": {"sentiment": baselines.vader_report(sentiment)},
        "frozen_base_logreg": {"sentiment": baselines.frozen_report(sentiment),
                               "topic": baselines.frozen_report(topic)},
    }
    for name, tasks in results.items():
        for task, report in tasks.items():
            _print_report(report, title=f"{name} / {task}")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(f"wrote {json_out}")


# Evaluation commands (out-of-domain data, checklist, calibration, faithfulness, entities) live in models/eval_cli.py.
from models.eval_cli import register as _register_eval_commands  # noqa: E402

_register_eval_commands(cli)
