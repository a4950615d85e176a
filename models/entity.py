"""Entity-level (target-dependent) sentiment: the sentiment of a text *towards one entity*.

Design: the same encoder reads the pair as one sequence ``[CLS] entity [SEP] text [SEP]`` (the
tokenizer maps the literal ``[SEP]`` to its special token) and a third head, ``entity``
(negative / neutral / positive), reads it. A model's ``entity_input`` (``models.network.entity_input``)
says how: ``mark`` wraps each mention of the entity in the text in ``« »``, so the encoder sees
where the text speaks of it; ``pooling`` ``segment`` adds the mean of the entity's own word pieces
to the all-token mean the head reads. A model folder has the head when its ``config.json`` labels
include ``entity``; ``score_pairs`` refuses a model without one rather than guess. Pairs are read
as one chunk of the model's max length with the entity first, so the entity is never cut off;
text past the first chunk is not read (flagged ``truncated``).

Training data and its split: ``models.training.entity_data``; evaluation: ``models.evaluation.entity_eval``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.network import ENTITY_TASK
from models.results import EntityArrays
from models.scorer import has_entity_head
from models.text import model_text

_SPECIAL = ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")
MARK_OPEN, MARK_CLOSE = "«", "»"  # one word piece each in the BERT vocabulary, and rare in financial text


def strip_special(text: str) -> str:
    """``model_text`` of ``text`` with special-token literals (``[SEP]``, ``[CLS]`` ...) removed first."""
    for token in _SPECIAL:
        text = text.replace(token, " ")
    return model_text(text)


def mark_mentions(entity: str, text: str) -> str:
    """``text`` with each mention of ``entity`` wrapped in ``« »`` (case-insensitive; a mention starts at a
    word start, may carry a leading ``$`` and run on into a suffix: "Acme's", "$AAPL"); marks already in
    the text become quotes so only ours remain."""
    text = text.replace(MARK_OPEN, '"').replace(MARK_CLOSE, '"')
    if not entity:
        return text
    pattern = re.compile(r"(?<![\w$])\$?" + re.escape(entity), re.IGNORECASE)
    return pattern.sub(lambda m: f"{MARK_OPEN} {m.group(0)} {MARK_CLOSE}", text)


_TICKER_LIKE = re.compile(r"^[A-Z][A-Z0-9.\-]{0,5}$")


def _mention_pattern(name: str) -> re.Pattern:
    """A name's mentions: at a word start, an optional leading ``$``. A ticker-like name (``T``, ``AAPL``,
    ``BRK.B``, ``PSB``) matches as written, as a whole word or its plural ("PSBs"), else "T" would match every
    word starting with t; a name of one or two letters is not the start of a compound either ("T-Mobile").
    Other names match in any case and may run on into a suffix ("Acme's")."""
    if _TICKER_LIKE.match(name):
        after = r"(?:s|['’]s)?(?![\w&])" + (r"(?!-)" if len(name) <= 2 else "") + r"(?!\.\w)"
        return re.compile(r"(?<![\w$])\$?" + re.escape(name) + after)
    return re.compile(r"(?<![\w$])\$?" + re.escape(name), re.IGNORECASE)


def mention_spans(text: str, entities: Sequence[Sequence[str]]) -> list[list[tuple[int, int]]]:
    """Per entity (given by the names it goes by: ``["AAPL", "Apple"]``), the character spans of its
    mentions in ``text`` (``_mention_pattern``). Where mentions of two entities overlap, the longer one wins
    ("Tata Motors" over "Tata"), so no text is read for two entities; an entity named only inside another's
    mention ("SBI" of "SBI Life") reads that mention."""
    found: list[tuple[int, int, int]] = []  # (start, end, entity index)
    for index, names in enumerate(entities):
        for name in {n.strip().lstrip("$") for n in names if n and n.strip().lstrip("$")}:
            found.extend((m.start(), m.end(), index) for m in _mention_pattern(name).finditer(text))
    spans: list[list[tuple[int, int]]] = [[] for _ in entities]
    kept: list[tuple[int, int]] = []
    for start, end, index in sorted(found, key=lambda f: (f[0] - f[1], f[0])):  # longest first
        if not any(start < e and end > b for b, e in kept):
            kept.append((start, end))
            spans[index].append((start, end))
    for index in range(len(entities)):
        if not spans[index]:
            inside = {(b, e) for start, end, i in found if i == index for b, e in kept if b <= start and end <= e}
            spans[index] = sorted(inside)
    return [sorted(set(s)) for s in spans]


@dataclass(frozen=True)
class SpanText:
    """A text prepared for ``span`` pooling: what the encoder reads, and per entity its mentions' spans in it."""

    text: str
    spans: list[list[tuple[int, int]]]


