-- Version 5: API tokens, kept as hashes of their secrets.

CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Unique among the tokens not revoked (the index below).
    name         text NOT NULL,
    -- `read` or `launch`; a right includes those before it.
    rights       text NOT NULL CHECK (rights IN ('read', 'launch')),
    -- blake3 of the secret, in hex; the secret itself is never stored.
    hash         text NOT NULL UNIQUE,
    -- The secret's first characters, to tell tokens apart in a listing.
    prefix       text NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;
