-- Spend and usage alerts (docs/pricing.md, "Alerts"): a partner's budget on its running cost or
-- on one meter, with thresholds in percent of it. Deleted alerts stay as the history of their
-- notices. Times are RFC 3339 text, amounts exact decimal text.
CREATE TABLE alerts (
    id          TEXT PRIMARY KEY,             -- alr_<20 hex>
    partner_id  TEXT NOT NULL REFERENCES partners (id),
    metric      TEXT NOT NULL,                -- spend | usage
    meter       TEXT,                         -- usage alerts only
    budget      TEXT NOT NULL,
    thresholds  TEXT NOT NULL,                -- JSON array of percents, ascending
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    deleted_at  TEXT,
    deleted_by  TEXT
);
CREATE INDEX alerts_partner ON alerts (partner_id);

-- Each threshold reached, once per alert and billing period: the primary key is what makes it
-- once, whichever billing instance gets there first.
CREATE TABLE alert_notices (
    alert_id     TEXT NOT NULL REFERENCES alerts (id),
    period_start TEXT NOT NULL,
    threshold    BIGINT NOT NULL,             -- percent of the budget
    partner_id   TEXT NOT NULL REFERENCES partners (id),
    level        TEXT NOT NULL,               -- the value the threshold stands for
    value        TEXT NOT NULL,               -- the value when it was reached
    unit         TEXT NOT NULL,               -- the currency code, or the meter's name
    reached_at   TEXT NOT NULL,
    PRIMARY KEY (alert_id, period_start, threshold)
);
CREATE INDEX alert_notices_partner ON alert_notices (partner_id, period_start);
