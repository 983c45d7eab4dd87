-- API keys get a name their partner chooses ("production", "CI"), kept through rotations. A
-- rotation with an overlap window sets revoked_at in the future: the key answers until then.
ALTER TABLE api_keys ADD COLUMN name TEXT;
