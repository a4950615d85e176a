"""Evaluation commands of ``finpulse model``: a labelled file, baselines, out-of-domain data, the checklist,
calibration, faithfulness, the entity head.

``register(group)`` adds them to the ``finpulse model`` group (``models/cli.py``); the group here
(``python -m models.evaluation.cli``) runs them on its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

MODEL_OPTION = click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                            default=None, help="Model folder (default: FINPULSE_MODEL_DIR or the shipped model).")
THREADS_OPTION = click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")


def _load_scorer(model_dir, threads):
    import torch

    from models.scorer import Scorer

    if threads:
        torch.set_num_threads(threads)
    return Scorer.load(model_dir)


def _write_json(report: dict, out: Path | None) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)

    def clean(value):  # NaN is not JSON
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    out.write_text(json.dumps(clean(report), indent=2, ensure_ascii=False) + "\n")
    click.echo(f"wrote {out}")


@click.group("model-eval")
def cli() -> None:
    """Evaluation commands (also under ``finpulse model``)."""


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
    from models.training import corpus
    from models.evaluation.metrics import classification_report
    from models.scorer import Scorer

    if threads:
        import torch

        torch.set_num_threads(threads)
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


@cli.command("baselines")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--threads", type=int, default=None)
def baselines_command(json_out, seed, val_fraction, threads) -> None:
    """VADER and the frozen base + logistic-regression head, on the bundled validation split."""
    from models.evaluation import baselines
    from models.training import corpus

    if threads:
        import torch

        torch.set_num_threads(threads)
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


@cli.command("eval-ood")
@click.option("--three-class", "three_class", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              multiple=True, help="File with negative/neutral/positive labels (unlabelled rows skipped). Repeatable.")
@click.option("--three-class-label-column", default="sentiment", show_default=True)
@click.option("--binary", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="File with bullish/bearish or Positive/Negative tags. Repeatable.")
@click.option("--binary-label-column", default=None, help="Tag column of --binary files (default: label, else sentiment).")
@click.option("--comments-heldout", is_flag=True, help="Also the bundled comments' held-out split (comments-split).")
@click.option("--seed", type=int, default=13, show_default=True, help="Seed of the comments split.")
@click.option("--heldout-fraction", type=float, default=0.2, show_default=True)
@click.option("--text-column", default="text", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@MODEL_OPTION
@THREADS_OPTION
def eval_ood_command(three_class, three_class_label_column, binary, binary_label_column, comments_heldout, seed,
                     heldout_fraction, text_column, json_out, model_dir, threads) -> None:
    """Sentiment on data the model never trained on: three-class files and weak binary tags (p_negative vs p_positive)."""
    from models.training.corpus import read_table
    from models.evaluation.ood import binary_report, three_class_report
    from models.training.comments import comments_split

    if not (three_class or binary or comments_heldout):
        raise click.UsageError("give --three-class, --binary or --comments-heldout")
    scorer = _load_scorer(model_dir, threads)
    report: dict = {"model_version": scorer.version, "three_class": {}, "binary": {}}
    for path in three_class:
        r = three_class_report(scorer, path, text_column=text_column, label_column=three_class_label_column)
        report["three_class"][path.name] = r
        click.echo(f"{path.name}: n={r['n']} accuracy={r['accuracy']:.3f} macro-F1={r['macro_f1']:.3f} "
                   f"predicted {r['predicted_counts']} (true {r['true_counts']}); "
                   f"negatives found {r['negatives_found']} of {r['negatives']}")
    for path in binary:
        column = binary_label_column or ("label" if "label" in read_table(path).columns else "sentiment")
        report["binary"][path.name] = binary_report(scorer, path, text_column=text_column, label_column=column)
    if comments_heldout:
        _, heldout = comments_split(heldout_fraction=heldout_fraction, seed=seed)
        name = f"comments_heldout(seed={seed},fraction={heldout_fraction})"
        report["binary"][name] = binary_report(scorer, frame=heldout)
    for name, r in report["binary"].items():
        click.echo(f"{name}: n={r['n']} accuracy={r['accuracy']:.3f} balanced={r['balanced_accuracy']:.3f} "
                   f"negative-tagged leaning negative {r['negative_tagged_leaning_negative']:.3f} "
                   f"(of {r['tags']['negative']}), positive-tagged leaning positive "
                   f"{r['positive_tagged_leaning_positive']:.3f} (of {r['tags']['positive']})")
    _write_json(report, json_out)


def _echo_rates(report: dict, *, prefix: str = "", note: str = "") -> None:
    """One line per capability, then the total, as ``name  passed/n  rate``."""
    for name, r in [*sorted(report["by_capability"].items()), ("all", report)]:
        click.echo(f"{prefix + name:<18} {r['passed']:>3}/{r['n']:<3} {r['pass_rate']:.0%}" + (note if name == "all" else ""))


@cli.command("checklist")
@click.option("--cases", "cases_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Checklist YAML (default: models/evaluation/data/checklist.yaml).")
@click.option("--entity-cases", "entity_cases_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Entity checklist YAML (default: models/evaluation/data/entity_checklist.yaml); run when the model has an entity head.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--show-failures", is_flag=True, help="Print every failed case.")
@MODEL_OPTION
@THREADS_OPTION
def checklist_command(cases_path, entity_cases_path, json_out, show_failures, model_dir, threads) -> None:
    """CheckList-style behavioural tests (slang, emojis, price targets, options, sarcasm, negation ...): pass rates;
    with an entity head also its cases (two companies, opposite fates, in one text)."""
    from models.evaluation.checklist import CHECKLIST_FILE, ENTITY_CHECKLIST_FILE, load_cases, load_entity_cases, run_checklist, run_entity_checklist
    from models.scorer import has_entity_head

    cases, margin = load_cases(cases_path or CHECKLIST_FILE)
    scorer = _load_scorer(model_dir, threads)
    report = run_checklist(scorer, cases, margin=margin)
    report["model_version"] = scorer.version
    report["entity"] = None
    if has_entity_head(scorer):
        report["entity"] = run_entity_checklist(scorer, load_entity_cases(entity_cases_path or ENTITY_CHECKLIST_FILE))
    _echo_rates(report)
    if show_failures:
        for case in report["cases"]:
            if not case["passed"]:
                s = case["scores"]
                click.echo(f"FAIL [{case['capability']}/{case['type']}] expect {case['expect']}: {case['text']!r} "
                           f"-> {s['sentiment']} (neg {s['p_negative']:.2f} pos {s['p_positive']:.2f})"
                           + (f" | {case['perturbed']!r} -> {case['perturbed_scores']['sentiment']} "
                              f"(polarity {s['polarity']:+.2f} -> {case['perturbed_scores']['polarity']:+.2f})"
                              if case["perturbed"] else ""))
    if report["entity"] is not None:
        entity = report["entity"]
        _echo_rates(entity, prefix="entity: ",
                    note=f"  (contrast texts with both entities right: {entity['contrast_texts_both_right']}/{entity['contrast_texts']})")
        if show_failures:
            for case in entity["cases"]:
                if not case["passed"]:
                    click.echo(f"FAIL [entity/{case['capability']}] {case['entity']} expect {case['expect']}: "
                               f"{case['text']!r} -> {case['sentiment']} (neg {case['p_negative']:.2f} pos {case['p_positive']:.2f})")
    _write_json(report, json_out)


@cli.command("calibration")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reliability plot PNG (needs matplotlib).")
@click.option("--ood", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="Also sentiment calibration on a negative/neutral/positive file (unlabelled rows skipped).")
@click.option("--ood-label-column", default="sentiment", show_default=True)
@click.option("--seed", type=int, default=13, show_default=True, help="Seed of the validation split.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@MODEL_OPTION
@THREADS_OPTION
def calibration_command(json_out, plot, ood, ood_label_column, seed, val_fraction, model_dir, threads) -> None:
    """ECE per head before/after temperature scaling on the validation split (plus cross-fit and OOD) and a reliability plot."""
    from models.evaluation.calibration import calibration_report, plot_reliability
    from models.evaluation.ood import _labelled_rows

    scorer = _load_scorer(model_dir, threads)
    ood_sets = {}
    for path in ood:
        frame = _labelled_rows(path, text_column="text", label_column=ood_label_column)
        ood_sets[path.name] = (frame["text"].tolist(), frame["label"].tolist())
    report = calibration_report(scorer, seed=seed, val_fraction=val_fraction, ood=ood_sets)
    for group in ("validation", "test", "out_of_domain"):
        for name, r in report.get(group, {}).items():
            click.echo(f"{group}/{name}: n={r['n']} ECE before (T=1) {r['before']['ece']:.4f}, after "
                       f"(T={r['after']['temperature']:.2f}) {r['after']['ece']:.4f}, cross-fit {r['cross_fit']['ece']:.4f}")
    _write_json(report, json_out)
    if plot:
        click.echo(f"wrote {plot_reliability(report, plot)}")


@cli.command("faithfulness")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Texts to explain (default: the bundled sentiment validation split).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--n", "n_texts", type=click.IntRange(1), default=300, show_default=True, help="Texts sampled.")
@click.option("--top-k", type=click.IntRange(1), default=5, show_default=True)
@click.option("--random-draws", type=click.IntRange(1), default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--explainer", type=click.Choice(["integrated-gradients", "stream"]), default="integrated-gradients",
              show_default=True, help="The evidence to test: `predict --explain`'s, or the stream's (what the pipeline stores).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@MODEL_OPTION
@THREADS_OPTION
def faithfulness_command(data_path, text_column, n_texts, top_k, random_draws, seed, explainer, json_out, model_dir,
                         threads) -> None:
    """Delete the words --explain reports and re-score: how often the predicted class's probability falls, vs random words."""
    import pandas as pd

    from models.training import corpus
    from models.evaluation.faithfulness import faithfulness_report

    if data_path is None:
        texts = corpus.build_split("sentiment", corpus.default_sentiment_frames(), val_fraction=0.1, seed=13).val["text"]
        source = "bundled sentiment validation split (seed 13, 10%)"
    else:
        table = corpus.read_table(data_path)
        if text_column not in table.columns:
            raise click.UsageError(f"{data_path} has no column {text_column!r}")
        texts, source = table[text_column], str(data_path)
    texts = pd.Series(texts).astype(str)
    texts = texts.sample(n=min(n_texts, len(texts)), random_state=seed).tolist()
    scorer = _load_scorer(model_dir, threads)
    from models.evaluation.faithfulness import EXPLAINERS

    report = faithfulness_report(scorer, texts, top_k=top_k, random_draws=random_draws, seed=seed,
                                 explain_fn=EXPLAINERS[explainer])
    report["explainer"] = explainer
    report["data"] = source
    for key in ("delete_top1_evidence", "delete_random_word", "delete_all_evidence", "delete_as_many_random_words"):
        r = report[key]
        if r["n"]:
            click.echo(f"{key:<30} n={r['n']:<5} probability falls {r['share_probability_falls']:.1%}  "
                       f"mean fall {r['mean_fall']:+.3f}  label flips {r['share_label_flips']:.1%}")
    _write_json(report, json_out)


