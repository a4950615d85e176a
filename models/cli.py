"""``finpulse model``: train, evaluate, predict with and export the data of the sentiment + topic model."""

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
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--evals-per-epoch", type=int, default=2, show_default=True)
@click.option("--patience", type=int, default=3, show_default=True)
@click.option("--limit", type=int, default=None, help="Use only this many rows per source file (smoke tests).")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_command(mode, out, base, sentiment_data, text_column, label_column, label_map, epochs, max_steps,
                  batch_size, max_length, lr_encoder, lr_heads, lora_r, lora_alpha, seed, val_fraction,
                  evals_per_epoch, patience, limit, threads, no_progress) -> None:
    """Train the two-head model and write it (LoRA adapter or encoder, heads, config) to --out."""
    from models import data
    from models.network import DEFAULT_BASE
    from models.train import TrainConfig, train

    if sentiment_data is not None:
        sentiment_frames = [data.labelled_frame(sentiment_data, text_column=text_column, label_column=label_column,
                                                task="sentiment", label_map=data.parse_label_map(label_map))]
        source = f"user: {sentiment_data.name}"
    else:
        sentiment_frames, source = data.default_sentiment_frames(), "bundled: tweets sentiment + SEntFiN headlines"
    topic_frames = data.default_topic_frames()
    if limit:
        sentiment_frames = [f.sample(n=min(limit, len(f)), random_state=seed) for f in sentiment_frames]
        topic_frames = [f.sample(n=min(limit, len(f)), random_state=seed) for f in topic_frames]
    sentiment = data.build_split("sentiment", sentiment_frames, val_fraction=val_fraction, seed=seed)
    topic = data.build_split("topic", topic_frames, val_fraction=val_fraction, seed=seed)
    config = TrainConfig(
        out=out, mode=mode, base=base or DEFAULT_BASE, seed=seed, val_fraction=val_fraction, max_length=max_length,
        batch_size=batch_size, epochs=epochs, max_steps=max_steps, lr_encoder=lr_encoder, lr_heads=lr_heads,
        lora_r=lora_r, lora_alpha=lora_alpha, evals_per_epoch=evals_per_epoch, patience=patience,
        sentiment_source=source, progress=not no_progress, threads=threads,
    )
    result = train(config, sentiment=sentiment, topic=topic)
    summary = {task: {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}
               for task, m in result.metrics.items()}
    click.echo(json.dumps({"out": str(result.out), "model_version": result.version,
                           "seconds": round(result.seconds, 1), "validation": summary}, indent=2))
