-- Usage event keys are stored as their 16 bytes, and the unique index holds the key alone (it is
-- derived from the partner, source and id, so it names one partner's event by itself).
--
-- Why: the key is a hash, so every insert lands on a random page of the key index, and that
-- index's size sets how many pages a batch of inserts dirties (each written to the WAL, then
-- copied back by the checkpoint). As text beside the partner id an entry took about 75 bytes;
-- as bytes alone about 20. Measured on 1,000,000 events inserted 20,000 a transaction (SQLite,
-- WAL, synchronous FULL): 28-31 -> 19-21 µs of CPU per event at the last 200,000. In `peage up`
-- after 10 s of POST /v1/events (load-tests/events/main.rs, ~650,000 events left to store): the
-- aggregator's catch-up 42 -> 33 µs of CPU per event and 14,600 -> 20,000 events/s; usage.db
-- 595 -> 489 MB at ~880,000 events.
CREATE TABLE usage_events_keyed_by_bytes (
    partner_id TEXT    NOT NULL,
    key        BLOB    NOT NULL,           -- UUID (v8) of partner, source and id: 16 bytes
    id         TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    time_us    INTEGER NOT NULL,           -- microseconds since the Unix epoch, UTC
    digest     TEXT    NOT NULL,           -- SHA-256 of type, time and data
    cloudevent TEXT    NOT NULL            -- the CloudEvent as sent (JSON)
);

INSERT INTO usage_events_keyed_by_bytes (partner_id, key, id, source, type, subject, time_us, digest, cloudevent)
SELECT partner_id, unhex(replace(key, '-', '')), id, source, type, subject, time_us, digest, cloudevent
FROM usage_events
ORDER BY rowid;

DROP TABLE usage_events;

ALTER TABLE usage_events_keyed_by_bytes RENAME TO usage_events;

CREATE UNIQUE INDEX usage_events_by_key ON usage_events (key);

CREATE INDEX usage_events_by_partner_type_time ON usage_events (partner_id, type, time_us);
