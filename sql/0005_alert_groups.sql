-- finpulse schema, version 5: alert groups (Alertmanager's aggregation groups) and the last evaluation.

-- One row per live notification group: a receiver's route and the values of its group_by labels
-- (group_key, Alertmanager's groupKey). It lives from the evaluation that first had something to
-- tell the group until a message leaves nothing firing in it. Times are window ends (window time),
-- like alert_notifications.at_window: group_wait counts from first_window, group_interval from
-- last_window.
CREATE TABLE alert_groups (
    receiver     text        NOT NULL,
    group_key    text        NOT NULL,
    labels       jsonb       NOT NULL,               -- groupLabels
    first_window timestamptz NOT NULL,               -- when the group first had an alert to tell
    last_window  timestamptz,                        -- when its last message was queued (NULL: none yet)
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (receiver, group_key)
);

-- Recent resolutions, read at every evaluation to tell the ones a group still owes its receivers.
CREATE INDEX alerts_resolved_ends_idx ON alerts (ends_at) WHERE status = 'resolved';

-- The last evaluation that ran (any instance, `alerts check` included; a dry run writes nothing):
-- what `finpulse alerts status` shows as the last evaluation time.
CREATE TABLE alert_evaluations (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    at           timestamptz NOT NULL,
    holder       text        NOT NULL,
    windows      integer     NOT NULL,
    transitions  integer     NOT NULL,
    messages     integer     NOT NULL,
    skipped      text,                               -- why it evaluated nothing (no windows yet), else NULL
    duration_ms  integer     NOT NULL
);
