"""pyproject.toml lists its packages (so sql/ can ship as finpulse/sql): none may be left out of the wheel."""

import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]


def test_every_package_of_the_repo_is_in_the_wheel():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(where=str(REPO), exclude=["tests", "tests.*", "build", "build.*"]))
    assert set(tool["packages"]) == found | {"finpulse.sql"}
    assert tool["package-dir"] == {"finpulse.sql": "sql"}
