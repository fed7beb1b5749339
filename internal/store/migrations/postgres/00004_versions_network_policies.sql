-- +goose Up
-- version makes every write of a VM or a login session a compare-and-swap:
-- a writer names the version it read and the write fails when another
-- writer came first. Without it a heartbeat that read a session before the
-- login ended wrote the old state back over the finished one, and a stop
-- racing a destroy wrote "stopped" over "destroyed".
ALTER TABLE vms ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE auth_sessions ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

-- A user holds several API keys (one per machine or script), each with an
-- optional expiry after which it no longer authenticates, and a name to
-- tell them apart when revoking one.
ALTER TABLE api_keys ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN expires_at TIMESTAMPTZ;

-- An admin's network policy for one user. It used to live in the
-- credentials table under a pseudo-provider, where the user could delete it
-- like a credential and so lift the restriction. The upstream proxy URL
-- may hold a password: it is sealed (nonce, ciphertext, key_version, bound
-- to the user and version like a credential); proxy_host is the part safe
-- to show. A NULL ciphertext means no upstream proxy.
CREATE TABLE network_policies (
    user_id     TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    mode        TEXT NOT NULL,
    allow       JSONB NOT NULL DEFAULT '[]',
    proxy_host  TEXT NOT NULL DEFAULT '',
    version     BIGINT NOT NULL,
    key_version INTEGER NOT NULL DEFAULT 0,
    nonce       BYTEA,
    ciphertext  BYTEA,
    updated_at  TIMESTAMPTZ NOT NULL
);

-- Policies kept the old way move over: the sealed proxy is bound to the
-- version it was sealed under, which moves with it.
INSERT INTO network_policies (user_id, mode, allow, proxy_host, version, key_version, nonce, ciphertext, updated_at)
SELECT owner_id,
       COALESCE(metadata->>'mode', 'full'),
       COALESCE(metadata->'allow', '[]'::jsonb),
       COALESCE(metadata->>'proxy_host', ''),
       version, key_version, nonce, ciphertext, updated_at
FROM credentials WHERE provider = 'hangar.network';
DELETE FROM credentials WHERE provider = 'hangar.network';

-- +goose Down
-- Policies go back to the credentials table; one without a proxy gets an
-- empty ciphertext, which the old code fails to open: it fails closed.
INSERT INTO credentials (id, owner_id, provider, version, key_version, nonce, ciphertext, metadata, captured_at, updated_at)
SELECT 'cred_' || md5(random()::text), user_id, 'hangar.network', version, key_version,
       COALESCE(nonce, ''::bytea), COALESCE(ciphertext, ''::bytea),
       jsonb_build_object('mode', mode, 'allow', allow, 'proxy_host', proxy_host), updated_at, updated_at
FROM network_policies;
DROP TABLE network_policies;
ALTER TABLE api_keys DROP COLUMN expires_at;
ALTER TABLE api_keys DROP COLUMN name;
ALTER TABLE auth_sessions DROP COLUMN version;
ALTER TABLE vms DROP COLUMN version;
