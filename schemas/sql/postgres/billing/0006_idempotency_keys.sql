-- Idempotency-Key on control-API POSTs (issue 15): the first answer to a key is kept for 24 h
-- and replayed to retries with the same request; the same key with another request is refused.
-- `scope` is who sent it (admin, a finance or partner session), so keys of different callers
-- never meet. A row without `status` is a request still in flight (or one that crashed: after
-- 60 s it may be claimed again). Times are RFC 3339 UTC text with microseconds, as elsewhere.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    status       BIGINT,
    content_type TEXT,
    body         TEXT,
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