def span_text(text: str, entities: Sequence[Sequence[str]], *, mark: bool) -> SpanText:
    """The model text of ``text`` (``models.text.model_text``) and each entity's mention spans in it; with
    ``mark`` every mention of every entity is wrapped in ``« »`` (its span then covers the marks), so the
    encoder sees where the text names a company."""
    # Special-token literals go too: a "[SEP]" typed into a tweet must not split what the model reads.
    cleaned = strip_special(text.replace(MARK_OPEN, '"').replace(MARK_CLOSE, '"'))
    spans = mention_spans(cleaned, entities)
    if not mark:
        return SpanText(cleaned, spans)
    moved: dict[tuple[int, int], tuple[int, int]] = {}  # a span in the cleaned text -> its marked span
    pieces, cursor, length = [], 0, 0
    for start, end in sorted({span for entity_spans in spans for span in entity_spans}):
        pieces.append(cleaned[cursor:start])
        length += start - cursor
        mention = f"{MARK_OPEN} {cleaned[start:end]} {MARK_CLOSE}"
        moved[(start, end)] = (length, length + len(mention))
        pieces.append(mention)
        length += len(mention)
        cursor = end
    pieces.append(cleaned[cursor:])
    return SpanText("".join(pieces), [[moved[span] for span in entity_spans] for entity_spans in spans])


def pair_text(entity: str, text: str, *, mark: bool = False) -> str:
    """The one sequence the entity head reads: ``entity [SEP] text`` (special-token literals in the inputs removed;
    with ``mark`` the entity's mentions in the text wrapped in ``« »``)."""
    return _join(strip_special(entity), strip_special(text), mark=mark)


def _join(entity: str, text: str, *, mark: bool) -> str:
    """``pair_text`` of an entity and a text already stripped of special-token literals."""
    return f"{entity} [SEP] {mark_mentions(entity, text) if mark else text}"


def pair_texts(frame: pd.DataFrame, *, mark: bool) -> list[str]:
    """``pair_text`` of each row of an entity frame (columns ``entity`` and ``title``)."""
    return [pair_text(e, t, mark=mark) for e, t in zip(frame["entity"], frame["title"], strict=True)]


def score_pairs(scorer, texts: Sequence[str | None], entities: Sequence[str | None]) -> EntityArrays:
    """Sentiment towards ``entities[i]`` in ``texts[i]``, one batch for all pairs (what the pipeline calls per Arrow batch)."""
    if not has_entity_head(scorer):
        raise ValueError(f"model {scorer.version} has no entity head (labels {sorted(scorer.labels)}); "
                         "train one with `finpulse model train --with-entities`")
    texts, entities = list(texts), list(entities)
    if len(texts) != len(entities):
        raise ValueError(f"{len(texts)} texts but {len(entities)} entities")
    if scorer.entity_input["pooling"] == "span":
        return _score_pairs_by_text(scorer, texts, entities)
    n = len(texts)
    # cleaned once: a pair is readable when both its entity and its text keep something
    cleaned = [(strip_special(e), strip_special(t)) if isinstance(t, str) and isinstance(e, str) else ("", "")
               for t, e in zip(texts, entities, strict=True)]
    mark = scorer.entity_input["mark"]
    pairs = [_join(e, t, mark=mark) if e and t else None for e, t in cleaned]
    distributions, truncated = scorer.probabilities(pairs, max_chunks=1)
    probs = distributions[ENTITY_TASK]
    ok = ~np.isnan(probs).any(1)
    names = np.asarray(scorer.labels[ENTITY_TASK], dtype=object)
    sentiment = np.full(n, None, dtype=object)
    sentiment[ok] = names[probs[ok].argmax(1)]
    column = {name: probs[:, k].astype(np.float32) for k, name in enumerate(scorer.labels[ENTITY_TASK])}
    return EntityArrays(model_version=scorer.version, status=np.where(ok, "ok", "empty").astype(object),
                        sentiment=sentiment, p_negative=column["negative"], p_neutral=column["neutral"],
                        p_positive=column["positive"], truncated=np.asarray(truncated, dtype=bool))


def _score_pairs_by_text(scorer, texts: list[str | None], entities: list[str | None]) -> EntityArrays:
    """``score_pairs`` for a ``span`` model: each distinct readable text is read once for all its entities."""
    first: dict[str, int] = {}
    asked: list[list[list[str]]] = []
    where: list[tuple[int, int] | None] = []  # pair -> (distinct text, entity position in it)
    for text, entity in zip(texts, entities, strict=True):
        if not isinstance(text, str) or not isinstance(entity, str) or not strip_special(entity):
            where.append(None)
            continue
        index = first.setdefault(text, len(first))
        if index == len(asked):
            asked.append([])
        where.append((index, len(asked[index])))
        asked[index].append([entity])
    _, arrays = scorer.score_documents(list(first), asked, max_chunks=1)
    flat = np.concatenate([[0], np.cumsum([len(a) for a in asked])]).astype(np.int64)
    take = [int(flat[w[0]] + w[1]) for w in where if w is not None]
    out = EntityArrays.empty(len(texts), model_version=scorer.version)
    rows = [i for i, w in enumerate(where) if w is not None]
    for name in EntityArrays.ARRAY_FIELDS:
        getattr(out, name)[rows] = getattr(arrays, name)[take]
    return out
