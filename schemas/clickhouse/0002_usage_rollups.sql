-- Rollups per minute and per hour by partner, env, api, version, operation, method and status,
-- filled by materialized views in the same INSERT as the raw rows. Dashboards and invoices read
-- them with sum() and GROUP BY, which is exact whether or not the background merges have run
-- (never rely on merges for money). `units` stays Decimal(38, 9).
CREATE TABLE IF NOT EXISTS call_usage_1m
(
    bucket         DateTime('UTC'),
    partner_id     String,
    env            Enum8('live' = 1, 'sandbox' = 2),
    api            String,
    version        String,
    operation      String,
    method         String,
    status         UInt16,
    calls          UInt64,
    units          Decimal(38, 9),
    request_bytes  UInt64,
    response_bytes UInt64,
    latency_us     UInt64
)
ENGINE = SummingMergeTree((calls, units, request_bytes, response_bytes, latency_us))
PARTITION BY toYYYYMM(bucket)
ORDER BY (partner_id, env, bucket, api, version, operation, method, status);

CREATE MATERIALIZED VIEW IF NOT EXISTS call_usage_1m_mv TO call_usage_1m AS
SELECT
    toStartOfMinute(time) AS bucket, partner_id, env, api, version, operation, method, status,
    count() AS calls, sum(units) AS units, sum(request_bytes) AS request_bytes,
    sum(response_bytes) AS response_bytes, sum(latency_us) AS latency_us
FROM call_events
GROUP BY bucket, partner_id, env, api, version, operation, method, status;

CREATE TABLE IF NOT EXISTS call_usage_1h
(
    bucket         DateTime('UTC'),
    partner_id     String,
    env            Enum8('live' = 1, 'sandbox' = 2),
    api            String,
    version        String,
    operation      String,
    method         String,
    status         UInt16,
    calls          UInt64,
    units          Decimal(38, 9),
    request_bytes  UInt64,
    response_bytes UInt64,
    latency_us     UInt64
)
ENGINE = SummingMergeTree((calls, units, request_bytes, response_bytes, latency_us))
PARTITION BY toYYYYMM(bucket)
ORDER BY (partner_id, env, bucket, api, version, operation, method, status);

CREATE MATERIALIZED VIEW IF NOT EXISTS call_usage_1h_mv TO call_usage_1h AS
SELECT
    toStartOfHour(time) AS bucket, partner_id, env, api, version, operation, method, status,
    count() AS calls, sum(units) AS units, sum(request_bytes) AS request_bytes,
    sum(response_bytes) AS response_bytes, sum(latency_us) AS latency_us
FROM call_events
GROUP BY bucket, partner_id, env, api, version, operation, method, status;
