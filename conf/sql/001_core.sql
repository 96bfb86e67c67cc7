-- Gate's durable state.  Every statement is safe to run again: setup
-- applies all files in order on every start.

CREATE TABLE IF NOT EXISTS tenants (
    id           uuid PRIMARY KEY,
    slug         text NOT NULL UNIQUE
                 CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    plan         text NOT NULL DEFAULT 'free'
                 CHECK (plan ~ '^[a-z0-9_-]{1,32}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    disabled_at  timestamptz
);

CREATE TABLE IF NOT EXISTS api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- SHA-256 hex of the whole key; the key itself is never stored
    key_hash      char(64) NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    -- what operators see in listings, e.g. gate_live_sk_1a2b...
    display       text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    expires_at    timestamptz,
    revoked_at    timestamptz
);

CREATE INDEX IF NOT EXISTS api_keys_tenant_idx ON api_keys (tenant_id);

CREATE TABLE IF NOT EXISTS access_tokens (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    token_hash  char(64) NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    scopes      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CHECK (expires_at > created_at)
);

CREATE INDEX IF NOT EXISTS access_tokens_subject_idx
    ON access_tokens (tenant_id, subject);

CREATE TABLE IF NOT EXISTS identities (
    identity_id  uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS identities_tenant_idx
    ON identities (tenant_id, identity_id);

CREATE TABLE IF NOT EXISTS tenant_settings (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb
                CHECK (jsonb_typeof(settings) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A revoked key or token stays revoked: revoked_at may be set once and
-- never cleared or moved.
CREATE OR REPLACE FUNCTION gate_revoked_stays_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL
       AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'a revoked credential stays revoked'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS api_keys_revoked ON api_keys;
CREATE TRIGGER api_keys_revoked BEFORE UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION gate_revoked_stays_revoked();

DROP TRIGGER IF EXISTS access_tokens_revoked ON access_tokens;
CREATE TRIGGER access_tokens_revoked BEFORE UPDATE ON access_tokens
    FOR EACH ROW EXECUTE FUNCTION gate_revoked_stays_revoked();
