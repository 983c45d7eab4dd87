-- OAuth2 (PRODUCT.md §3): Péage's own token-signing keys (Ed25519) and partners' own issuers.
-- A rotation retires the current key and adds a new one; retired keys stay in the JWKS until
-- every token they signed has expired.
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY,
    seed       TEXT NOT NULL,              -- Ed25519 private seed, base64url; never leaves billing
    created_at TIMESTAMPTZ NOT NULL,
    retired_at TIMESTAMPTZ
);

-- JWTs a partner's own identity provider issues, accepted by the gateway for that partner.
CREATE TABLE partner_issuers (
    id         TEXT PRIMARY KEY,           -- iss_<20 hex>, the "key id" of calls made with them
    partner_id TEXT NOT NULL REFERENCES partners (id),
    issuer     TEXT NOT NULL UNIQUE,       -- the tokens' `iss`
    jwks_url   TEXT NOT NULL,
    algorithm  TEXT NOT NULL,              -- pinned: tokens with any other `alg` are refused
    audience   TEXT NOT NULL,
    env        TEXT NOT NULL CHECK (env IN ('live', 'sandbox')),
    created_at TIMESTAMPTZ NOT NULL
);
