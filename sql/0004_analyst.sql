-- finpulse schema, version 4: what analysts read, and what retention needs.
-- Views for the common questions (trends, leaderboards, alert history, documents), each with a
-- COMMENT that psql's \dv+ and \d+ show; a read-only role, finpulse_analyst, that the dashboard,
-- the report and people with psql or a BI tool use; the indexes the dashboard and `finpulse db
-- prune` need at ~10 M documents a day. Nothing here writes data.

-- Retention (finpulse/retention.py) empties documents.text after FINPULSE_RETENTION_DOCUMENT_TEXT;
-- the row, its scores and entities stay. NULL = the text is (or was never pruned and is) as stored.
ALTER TABLE documents ADD COLUMN text_pruned_at timestamptz;
COMMENT ON COLUMN documents.text_pruned_at IS
    'When `finpulse db prune` emptied text (retention, FINPULSE_RETENTION_DOCUMENT_TEXT); NULL = never pruned.';
-- The documents whose text is still there, by time: prune reads the oldest of them in batches
-- without walking the rows it already emptied (a partial index: pruned rows leave it).
CREATE INDEX documents_text_kept_idx ON documents (published_at) WHERE text <> '';
-- Per width in time order: prune deletes the oldest windows of one width in batches, and the
-- dashboard's movers read every scope of one width over a time range.
CREATE INDEX sentiment_windows_width_time_idx ON sentiment_windows (width_seconds, window_start);

-- ---------------------------------------------------------------------------------------------
-- Trends
-- ---------------------------------------------------------------------------------------------
CREATE VIEW sentiment_trend AS
SELECT w.width_seconds, w.dimension, w.key, w.window_start, w.window_end, w.model_version,
       w.n_docs, w.n_negative, w.n_neutral, w.n_positive,
       w.n_negative::float8 / nullif(w.n_docs, 0) AS negative_share,
       w.mean_score, w.mean_p_negative, w.n_first_stories, w.n_negative_first
FROM sentiment_windows w;
COMMENT ON VIEW sentiment_trend IS
    'One row per window of one scope (dimension + key) and width: volume, negative share and mean score. '
    'Filter on width_seconds, dimension, key and a window_start range (an index range scan). Ticker '
    'windows use the entity-level sentiment towards the ticker where the model has an entity head.';
COMMENT ON COLUMN sentiment_trend.width_seconds IS 'Window width: 60 (1m), 3600 (1h), 86400 (1d).';
COMMENT ON COLUMN sentiment_trend.dimension IS 'all (key *), topic, ticker or source.';
COMMENT ON COLUMN sentiment_trend.key IS 'The topic, ticker or source; * for dimension all.';
COMMENT ON COLUMN sentiment_trend.window_start IS 'Start of the window (UTC, aligned on the Unix epoch: a 1d window is a UTC day).';
COMMENT ON COLUMN sentiment_trend.model_version IS 'Model that scored the documents; compare windows of one version only.';
COMMENT ON COLUMN sentiment_trend.n_docs IS 'Documents in the window (volume).';
COMMENT ON COLUMN sentiment_trend.negative_share IS 'n_negative / n_docs (0..1); NULL when the window is empty.';
COMMENT ON COLUMN sentiment_trend.mean_score IS 'Mean of p_positive - p_negative (-1..1).';
COMMENT ON COLUMN sentiment_trend.n_first_stories IS 'Documents that are first stories (a syndicated copy counts once).';

CREATE VIEW latest_model_version AS
SELECT w.model_version FROM sentiment_windows w ORDER BY w.window_start DESC LIMIT 1;
COMMENT ON VIEW latest_model_version IS
    'The model version of the newest window (one row): JOIN latest_model_version USING (model_version) keeps '
    'one model''s windows or scores when documents were rescored by a second model.';

