"""score_arrays: long texts over K chunks, token-budget batches, empty input, alignment, device choice, the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.network import SHIPPED_DIR
from models.scorer import (
    resolve_precision,
    ScoreArrays,
    Scorer,
    autocast_dtype_for,
    chunk_weights,
    get_scorer,
    resolve_device,
    token_budget_batches,
)

# A neutral title + lead longer than one 64-piece chunk, then a strongly negative body.
LEAD = ("Acme Corp publishes its quarterly report\nAcme Corp, the industrial group based in Ohio, published its "
        "report for the third quarter on Tuesday. The report covers the divisions for machinery, logistics and "
        "services. The company will hold a call with analysts and investors on Wednesday morning, and the annual "
        "general meeting takes place in May.")
NEGATIVE_BODY = (" Shares plunged after the company missed earnings badly and slashed its guidance. Losses mounted, "
                 "the bank cut its credit line, and regulators opened a fraud probe into the accounts. Analysts "
                 "downgraded the stock to sell as the outlook collapsed.")
SHORT = ["Shares plunge after the company misses earnings and cuts guidance",
         "Profit jumps 40% on record sales; analysts upgrade the stock to buy", "Fed holds rates steady"]


@pytest.fixture(scope="module")
def fp32_scorer(shipped_scorer):
    """The shipped network in fp32: batch composition then changes results only by float rounding."""
    return Scorer(model=shipped_scorer.model, device="cpu", precision="fp32")


def _pieces(scorer, text):
    return len(scorer.model.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_negative_body_beyond_the_first_chunk_counts_with_k4_not_k1(fp32_scorer):
    article = LEAD + NEGATIVE_BODY * 2
    per_chunk = fp32_scorer.max_length - 2
    assert _pieces(fp32_scorer, LEAD) > per_chunk  # chunk 1 holds only the neutral lead
    expected_chunks = -(-_pieces(fp32_scorer, article) // per_chunk)
    assert 2 < expected_chunks <= 4
    k1 = fp32_scorer.score_arrays([article], max_chunks=1)
    k4 = fp32_scorer.score_arrays([article], max_chunks=4)
    assert k1.n_chunks.tolist() == [1] and k1.truncated.tolist() == [True]
    assert k4.n_chunks.tolist() == [expected_chunks] and k4.truncated.tolist() == [False]
    assert k4.p_negative[0] > k1.p_negative[0] + 0.2
    # The lead alone reads as it did before chunking: K=1 on the article == scoring the first chunk.
    assert k1.sentiment[0] == "neutral"
    # Beyond K chunks the rest is left unread and flagged.
    long = fp32_scorer.score_arrays([LEAD + NEGATIVE_BODY * 20], max_chunks=4)
    assert long.n_chunks.tolist() == [4] and long.truncated.tolist() == [True]


def test_k1_reads_what_the_old_single_window_read(fp32_scorer):
    """K=1 == the tokenizer's own truncation to max_length (the pre-chunking behaviour)."""
    article = LEAD + NEGATIVE_BODY
    tokenizer = fp32_scorer.model.tokenizer
    batch = tokenizer([article], truncation=True, max_length=fp32_scorer.max_length, return_tensors="pt")
    with torch.inference_mode():
        logits = fp32_scorer.network(batch["input_ids"], batch["attention_mask"])["sentiment"]
    expected = torch.softmax(logits / fp32_scorer.temperature["sentiment"], -1)[0].numpy()
    got = fp32_scorer.score_arrays([article], max_chunks=1)
    np.testing.assert_allclose([got.p_negative[0], got.p_neutral[0], got.p_positive[0]], expected, atol=1e-5)


def test_chunk_weights_favour_the_lead_and_count_tokens():
    weights = chunk_weights([62, 62, 10], first_chunk_weight=2.0)
    np.testing.assert_allclose(weights, np.array([124, 62, 10]) / 196)
    assert chunk_weights([7]).tolist() == [1.0]


def test_token_budget_batches_respect_the_budget_and_cover_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 65, size=200).tolist() + [300]  # one longer than the budget
    batches = token_budget_batches(lengths, token_budget=256)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= 256 or len(batch) == 1
    assert len(batches) > 1
    assert token_budget_batches(lengths, token_budget=10**6, max_rows=50)[0].size == 50


def test_token_budget_batching_gives_the_same_results_as_one_by_one(fp32_scorer):
    texts = SHORT + [LEAD + NEGATIVE_BODY * 3, "Gold hits a record high", LEAD]
    one_chunk_per_batch = Scorer(model=fp32_scorer.model, device="cpu", precision="fp32",
                                 token_budget=fp32_scorer.max_length)
    together = one_chunk_per_batch.score_arrays(texts)
    big = Scorer(model=fp32_scorer.model, device="cpu", precision="fp32", token_budget=8192).score_arrays(texts)
    alone = [fp32_scorer.score_arrays([t]) for t in texts]
    for name in ("p_negative", "p_neutral", "p_positive", "topic_confidence"):
        single = np.concatenate([getattr(a, name) for a in alone])
        np.testing.assert_allclose(getattr(together, name), single, atol=1e-5)
        np.testing.assert_allclose(getattr(big, name), single, atol=1e-5)
    assert together.sentiment.tolist() == [a.sentiment[0] for a in alone] == big.sentiment.tolist()
    assert together.n_chunks.tolist() == [a.n_chunks[0] for a in alone]


