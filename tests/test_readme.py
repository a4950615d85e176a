from pathlib import Path

from finpulse.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_documents_every_setting_and_both_commands():
    for name in Settings.model_fields:
        assert f"`FINPULSE_{name.upper()}`" in README, name
    assert "make run" in README and "make test" in README