-- Volume and sentiment per scope over the last 24 hours against the 7 days before: the
-- "who moved" question. Recent = the 24 hourly windows up to now (the current one included);
-- baseline = the 7 daily windows that end before the recent period starts.
CREATE VIEW scope_leaderboard AS
WITH bounds AS (
    SELECT date_trunc('hour', now()) - interval '23 hours' AS recent_start
),
recent AS (
    SELECT w.dimension, w.key, w.model_version,
           sum(w.n_docs)::bigint AS n_docs, sum(w.n_negative)::bigint AS n_negative,
           sum(w.sum_score) AS sum_score
    FROM sentiment_windows w, bounds b
    WHERE w.width_seconds = 3600 AND w.window_start >= b.recent_start
    GROUP BY w.dimension, w.key, w.model_version
),
baseline AS (
    SELECT w.dimension, w.key, w.model_version,
           sum(w.n_docs)::bigint AS n_docs, sum(w.n_negative)::bigint AS n_negative
    FROM sentiment_windows w, bounds b
    WHERE w.width_seconds = 86400 AND w.window_end <= b.recent_start
      AND w.window_start >= b.recent_start - interval '8 days'
    GROUP BY w.dimension, w.key, w.model_version
)
SELECT r.dimension, r.key, r.model_version,
       r.n_docs AS docs_24h,
       r.n_negative::float8 / nullif(r.n_docs, 0) AS negative_share_24h,
       r.sum_score / nullif(r.n_docs, 0) AS mean_score_24h,
       coalesce(b.n_docs, 0) AS docs_baseline_7d,
       b.n_negative::float8 / nullif(b.n_docs, 0) AS negative_share_baseline_7d,
       r.n_negative::float8 / nullif(r.n_docs, 0) - b.n_negative::float8 / nullif(b.n_docs, 0) AS negative_share_change
FROM recent r
LEFT JOIN baseline b USING (dimension, key, model_version);
COMMENT ON VIEW scope_leaderboard IS
    'Per scope (dimension, key) and model version: documents, negative share and mean score over the last '
    '24 hourly windows (up to now), against the negative share of the 7 daily windows before them. '
    'ORDER BY negative_share_change DESC (with a minimum docs_24h) lists the scopes whose negative share rose most.';
COMMENT ON COLUMN scope_leaderboard.docs_24h IS 'Documents in the last 24 hourly windows (the current hour included).';
COMMENT ON COLUMN scope_leaderboard.negative_share_24h IS 'Negative share over those windows (0..1).';
COMMENT ON COLUMN scope_leaderboard.mean_score_24h IS 'Mean p_positive - p_negative over those windows.';
COMMENT ON COLUMN scope_leaderboard.docs_baseline_7d IS 'Documents in the 7 daily windows before the last 24 hours (0 = no baseline).';
COMMENT ON COLUMN scope_leaderboard.negative_share_baseline_7d IS 'Negative share of the baseline; NULL without baseline.';
COMMENT ON COLUMN scope_leaderboard.negative_share_change IS 'negative_share_24h - negative_share_baseline_7d; NULL without baseline.';

CREATE VIEW ticker_leaderboard AS
SELECT key AS ticker, model_version, docs_24h, negative_share_24h, mean_score_24h,
       docs_baseline_7d, negative_share_baseline_7d, negative_share_change
FROM scope_leaderboard
WHERE dimension = 'ticker';
COMMENT ON VIEW ticker_leaderboard IS
    'scope_leaderboard for tickers: recent volume and sentiment per ticker. The sentiment is the entity-level '
    'sentiment towards the ticker (the entity head) where the model has one, else the document''s. '
    'ORDER BY docs_24h DESC for the most talked-about, negative_share_change DESC for the movers.';
COMMENT ON COLUMN ticker_leaderboard.ticker IS 'Ticker symbol.';

-- ---------------------------------------------------------------------------------------------
-- Documents
-- ---------------------------------------------------------------------------------------------
CREATE VIEW document_detail AS
SELECT d.id, d.published_at, d.source, d.kind, d.url, d.title, d.text, d.text_pruned_at, d.lang, d.tickers,
       d.novelty, d.first_story_id,
       s.model_version, s.sentiment, s.p_negative, s.p_neutral, s.p_positive, s.score,
       s.topic, s.topic_confidence, s.evidence, s.n_chunks, s.truncated,
       coalesce(ents.entities, '[]'::jsonb) AS entities
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
COMMENT ON VIEW document_detail IS
    'One row per document and model version: the document, its scores, topic, evidence words and the '
    'entities it names with the sentiment towards each. Filter on published_at, id, source or topic.';
COMMENT ON COLUMN document_detail.text IS 'Full text; empty once pruned by retention (see text_pruned_at).';
COMMENT ON COLUMN document_detail.score IS 'p_positive - p_negative (-1..1).';
COMMENT ON COLUMN document_detail.evidence IS
    'The words that pushed the model toward its sentiment, [{"word": ..., "weight": ...}] strongest first; NULL when not explained.';
