-- A slug names one tenant wherever a tenant id is accepted too (X-Gate-Tenant,
-- OAuth client_id), so it may never be shaped like an id; and like a host
-- name label it does not end in '-'.  Re-created on every run.

ALTER TABLE tenants DROP CONSTRAINT IF EXISTS tenants_slug_shape;
ALTER TABLE tenants ADD CONSTRAINT tenants_slug_shape CHECK (
    slug ~ '^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$'
    AND slug !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
);
