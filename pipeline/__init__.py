"""The Spark Structured Streaming job: Kafka -> contract -> models.Scorer -> Postgres, exactly once.

- ``pipeline.job`` / ``pipeline.cli``: the streaming query (``finpulse pipeline run``).
- ``pipeline.process``: executor side (``mapInPandas``): parse and validate each Kafka record,
  score documents, link tickers, turn everything else into dead-letter rows; one row per record.
- ``pipeline.rows``: the processed-row contract between executors and the driver's sink.
- ``pipeline.entities``: cashtags + the company-alias table (``pipeline/data/aliases.csv``).
- ``pipeline.sink``: one Postgres transaction per micro-batch, skipped when the batch id is
  already committed.
- ``pipeline.windows``: event-time trend windows, recomputed from stored rows; ``backfill``.
"""
