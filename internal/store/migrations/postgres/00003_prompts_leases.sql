-- +goose Up
-- A prompt run non-interactively by a provider's CLI in a user's CLI VM.
-- The prompt text is the user's own input, kept for their history; output
-- lives in prompt_events. State changes are guarded by the state they come
-- from (UpdatePrompt), so a late writer cannot revive a finished prompt.
CREATE TABLE prompts (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    vm_id       TEXT REFERENCES vms (id) ON DELETE SET NULL,
    provider    TEXT NOT NULL,
    state       TEXT NOT NULL,
    prompt      TEXT NOT NULL,
    cwd         TEXT NOT NULL DEFAULT '',
    model       TEXT NOT NULL DEFAULT '',
    timeout_s   INTEGER NOT NULL,
    exit_code   INTEGER,
    error       TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    usage       JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX prompts_owner_id ON prompts (owner_id, created_at, id);
CREATE INDEX prompts_state ON prompts (state);

-- The common events of one prompt, numbered from 1 per prompt; the number
-- is the SSE id a client resumes from.
CREATE TABLE prompt_events (
    prompt_id  TEXT NOT NULL REFERENCES prompts (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    type       TEXT NOT NULL,
    data       JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (prompt_id, seq)
);

-- The single-writer lease of a user's provider credential: at most one VM
-- holds the credential files at a time. expires_at is renewed while the
-- holder runs; an expired lease may be taken over.
CREATE TABLE credential_leases (
    owner_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider    TEXT NOT NULL,
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    holder      TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (owner_id, provider)
);
CREATE INDEX credential_leases_vm_id ON credential_leases (vm_id);

-- +goose Down
DROP TABLE credential_leases;
DROP TABLE prompt_events;
DROP TABLE prompts;
