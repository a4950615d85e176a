"""Sources: one class per kind of origin, all with the same small :class:`Source` interface."""

from ingest.sources.base import Skipped, Source, source_from_config
from ingest.sources.jsonapi import JsonApiSource
from ingest.sources.rss import RssSource

__all__ = ["JsonApiSource", "RssSource", "Skipped", "Source", "source_from_config"]
