-- The audit log (issue 15): one record per mutating control-API request that got past
-- authentication: who (the admin token, a service token, a session), the action (method and
-- route), its target, the answer's status and body (secrets redacted), the request id, and
-- when. Append-only: triggers refuse every UPDATE and DELETE. Times are RFC 3339 UTC text.
CREATE TABLE audit_log (
    id         TEXT PRIMARY KEY,
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    status     INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    after      TEXT
);
CREATE INDEX audit_log_by_time ON audit_log (at, id);

CREATE TRIGGER audit_log_is_append_only_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TRIGGER audit_log_is_append_only_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