COMMENT ON COLUMN document_detail.entities IS
    'JSON array of {entity, sentiment, confidence, p_negative, p_positive, linked_by}: sentiment is the entity '
    'head''s towards that company (NULL when the model has no entity head).';

-- One row per document, model version and ticker it names, with the sentiment towards the ticker:
-- the entity head's where it scored the link, else the document's (what ticker windows count).
CREATE VIEW ticker_mentions AS
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
WHERE e.entity_type = 'ticker'
  AND (e.model_version <> ''
       OR NOT EXISTS (SELECT 1 FROM document_entities x
                      WHERE x.document_id = e.document_id AND x.entity = e.entity
                        AND x.model_version = s.model_version));
COMMENT ON VIEW ticker_mentions IS
    'One row per document, model version and ticker it names: the sentiment towards the ticker (entity-level '
    'where the entity head scored it, entity_level = true; else the document''s) next to the document''s own.';
COMMENT ON COLUMN ticker_mentions.score IS 'p_positive - p_negative towards the ticker (-1..1).';
COMMENT ON COLUMN ticker_mentions.entity_level IS 'true = scored by the entity head; false = the document''s score stands in.';
COMMENT ON COLUMN ticker_mentions.linked_by IS 'How the ticker was found: cashtag, alias (company name) or producer.';

-- ---------------------------------------------------------------------------------------------
-- Alert history
-- ---------------------------------------------------------------------------------------------
CREATE VIEW alert_history AS
SELECT a.id AS episode_id, a.rule, a.dimension, a.key, a.width_seconds, a.severity, a.status,
       a.starts_at, a.fired_at, a.ends_at,
       coalesce(a.ends_at, a.last_window + make_interval(secs => a.width_seconds)) AS shaded_until,
       a.evidence ->> 'test' AS test,
       (a.evidence -> 'window' ->> 'p_value')::float8 AS p_value,
       (a.evidence -> 'window' ->> 'statistic')::float8 AS statistic,
       (a.evidence -> 'window' -> 'figures' ->> 'n_docs')::int AS n_docs,
       (a.evidence -> 'window' -> 'figures' ->> 'n_negative')::int AS n_negative,
       (a.evidence -> 'window' -> 'figures' ->> 'share')::float8 AS negative_share,
       (a.evidence -> 'window' -> 'figures' ->> 'baseline_share')::float8 AS baseline_share,
       (a.peak ->> 'p_value')::float8 AS peak_p_value,
       a.evidence -> 'documents' AS evidence_documents,
       a.evidence, a.peak, a.last_eval,
       (SELECT count(*) FROM alert_events e WHERE e.alert_id = a.id) AS n_events,
       (SELECT count(*) FROM alert_notifications n WHERE n.alert_id = a.id) AS n_notifications,
       (SELECT count(*) FROM alert_notifications n JOIN alert_outbox o ON o.id = n.outbox_id
        WHERE n.alert_id = a.id AND o.state = 'sent') AS n_delivered,
       (SELECT count(*) FROM alert_notifications n JOIN alert_outbox o ON o.id = n.outbox_id
        WHERE n.alert_id = a.id AND o.state = 'dead') AS n_dead,
       a.updated_at
FROM alerts a;
COMMENT ON VIEW alert_history IS
    'One row per alert episode (pending -> firing -> resolved, or cancelled): its scope, times, the test and '
    'p-value of the window that made it fire, the top negative documents, and how its notifications fared.';
COMMENT ON COLUMN alert_history.status IS 'pending, firing, resolved or cancelled (a pending episode that never fired).';
COMMENT ON COLUMN alert_history.starts_at IS 'Start of the first window over the firing threshold.';
COMMENT ON COLUMN alert_history.fired_at IS 'End of the window that made it fire; NULL if it never fired.';
COMMENT ON COLUMN alert_history.ends_at IS 'End of the window that resolved it; NULL while open.';
COMMENT ON COLUMN alert_history.shaded_until IS 'ends_at, or the end of its last evaluated window while open: the span to shade on a trend.';
COMMENT ON COLUMN alert_history.p_value IS 'p-value of the detector''s test at the window that made it fire (NULL if it never fired).';
COMMENT ON COLUMN alert_history.negative_share IS 'Negative share of that window (negative_share detector).';
COMMENT ON COLUMN alert_history.baseline_share IS 'Baseline negative share it was tested against (negative_share detector).';
COMMENT ON COLUMN alert_history.evidence_documents IS 'JSON array of the top negative documents of that window (id, title, url, source, p_negative).';
COMMENT ON COLUMN alert_history.n_delivered IS 'Notifications of this episode whose outbox message was delivered.';
COMMENT ON COLUMN alert_history.n_dead IS 'Notifications given up on after FINPULSE_ALERTS_DELIVERY_MAX_AGE_SECONDS.';

