"""Fixtures for the model tests: the shipped scorer (loaded once) and a tiny trained model."""

from __future__ import annotations

import pytest
import torch

from models.network import SHIPPED_DIR

# The machine is shared and small; two threads is what every model test assumes.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shipped_scorer():
    from models.scorer import Scorer

    if not (SHIPPED_DIR / "config.json").is_file():
        pytest.fail(f"no shipped model in {SHIPPED_DIR}: run `finpulse model train --out {SHIPPED_DIR}`")
    # fp32: the same numbers on every CPU (auto picks bf16 or int8 by the CPU; those are tested against this)
    return Scorer.load(device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A model trained end to end in seconds on a small sample of the bundled data."""
    from models.training.train import TrainConfig, train
    from tests.models.samples import tiny_splits

    sentiment, topic = tiny_splits(120, 12)
    out = tmp_path_factory.mktemp("tiny-model")
    config = TrainConfig(out=out, mode="lora", max_length=32, batch_size=32, epochs=3, max_steps=60,
                         evals_per_epoch=1, patience=10, progress=False, seed=3)
    result = train(config, sentiment=sentiment, topic=topic)
    return result, sentiment, topic


@pytest.fixture(scope="session")
def entity_model_without_comments(tmp_path_factory):
    """Issue 10's tiny model with an entity head and no comments, trained once for the session: the model
    server's entity tests serve it, and the comments test compares the model trained with comments to it
    (same seed and data otherwise)."""
    from tests.models.training.test_train_heads import issue10_data, train_tiny

    return train_tiny(tmp_path_factory.mktemp("entity-model"), issue10_data(), with_comments=False, with_entity=True)
