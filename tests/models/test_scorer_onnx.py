"""Precision int8: the encoder in ONNX Runtime int8 (models.onnx_int8), its on-disk cache, and auto's choice."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pandas as pd
import pytest
import torch

from models.training.corpus import DATA_DIR

pytest.importorskip("onnxruntime")

TEXTS = [
    "Shares plunge after the company misses earnings and cuts guidance",
    "Profit jumps 40% on record sales; analysts upgrade the stock to buy",
    "The central bank holds rates steady and says it will watch inflation data",
    "$AAPL closes flat ahead of the product event",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def int8_scorer(shipped_scorer, onnx_cache, monkeypatch_module):
    from models.scorer import Scorer

    monkeypatch_module.setattr("models.onnx_int8.cache_dir", lambda: onnx_cache)
    return Scorer(model=shipped_scorer.model, device="cpu", precision="int8")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_int8_runs_the_encoder_in_onnx_runtime_and_agrees_with_fp32(shipped_scorer, int8_scorer):
    from models.onnx_int8 import OrtEncoder

    assert int8_scorer.precision == "int8" and isinstance(int8_scorer.network.encoder, OrtEncoder)
    # The heads are the loaded torch modules; the loaded network keeps its torch encoder (the explainer's).
    assert int8_scorer.network.heads is shipped_scorer.model.network.heads
    assert isinstance(shipped_scorer.model.network.encoder.encoder.layer[0].attention.self.query, torch.nn.Linear)
    fp32, int8 = shipped_scorer.score_arrays(TEXTS), int8_scorer.score_arrays(TEXTS)
    assert list(int8.sentiment) == list(fp32.sentiment)
    for name in ("p_negative", "p_neutral", "p_positive"):
        assert np.abs(getattr(int8, name) - getattr(fp32, name)).max() < 0.15, name
    assert int8.model_version == fp32.model_version


def test_int8_labels_agree_with_fp32_on_tweets(shipped_scorer, int8_scorer):
    texts = pd.read_csv(DATA_DIR / "twitter_financial_news_sentiment_train.csv.gz")["text"].sample(
        n=300, random_state=7).tolist()
    fp32, int8 = shipped_scorer.score_arrays(texts), int8_scorer.score_arrays(texts)
    assert (fp32.sentiment == int8.sentiment).mean() >= 0.97
    assert (fp32.topic == int8.topic).mean() >= 0.93
    assert abs(fp32.p_negative - int8.p_negative).max() < 0.5


def test_int8_entities_and_evidence_come_from_the_same_pass(shipped_scorer, int8_scorer):
    if "entity" not in shipped_scorer.labels:
        pytest.skip("the shipped model has no entity head")
    texts = ["Apple beats estimates while Samsung warns on profit"]
    entities = [[["Apple"], ["Samsung"]]]
    _, fp32 = shipped_scorer.score_documents(texts, entities)
    documents, int8 = int8_scorer.score_documents(texts, entities, evidence=True)
    assert list(int8.status) == list(fp32.status)
    assert np.abs(int8.p_positive - fp32.p_positive).max() < 0.2
    assert documents.evidence[0]  # the contributions read the ORT encoder's hidden states


def test_the_onnx_encoder_follows_torch_threads_and_refuses_embeddings(int8_scorer):
    encoder = int8_scorer.network.encoder
    ids = torch.tensor([[101, 7592, 2088, 102]])
    mask = torch.ones_like(ids)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.set_num_threads(2)
        two = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        torch.set_num_threads(before)
    assert {1, 2} <= set(encoder._sessions)
    assert one.dtype == torch.float32 and one.shape == (1, 4, 384)
    assert torch.allclose(one, two, atol=1e-4)
    with pytest.raises(ValueError, match="inputs_embeds"):
        encoder(inputs_embeds=torch.zeros(1, 4, 384), attention_mask=mask)


def test_the_export_is_cached_and_reused(shipped_scorer, int8_scorer, onnx_cache, monkeypatch):
    """A second load opens the cached file: no export, no quantisation."""
    import models.onnx_int8 as onnx_int8
    from models.scorer import Scorer

    files = sorted(onnx_cache.glob("*.onnx"))
    assert [f.name for f in files] == [f"{shipped_scorer.version}.{onnx_int8.INT8_RECIPE}.onnx"]
    assert not list(onnx_cache.glob(".export-*"))  # the scratch folder is gone
    stamp = files[0].stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_int8, "export_encoder", fail)
    monkeypatch.setattr(onnx_int8, "quantize", fail)
    again = Scorer(model=shipped_scorer.model, device="cpu", precision="int8")
    assert again.network.encoder.path == files[0] and files[0].stat().st_mtime_ns == stamp
    assert list(again.score_arrays(TEXTS[:2]).sentiment) == list(int8_scorer.score_arrays(TEXTS[:2]).sentiment)


def _export_in_child(args) -> str:
    cache, version = args
    import models.onnx_int8 as onnx_int8
    from models.network import load_model

    calls = []
    real = onnx_int8.export_encoder
    onnx_int8.export_encoder = lambda *a, **k: (calls.append(1), real(*a, **k))
    path = onnx_int8.cached_int8_encoder(load_model().network.encoder, version, cache=cache)
    return f"{path}|{len(calls)}"


@pytest.mark.timeout(300)
def test_parallel_workers_export_once(tmp_path):
    """Two processes loading at once (two Spark Python workers): one exports, the other waits and reuses."""
    from models.onnx_int8 import INT8_RECIPE

    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = pool.map(_export_in_child, [(tmp_path, "test-version")] * 2)
    paths = {r.split("|")[0] for r in results}
    exports = sorted(int(r.split("|")[1]) for r in results)
    assert len(paths) == 1 and os.path.isfile(paths.pop())
    assert exports == [0, 1]
    assert [p.name for p in tmp_path.glob("*.onnx")] == [f"test-version.{INT8_RECIPE}.onnx"]


def test_auto_picks_int8_on_a_cpu_without_native_bf16(monkeypatch):
    from models.scorer import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr("models.scorer.bf16_supported", lambda device: False)
    assert resolve_precision(cpu) == "int8"
    monkeypatch.setattr("models.scorer.bf16_supported", lambda device: True)
    assert resolve_precision(cpu) == "bf16"
    assert resolve_precision(cpu, "int8") == "int8"  # an explicit choice is kept
    with pytest.raises(ValueError, match="CPU only"):
        resolve_precision(torch.device("cuda", 0), "int8")


def test_auto_on_a_cpu_without_bf16_loads_the_onnx_encoder(shipped_scorer, onnx_cache, monkeypatch):
    from models.onnx_int8 import OrtEncoder
    from models.scorer import Scorer

    monkeypatch.setattr("models.scorer.bf16_supported", lambda device: False)
    monkeypatch.setattr("models.onnx_int8.cache_dir", lambda: onnx_cache)
    scorer = Scorer(model=shipped_scorer.model, device="cpu")
    assert scorer.precision == "int8" and scorer.autocast_dtype is None
    assert isinstance(scorer.network.encoder, OrtEncoder)