@cli.command("entity-eval")
@click.option("--seed", type=int, default=13, show_default=True, help="Seed of the entity split (and the sentence split it follows).")
@click.option("--document-model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Model whose document label the baseline copies (default: --model).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@MODEL_OPTION
@THREADS_OPTION
def entity_eval_command(seed, document_model, json_out, model_dir, threads) -> None:
    """Entity-level sentiment on held-out SEntFiN entity rows (overall, mixed headlines) vs copying the document label."""
    from models.evaluation.entity_eval import entity_eval
    from models.training.entity_data import entity_splits
    from models.scorer import Scorer

    split, test = entity_splits(seed=seed)
    scorer = _load_scorer(model_dir, threads)
    document_scorer = Scorer.load(document_model) if document_model else scorer
    report = entity_eval(scorer, test, document_scorer=document_scorer)
    report.update({"model_version": scorer.version, "seed": seed,
                   "train_rows": len(split.train), "val_rows": len(split.val)})
    for method in ("copy_document_label", "entity_head"):
        if report[method] is None:
            click.echo(f"{method}: the model has no entity head")
            continue
        for subset in ("all", "mixed", "not_mixed"):
            r = report[method][subset]
            click.echo(f"{method:<20} {subset:<10} n={r['n']:<5} accuracy={r['accuracy']:.3f} macro-F1={r['macro_f1']:.3f}")
    _write_json(report, json_out)


COMMANDS = (eval_command, baselines_command, entity_eval_command, eval_ood_command, checklist_command, calibration_command, faithfulness_command)


def register(group: click.Group) -> None:
    """Add the evaluation commands to ``group`` (``finpulse model``)."""
    for command in COMMANDS:
        group.add_command(command)


if __name__ == "__main__":
    cli()
