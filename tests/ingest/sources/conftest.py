"""A factory for sources wired to the test HTTP server, a fast client and a throwaway store."""

from __future__ import annotations

import pytest

from ingest.http import HttpOptions, PoliteClient
from ingest.sources.base import source_from_config
from ingest.store import SeenStore

# No retries and a short timeout: these tests exercise one source, not the client's patience.
FAST = HttpOptions(read_timeout=1, retries=0, rate_per_host=1000, burst=100)


@pytest.fixture
def source_factory(http_server, tmp_path):
    """``source_factory(config_class, path, **fields)`` -> the Source for that config, on ``path``."""
    clients = []

    def factory(config_class, path: str, **fields):
        config = config_class(url=http_server.url(path), **fields)
        client = PoliteClient(options=FAST)
        clients.append(client)
        return source_from_config(config, client=client, store=SeenStore(tmp_path / "s.db"))

    yield factory
    for client in clients:
        client.close()
