-- finpulse schema, version 1.
-- Every table that a streaming job writes has a natural primary key, so each write is an
-- idempotent upsert (INSERT ... ON CONFLICT ... DO UPDATE): Kafka and foreachBatch deliver
-- at least once, and a replayed batch must overwrite its own rows, never add to them.
-- All times are timestamptz, stored and shown in UTC.

CREATE TABLE documents (
    id              text PRIMARY KEY,                 -- the contract's stable document id
    schema_version  smallint    NOT NULL,
    source          text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('news', 'comment')),
    url             text,
    title           text,
    text            text        NOT NULL DEFAULT '',
    author          text,
    published_at    timestamptz NOT NULL,
    fetched_at      timestamptz NOT NULL,
    lang            text,
    tickers         text[]      NOT NULL DEFAULT '{}',
    parent_id       text,
    extra           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint,
    batch_id        bigint,                           -- pipeline batch that last wrote the row
    ingested_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_published_at_idx ON documents (published_at);
CREATE INDEX documents_source_published_idx ON documents (source, published_at);
CREATE INDEX documents_tickers_idx ON documents USING gin (tickers);
CREATE INDEX documents_parent_idx ON documents (parent_id) WHERE parent_id IS NOT NULL;

-- One row per document and model version: rescoring with a new model adds rows, never mixes them.
CREATE TABLE document_scores (
    document_id      text        NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    model_version    text        NOT NULL,
    published_at     timestamptz NOT NULL,            -- copied from documents for time-range scans
    sentiment        text        NOT NULL CHECK (sentiment IN ('negative', 'neutral', 'positive')),
    p_negative       real        NOT NULL CHECK (p_negative BETWEEN 0 AND 1),
    p_neutral        real        NOT NULL CHECK (p_neutral BETWEEN 0 AND 1),
    p_positive       real        NOT NULL CHECK (p_positive BETWEEN 0 AND 1),
    score            real        GENERATED ALWAYS AS (p_positive - p_negative) STORED,
    topic            text,
    topic_confidence real        CHECK (topic_confidence BETWEEN 0 AND 1),
    evidence         jsonb,                           -- top evidence tokens, when explained
    batch_id         bigint,
    scored_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, model_version)
);
CREATE INDEX document_scores_published_idx ON document_scores (published_at);
CREATE INDEX document_scores_topic_idx ON document_scores (topic, published_at);

-- Entities a document mentions (tickers, companies), with entity-level sentiment when known.
CREATE TABLE document_entities (
    document_id   text NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    entity        text NOT NULL,                      -- normalised name or ticker symbol
    entity_type   text NOT NULL DEFAULT 'ticker' CHECK (entity_type IN ('ticker', 'company', 'person', 'other')),
    model_version text NOT NULL DEFAULT '',           -- '' for entities found by rules, not a model
    sentiment     text CHECK (sentiment IN ('negative', 'neutral', 'positive')),
    confidence    real CHECK (confidence BETWEEN 0 AND 1),
    PRIMARY KEY (document_id, entity, model_version)
);
CREATE INDEX document_entities_entity_idx ON document_entities (entity);

-- Windowed trends. The streaming job emits the running aggregate of a whole window, so an
-- upsert on the window key overwrites rather than adds: replays are harmless.
CREATE TABLE sentiment_windows (
    dimension      text        NOT NULL CHECK (dimension IN ('all', 'topic', 'ticker', 'source')),
    key            text        NOT NULL,              -- the topic, ticker or source; '*' for 'all'
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    model_version  text        NOT NULL,
    n_docs         integer     NOT NULL CHECK (n_docs >= 0),
    n_negative     integer     NOT NULL DEFAULT 0,
    n_neutral      integer     NOT NULL DEFAULT 0,
    n_positive     integer     NOT NULL DEFAULT 0,
    mean_score     double precision,                  -- mean of p_positive - p_negative
    mean_p_negative double precision,
    batch_id       bigint,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dimension, key, window_start, window_end, model_version),
    CHECK (window_end > window_start)
);
CREATE INDEX sentiment_windows_time_idx ON sentiment_windows (window_start, dimension);

-- Messages that could not be processed: the reason and the raw bytes, so nothing is lost.
CREATE TABLE dead_letters (
    id               bigserial PRIMARY KEY,
    stage            text        NOT NULL,            -- ingest | contract | scoring | storage ...
    reason           text        NOT NULL,
    raw_payload      bytea,
    raw_key          bytea,
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    batch_id         bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);
-- A replayed Kafka message lands on the same row instead of a second one.
CREATE UNIQUE INDEX dead_letters_kafka_uidx ON dead_letters (stage, source_topic, source_partition, source_offset)
    WHERE source_topic IS NOT NULL;
CREATE INDEX dead_letters_created_idx ON dead_letters (created_at);

-- One row per streaming micro-batch: progress, counts and the Kafka offsets it covered.
CREATE TABLE pipeline_batches (
    query_name    text        NOT NULL,
    batch_id      bigint      NOT NULL,
    status        text        NOT NULL CHECK (status IN ('running', 'committed', 'failed')),
    n_input       integer     NOT NULL DEFAULT 0,
    n_scored      integer     NOT NULL DEFAULT 0,
    n_dead        integer     NOT NULL DEFAULT 0,
    offsets       jsonb,
    model_version text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    PRIMARY KEY (query_name, batch_id)
);

-- An alert is identified by what it is about, so re-evaluating a window never raises it twice.
CREATE TABLE alerts (
    id            text PRIMARY KEY,                   -- hash of (rule, dimension, key, window_start)
    rule          text        NOT NULL,
    dimension     text        NOT NULL,
    key           text        NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    severity      text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state         text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
    message       text        NOT NULL,
    metrics       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (rule, dimension, key, window_start)
);
CREATE INDEX alerts_created_idx ON alerts (created_at);

-- One row per alert, channel and recipient: a retried send updates it, never duplicates it.
CREATE TABLE alert_deliveries (
    alert_id       text        NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel        text        NOT NULL CHECK (channel IN ('email', 'webhook')),
    target         text        NOT NULL,              -- address or URL (never with credentials)
    status         text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts       integer     NOT NULL DEFAULT 0,
    last_error     text,
    response_code  integer,
    sent_at        timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, channel, target)
);
CREATE INDEX alert_deliveries_pending_idx ON alert_deliveries (status) WHERE status <> 'sent';

-- For analysts: each document with its scores, one row per model version.
CREATE VIEW document_sentiment AS
SELECT d.id, d.source, d.kind, d.published_at, d.title, d.url, d.tickers, d.lang,
       s.model_version, s.sentiment, s.p_negative, s.p_neutral, s.p_positive, s.score,
       s.topic, s.topic_confidence
FROM documents d
JOIN document_scores s ON s.document_id = d.id;
