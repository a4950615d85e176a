"""EntityLinker: producer tickers, cashtags and the alias table, one link per ticker, ambiguity handled."""

from __future__ import annotations

import csv

import pytest

from pipeline.entities import SHIPPED_ALIASES, EntityLinker, Link, read_aliases


@pytest.fixture(scope="module")
def linker():
    return EntityLinker.load()


def pairs(links: list[Link]) -> list[tuple[str, str]]:
    return [(link.entity, link.linked_by) for link in links]


def test_cashtags_are_tickers_but_amounts_and_currencies_are_not(linker):
    links = linker.link(title=None, text="$tsla up, $BRK.B flat, $AAPL. Paid $5, $5B and $USD 3bn; a$b; $$X", tickers=[])
    assert pairs(links) == [("TSLA", "cashtag"), ("BRK.B", "cashtag"), ("AAPL", "cashtag")]
    assert links[0].mention == "$tsla"


def test_aliases_link_company_names_on_word_boundaries(linker):
    links = linker.link(title="Nvidia and Bank of America rally", text="AT&T's deal; TESLA RECALL; Teslas; Alibaba's", tickers=[])
    assert pairs(links) == [("NVDA", "alias"), ("BAC", "alias"), ("T", "alias"), ("TSLA", "alias"), ("BABA", "alias")]
    assert [link.mention for link in links] == ["Nvidia", "Bank of America", "AT&T", "TESLA", "Alibaba"]
    # Inside a longer word it is not a mention.
    assert linker.link(title=None, text="Nvidiaesque Metadata Intelligent Bayerisch", tickers=[]) == []


def test_ambiguous_names_need_market_context(linker):
    assert linker.link(title="Apple pie and an apple a day", text="Visit Target for a visa and Shell beach.",
                       tickers=[]) == []
    links = linker.link(title="Apple shares slump", text="Target cuts its outlook; Shell posts record profit.",
                        tickers=[])
    assert pairs(links) == [("AAPL", "alias"), ("TGT", "alias"), ("SHEL", "alias")]
    # The unambiguous long form needs no context.
    assert pairs(linker.link(title=None, text="Apple Inc makes phones.", tickers=[])) == [("AAPL", "alias")]
    # Short forms that are also everyday tokens ("3M" dollars, "GM" = good morning) need context too.
    assert linker.link(title=None, text="We raised 3M in seed money. GM everyone!", tickers=[]) == []
    assert pairs(linker.link(title=None, text="3M shares fall", tickers=[])) == [("MMM", "alias")]
    # Lower case "apple" is the fruit, whatever the context.
    assert linker.link(title=None, text="apple shares of the harvest", tickers=[]) == []


def test_one_link_per_ticker_with_producer_then_cashtag_then_alias(linker):
    links = linker.link(title="Tesla: $TSLA jumps", text="Tesla and $tsla again; Microsoft too. $MSFT",
                        tickers=["TSLA", "tsla", "$AMZN"])
    assert pairs(links) == [("TSLA", "producer"), ("AMZN", "producer"), ("MSFT", "cashtag")]  # cashtag beats alias
    assert links[2].mention == "$MSFT"
    assert len({link.entity for link in links}) == len(links)


def test_extra_alias_files_extend_and_override(tmp_path):
    extra = tmp_path / "mine.csv"
    extra.write_text("ticker,name,aliases,exchange,country\nACME,Acme Corp,Acme|~Roadrunner,NYSE,US\n"
                     "TSLA.X,Tesla (mine),Tesla,,\n")
    linker = EntityLinker.load(str(extra))
    assert pairs(linker.link(title=None, text="Acme and Tesla; Roadrunner spotted", tickers=[])) == [
        ("ACME", "alias"), ("TSLA.X", "alias")]
    assert pairs(linker.link(title=None, text="Roadrunner shares jump", tickers=[])) == [("ACME", "alias")]
    bad = tmp_path / "bad.csv"
    bad.write_text("ticker,name,aliases\nnot a ticker!,X,Y\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        EntityLinker.load([str(bad)])
    with pytest.raises(ValueError, match="lacks columns"):
        (tmp_path / "nohead.csv").write_text("sym,company\nA,B\n")
        EntityLinker.load([str(tmp_path / "nohead.csv")])


def test_the_shipped_table_is_a_few_hundred_valid_names():
    with SHIPPED_ALIASES.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 300
    assert len({r["ticker"] for r in rows}) == len(rows)
    assert {r["country"] for r in rows} >= {"US", "CN", "DE", "FR", "GB"}
    aliases = read_aliases(SHIPPED_ALIASES)
    texts = [a.text for a in aliases]
    duplicates = {t for t in texts if texts.count(t) > 1 and len({a.ticker for a in aliases if a.text == t}) > 1}
    assert not duplicates, f"one alias, several tickers: {duplicates}"


def test_a_long_text_is_scanned_once(linker):
    text = "lorem ipsum dolor sit amet " * 40_000 + " Tesla"
    assert pairs(linker.link(title=None, text=text, tickers=[])) == [("TSLA", "alias")]
