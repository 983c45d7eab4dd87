-- Embedded usage store: raw call events, one row per event, deduplicated by (partner_id, id).
-- Meters are evaluated over these rows, so a new or changed meter applies to past data.
CREATE TABLE call_events (
    partner_id     TEXT    NOT NULL,
    id             TEXT    NOT NULL,           -- UUIDv7
    time_us        INTEGER NOT NULL,           -- microseconds since the Unix epoch, UTC
    key_id         TEXT    NOT NULL,
    env            TEXT    NOT NULL CHECK (env IN ('live', 'sandbox')),
    api            TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    operation      TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    status         INTEGER NOT NULL,
    latency_us     INTEGER NOT NULL,
    request_bytes  INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    units          TEXT    NOT NULL,           -- exact decimal string, never REAL
    gateway_id     TEXT    NOT NULL,
    attributes     TEXT    NOT NULL DEFAULT '{}',
    PRIMARY KEY (partner_id, id)
) WITHOUT ROWID;

CREATE INDEX call_events_by_partner_time ON call_events (partner_id, env, time_us);
