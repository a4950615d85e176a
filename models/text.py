"""The text the model reads: one clean-up for training and inference alike (``model_text``).

Not ``ingest.normalize.normalize_text`` (which prepares a document for storage and keeps links):
this one is applied on top of it, only where the model reads text.
"""

from __future__ import annotations

import html
import re
import unicodedata

_URL = re.compile(r"https?://\S+|www\.\S+")
_SPACE = re.compile(r"\s+")
# Emoji glue that carries no meaning of its own: zero-width joiner, variation selectors, skin tones.
_EMOJI_GLUE = re.compile("[\u200d\ufe0e\ufe0f\U0001f3fb-\U0001f3ff]")
# Candidates for a pictograph (Unicode category "So", which holds the emojis and little else): no
# ASCII character is one, so ordinary punctuation never reaches the per-character check.
_SYMBOL = re.compile(r"[^\x00-\x7f\w\s]")
# One repeated: 🚀🚀🚀🚀 -> 3.
_SYMBOL_RUN = re.compile(r"([^\x00-\x7f\w\s])\1{3,}")


def _symbol_name(match: re.Match) -> str:
    char = match.group(0)
    if unicodedata.category(char) != "So":
        return char
    name = unicodedata.name(char, "")
    return f" {name.lower()} " if name else " "


def spell_emojis(text: str) -> str:
    """Pictographs as their Unicode names: ``🚀`` -> ``rocket``, ``📉`` -> ``chart with downwards trend``.

    MiniLM's vocabulary has no emojis (each became ``[UNK]``), yet on comments they often carry the
    sentiment; their names are plain words the encoder knows. Runs are capped at three repeats.
    """
    text = _EMOJI_GLUE.sub("", text)
    text = _SYMBOL_RUN.sub(lambda m: m.group(1) * 3 if unicodedata.category(m.group(1)) == "So" else m.group(0), text)
    return _SYMBOL.sub(_symbol_name, text)


def model_text(text: str) -> str:
    """The text the model reads: the one clean-up used by training and inference alike.

    Not ``ingest.normalize.normalize_text`` (which prepares a document for storage and keeps
    links); this one is applied on top of it, only where the model reads text.

    Links are dropped because a t.co link costs ~12 word pieces and carries no sentiment, and
    HTML entities (``&amp;``) are decoded because the tweet sets carry them raw, and emojis are
    spelled out (``spell_emojis``).
    """
    text = html.unescape(text)
    text = _URL.sub(" ", text)
    text = spell_emojis(text)
    return _SPACE.sub(" ", text).strip()
