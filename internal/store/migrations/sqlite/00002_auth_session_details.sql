-- +goose Up
-- details holds what a login session learns as it runs: the provider's
-- OAuth URL, the device code, phase timings. JSON; never a token.
ALTER TABLE auth_sessions ADD COLUMN details TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details));

-- +goose Down
ALTER TABLE auth_sessions DROP COLUMN details;
