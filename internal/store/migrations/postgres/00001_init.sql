-- Initial schema (Postgres). Never edit an applied migration: add a new file.
-- Timestamps are timestamptz; hangar writes them in UTC, truncated to
-- microseconds so both dialects round-trip the same value.

-- +goose Up
CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash       TEXT NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);

CREATE TABLE vms (
    id         TEXT PRIMARY KEY,
    owner_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    spec       JSONB NOT NULL DEFAULT '{}',
    runtime    JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX vms_owner_id ON vms (owner_id, created_at);

-- A browser-login session: one throwaway VM driving one provider's login.
CREATE TABLE auth_sessions (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider    TEXT NOT NULL,
    mode        TEXT NOT NULL,
    state       TEXT NOT NULL,
    error       TEXT NOT NULL DEFAULT '',
    vm_id       TEXT REFERENCES vms (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
);
CREATE INDEX auth_sessions_owner_id ON auth_sessions (owner_id, created_at);

-- Sealed credentials, one record per user and provider. version is the
-- record version bound into the AEAD additional data; key_version names the
-- key-encryption key that sealed it.
CREATE TABLE credentials (
    id           TEXT PRIMARY KEY,
    owner_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider     TEXT NOT NULL,
    version      BIGINT NOT NULL,
    key_version  INTEGER NOT NULL,
    nonce        BYTEA NOT NULL,
    ciphertext   BYTEA NOT NULL,
    metadata     JSONB NOT NULL DEFAULT '{}',
    captured_at  TIMESTAMPTZ NOT NULL,
    validated_at TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (owner_id, provider)
);

-- The durable task queue. Tasks are system work (tearing down a deleted
-- user's VMs among it), so they do not cascade from users.
CREATE TABLE tasks (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         TEXT NOT NULL,
    payload      JSONB NOT NULL DEFAULT '{}',
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       TIMESTAMPTZ NOT NULL,
    lease_owner  TEXT NOT NULL DEFAULT '',
    lease_until  TIMESTAMPTZ,
    last_error   TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX tasks_due ON tasks (state, run_at, id);

-- Append-only event log. Appends take a transaction-scoped advisory lock,
-- so ids become visible in id order and an SSE client resuming after an id
-- never skips an event that committed late.
CREATE TABLE events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    TEXT REFERENCES users (id) ON DELETE CASCADE,
    type       TEXT NOT NULL,
    subject    TEXT NOT NULL DEFAULT '',
    data       JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_user_id ON events (user_id, id);

-- +goose Down
DROP TABLE events;
DROP TABLE tasks;
DROP TABLE credentials;
DROP TABLE auth_sessions;
DROP TABLE vms;
DROP TABLE api_keys;
DROP TABLE users;
