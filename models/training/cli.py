"""Training commands of ``finpulse model``: train, and write the splits training carves.

``register(group)`` adds them to the ``finpulse model`` group (``models/cli.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("train")
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
@click.option("--entity-pooling", type=click.Choice(["mean", "segment", "span"]), default="mean", show_default=True,
              help="With --with-entities: mean / segment = a pass per (entity, text) pair, reading the all-token mean, "
                   "or that plus the entity's own pieces (the shipped model: mean); span = the entity head reads the "
                   "text's own pass (the text's mean and its mentions' pieces: one encoder pass per document for every "
                   "entity; measured in bench/model_reports round 5, not shipped).")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_command(mode, out, base, sentiment_data, text_column, label_column, label_map, epochs, max_steps,
                  batch_size, max_length, lr_encoder, lr_heads, lora_r, lora_alpha, class_weight_power, label_smoothing, seed, split_seed, val_fraction,
                  test_share, evals_per_epoch, patience, limit, with_comments, comment_weight, with_entities, average_last,
                  teacher, distill_weight, entity_mark, entity_pooling, threads, no_progress) -> None:
    """Train the two-head model (three with --with-entities) and write it (LoRA adapter or encoder, heads, config) to --out."""
    from models.training import corpus
    from models.network import DEFAULT_BASE
    from models.training.train import TrainConfig, train

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
        from models.training.comments import comments_split

        comments = comments_split(seed=split_seed)[0]
        if limit:
            comments = comments.sample(n=min(limit, len(comments)), random_state=split_seed)
    if with_entities:
        from models.training.corpus import Split
        from models.training.entity_data import entity_splits

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


@click.command("split")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--test-share", type=click.FloatRange(0, 0.9), default=0.5, show_default=True)
def split_command(out, seed, val_fraction, test_share) -> None:
    """Write the bundled data's train/validation/test split (as training carves it) to CSV files."""
    from models.training import corpus

    out.mkdir(parents=True, exist_ok=True)
    for task, frames in (("sentiment", corpus.default_sentiment_frames()), ("topic", corpus.default_topic_frames())):
        split = corpus.build_split(task, frames, val_fraction=val_fraction, seed=seed, test_share=test_share)
        for part in ("train", "val", "test")[: 3 if test_share > 0 else 2]:
            path = out / f"{task}_{part}.csv"
            getattr(split, part).to_csv(path, index=False)
            click.echo(f"{path}: {len(getattr(split, part))} rows")


@click.command("comments-split")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--heldout-fraction", type=click.FloatRange(0.01, 0.99), default=0.2, show_default=True)
def comments_split_command(out, seed, heldout_fraction) -> None:
    """Write the bundled StockTwits comments' train / held-out split (stratified by tag, fixed seed) as CSV."""
    from models.training.comments import comments_split

    train, heldout = comments_split(heldout_fraction=heldout_fraction, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("comments_train.csv", train), ("comments_heldout.csv", heldout)):
        frame.to_csv(out / name, index=False)
        click.echo(f"{out / name}: {len(frame)} rows {frame['label'].value_counts().to_dict()}")



COMMANDS = (train_command, split_command, comments_split_command)


def register(group: click.Group) -> None:
    """Add the training commands to ``group`` (``finpulse model``)."""
    for command in COMMANDS:
        group.add_command(command)
