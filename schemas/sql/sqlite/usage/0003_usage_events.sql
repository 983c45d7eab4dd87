-- Usage events from POST /v1/events (UsageEvent v1, schemas/events/usage_event.v1.json), one
-- row per event, deduplicated by (partner_id, key) as call events are by (partner_id, id): the
-- key is derived from the partner, the CloudEvent's source and its id. The event is kept as it
-- was sent; meters read its data when they are evaluated, so a new meter applies to past events.
CREATE TABLE usage_events (
    partner_id TEXT    NOT NULL,
    key        TEXT    NOT NULL,           -- UUID (v8) of partner, source and id
    id         TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    time_us    INTEGER NOT NULL,           -- microseconds since the Unix epoch, UTC
    digest     TEXT    NOT NULL,           -- SHA-256 of type, time and data
    cloudevent TEXT    NOT NULL,           -- the CloudEvent as sent (JSON)
    PRIMARY KEY (partner_id, key)
) WITHOUT ROWID;

CREATE INDEX usage_events_by_partner_type_time ON usage_events (partner_id, type, time_us);
