-- what it answers: the market's negative share and volume, hour by hour, over the last 24 hours
SELECT window_start, n_docs, round(negative_share::numeric, 3) AS negative_share
FROM sentiment_trend JOIN latest_model_version USING (model_version)
WHERE dimension = 'all' AND width_seconds = 3600 AND window_start >= now() - interval '24 hours'
ORDER BY window_start;

-- what it answers: the tickers whose negative share rose most in the last 24 hours against their past week
SELECT ticker, docs_24h, round(negative_share_24h::numeric, 3) AS share_24h,
       round(negative_share_baseline_7d::numeric, 3) AS share_7d, round(negative_share_change::numeric, 3) AS change
FROM ticker_leaderboard JOIN latest_model_version USING (model_version)
WHERE docs_24h >= 50
ORDER BY negative_share_change DESC NULLS LAST
LIMIT 10;

-- what it answers: one ticker's daily volume, mean score and negative share over the last 30 days
SELECT window_start::date AS day, n_docs, round(mean_score::numeric, 3) AS mean_score,
       round(negative_share::numeric, 3) AS negative_share
FROM sentiment_trend JOIN latest_model_version USING (model_version)
WHERE dimension = 'ticker' AND key = 'ACME' AND width_seconds = 86400 AND window_start >= now() - interval '30 days'
ORDER BY day;

-- what it answers: the documents most negative towards one company in the last day, and the words behind each score
SELECT m.published_at, m.title, m.sentiment AS towards_acme, round(m.p_negative::numeric, 2) AS p_negative,
       m.entity_level, m.document_sentiment, jsonb_path_query_array(d.evidence, '$[*].word') AS evidence_words, m.url
FROM ticker_mentions m
JOIN document_detail d ON d.id = m.document_id AND d.model_version = m.model_version
WHERE m.ticker = 'ACME' AND m.published_at >= now() - interval '1 day'
ORDER BY m.p_negative DESC
LIMIT 10;

-- what it answers: every alert episode of the last 7 days, its test result and whether its notifications got through
SELECT rule, dimension, key, status, starts_at, fired_at, ends_at, p_value,
       round(negative_share::numeric, 3) AS share, round(baseline_share::numeric, 3) AS baseline,
       n_notifications, n_delivered, n_dead
FROM alert_history
WHERE starts_at >= now() - interval '7 days'
ORDER BY starts_at DESC;
