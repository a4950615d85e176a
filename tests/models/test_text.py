"""The text clean-up the model reads (training and inference alike)."""

from __future__ import annotations

from models.text import model_text


def test_model_text_drops_links_and_decodes_entities():
    assert model_text("S&amp;P 500 up  https://t.co/QPN8Gwl7Uh \n") == "S&P 500 up"
    assert model_text("   ") == ""


def test_model_text_spells_emojis_out_and_caps_their_runs():
    assert model_text("$TSLA 🚀🚀🚀🚀🚀 moon") == "$TSLA rocket rocket rocket moon"
    # skin tones, variation selectors and joiners are glue, not words
    assert model_text("ugh 👎🏽 ❤️") == "ugh thumbs down sign heavy black heart"
    assert model_text("📉📉") == "chart with downwards trend chart with downwards trend"
    # currency, punctuation and letters are not pictographs: untouched, runs included
    assert model_text("€30 & 5%!!!! ok?") == "€30 & 5%!!!! ok?"
