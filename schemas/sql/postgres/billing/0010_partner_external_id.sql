-- A partner's id in the company's own systems: usage events (POST /v1/events) may name the
-- partner by it in `subject`. Unique when set.
ALTER TABLE partners ADD COLUMN external_id TEXT;
CREATE UNIQUE INDEX partners_by_external_id ON partners (external_id) WHERE external_id IS NOT NULL;
