from pathlib import Path

from finpulse.settings import README_TABLE_END, README_TABLE_START, readme_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_readme_settings_table_is_the_generated_one():
    """Every setting's variable, default and description, as finpulse/settings.py has them."""
    start, end = README.index(README_TABLE_START), README.index(README_TABLE_END) + len(README_TABLE_END)
    assert README[start:end] == readme_table(), (
        "README.md's settings table is out of date: run `.venv/bin/python -m finpulse.settings --write README.md`")


def test_readme_documents_both_commands():
    assert "make run" in README and "make test" in README
