"""``finpulse model``: predict with and serve the model; training (``models.training.cli``) and evaluation
(``models.evaluation.cli``) commands are registered into the same group."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def _precision(precision: str | None) -> str:
    from finpulse.settings import get_settings

    return precision or get_settings().model_precision


@click.group("model")
def cli() -> None:
    """The fine-tuned MiniLM sentiment + topic model."""


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
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "int8"]), default=None,
              help="auto: bf16 on a GPU or a CPU with native bf16, int8 linear layers on other CPUs "
                   "(default FINPULSE_MODEL_PRECISION).")
@click.option("--threads", type=int, default=None)
def predict_command(input_path, text_column, output, model_dir, explain, max_chunks, token_budget, entity_column,
                    precision, threads) -> None:
    """Score every row of a file; writes the input columns plus the prediction columns."""
    import pandas as pd

    from models.training.corpus import read_table
    from models.results import PREDICTION_COLUMNS
    from models.scorer import Scorer

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
    scorer = Scorer.load(model_dir, max_chunks=max_chunks, token_budget=token_budget,
                         precision=_precision(precision))
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
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "int8"]), default=None,
              help="auto: bf16 on a GPU or a CPU with native bf16, int8 linear layers on other CPUs "
                   "(default FINPULSE_MODEL_PRECISION).")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads per CPU worker.")
@click.option("--request-timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds a request may wait and run before the server answers 504.")
def serve_command(device, host, port, model_dir, max_batch_size, batch_timeout, workers_per_device, max_chunks,
                  token_budget, precision, threads, request_timeout) -> None:
    """Serve the model over HTTP (LitServe): POST /score, GET /health, /info, /metrics/."""
    from models.serve import default_device, run_server

    run_server(host=host, port=port, device=device or default_device(),
               model_dir=None if model_dir is None else str(model_dir), max_batch_size=max_batch_size,
               batch_timeout=batch_timeout, workers_per_device=workers_per_device, threads=threads,
               max_chunks=max_chunks, token_budget=token_budget, request_timeout=request_timeout,
               precision=_precision(precision))


# Training and evaluation commands live with their code; they import it only when invoked.
from models.evaluation.cli import register as _register_evaluation_commands  # noqa: E402
from models.training.cli import register as _register_training_commands  # noqa: E402

_register_training_commands(cli)
_register_evaluation_commands(cli)
