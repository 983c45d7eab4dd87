-- Dashboard sign-in (issue 7): one-time sign-in links and the sessions made from them. Only the
-- SHA-256 of a token is stored. Times are RFC 3339 UTC text with microseconds (fixed width, so
-- text order is time order), as in the other billing tables.
CREATE TABLE dashboard_sign_in_links (
    token_hash TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('finance', 'partner')),
    partner_id TEXT REFERENCES partners (id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    CHECK ((role = 'partner') = (partner_id IS NOT NULL))
);

CREATE TABLE dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    role       TEXT NOT NULL CHECK (role IN ('finance', 'partner')),
    partner_id TEXT REFERENCES partners (id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    ended_at   TEXT,
    CHECK ((role = 'partner') = (partner_id IS NOT NULL))
);
