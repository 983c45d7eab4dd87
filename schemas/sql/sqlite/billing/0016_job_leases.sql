-- Jobs that one billing instance does at a time (automatic finalization): who holds each and
-- until when. The holder renews its lease while it works; another instance takes the job over
-- once a lease has expired (its holder died), so a job never stops for good nor runs twice at
-- once. Times are RFC 3339 text.
CREATE TABLE job_leases (
    job        TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
