-- The catalog of record in distributed mode (docs/catalog.md, "One catalog across roles"):
-- every catalog billing accepted, by version (a hash of its text), and the one in force. Roles
-- fetch the one in force and report the version they run. Times are RFC 3339 text, as in the
-- ledger.
CREATE TABLE catalog_versions (
    version     TEXT PRIMARY KEY,
    text        TEXT NOT NULL,
    accepted_at TEXT NOT NULL,
    accepted_by TEXT NOT NULL
);

-- One row: the version in force.
CREATE TABLE catalog_in_force (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version TEXT NOT NULL REFERENCES catalog_versions (version),
    since   TEXT NOT NULL
);

-- What each role instance last said it runs.
CREATE TABLE catalog_roles (
    role     TEXT NOT NULL,
    instance TEXT NOT NULL,
    version  TEXT NOT NULL,
    seen_at  TEXT NOT NULL,
    PRIMARY KEY (role, instance)
);
