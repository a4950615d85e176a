"""Which language a document is written in, as far as the model is concerned: by its script.

Ingest detects a language with py3langid (``ingest.normalize``), but the pipeline reads whatever
producer wrote to the topic, and a producer's ``lang`` may be missing or wrong (a replayed file of
Chinese posts tagged ``en``). The model reads only the languages its ``config.json`` records
(``Scorer.languages``, English for the shipped one), and what an English model cannot read at all is
text in another script. So this detector, dependency-free, counts the letters of the text (cashtags,
URLs and @mentions removed: they are Latin whatever the language) per Unicode script:

- a non-Latin script with at least half of the letters names the language: Han with any kana is
  ``ja`` (Japanese writes kanji and kana), Han alone ``zh``, Hangul ``ko``, Cyrillic ``ru``, Arabic
  ``ar``, Hebrew ``he``, Greek ``el``, Thai ``th``, Devanagari ``hi``, Hiragana/Katakana ``ja``;
- Latin with at least half of the letters is ``en`` (a Latin-script language the model does not read,
  German say, is not told apart here: that is py3langid's job in ingest);
- otherwise (no letters, or no script with half of them) ``None``: unknown, the model reads it.

:func:`unsupported_language` applies the model's language list: a document whose detected
language the model does not read gets status ``unsupported_language`` (``pipeline.process``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# (first code point, last code point, script) of the letters counted; anything else is "other".
_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x024F, "latin"), (0x1E00, 0x1EFF, "latin"),
    (0x0370, 0x03FF, "greek"), (0x1F00, 0x1FFF, "greek"),
    (0x0400, 0x052F, "cyrillic"),
    (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"), (0xFB50, 0xFDFF, "arabic"), (0xFE70, 0xFEFF, "arabic"),
    (0x0900, 0x097F, "devanagari"),
    (0x0E00, 0x0E7F, "thai"),
    (0x1100, 0x11FF, "hangul"), (0x3130, 0x318F, "hangul"), (0xAC00, 0xD7AF, "hangul"),
    (0x3040, 0x309F, "kana"), (0x30A0, 0x30FF, "kana"), (0x31F0, 0x31FF, "kana"), (0xFF66, 0xFF9F, "kana"),
    (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xF900, 0xFAFF, "han"), (0x20000, 0x2FA1F, "han"),
)
_LANGUAGE = {"latin": "en", "greek": "el", "cyrillic": "ru", "hebrew": "he", "arabic": "ar", "devanagari": "hi",
             "thai": "th", "hangul": "ko", "kana": "ja", "han": "zh"}
_NOISE = re.compile(r"https?://\S+|www\.\S+|[$#@][A-Za-z][\w.]*")
# Share of the letters a script needs to name the language.
DOMINANT = 0.5
UNSUPPORTED_LANGUAGE = "unsupported_language"


def _script(ch: str) -> str:
    code = ord(ch)
    for low, high, script in _RANGES:
        if low <= code <= high:
            return script
    return "other"


def scripts(text: str | None) -> Counter:
    """Letters of ``text`` per script (cashtags, hashtags, mentions and URLs left out)."""
    counts: Counter = Counter()
    for ch in _NOISE.sub(" ", text or ""):
        if ch.isalpha():
            counts[_script(ch)] += 1
    return counts


def detect_script_language(text: str | None) -> str | None:
    """ISO 639-1 code of the dominant script's language (``en`` only when Latin dominates), or None."""
    counts = scripts(text)
    total = sum(counts.values())
    if not total:
        return None
    # Japanese mixes kanji (Han) and kana: together they are one script, Japanese if any kana is there.
    cjk = counts["han"] + counts["kana"]
    if cjk / total >= DOMINANT:
        return "ja" if counts["kana"] else "zh"
    script, n = max(((s, c) for s, c in counts.items() if s not in ("han", "kana")), key=lambda sc: sc[1],
                    default=("other", 0))
    if script == "other" or n / total < DOMINANT:
        return None
    return _LANGUAGE[script]


def unsupported_language(text: str | None, languages: Iterable[str]) -> str | None:
    """The detected language when the model (reading ``languages``) cannot read ``text``, else None."""
    detected = detect_script_language(text)
    readable = {str(lang).lower() for lang in languages}
    if detected is None or detected in readable:
        return None
    return detected
