"""End-to-end training on a tiny sample: it must run in seconds and learn something."""

from __future__ import annotations

import json

from models.network import ADAPTER_FILE, CONFIG_FILE, HEADS_FILE


def test_tiny_training_beats_chance(tiny_model):
    result, sentiment, _ = tiny_model
    # Balanced 3-class validation: chance macro-F1 is about 1/3, a constant guess scores ~0.17.
    assert result.metrics["sentiment"]["macro_f1"] > 0.45
    assert result.metrics["sentiment"]["n"] == len(sentiment.val)
    # The score used for model selection went up during training.
    scores = [h["score"] for h in result.history]
    assert max(scores) > scores[0] or len(scores) == 1


def test_tiny_training_writes_a_loadable_folder(tiny_model):
    result, _, _ = tiny_model
    for name in (CONFIG_FILE, HEADS_FILE, ADAPTER_FILE):
        assert (result.out / name).is_file()
    config = json.loads((result.out / CONFIG_FILE).read_text())
    assert config["mode"] == "lora" and config["max_length"] == 32
    assert set(config["temperature"]) == {"sentiment", "topic"}
    assert all(t > 0 for t in config["temperature"].values())
    assert config["metrics"]["validation"]["sentiment"]["macro_f1"] == result.metrics["sentiment"]["macro_f1"]
    assert result.version.startswith("finpulse-minilm-lora-")
