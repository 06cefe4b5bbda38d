-- Version 5: the same rules as the PostgreSQL store's version 5: API tokens,
-- kept as hashes of their secrets.

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    -- Unique among the tokens not revoked (the index below).
    name TEXT NOT NULL,
    -- `read` or `launch`; a right includes those before it.
    rights TEXT NOT NULL CHECK (rights IN ('read', 'launch')),
    -- blake3 of the secret, in hex; the secret itself is never stored.
    hash TEXT NOT NULL UNIQUE,
    -- The secret's first characters, to tell tokens apart in a listing.
    prefix TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    last_used_at INTEGER
);

CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;
