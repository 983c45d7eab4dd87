-- Service credentials (issue 15): each role and script calls the control API with a token
-- scoped to what it does (gateway, events:write, finance, read-only, admin), never the admin
-- token. Only the SHA-256 of a token is stored; it is shown once, when created. Times are
-- RFC 3339 UTC text with microseconds, as elsewhere.
CREATE TABLE service_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scope      TEXT NOT NULL CHECK (scope IN ('gateway', 'events:write', 'finance', 'read-only', 'admin')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
