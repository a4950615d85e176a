"""Fixtures for the ingest tests."""

from __future__ import annotations

import pytest

from tests.ingest.httpfixture import serve


@pytest.fixture
def http_server():
    """A real threaded HTTP server on 127.0.0.1 (ephemeral port); tests register routes on it."""
    with serve() as state:
        yield state
