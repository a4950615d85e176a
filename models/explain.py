"""Word-level evidence for a sentiment prediction: integrated gradients on the input embeddings.

For each text we interpolate from a baseline (every word piece replaced by [PAD], special tokens
kept) to the real embeddings, average the gradients of the predicted class's probability along
the path and multiply by (input - baseline). Word pieces are summed back into the words of the
(normalised) text, so "downgrade" gets one score, not "down" + "##grade".
"""

from __future__ import annotations

import torch

from models.text import model_text
from models.scorer import Scorer


def explain(scorer: Scorer, texts: list[str | None], *, top_k: int = 5, steps: int = 16) -> list[list[tuple[str, float]]]:
    """Top ``top_k`` words pushing toward the predicted sentiment, per text (empty list for empty text).

    Scores are attributions normalised by the text's total absolute attribution, so they read as
    shares. Runs in fp32 (gradients), one text at a time: meant for inspection, not the stream.
    """
    # The loaded fp32 network: an int8 one (Scorer precision int8) has no gradients to integrate.
    network, tokenizer = scorer.model.network, scorer.model.tokenizer
    embeddings = network.encoder.get_input_embeddings()
    results: list[list[tuple[str, float]]] = []
    for raw in texts:
        text = model_text(raw) if isinstance(raw, str) else ""
        if not text:
            results.append([])
            continue
        enc = tokenizer(text, truncation=True, max_length=scorer.max_length, return_offsets_mapping=True,
                        return_tensors="pt")
        input_ids = enc["input_ids"].to(scorer.device)
        mask = enc["attention_mask"].to(scorer.device)
        special = torch.tensor(
            tokenizer.get_special_tokens_mask(enc["input_ids"][0].tolist(), already_has_special_tokens=True),
            dtype=torch.bool, device=scorer.device,
        )
        baseline_ids = torch.where(special, input_ids[0], torch.full_like(input_ids[0], tokenizer.pad_token_id))
        with torch.no_grad():
            actual = embeddings(input_ids)[0]
            baseline = embeddings(baseline_ids.unsqueeze(0))[0]
            target = int(network(input_ids, mask)["sentiment"].argmax(-1))
        alphas = torch.linspace(1.0 / steps, 1.0, steps, device=scorer.device).view(-1, 1, 1)
        path = (baseline + alphas * (actual - baseline)).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = network(inputs_embeds=path, attention_mask=mask.expand(steps, -1))["sentiment"]
            prob = torch.softmax(logits, -1)[:, target].sum()
            (grads,) = torch.autograd.grad(prob, path)
        token_scores = ((actual - baseline) * grads.mean(0)).sum(-1).detach().cpu()
        word_scores: dict[int, float] = {}
        spans: dict[int, tuple[int, int]] = {}
        for position, word in enumerate(enc.word_ids(0)):
            if word is None:
                continue
            start, end = enc["offset_mapping"][0][position].tolist()
            word_scores[word] = word_scores.get(word, 0.0) + float(token_scores[position])
            lo, hi = spans.get(word, (start, end))
            spans[word] = (min(lo, start), max(hi, end))
        total = sum(abs(v) for v in word_scores.values()) or 1.0
        ranked = sorted(word_scores.items(), key=lambda kv: kv[1], reverse=True)
        # Punctuation-only "words" (%, ;) carry attribution too but are no evidence a reader can use.
        words = [(text[spans[w][0]:spans[w][1]], round(s / total, 4)) for w, s in ranked if s > 0]
        results.append([(w, s) for w, s in words if any(ch.isalnum() for ch in w)][:top_k])
    return results


def format_evidence(evidence: list[tuple[str, float]]) -> str:
    """``[("plunge", 0.41), ("cuts", 0.2)]`` -> ``"plunge:0.41; cuts:0.20"`` (a CSV-friendly cell)."""
    return "; ".join(f"{word}:{score:.2f}" for word, score in evidence)
