"""End-to-end training on a tiny sample: it must run in seconds and learn something."""

from __future__ import annotations

import json

import torch

from models.evaluation.metrics import classification_report
from models.network import ADAPTER_FILE, CONFIG_FILE, HEADS_FILE
from models.scorer import Scorer
from tests.models.samples import tiny_splits


def test_tiny_training_beats_chance(tiny_model):
    result, sentiment, _ = tiny_model
    # Balanced 3-class validation: chance macro-F1 is about 1/3, a constant guess scores ~0.17.
    assert result.metrics["sentiment"]["macro_f1"] > 0.45
    assert result.metrics["sentiment"]["n"] == len(sentiment.val)
    # The score used for model selection went up during training: 60 steps of ~18 per epoch,
    # one evaluation per epoch plus the last step, so there are several evaluations to compare.
    scores = [h["score"] for h in result.history]
    assert len(scores) >= 3
    assert max(scores) > scores[0]


def test_tiny_training_writes_a_loadable_folder(tiny_model):
    result, sentiment, _ = tiny_model
    for name in (CONFIG_FILE, HEADS_FILE, ADAPTER_FILE):
        assert (result.out / name).is_file()
    config = json.loads((result.out / CONFIG_FILE).read_text())
    assert config["mode"] == "lora" and config["max_length"] == 32
    assert set(config["temperature"]) == {"sentiment", "topic"}
    assert all(t > 0 for t in config["temperature"].values())
    assert config["metrics"]["validation"]["sentiment"]["macro_f1"] == result.metrics["sentiment"]["macro_f1"]
    assert result.version.startswith("finpulse-minilm-lora-")
    # Loadable means: the Scorer loads it and reproduces what training measured on validation.
    scorer = Scorer.load(result.out, device="cpu", max_chunks=1, precision="fp32")
    assert scorer.version == result.version and scorer.max_length == 32
    arrays = scorer.score_arrays(sentiment.val["text"].tolist())
    assert (arrays.status == "ok").all()
    reloaded = classification_report(sentiment.val["label"].tolist(), arrays.sentiment.tolist(),
                                     labels=["negative", "neutral", "positive"])
    # Training evaluated in its own batches (bf16 where native): a prediction or two may flip.
    assert abs(reloaded["macro_f1"] - result.metrics["sentiment"]["macro_f1"]) < 0.03


def test_full_mode_training_writes_an_encoder_the_scorer_loads(tmp_path):
    """`--mode full` end to end: a few optimizer steps move the encoder, and the folder scores like training saw."""
    from safetensors.torch import load_file

    from models.network import ENCODER_FILE, load_model
    from models.training.model_folder import new_network
    from models.training.train import TrainConfig, train

    sentiment, topic = tiny_splits(20, 3)
    config = TrainConfig(out=tmp_path, mode="full", max_length=24, batch_size=16, epochs=1, max_steps=4,
                         evals_per_epoch=1, patience=10, progress=False, seed=3, lr_encoder=1e-3)
    result = train(config, sentiment=sentiment, topic=topic)
    assert (tmp_path / ENCODER_FILE).is_file() and not (tmp_path / ADAPTER_FILE).exists()
    assert result.version.startswith("finpulse-minilm-full-")
    saved = load_file(tmp_path / ENCODER_FILE)
    base, _ = new_network(base=config.base, labels={"sentiment": ["a"], "topic": ["b"]}, mode="full")
    base_state = base.encoder.state_dict()
    assert all(value.dtype == torch.float16 for value in saved.values())  # half the size on disk
    assert any(not torch.equal(value.float(), base_state[name].half().float()) for name, value in saved.items())
    loaded = load_model(tmp_path)
    for name, value in loaded.network.encoder.state_dict().items():
        assert torch.equal(value, saved[name].float()), name
    arrays = Scorer.load(tmp_path, device="cpu", precision="fp32").score_arrays(["Shares plunge", "Gold hits a record"])
    assert arrays.status.tolist() == ["ok", "ok"] and arrays.model_version == result.version


def test_average_state_dicts_is_the_element_wise_mean():
    from models.training.train import average_state_dicts

    a = {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([0, 1])}
    b = {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([0, 1])}
    got = average_state_dicts([a, b])
    assert torch.equal(got["w"], torch.tensor([2.0, 4.0])) and torch.equal(got["ids"], b["ids"])
    half = average_state_dicts([{"w": torch.tensor([1.0], dtype=torch.float16)}, {"w": torch.tensor([2.0], dtype=torch.float16)}])
    assert half["w"].dtype == torch.float16 and half["w"].item() == 1.5


def test_checkpoint_averaging_writes_the_mean_of_the_last_evaluations(tmp_path, monkeypatch):
    """``average_last=2``: OUT/averaged holds the mean of the weights snapshotted at the last two
    evaluations, calibrated and loadable, next to the best single checkpoint in OUT."""
    from safetensors.torch import load_file

    from models.training import train as train_module
    from models.training.train import AVERAGED_DIR, TrainConfig, train

    sentiment, topic = tiny_splits(12, 5)
    seen = []
    real = train_module.average_state_dicts
    monkeypatch.setattr(train_module, "average_state_dicts", lambda states: seen.append(states) or real(states))
    # One evaluation per step (evals_per_epoch above the steps per epoch), no early stop.
    config = TrainConfig(out=tmp_path, mode="full", max_length=24, batch_size=16, epochs=1, max_steps=3,
                         evals_per_epoch=100, patience=100, progress=False, seed=3, lr_heads=5e-2, average_last=2)
    result = train(config, sentiment=sentiment, topic=topic)
    averaged = tmp_path / AVERAGED_DIR
    config_json = json.loads((averaged / CONFIG_FILE).read_text())
    assert config_json["train"]["averaged_steps"] == [2, 3] == result.history[-1]["averaged_steps"]
    (states,) = seen
    assert len(states) == 2 and not torch.equal(states[0]["heads.sentiment.weight"], states[1]["heads.sentiment.weight"])
    got = load_file(averaged / HEADS_FILE)
    for name, value in got.items():
        torch.testing.assert_close(value, (states[0][f"heads.{name}"] + states[1][f"heads.{name}"]) / 2)
    scorer = Scorer.load(averaged, device="cpu", precision="fp32")
    assert scorer.version != result.version and scorer.score_arrays(["Shares plunge"]).status.tolist() == ["ok"]
