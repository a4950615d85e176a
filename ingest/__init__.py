"""Ingest: polite crawlers (RSS/Atom, JSON APIs), normalisation, dedup/novelty, replay, Kafka producer.

Layout: ``sources`` (what to fetch and how to map it), ``http`` (politeness), ``normalize`` and
``document`` (raw fields -> contract Document), ``dedup`` + ``store`` (exact and near duplicates,
persistent), ``producer`` (Sinks), ``crawler`` (scheduling and the publish
protocol), ``replay`` (recorded streams), ``cli`` (``finpulse ingest``).
"""
