-- finpulse schema, version 7: documents in a language the model cannot read.
--
-- The model reads the languages its config.json records (Scorer.languages; English for the shipped
-- one). A document whose detected language (pipeline/language.py: by script) is not one of them is
-- stored and gets a document_scores row of status 'unsupported_language' for that model version:
-- no sentiment, no probabilities (never a default neutral), not counted in any window. A later model
-- that reads the language scores it under its own version.
ALTER TABLE document_scores
    ADD COLUMN status text NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'unsupported_language')),
    ALTER COLUMN sentiment DROP NOT NULL,
    ALTER COLUMN p_negative DROP NOT NULL,
    ALTER COLUMN p_neutral DROP NOT NULL,
    ALTER COLUMN p_positive DROP NOT NULL,
    ADD CONSTRAINT document_scores_scored_check CHECK (
        status <> 'ok' OR (sentiment IS NOT NULL AND p_negative IS NOT NULL AND p_neutral IS NOT NULL
                           AND p_positive IS NOT NULL)),
    ADD CONSTRAINT document_scores_unscored_check CHECK (
        status = 'ok' OR (sentiment IS NULL AND p_negative IS NULL AND p_neutral IS NULL AND p_positive IS NULL));
CREATE INDEX document_scores_unsupported_idx ON document_scores (published_at) WHERE status <> 'ok';

-- Per batch: how many documents were not scored for their language, in all and per source.
ALTER TABLE pipeline_batches
    ADD COLUMN n_unsupported             integer NOT NULL DEFAULT 0,
    ADD COLUMN unsupported_by_source     jsonb   NOT NULL DEFAULT '{}'::jsonb;

-- The analysts' views: sentiment only where there is one; document_detail shows every document
-- and says why one has no sentiment (status, appended).
CREATE OR REPLACE VIEW document_sentiment AS
SELECT d.id, d.source, d.kind, d.published_at, d.title, d.url, d.tickers, d.lang,
       s.model_version, s.sentiment, s.p_negative, s.p_neutral, s.p_positive, s.score,
       s.topic, s.topic_confidence,
       d.novelty, d.first_story_id, s.n_chunks, s.truncated
FROM documents d
JOIN document_scores s ON s.document_id = d.id
WHERE s.status = 'ok';

CREATE OR REPLACE VIEW ticker_mentions AS
SELECT e.entity AS ticker, d.id AS document_id, d.published_at, d.source, d.url, d.title,
       s.model_version, s.topic,
       coalesce(e.sentiment, s.sentiment) AS sentiment,
       CASE WHEN e.p_negative IS NOT NULL THEN e.p_negative ELSE s.p_negative END AS p_negative,
       CASE WHEN e.p_negative IS NOT NULL THEN e.p_positive - e.p_negative ELSE s.score END AS score,
       e.p_negative IS NOT NULL AS entity_level,
       s.sentiment AS document_sentiment, s.score AS document_score,
       e.linked_by, e.mention
FROM document_entities e
JOIN document_scores s ON s.document_id = e.document_id AND e.model_version IN ('', s.model_version)
JOIN documents d ON d.id = e.document_id
WHERE e.entity_type = 'ticker' AND s.status = 'ok'
  AND (e.model_version <> ''
       OR NOT EXISTS (SELECT 1 FROM document_entities x
                      WHERE x.document_id = e.document_id AND x.entity = e.entity
                        AND x.model_version = s.model_version));

CREATE OR REPLACE VIEW document_detail AS
SELECT d.id, d.published_at, d.source, d.kind, d.url, d.title, d.text, d.text_pruned_at, d.lang, d.tickers,
       d.novelty, d.first_story_id,
       s.model_version, s.sentiment, s.p_negative, s.p_neutral, s.p_positive, s.score,
       s.topic, s.topic_confidence, s.evidence, s.n_chunks, s.truncated,
       coalesce(ents.entities, '[]'::jsonb) AS entities,
       s.status
FROM documents d
JOIN document_scores s ON s.document_id = d.id
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object(
               'entity', e.entity, 'sentiment', e.sentiment, 'confidence', e.confidence,
               'p_negative', e.p_negative, 'p_positive', e.p_positive, 'linked_by', e.linked_by)
           ORDER BY e.entity) AS entities
    FROM (SELECT DISTINCT ON (x.entity) x.*
          FROM document_entities x
          WHERE x.document_id = d.id AND x.model_version IN ('', s.model_version)
          ORDER BY x.entity, x.model_version DESC) e  -- the scored link of this model over a bare one
) ents ON true;
COMMENT ON COLUMN document_detail.status IS
    'ok, or unsupported_language: the model does not read the document''s language (no sentiment, not in windows).';
