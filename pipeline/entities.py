"""Rule-based entity linking: which tickers a document is about.

Three sources, in this order of precedence, one :class:`Link` per ticker:

- ``producer``: the contract's ``tickers`` (the crawler's configuration or its own cashtags);
- ``cashtag``: ``$TSLA`` / ``$brk.b`` in the title or text (not ``$5`` nor a currency like ``$USD``);
- ``alias``: a company name from the alias table (``pipeline/data/aliases.csv`` plus the CSVs in
  ``FINPULSE_PIPELINE_ALIASES_FILES``), e.g. "Tesla" -> TSLA.

Aliases match case-sensitively on word boundaries, as written in the table (plus their
ALL-CAPS form for headlines); one compiled pattern (a prefix trie of every alias) scans a text
once, whatever the table size. An alias written ``~Apple`` in the table is *ambiguous* (a common
word or name as well as a company): it links only when a market word ("shares", "Inc",
"earnings", "CEO", ...) is within :data:`CONTEXT_CHARS` characters of the mention.

Alias table format (CSV with header): ``ticker,name,aliases,exchange,country``; ``aliases`` is a
``|``-separated list, and the ``name`` itself is matched too. A later file's alias overrides an
earlier one's, so an operator's file can re-point or extend the shipped table.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SHIPPED_ALIASES = Path(__file__).resolve().parent / "data" / "aliases.csv"
CONTEXT_CHARS = 80
# The contract's ticker shape (finpulse.contract): letters, digits, '.', '-', at most 15.
_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,14}$")
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z][A-Za-z0-9]{0,9}(?:[.\-][A-Za-z0-9]{1,4})?)(?![\w])")
# "$USD 5bn" is money, not a ticker.
_CURRENCIES = frozenset({"USD", "US", "EUR", "GBP", "CAD", "AUD", "NZD", "HKD", "SGD", "CNY", "RMB", "JPY", "CHF"})
_CONTEXT = re.compile(
    r"\b(?:shares?|stocks?|Inc|Corp|Corporation|Co|plc|PLC|Ltd|NYSE|Nasdaq|NASDAQ|CEO|CFO|chief executive|"
    r"earnings|revenues?|profits?|sales|quarter(?:ly)?|Q[1-4]|guidance|outlook|forecast|dividends?|buybacks?|"
    r"investors?|analysts?|market cap|valuation|IPO|downgraded?|upgraded?|price target|rating|stake|"
    r"acquisition|acquires?|merger|deal|layoffs?|lawsuit|antitrust|regulators?|company|firm|brand|"
    r"rall(?:y|ies|ied)|slump(?:s|ed)?|plunge[sd]?|soar(?:s|ed)?|tumble[sd]?|jump(?:s|ed)?|fell|rose)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Link:
    """One ticker a document is about. ``mention`` is the text that matched (None for producer links);
    ``names`` are what the model looks for to find where the text speaks of it: the ticker, the mention
    and the ticker's names in the alias table."""

    entity: str
    linked_by: str  # producer | cashtag | alias
    mention: str | None = None
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alias:
    text: str
    ticker: str
    ambiguous: bool


def read_aliases(path: str | Path) -> list[Alias]:
    """The aliases of one table file; a clear error naming the file and line for a bad row."""
    path = Path(path)
    aliases: list[Alias] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"ticker", "name", "aliases"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: alias table lacks columns {sorted(missing)} (header: ticker,name,aliases,...)")
        for line, row in enumerate(reader, start=2):
            ticker = (row["ticker"] or "").strip().upper()
            if not _TICKER.match(ticker):
                raise ValueError(f"{path}:{line}: {row['ticker']!r} is not a ticker symbol")
            names = [(row["name"] or "").strip()] + (row["aliases"] or "").split("|")
            for name in names:
                name = name.strip()
                ambiguous = name.startswith("~")
                name = name.lstrip("~").strip()
                if name:
                    aliases.append(Alias(name, ticker, ambiguous))
    return aliases


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex alternation of ``words`` as a prefix trie: one pass, longest alias first at each point."""
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = True

    def render(node: dict) -> str:
        end = "" in node
        branches = [re.escape(char) + render(child) for char, child in sorted(node.items()) if char != ""]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if end:
            # Greedy optional: the longer alias wins ("Bank of America" over "Bank").
            return body + "?" if len(branches) == 1 and len(branches[0]) == 1 else "(?:" + body + ")?"
        return body

    return render(trie)


class EntityLinker:
    """Links documents to tickers with cashtags and an alias table (see the module docstring)."""

    def __init__(self, aliases: Sequence[Alias]):
        exact = {alias.text: alias for alias in aliases}  # later entries win
        caps = {}
        for alias in aliases:
            upper = alias.text.upper()
            if len(alias.text) >= 4 and upper not in exact:
                caps[upper] = Alias(upper, alias.ticker, alias.ambiguous)
        self.aliases: dict[str, Alias] = {**caps, **exact}
        names: dict[str, dict[str, None]] = {}
        for alias in exact.values():
            names.setdefault(alias.ticker, {})[alias.text] = None
        self._names = {ticker: tuple(found) for ticker, found in names.items()}
        pattern = _trie_pattern(self.aliases) if self.aliases else r"(?!x)x"
        self._pattern = re.compile(r"(?<![\w$&])(" + pattern + r")(?![\w&])")

    @classmethod
    def load(cls, extra_files: Sequence[str | Path] | str = ()) -> EntityLinker:
        """The shipped table plus ``extra_files`` (paths, or one comma-separated string), later ones winning."""
        if isinstance(extra_files, str):
            extra_files = [p.strip() for p in extra_files.split(",") if p.strip()]
        aliases = read_aliases(SHIPPED_ALIASES)
        for path in extra_files:
            aliases.extend(read_aliases(path))
        return cls(aliases)

    @property
    def tickers(self) -> set[str]:
        return {alias.ticker for alias in self.aliases.values()}

    def link(self, *, title: str | None, text: str, tickers: Sequence[str]) -> list[Link]:
        """One Link per ticker: producer tickers first, then cashtags, then aliases, each in text order."""
        links: dict[str, Link] = {}
        for ticker in tickers:
            ticker = ticker.strip().lstrip("$").upper()
            if ticker and ticker not in links:
                links[ticker] = Link(ticker, "producer", None)
        content = f"{title}\n{text}" if title else (text or "")
        for match in _CASHTAG.finditer(content):
            ticker = match.group(1).upper()
            if ticker in _CURRENCIES or not _TICKER.match(ticker) or ticker in links:
                continue
            links[ticker] = Link(ticker, "cashtag", match.group(0))
        for match in self._pattern.finditer(content):
            alias = self.aliases[match.group(1)]
            if alias.ticker in links:
                continue
            if alias.ambiguous and not self._in_market_context(content, match.start(), match.end()):
                continue
            links[alias.ticker] = Link(alias.ticker, "alias", match.group(1))
        return [Link(link.entity, link.linked_by, link.mention, self.names_of(link.entity, link.mention))
                for link in links.values()]

    def names_of(self, ticker: str, mention: str | None = None) -> tuple[str, ...]:
        """What a text may call ``ticker``: the ticker itself, ``mention`` and its names in the alias table."""
        found = [ticker, *([mention.lstrip("$")] if mention else []), *self._names.get(ticker, ())]
        return tuple(dict.fromkeys(found))

    @staticmethod
    def _in_market_context(content: str, start: int, end: int) -> bool:
        window = content[max(0, start - CONTEXT_CHARS): end + CONTEXT_CHARS]
        return _CONTEXT.search(window) is not None
