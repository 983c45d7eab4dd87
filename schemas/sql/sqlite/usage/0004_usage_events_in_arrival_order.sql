-- Usage events move from a table ordered by (partner_id, key) to one in arrival order (rowid),
-- with (partner_id, key) unique in an index of its own.
--
-- Why: the key is a hash, so the old table put every event, whole, on a random page of one large
-- B-tree. Each insert dirtied its own page, each key look-up (the events route's, then the
-- aggregator's) walked full rows, and a meter's time-range scan fetched every row by a random
-- seek from the (partner_id, type, time_us) index. In arrival order, inserts append, the range
-- scan reads nearly sequential pages, and the key index holds only partner, key and rowid.
-- Measured on 400,000 events (SQLite 3.51): inserts 9.1k -> 14.7k rows/s, a 100-key look-up
-- 2.0 -> 1.0 ms, the range scan 3.8 -> 0.9 s.
CREATE TABLE usage_events_by_arrival (
    partner_id TEXT    NOT NULL,
    key        TEXT    NOT NULL,           -- UUID (v8) of partner, source and id
    id         TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    time_us    INTEGER NOT NULL,           -- microseconds since the Unix epoch, UTC
    digest     TEXT    NOT NULL,           -- SHA-256 of type, time and data
    cloudevent TEXT    NOT NULL            -- the CloudEvent as sent (JSON)
);

INSERT INTO usage_events_by_arrival (partner_id, key, id, source, type, subject, time_us, digest, cloudevent)
SELECT partner_id, key, id, source, type, subject, time_us, digest, cloudevent
FROM usage_events
ORDER BY partner_id, type, time_us;

DROP TABLE usage_events;

ALTER TABLE usage_events_by_arrival RENAME TO usage_events;

CREATE UNIQUE INDEX usage_events_by_key ON usage_events (partner_id, key);

CREATE INDEX usage_events_by_partner_type_time ON usage_events (partner_id, type, time_us);
