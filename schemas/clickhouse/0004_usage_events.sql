-- Usage events from POST /v1/events (UsageEvent v1, schemas/events/usage_event.v1.json): one
-- row per event, deduplicated by (partner_id, key) as call events are by (partner_id, id); the
-- key is derived from the partner, the CloudEvent's source and its id. The event is kept as it
-- was sent (`cloudevent`), and its data as flat properties meters query directly, so a meter
-- added later applies to past events: numbers exactly (Decimal(38, 9), never a float) in
-- `number_keys`/`number_values`, and every property's text (numbers in their decimal form) in
-- `text_keys`/`text_values` for filters and group_by. Parallel arrays rather than Map or JSON
-- columns, which ClickHouse 18.16 lacks. As for call_events, `time` (seconds) partitions and
-- indexes, `time_us` is exact, and the log position makes ingestion exactly once.
CREATE TABLE IF NOT EXISTS usage_events
(
    partner_id    String,
    type          String,
    time          DateTime('UTC'),
    time_us       Int64,
    key           UUID,
    id            String,
    source        String,
    subject       String,
    digest        String,
    number_keys   Array(String),
    number_values Array(Decimal(38, 9)),
    text_keys     Array(String),
    text_values   Array(String),
    cloudevent    String,
    log_topic     String,
    log_partition UInt32,
    log_offset    UInt64,
    inserted_at   DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (partner_id, type, time, key);

-- Usage events come from their own topic; their positions join the call events' in
-- log_positions, where the aggregator reads where each topic partition stands.
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_log_positions_mv TO log_positions AS
SELECT log_topic, log_partition, max(log_offset) AS max_offset, count() AS rows
FROM usage_events
GROUP BY log_topic, log_partition;

-- Each event's key, ordered by it: the aggregator and the intake find an earlier copy by key
-- whatever its time (an event sent without `time` is stamped when received, so a re-send has
-- another time than the stored copy). `usage_events` is ordered by time for meters; a key
-- lookup there would scan the partner's events. Small granules: a lookup reads one per key.
CREATE TABLE IF NOT EXISTS usage_event_keys
(
    partner_id String,
    key        UUID,
    digest     String,
    time       DateTime('UTC')
)
ENGINE = MergeTree
ORDER BY (partner_id, key)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS usage_event_keys_mv TO usage_event_keys AS
SELECT partner_id, key, digest, time
FROM usage_events;
