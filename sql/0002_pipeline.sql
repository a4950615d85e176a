-- finpulse schema, version 2: what the streaming pipeline writes.
-- Every write stays an idempotent upsert keyed by natural ids (document id, model version,
-- window, Kafka coordinates, batch id); see 0001 for the rules.

-- Novelty from ingest (extra.novelty / extra.first_story_id), kept as columns so trends and
-- alerts can count first stories only: true = first story, false = a near-duplicate of
-- first_story_id, NULL = the producer did not say.
ALTER TABLE documents
    ADD COLUMN novelty         boolean,
    ADD COLUMN first_story_id  text,
    ADD COLUMN kafka_timestamp timestamptz;
CREATE INDEX documents_first_story_idx ON documents (first_story_id) WHERE first_story_id IS NOT NULL;
CREATE INDEX documents_kafka_idx ON documents (kafka_topic, kafka_partition, kafka_offset);

-- The Scorer's flags: how many chunks of the text were read, and whether text was left unread
-- because it had more than the configured number of chunks.
ALTER TABLE document_scores
    ADD COLUMN n_chunks  smallint NOT NULL DEFAULT 1 CHECK (n_chunks >= 1),
    ADD COLUMN truncated boolean  NOT NULL DEFAULT false;

-- Entity links: how the entity was found and, once an entity-level model scores it, the
-- class probabilities towards that entity (NULL until then).
ALTER TABLE document_entities
    ADD COLUMN linked_by  text NOT NULL DEFAULT 'cashtag' CHECK (linked_by IN ('cashtag', 'alias', 'producer')),
    ADD COLUMN mention    text,
    ADD COLUMN p_negative real CHECK (p_negative BETWEEN 0 AND 1),
    ADD COLUMN p_neutral  real CHECK (p_neutral BETWEEN 0 AND 1),
    ADD COLUMN p_positive real CHECK (p_positive BETWEEN 0 AND 1);

-- Windows keep sums next to means, so a wide window can be re-added from narrower ones
-- exactly, and first-story counts for detectors that count a syndicated story once.
ALTER TABLE sentiment_windows
    ADD COLUMN width_seconds    integer GENERATED ALWAYS AS (extract(epoch FROM window_end - window_start)::integer) STORED,
    ADD COLUMN sum_score        double precision NOT NULL DEFAULT 0,
    ADD COLUMN sum_p_negative   double precision NOT NULL DEFAULT 0,
    ADD COLUMN n_first_stories  integer NOT NULL DEFAULT 0,
    ADD COLUMN n_negative_first integer NOT NULL DEFAULT 0;
-- Per-scope time series (what alerts and dashboards read): one index range scan per scope.
CREATE INDEX sentiment_windows_scope_idx ON sentiment_windows (width_seconds, dimension, key, window_start);

-- The dead-letter envelope that ingest publishes (source, detail, url, when it was rejected),
-- so the pipeline's own rejects and ingest's land in one table with the same columns.
ALTER TABLE dead_letters
    ADD COLUMN source          text,
    ADD COLUMN detail          text,
    ADD COLUMN url             text,
    ADD COLUMN rejected_at     timestamptz,
    ADD COLUMN kafka_timestamp timestamptz;
CREATE INDEX dead_letters_stage_reason_idx ON dead_letters (stage, reason, created_at);

-- Per-batch figures the operator reads: late rows, duplicates, event-time high-water mark
-- (the watermark is derived from it), duration and which scorer ran.
ALTER TABLE pipeline_batches
    ADD COLUMN n_late         integer NOT NULL DEFAULT 0,
    ADD COLUMN n_duplicates   integer NOT NULL DEFAULT 0,
    ADD COLUMN max_event_time timestamptz,
    ADD COLUMN duration_ms    integer,
    ADD COLUMN scorer         text;

-- The analysts' view gains the new columns (appended: CREATE OR REPLACE VIEW keeps the old ones).
CREATE OR REPLACE VIEW document_sentiment AS
SELECT d.id, d.source, d.kind, d.published_at, d.title, d.url, d.tickers, d.lang,
       s.model_version, s.sentiment, s.p_negative, s.p_neutral, s.p_positive, s.score,
       s.topic, s.topic_confidence,
       d.novelty, d.first_story_id, s.n_chunks, s.truncated
FROM documents d
JOIN document_scores s ON s.document_id = d.id;
