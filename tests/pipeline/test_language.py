"""The script-based language check (pipeline.language): what an English model cannot read at all."""

from __future__ import annotations

import pytest

from pipeline.language import detect_script_language, scripts, unsupported_language


@pytest.mark.parametrize("text, lang", [
    ("Apple beats estimates in quarter 2", "en"),
    ("$AAPL 苹果公司第三季度营收超出预期", "zh"),           # the cashtag is not Latin text
    ("特斯拉股价大跌，投资者担心需求放缓", "zh"),
    ("トヨタ自動車の株価が上昇した", "ja"),                  # kanji with kana
    ("삼성전자 주가가 상승했다", "ko"),
    ("Акции Газпрома упали на пять процентов", "ru"),
    ("ارتفعت أسهم أرامكو اليوم", "ar"),
    ("Η μετοχή ανέβηκε σήμερα", "el"),
    ("Die Aktie von Siemens steigt", "en"),                  # Latin: not told apart here (ingest's py3langid)
    ("$TSLA $AAPL https://t.co/abc @someone", None),          # no letters left
    ("12345 +3.5% 2024-01-01", None),
    ("", None), (None, None),
])
def test_the_dominant_script_names_the_language(text, lang):
    assert detect_script_language(text) == lang


def test_latin_only_when_it_dominates():
    # A Chinese post quoting an English company name is still Chinese; an English one quoting a Chinese name is English.
    assert detect_script_language("Apple 发布新款手机，销量创下历史新高") == "zh"
    assert detect_script_language("Shares of Alibaba (阿里巴巴) rose after strong quarterly results") == "en"
    # No script has half of the letters: unknown, the model reads it.
    assert detect_script_language("ab где 苹果") is None
    assert scripts("$AAPL Apple 苹果")["han"] == 2 and scripts("$AAPL Apple 苹果")["latin"] == 5


def test_unsupported_is_a_language_the_model_does_not_read():
    assert unsupported_language("特斯拉股价大跌", ["en"]) == "zh"
    assert unsupported_language("特斯拉股价大跌", ["en", "zh"]) is None
    assert unsupported_language("Tesla shares slump", ["en"]) is None
    assert unsupported_language("$TSLA 123", ["en"]) is None  # unknown is read
