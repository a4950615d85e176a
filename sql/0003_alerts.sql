-- finpulse schema, version 3: the alert service (alerts/).
-- 0001's `alerts` / `alert_deliveries` had one row per alerting window and one per recipient;
-- the alert service needs episodes (pending -> firing -> resolved over many windows), their full
-- history, silences, and an outbox written in the same transaction as the state change. Nothing
-- wrote the old tables, so they are replaced rather than migrated.

DROP TABLE IF EXISTS alert_deliveries;
DROP TABLE IF EXISTS alerts;

-- One row per episode: one scope (rule, dimension, key) from its first pending window until it
-- resolves (or is cancelled while still pending). At most one open episode per scope.
CREATE TABLE alerts (
    id               text PRIMARY KEY,                -- hash of (rule, dimension, key, starts_at)
    fingerprint      text        NOT NULL,            -- hash of (rule, dimension, key): the scope
    rule             text        NOT NULL,
    dimension        text        NOT NULL,
    key              text        NOT NULL,
    width_seconds    integer     NOT NULL,
    severity         text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    status           text        NOT NULL CHECK (status IN ('pending', 'firing', 'resolved', 'cancelled')),
    pending_windows  integer     NOT NULL DEFAULT 0,  -- consecutive windows over the firing threshold
    starts_at        timestamptz NOT NULL,            -- start of the first window over the threshold
    fired_at         timestamptz,                     -- end of the window that made it fire
    ends_at          timestamptz,                     -- end of the window that resolved it
    last_window      timestamptz NOT NULL,            -- start of the last window evaluated
    last_eval        jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- figures of the last window
    peak             jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- figures of the most extreme window
    evidence         jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- figures + top documents when it fired
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX alerts_open_uidx ON alerts (fingerprint) WHERE status IN ('pending', 'firing');
CREATE INDEX alerts_rule_status_idx ON alerts (rule, status);
CREATE INDEX alerts_starts_idx ON alerts (starts_at);

-- Full history: every status change and every notification decision (sent, muted and why).
CREATE TABLE alert_events (
    id           bigserial PRIMARY KEY,
    alert_id     text        NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    event        text        NOT NULL,               -- pending | firing | resolved | cancelled | notified | silenced | inhibited
    window_start timestamptz,
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_events_alert_idx ON alert_events (alert_id, id);

-- Where each rule's evaluation stands: the start of the last window it evaluated.
CREATE TABLE alert_cursors (
    rule          text PRIMARY KEY,
    width_seconds integer     NOT NULL,
    last_window   timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Silences: matching alerts are recorded but not notified between starts_at and ends_at.
CREATE TABLE alert_silences (
    id          bigserial PRIMARY KEY,
    rule        text,                                -- NULL = any rule
    dimension   text,                                -- NULL = any dimension
    key_pattern text        NOT NULL DEFAULT '*',    -- fnmatch pattern on the key
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    author      text        NOT NULL,
    comment     text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expired_at  timestamptz,                         -- set by `silence expire`
    CHECK (ends_at > starts_at)
);
CREATE INDEX alert_silences_active_idx ON alert_silences (ends_at) WHERE expired_at IS NULL;

-- The outbox: one message per receiver and evaluation (grouped alerts), written in the same
-- transaction as the state change that caused it; its id is the idempotency key receivers see
-- (webhook-id header, email Message-ID).
CREATE TABLE alert_outbox (
    id              text PRIMARY KEY,
    receiver        text        NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('email', 'webhook', 'log')),
    status          text        NOT NULL CHECK (status IN ('firing', 'resolved')),
    group_key       text        NOT NULL,
    payload         jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,                     -- a sender holds it until then
    last_error      text,
    response_code   integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_outbox_due_idx ON alert_outbox (next_attempt_at) WHERE state = 'pending';

-- Each (episode, receiver, status, repeat number) is notified in exactly one outbox message.
CREATE TABLE alert_notifications (
    alert_id   text        NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    receiver   text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('firing', 'resolved')),
    seq        integer     NOT NULL DEFAULT 0,       -- 0 = first notice, 1.. = repeats while firing
    outbox_id  text        NOT NULL REFERENCES alert_outbox (id),
    at_window  timestamptz NOT NULL,                 -- end of the window evaluated when it was queued
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, receiver, status, seq)
);
CREATE INDEX alert_notifications_outbox_idx ON alert_notifications (outbox_id);

-- Every delivery attempt of an outbox message, failed or not (0001's table of the same name had one
-- row per alert and recipient): what an operator reads when a receiver misbehaves.
CREATE TABLE alert_deliveries (
    id            bigserial PRIMARY KEY,
    outbox_id     text        NOT NULL REFERENCES alert_outbox (id) ON DELETE CASCADE,
    attempt       integer     NOT NULL,
    ok            boolean     NOT NULL,
    response_code integer,
    error         text,
    duration_ms   integer,
    holder        text,                              -- which service instance sent it
    at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_deliveries_outbox_idx ON alert_deliveries (outbox_id);

-- Which instance leads (holds the advisory lock); written by the leader for operators and tests.
CREATE TABLE alert_leader (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    holder     text        NOT NULL,
    since      timestamptz NOT NULL,
    heartbeat  timestamptz NOT NULL
);
