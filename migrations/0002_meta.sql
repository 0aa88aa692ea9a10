-- Small facts the daemon keeps between runs, such as the fingerprint of each destination's
-- payload settings: when it changes (tags edited, destination newly enabled) every contact's
-- payload hash for that destination is computed again.
CREATE TABLE meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
