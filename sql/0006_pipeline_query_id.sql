-- finpulse schema, version 6: the batch ledger knows which checkpoint wrote each batch.
--
-- Spark numbers micro-batches per checkpoint: a lost or deleted checkpoint starts again at batch 0.
-- Keyed on (query_name, batch_id) alone, the ledger then took the new checkpoint's batches for
-- ones already committed and skipped new records. The streaming query's id (StreamingQuery.id,
-- kept in the checkpoint's `metadata` file; a new checkpoint gets a new one) now belongs to the
-- key, like Delta Lake's txnAppId + txnVersion: a new checkpoint is a new epoch, whose batches are
-- written whatever the earlier epochs committed (every write is an idempotent upsert).
-- Rows written before this migration keep query_id '' (an unknown, earlier checkpoint).
ALTER TABLE pipeline_batches ADD COLUMN query_id text NOT NULL DEFAULT '';
ALTER TABLE pipeline_batches DROP CONSTRAINT pipeline_batches_pkey;
ALTER TABLE pipeline_batches ADD PRIMARY KEY (query_name, query_id, batch_id);
-- `offsets` stays what it was: {topic: {partition: [first offset, last offset]}} of the batch's
-- records. A batch id committed under the same query id with other offsets is a mismatch (logged).
-- The latest batches of a query name across epochs (status, the watermark, `pipeline status`).
CREATE INDEX pipeline_batches_finished_idx ON pipeline_batches (query_name, finished_at);
