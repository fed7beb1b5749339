-- Initial schema (SQLite). Never edit an applied migration: add a new file.
-- Timestamps are TEXT in a fixed-width UTC form, 2006-01-02T15:04:05.000000Z,
-- so comparing them as strings compares them as times.

-- +goose Up
CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    created_at TEXT NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash       TEXT NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX api_keys_user_id ON api_keys (user_id);

CREATE TABLE vms (
    id         TEXT PRIMARY KEY,
    owner_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    spec       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(spec)),
    runtime    TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(runtime)),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
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
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    expires_at  TEXT,
    finished_at TEXT
);
CREATE INDEX auth_sessions_owner_id ON auth_sessions (owner_id, created_at);

-- Sealed credentials, one record per user and provider. version is the
-- record version bound into the AEAD additional data; key_version names the
-- key-encryption key that sealed it.
CREATE TABLE credentials (
    id           TEXT PRIMARY KEY,
    owner_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider     TEXT NOT NULL,
    version      INTEGER NOT NULL,
    key_version  INTEGER NOT NULL,
    nonce        BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    captured_at  TEXT NOT NULL,
    validated_at TEXT,
    updated_at   TEXT NOT NULL,
    UNIQUE (owner_id, provider)
);

-- The durable task queue. Tasks are system work (tearing down a deleted
-- user's VMs among it), so they do not cascade from users.
CREATE TABLE tasks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(payload)),
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       TEXT NOT NULL,
    lease_owner  TEXT NOT NULL DEFAULT '',
    lease_until  TEXT,
    last_error   TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX tasks_due ON tasks (state, run_at, id);

-- Append-only event log. AUTOINCREMENT: ids are never reused, so an SSE
-- client resuming from Last-Event-ID never skips a newer event.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT REFERENCES users (id) ON DELETE CASCADE,
    type       TEXT NOT NULL,
    subject    TEXT NOT NULL DEFAULT '',
    data       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data)),
    created_at TEXT NOT NULL
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
