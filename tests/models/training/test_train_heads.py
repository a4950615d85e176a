"""Issue 10's training paths, proven end to end on tiny models (seconds, not shipped): weakly tagged
comments through the binary loss, and an entity head on (headline, entity) pairs."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from models.training.corpus import Split
from models.evaluation.entity_eval import entity_eval
from models.training.entity_data import entity_splits
from models.training.comments import comments_split
from models.scorer import Scorer
from models.training.train import TrainConfig, train
from tests.models.samples import tiny_splits


@functools.cache
def issue10_data():
    """Small samples of every training set issue 10 uses (sentiment, topic, entity pairs, comments) and the entity test rows."""
    sentiment, topic = tiny_splits(40, 4)
    split, test = entity_splits(seed=13)
    entity = Split(task="entity", train=split.train.groupby("label").sample(n=60, random_state=0),
                   val=split.val.groupby("label").sample(n=15, random_state=0))
    comments = comments_split(seed=13)[0].groupby("label").sample(n=80, random_state=0).reset_index(drop=True)
    return sentiment, topic, entity, test, comments


@pytest.fixture(scope="module")
def data():
    return issue10_data()


def train_tiny(out, data, *, with_comments: bool, with_entity: bool, entity_mark: bool = True,
               entity_pooling: str = "segment"):
    """A tiny model (seconds) on ``issue10_data()``."""
    sentiment, topic, entity, _, comments = data
    config = TrainConfig(out=out, mode="lora", max_length=40, batch_size=32, epochs=2, max_steps=24,
                         evals_per_epoch=1, patience=10, progress=False, seed=3, lr_encoder=2e-3, lr_heads=5e-3,
                         comment_weight=2.0, entity_mark=entity_mark, entity_pooling=entity_pooling)
    return train(config, sentiment=sentiment, topic=topic, entity=entity if with_entity else None,
                 comments=comments if with_comments else None)


@pytest.fixture(scope="module")
def issue10_model(tmp_path_factory, data):
    return train_tiny(tmp_path_factory.mktemp("issue10-model"), data, with_comments=True, with_entity=True)


def test_the_model_folder_has_an_entity_head_and_records_the_comments(issue10_model):
    config = json.loads((issue10_model.out / "config.json").read_text())
    assert config["labels"]["entity"] == ["negative", "neutral", "positive"]
    assert set(config["temperature"]) == {"sentiment", "topic", "entity"}
    assert config["train"]["train_rows"]["comments"] == 160
    assert "entity" in issue10_model.metrics
    assert config["entity_input"] == {"mark": True, "pooling": "segment"}


def test_score_pairs_reads_a_pair_the_way_training_did(issue10_model, data):
    """Validation during training and ``score_pairs`` at inference build the same marked pair: the
    recorded validation accuracy is what score_pairs gives on the same rows (temperature keeps argmax),
    and the marks matter to this model (unmarked pairs score differently)."""
    from models.entity import pair_texts

    scorer = Scorer.load(issue10_model.out, device="cpu", precision="fp32")
    assert scorer.entity_input == {"mark": True, "pooling": "segment"}
    val = data[2].val
    arrays = scorer.score_pairs(val["title"].tolist(), val["entity"].tolist())
    accuracy = float(np.mean(arrays.sentiment == val["label"].to_numpy()))
    assert accuracy == pytest.approx(issue10_model.metrics["entity"]["accuracy"], abs=1.5 / len(val))
    marked, _ = scorer.probabilities(pair_texts(val, mark=True), max_chunks=1)
    unmarked, _ = scorer.probabilities(pair_texts(val, mark=False), max_chunks=1)
    np.testing.assert_allclose(arrays.p_positive, marked["entity"][:, 2], atol=1e-6)
    assert not np.allclose(marked["entity"], unmarked["entity"], atol=1e-3)


def test_score_pairs_on_the_trained_model(issue10_model, data):
    scorer = Scorer.load(issue10_model.out, device="cpu", precision="fp32")
    texts = ["Gold shines on seasonal demand; Silver dull", "Gold shines on seasonal demand; Silver dull", "", "x"]
    arrays = scorer.score_pairs(texts, ["Gold", "Silver", "Gold", None])
    assert arrays.status.tolist() == ["ok", "ok", "empty", "empty"]
    total = arrays.p_negative[:2] + arrays.p_neutral[:2] + arrays.p_positive[:2]
    assert np.allclose(total, 1.0, atol=1e-4) and set(arrays.sentiment[:2]) <= {"negative", "neutral", "positive"}
    # The pair really carries the entity: the two entities of one headline get different probabilities.
    assert arrays.p_positive[0] != arrays.p_positive[1]
    # Sentence-level scoring of the same model is unaffected by the third head.
    assert scorer.score_arrays(["Shares plunge"]).status.tolist() == ["ok"]
    report = entity_eval(scorer, data[3].sample(n=60, random_state=0))
    assert report["entity_head"]["all"]["n"] == 60 and report["copy_document_label"]["all"]["n"] == 60


def test_predict_entity_column(issue10_model, tmp_path):
    from models.cli import cli

    source = tmp_path / "pairs.csv"
    pd.DataFrame({"text": ["Acme slumps as Globex gains", "Acme slumps as Globex gains"],
                  "ticker": ["Acme", "Globex"]}).to_csv(source, index=False)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["predict", "--input", str(source), "--output", str(out), "--model",
                                      str(issue10_model.out), "--entity-column", "ticker"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert {"sentiment", "entity_sentiment", "entity_p_negative", "entity_p_positive", "entity_status"} <= set(frame.columns)
    assert frame["entity_status"].tolist() == ["ok", "ok"]
    # Both rows have the same text, so the same document-level sentiment; the entity columns differ by entity.
    assert frame["p_negative"].nunique() == 1 and frame["entity_p_negative"].nunique() == 2


def test_predict_entity_column_needs_an_entity_head(tmp_path, tiny_model):
    from models.cli import cli

    source = tmp_path / "pairs.csv"
    pd.DataFrame({"text": ["Acme slumps"], "ticker": ["Acme"]}).to_csv(source, index=False)
    result = CliRunner().invoke(cli, ["predict", "--input", str(source), "--output", str(tmp_path / "o.csv"),
                                      "--model", str(tiny_model[0].out), "--entity-column", "ticker"])
    assert result.exit_code != 0 and "no entity head" in result.output
    result = CliRunner().invoke(cli, ["predict", "--input", str(source), "--output", str(tmp_path / "o.csv"),
                                      "--entity-column", "nope"])
    assert result.exit_code != 0 and "no column 'nope'" in result.output


def test_comments_pull_the_polar_margin_towards_their_tags(issue10_model, data, entity_model_without_comments):
    """Same seed and data, without the comments: on the tagged texts, the signed margin
    logit_pos - logit_neg (positive when the model leans the tagged way) is larger with them."""
    comments = data[4]
    sign = np.where(comments["label"] == "bullish", 1.0, -1.0)

    def signed_margin(model_dir):
        scorer = Scorer.load(model_dir, device="cpu", precision="fp32")
        distributions, _ = scorer.probabilities(comments["text"].tolist(), max_chunks=1)
        p = distributions["sentiment"]
        return float(np.nanmean(sign * (np.log(p[:, 2]) - np.log(p[:, 0]))))

    assert signed_margin(issue10_model.out) > signed_margin(entity_model_without_comments.out)


def test_calibration_covers_the_entity_head_on_validation_and_test_pairs(issue10_model):
    from models.evaluation.calibration import calibration_report

    split, test = entity_splits(seed=13)
    report = calibration_report(Scorer.load(issue10_model.out, device="cpu", precision="fp32"))
    assert set(report["validation"]) == {"sentiment", "topic", "entity"}
    assert report["validation"]["entity"]["n"] == len(split.val) and report["test"]["entity"]["n"] == len(test)
    entity_t = json.loads((issue10_model.out / "config.json").read_text())["temperature"]["entity"]
    assert report["test"]["entity"]["after"]["temperature"] == pytest.approx(entity_t)
    # "before" is the raw head (T = 1) on the held-out rows: the report's figure is that ECE, on those rows.
    from models.evaluation.calibration import BINS, entity_logits
    from models.evaluation.metrics import expected_calibration_error

    scorer = Scorer.load(issue10_model.out, device="cpu", precision="fp32")
    probs = torch.softmax(entity_logits(scorer, test), 1).numpy()
    targets = np.array([scorer.labels["entity"].index(label) for label in test["label"]])
    assert report["test"]["entity"]["before"]["ece"] == pytest.approx(
        expected_calibration_error(probs, targets, bins=BINS), abs=1e-6)


def test_distillation_pulls_the_student_towards_the_teacher(issue10_model, data, tmp_path):
    """Same seed and data, with and without the tiny issue-10 model as teacher: on the comments (which
    have no 3-class label; the teacher supplies one) the student's sentiment distribution is closer to
    the teacher's with distillation, and the folder records the teacher's version."""
    from models.training.train import distill_loss

    sentiment, topic, _, _, comments = data

    def student(out, teacher):
        config = TrainConfig(out=out, mode="lora", max_length=40, batch_size=32, epochs=2, max_steps=24,
                             evals_per_epoch=1, patience=10, progress=False, seed=5, lr_encoder=2e-3, lr_heads=5e-3,
                             teacher=teacher, distill_weight=5.0)
        return train(config, sentiment=sentiment, topic=topic, comments=comments)

    taught = student(tmp_path / "taught", str(issue10_model.out))
    alone = student(tmp_path / "alone", None)
    config = json.loads((taught.out / "config.json").read_text())
    assert config["train"]["teacher_version"] == issue10_model.version

    texts = comments["text"].tolist()
    target, _ = Scorer.load(issue10_model.out, device="cpu", precision="fp32").probabilities(texts, max_chunks=1)

    def divergence(model_dir):
        probs, _ = Scorer.load(model_dir, device="cpu", precision="fp32").probabilities(texts, max_chunks=1)
        import torch

        return float(distill_loss(torch.log(torch.from_numpy(probs["sentiment"])), torch.from_numpy(target["sentiment"])))

    assert divergence(taught.out) < divergence(alone.out)


def test_distill_loss_skips_rows_without_a_target():
    import torch

    from models.training.train import distill_loss

    logits = torch.tensor([[2.0, 0.0, -2.0], [0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[float("nan")] * 3, [0.2, 0.5, 0.3]])
    loss = distill_loss(logits, target)
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits[1:], -1), target[1:], reduction="batchmean")
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.all(logits.grad[0] == 0)  # the row without a target gets no gradient
    none = distill_loss(logits, torch.full((2, 3), float("nan")))
    assert none.item() == 0.0 and none.requires_grad


def test_teacher_targets_cover_each_heads_rows_and_the_comments(issue10_model):
    import torch

    from models.training.train import teacher_targets

    table = pd.DataFrame({"text": ["Shares plunge", "Fed holds rates", "to the moon", "Acme [SEP] Acme slumps"],
                          "task": ["sentiment", "topic", "comments", "entity"]})
    soft = teacher_targets(issue10_model.out, table, device=torch.device("cpu"))
    has = {task: (~value.isnan().any(1)).tolist() for task, value in soft.items()}
    assert has == {"sentiment": [True, False, True, False], "topic": [False, True, True, False]}
    assert torch.allclose(soft["sentiment"][[0, 2]].sum(1), torch.ones(2), atol=1e-5)