CREATE VIEW alert_history_events AS
SELECT e.id AS event_id, e.alert_id AS episode_id, a.rule, a.dimension, a.key, a.width_seconds,
       e.event, e.window_start, e.at,
       (e.detail ->> 'p_value')::float8 AS p_value,
       (e.detail -> 'figures' ->> 'share')::float8 AS negative_share,
       e.detail
FROM alert_events e
JOIN alerts a ON a.id = e.alert_id;
COMMENT ON VIEW alert_history_events IS
    'Every event of every episode in order (event_id): status changes (pending, firing, resolved, cancelled) '
    'with the window''s figures, and notification decisions (notified, silenced, inhibited).';
COMMENT ON COLUMN alert_history_events.p_value IS 'p-value of the window evaluated at that event (status changes).';

CREATE VIEW alert_history_deliveries AS
SELECT n.alert_id AS episode_id, a.rule, a.dimension, a.key,
       n.receiver, n.status AS notified_status, n.seq, n.at_window,
       o.id AS message_id, o.channel, o.state AS message_state, o.attempts, o.sent_at, o.last_error,
       d.attempt, d.ok, d.response_code, d.error, d.duration_ms, d.at AS attempted_at
FROM alert_notifications n
JOIN alerts a ON a.id = n.alert_id
JOIN alert_outbox o ON o.id = n.outbox_id
LEFT JOIN alert_deliveries d ON d.outbox_id = o.id;
COMMENT ON VIEW alert_history_deliveries IS
    'One row per notification of an episode and delivery attempt of its message (attempt NULL = not tried yet): '
    'receiver, channel, whether it got through, the response code or error.';
COMMENT ON COLUMN alert_history_deliveries.message_id IS 'Outbox message id: the webhook-id / email Message-ID receivers deduplicate on.';
COMMENT ON COLUMN alert_history_deliveries.message_state IS 'pending (to send or retry), sent, or dead (given up).';
COMMENT ON COLUMN alert_history_deliveries.seq IS '0 = first notice, 1.. = repeats while firing.';

-- ---------------------------------------------------------------------------------------------
-- The analysts' role: SELECT only, on every table and view of the schema, now and later.
-- ---------------------------------------------------------------------------------------------
-- Roles belong to the cluster, not the database: the role may exist already (another database
-- of the same cluster, or a DBA made it beforehand with LOGIN PASSWORD).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'finpulse_analyst') THEN
        BEGIN
            CREATE ROLE finpulse_analyst LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION;
        EXCEPTION
            WHEN duplicate_object THEN NULL;  -- a concurrent migration of another database made it
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION USING
                    MESSAGE = 'role finpulse_analyst does not exist and ' || current_user || ' may not create it',
                    HINT = 'ask the DBA to run: CREATE ROLE finpulse_analyst LOGIN PASSWORD ''...''; then migrate again';
        END;
        -- A safety belt for BI tools: every transaction starts read-only.
        ALTER ROLE finpulse_analyst SET default_transaction_read_only = on;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO finpulse_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO finpulse_analyst;
-- Tables and views that later migrations create (as this same user) are readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO finpulse_analyst;

-- (No percent sign in this file: the migration runner's driver would read it as a placeholder.)
-- Nothing to create: no CREATE on the schema (Postgres 15's default for PUBLIC; older servers
-- grant it) and no TEMPORARY on the database (granted to PUBLIC by default). The owner keeps both.
DO $$
BEGIN
    IF has_schema_privilege('finpulse_analyst', 'public', 'CREATE') THEN
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    END IF;
    IF has_database_privilege('finpulse_analyst', current_database(), 'TEMPORARY') THEN
        EXECUTE 'REVOKE TEMPORARY ON DATABASE ' || quote_ident(current_database()) || ' FROM PUBLIC';
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION USING
        MESSAGE = current_user || ' may not revoke CREATE on schema public or TEMPORARY on database '
                  || current_database() || ' from PUBLIC',
        HINT = 'ask the DBA to run: REVOKE CREATE ON SCHEMA public FROM PUBLIC; REVOKE TEMPORARY ON DATABASE '
               || quote_ident(current_database()) || ' FROM PUBLIC; then migrate again';
END
$$;
