"""Save/load round trips and the model version."""

from __future__ import annotations

import json

import pytest
import torch

from models.training.corpus import TASKS
from models.network import ADAPTER_FILE, CONFIG_FILE, load_model, merge_lora, model_version, resolve_base
from models.training.model_folder import new_network, save_model

LABELS = {task: list(names) for task, names in TASKS.items()}
TEXTS = ["Shares plunge after the company misses earnings", "Fed holds rates steady", "Record profit lifts stock"]


def _perturbed(mode: str):
    """A fresh network with every trainable weight nudged: LoRA's zero-initialised B (lora) or the
    whole encoder (full) then matters, so a model folder whose encoder part is not loaded fails."""
    network, tokenizer = new_network(base="sentence-transformers/all-MiniLM-L6-v2", labels=LABELS, mode=mode,
                                     lora_r=4, lora_alpha=8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in network.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        for head in network.heads.values():
            head.weight.add_(torch.randn(head.weight.shape, generator=generator))
    return network.eval(), tokenizer


def _probs(network, tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = network(batch["input_ids"], batch["attention_mask"])
    return {task: torch.softmax(value, -1) for task, value in logits.items()}


def _config(mode: str) -> dict:
    return {"name": "test", "base_model": "sentence-transformers/all-MiniLM-L6-v2", "mode": mode,
            "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "key", "value", "dense"]} if mode == "lora" else None,
            "max_length": 32, "labels": LABELS, "temperature": {"sentiment": 1.0, "topic": 1.0}}


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_save_load_round_trip_gives_the_same_probabilities(tmp_path, mode):
    network, tokenizer = _perturbed(mode)
    before = _probs(network, tokenizer)
    version = save_model(network, out=tmp_path, config=_config(mode))
    loaded = load_model(tmp_path)
    after = _probs(loaded.network, loaded.tokenizer)
    assert loaded.version == version
    for task in LABELS:
        # LoRA is merged into the base weights at load time: same function, float rounding apart;
        # a full encoder is stored in fp16: same function, fp16 rounding of the weights apart.
        torch.testing.assert_close(after[task], before[task], atol=1e-5 if mode == "lora" else 5e-3, rtol=0)
        if mode == "lora":
            assert torch.equal(after[task].argmax(-1), before[task].argmax(-1))
    # Loading twice is bit-for-bit identical.
    again = _probs(load_model(tmp_path).network, loaded.tokenizer)
    for task in LABELS:
        assert torch.equal(again[task], after[task])


def test_version_changes_with_weights_and_temperature_but_not_metrics(tmp_path):
    network, _ = _perturbed("lora")
    config = _config("lora")
    first = save_model(network, out=tmp_path, config=config)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "metrics": {"anything": 1}}))
    assert model_version(tmp_path) == first
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "temperature": {"sentiment": 2.0, "topic": 1.0}}))
    assert model_version(tmp_path) != first
    with torch.no_grad():
        network.heads["sentiment"].bias.add_(1.0)
    assert save_model(network, out=tmp_path, config=config) != first


def test_unknown_base_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        new_network(base=str(tmp_path), labels=LABELS, mode="lora")


def test_full_mode_round_trip_needs_the_saved_encoder(tmp_path):
    """The perturbation reaches the encoder: the untuned base with the saved heads is a different function."""
    network, tokenizer = _perturbed("full")
    save_model(network, out=tmp_path, config=_config("full"))
    loaded = _probs(load_model(tmp_path).network, tokenizer)
    base, _ = new_network(base="sentence-transformers/all-MiniLM-L6-v2", labels=LABELS, mode="full")
    base.heads.load_state_dict(network.heads.state_dict())
    untuned = _probs(base.eval(), tokenizer)
    assert not torch.allclose(loaded["sentiment"], untuned["sentiment"], atol=1e-3)


