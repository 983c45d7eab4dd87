-- Raw call events: one row per CallEvent, one column per field under the same name.
-- ClickHouse 18.16 has no DateTime64, so `time` (seconds, for partitioning and the primary
-- index) sits beside `time_us` (the exact microseconds every query filters on).
-- `log_topic`/`log_partition`/`log_offset` record where each row came from in the event log:
-- the aggregator resumes from what this table holds, which is what makes ingestion exactly once
-- (docs/exactly-once.md). `units` is exact: Decimal(38, 9), never a float.
CREATE TABLE IF NOT EXISTS call_events
(
    id             UUID,
    time           DateTime('UTC'),
    time_us        Int64,
    partner_id     String,
    key_id         String,
    env            Enum8('live' = 1, 'sandbox' = 2),
    api            String,
    version        String,
    operation      String,
    method         String,
    status         UInt16,
    latency_us     UInt64,
    request_bytes  UInt64,
    response_bytes UInt64,
    units          Decimal(38, 9),
    gateway_id     String,
    attributes     String,
    log_topic      String,
    log_partition  UInt32,
    log_offset     UInt64,
    inserted_at    DateTime('UTC') DEFAULT now()
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (partner_id, env, time, id);

-- The highest log offset stored per topic partition, written by the same INSERT as the raw
-- rows (a materialized view), so the aggregator's resume point is one small read.
CREATE TABLE IF NOT EXISTS log_positions
(
    log_topic     String,
    log_partition UInt32,
    max_offset    UInt64,
    rows          UInt64
)
ENGINE = ReplacingMergeTree(max_offset)
ORDER BY (log_topic, log_partition);

CREATE MATERIALIZED VIEW IF NOT EXISTS log_positions_mv TO log_positions AS
SELECT log_topic, log_partition, max(log_offset) AS max_offset, count() AS rows
FROM call_events
GROUP BY log_topic, log_partition;
