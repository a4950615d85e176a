-- finpulse schema, version 8: a watermark per Kafka partition, and the documents waiting for a backfill.
--
-- The watermark was the highest max_event_time of all committed batches minus the lateness: global
-- over the partitions. Spark splits maxOffsetsPerTrigger over partitions by backlog, not by time, so
-- while a backlog is replayed a partition behind in event time had its documents counted late and
-- the windows depended on how the stream was cut into batches. Each batch now records the highest
-- event time it read per topic and partition ({topic: {partition: timestamptz text}}, documents only);
-- the watermark is the lowest of the partitions' highs (see pipeline/sink.py). NULL: written before.
ALTER TABLE pipeline_batches ADD COLUMN partition_event_times jsonb;

-- Documents the stream stored and scored but did not fold into their windows (older than the
-- watermark), per model version, until a window recompute covers them: a later on-time re-send of
-- the document, or `finpulse pipeline backfill` over a range containing published_at.
-- `finpulse pipeline status` counts them and prints the backfill command for their range.
CREATE TABLE windows_pending (
    document_id   text        NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    model_version text        NOT NULL,
    published_at  timestamptz NOT NULL,
    query_name    text        NOT NULL,
    batch_id      bigint      NOT NULL,
    noted_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, model_version)
);
CREATE INDEX windows_pending_published_idx ON windows_pending (published_at);
