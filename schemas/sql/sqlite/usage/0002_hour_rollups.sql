-- Hourly rollups of call_events, kept in the same transaction as the raw rows they sum (only
-- rows actually inserted count, so a duplicate never adds twice). Additive meters over whole
-- hours read these instead of every raw event; units are an exact decimal string, added in
-- Rust, never as REAL. A data directory from before this table is backfilled on open.
CREATE TABLE call_rollups_hour (
    partner_id     TEXT    NOT NULL,
    env            TEXT    NOT NULL,
    hour_us        INTEGER NOT NULL,           -- start of the UTC hour, µs since the epoch
    api            TEXT    NOT NULL,
    version        TEXT    NOT NULL,
    operation      TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    status         INTEGER NOT NULL,
    calls          INTEGER NOT NULL,
    units          TEXT    NOT NULL,
    request_bytes  INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    latency_us     INTEGER NOT NULL,
    PRIMARY KEY (partner_id, env, hour_us, api, version, operation, method, status)
) WITHOUT ROWID;