def test_empty_inputs_are_flagged_not_scored(fp32_scorer):
    texts = [None, "", "   \n\t ", "\u200b\u200b", "https://t.co/abc", float("nan"), SHORT[0]]
    arrays = fp32_scorer.score_arrays(texts)
    assert len(arrays) == len(texts)
    assert arrays.status.tolist() == ["empty"] * 6 + ["ok"]
    assert arrays.sentiment.tolist()[:6] == [None] * 6 and arrays.topic.tolist()[:6] == [None] * 6
    for name in ("p_negative", "p_neutral", "p_positive", "topic_confidence"):
        values = getattr(arrays, name)
        assert values.dtype == np.float32 and np.isnan(values[:6]).all() and not np.isnan(values[6])
    assert arrays.n_chunks.dtype == np.int32 and arrays.n_chunks.tolist() == [0] * 6 + [1]
    assert arrays.truncated.dtype == bool and not arrays.truncated.any()
    assert len(fp32_scorer.score_arrays([])) == 0


def test_results_align_with_input_order_on_mixed_lengths(fp32_scorer):
    texts = [SHORT[0], LEAD + NEGATIVE_BODY * 5, None, SHORT[1], LEAD, "", SHORT[2], NEGATIVE_BODY]
    reference = fp32_scorer.score_arrays(texts)
    permutation = np.random.default_rng(3).permutation(len(texts))
    shuffled = fp32_scorer.score_arrays([texts[i] for i in permutation])
    inverse = np.argsort(permutation)
    for name in ScoreArrays.ARRAY_FIELDS:
        got, want = getattr(shuffled, name)[inverse], getattr(reference, name)
        if got.dtype == np.float32:
            np.testing.assert_allclose(got, want, atol=1e-5)
        else:
            assert got.tolist() == want.tolist(), name
    # Each row is the score of its own text.
    for i, text in enumerate(texts):
        alone = fp32_scorer.score_arrays([text])
        assert alone.status[0] == reference.status[i] and alone.n_chunks[0] == reference.n_chunks[i]
        assert np.allclose(alone.p_positive, reference.p_positive[i:i + 1], atol=1e-5, equal_nan=True)


def test_score_arrays_round_trip_through_json(fp32_scorer):
    arrays = fp32_scorer.score_arrays([SHORT[0], None, LEAD + NEGATIVE_BODY * 9])
    back = ScoreArrays.from_dict(json.loads(json.dumps(arrays.to_dict(), allow_nan=False)))
    assert back.model_version == arrays.model_version and len(back) == 3
    for name in ScoreArrays.ARRAY_FIELDS:
        got, want = getattr(back, name), getattr(arrays, name)
        assert got.dtype == want.dtype, name
        assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), name
    with pytest.raises(ValueError, match="differ in length"):
        ScoreArrays(**{**{n: getattr(arrays, n) for n in ScoreArrays.ARRAY_FIELDS}, "model_version": "x",
                       "status": arrays.status[:2]})


def test_precision_choice_per_device(monkeypatch):
    cuda = torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype_for(cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype_for(cuda) == torch.float16  # e.g. a T4 or V100: fp16, not emulated bf16
    assert autocast_dtype_for(cuda, precision="fp32") is None
    monkeypatch.setattr("models.scorer.bf16_supported", lambda device: True)
    assert autocast_dtype_for(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr("models.scorer.bf16_supported", lambda device: False)
    assert autocast_dtype_for(torch.device("cpu")) is None  # no native bf16: fp32
    # The GPU address Spark assigns is kept, not replaced by cuda:0.
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_get_scorer_loads_once_per_model_and_device_and_sets_threads():
    before = torch.get_num_threads()
    try:
        first = get_scorer(None, "cpu", threads=1)
        assert torch.get_num_threads() == 1
        assert get_scorer(str(SHIPPED_DIR), "cpu") is first  # same folder, spelled differently
        assert get_scorer(str(SHIPPED_DIR / ".." / "shipped"), device="cpu", threads=2) is first
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_inference_never_imports_peft():
    code = ("import sys; from models.scorer import Scorer; "
            "s = Scorer.load(device='cpu'); a = s.score_arrays(['Shares plunge', 'Gold hits a record']); "
            "assert list(a.status) == ['ok', 'ok']; "
            "print('peft' in sys.modules, any(m.startswith('peft.') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["False", "False"]


def test_probabilities_match_score_arrays(fp32_scorer):
    texts = [SHORT[0], None, LEAD + NEGATIVE_BODY * 2]
    distributions, truncated = fp32_scorer.probabilities(texts)
    arrays = fp32_scorer.score_arrays(texts)
    assert distributions["sentiment"].shape == (3, 3) and distributions["topic"].shape == (3, 20)
    assert np.isnan(distributions["topic"][1]).all()
    np.testing.assert_allclose(distributions["sentiment"][[0, 2], 0], arrays.p_negative[[0, 2]], atol=1e-6)
    np.testing.assert_allclose(distributions["topic"][[0, 2]].max(1), arrays.topic_confidence[[0, 2]], atol=1e-6)
    np.testing.assert_allclose(distributions["topic"][[0, 2]].sum(1), 1.0, atol=1e-5)
    assert truncated.tolist() == arrays.truncated.tolist()