def test_merge_lora_equals_peft_merge_and_unload(tmp_path):
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModel

    network, _ = _perturbed("lora")
    save_model(network, out=tmp_path, config=_config("lora"))
    adapter = load_file(tmp_path / ADAPTER_FILE)
    folder = resolve_base("sentence-transformers/all-MiniLM-L6-v2")

    ours = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    assert merge_lora(ours, adapter, scaling=8 / 4) == 6 * 6  # 6 layers x (q, k, v, 3 dense)
    wrapped = get_peft_model(AutoModel.from_pretrained(folder, add_pooling_layer=False),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value", "dense"]))
    set_peft_model_state_dict(wrapped, adapter)
    theirs = wrapped.merge_and_unload().state_dict()
    base = AutoModel.from_pretrained(folder, add_pooling_layer=False).state_dict()
    changed = 0
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs[name], atol=1e-6, rtol=1e-5)
        changed += not torch.equal(value, base[name])
    assert changed == 36  # every targeted weight moved, nothing else
    with pytest.raises(ValueError, match="not a LoRA"):
        merge_lora(ours, {"base_model.model.encoder.layer.0.attention.self.query.weight": torch.zeros(1)}, scaling=1.0)


def test_entity_segment_mask_is_the_entity_word_pieces():
    from models.network import entity_segment_mask

    cls, sep, pad = 101, 102, 0
    ids = torch.tensor([[cls, 7, 8, sep, 9, 10, sep, pad], [cls, 9, 10, 11, sep, pad, pad, pad]])
    mask = (ids != pad).long()
    got = entity_segment_mask(ids, mask, sep_token_id=sep)
    assert got.tolist() == [[False, True, True, False, False, False, False, False],
                            [False, True, True, True, False, False, False, False]]  # a plain text: all its pieces


def _segment_network():
    labels = {**LABELS, "entity": ["negative", "neutral", "positive"]}
    network, tokenizer = new_network(base="sentence-transformers/all-MiniLM-L6-v2", labels=labels, mode="full",
                                     entity_pooling="segment")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for head in network.heads.values():
            head.weight.add_(torch.randn(head.weight.shape, generator=generator))
    return network.eval(), tokenizer, labels


def test_segment_pooling_reads_the_entity_pieces_and_round_trips(tmp_path):
    network, tokenizer, labels = _segment_network()
    assert network.heads["entity"].in_features == 2 * network.heads["sentiment"].in_features
    pairs = ["Acme [SEP] Acme slumps as Globex gains", "Globex [SEP] Acme slumps as Globex gains"]
    batch = tokenizer(pairs, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = network(batch["input_ids"], batch["attention_mask"])
        # The explainer's path (embeddings, no ids) cannot find the segment: the entity head is left out.
        embeds = network.encoder.get_input_embeddings()(batch["input_ids"])
        no_ids = network(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
    assert set(no_ids) == {"sentiment", "topic"}
    torch.testing.assert_close(no_ids["sentiment"], logits["sentiment"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits["entity"][0], logits["entity"][1])
    config = {**_config("full"), "labels": labels, "entity_input": {"mark": True, "pooling": "segment"}}
    save_model(network, out=tmp_path, config=config)
    loaded = load_model(tmp_path)
    assert loaded.network.entity_pooling == "segment"
    with torch.inference_mode():
        again = loaded.network(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(again["entity"], logits["entity"], atol=2e-2, rtol=0)  # fp16 encoder on disk


def test_model_version_counts_the_entity_input_only_when_recorded(tmp_path):
    network, _ = _perturbed("lora")
    config = _config("lora")
    before = save_model(network, out=tmp_path, config=config)
    assert save_model(network, out=tmp_path, config={**config, "entity_input": None}) == before
    marked = save_model(network, out=tmp_path, config={**config, "entity_input": {"mark": True, "pooling": "mean"}})
    assert marked != before


def test_unknown_entity_pooling_is_refused():
    with pytest.raises(ValueError, match="entity_pooling"):
        new_network(base="sentence-transformers/all-MiniLM-L6-v2", labels=LABELS, mode="full", entity_pooling="max")
