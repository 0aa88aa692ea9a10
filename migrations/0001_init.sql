-- Canonical contacts, the pass cursor, quarantine, and per-destination delivery state.
-- Timestamps are epoch milliseconds (BIGINT); hashes are BLAKE3 digests (BLOB). Kept to
-- portable SQL so a PostgreSQL backend can follow (BLOB -> BYTEA).

-- The canonical contact, written only when the source record changes.
CREATE TABLE contacts (
    id             TEXT    NOT NULL PRIMARY KEY,
    first_name     TEXT    NOT NULL,
    last_name      TEXT    NOT NULL,
    full_name      TEXT    NOT NULL,
    emails         TEXT    NOT NULL,           -- JSON array of normalized addresses
    phones         TEXT    NOT NULL,           -- JSON array of E.164 numbers
    vip            BOOLEAN NOT NULL,
    fields         TEXT    NOT NULL,           -- JSON object name -> value
    created_at     BIGINT,                     -- source createdDate
    modified_at    BIGINT,                     -- source modifiedDate
    raw            TEXT    NOT NULL,           -- the record exactly as the source sent it
    first_seen_at  BIGINT  NOT NULL,
    changed_at     BIGINT  NOT NULL            -- when the canonical content last changed
);

-- The small part of each contact read on every pass: kept apart so looking up a page of
-- ids reads narrow rows, not raw JSON.
CREATE TABLE contact_seen (
    id             TEXT    NOT NULL PRIMARY KEY,
    raw_hash       BLOB    NOT NULL,           -- lets an unchanged record skip normalization
    content_hash   BLOB    NOT NULL,           -- hash of the canonical fields
    deleted_at     BIGINT                      -- set when missing from two complete passes
) WITHOUT ROWID;

-- Which ids each pass saw, appended page by page (sequential writes, where updating a
-- "last seen" column would rewrite rows in random order). Resolved into deleted marks when a
-- pass completes; only the last two complete passes are kept.
CREATE TABLE pass_sightings (
    pass_id BIGINT NOT NULL,
    id      TEXT   NOT NULL
);

-- One row per pass of the source. The open pass (completed_at IS NULL) is the cursor: it is
-- advanced in the same transaction as the page it covers, so a restart resumes mid-pass.
CREATE TABLE passes (
    id           BIGINT NOT NULL PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    completed_at BIGINT,
    next_start   BIGINT NOT NULL,
    pages        BIGINT NOT NULL DEFAULT 0,
    records      BIGINT NOT NULL DEFAULT 0,
    new_contacts BIGINT NOT NULL DEFAULT 0,
    changed      BIGINT NOT NULL DEFAULT 0,
    quarantined  BIGINT NOT NULL DEFAULT 0,
    deleted      BIGINT NOT NULL DEFAULT 0
);

-- Records that cannot yield a contact id, keyed by their raw bytes so a record seen again is
-- one row, not one per pass. Pruned like contacts once gone from two complete passes.
CREATE TABLE quarantine (
    raw_hash       BLOB   NOT NULL PRIMARY KEY,
    raw            TEXT   NOT NULL,
    reason         TEXT   NOT NULL,
    first_seen_at  BIGINT NOT NULL,
    last_seen_at   BIGINT NOT NULL,
    last_seen_pass BIGINT NOT NULL
);

-- Delivery state of one contact at one destination ('omi', 'engagelab').
-- due: state = 'pending' AND next_attempt_at <= now; the pusher sends the payload whose hash
-- is payload_hash and records it as acked_hash once the destination acknowledges it.
CREATE TABLE deliveries (
    contact_id      TEXT   NOT NULL REFERENCES contacts (id),
    destination     TEXT   NOT NULL,
    state           TEXT   NOT NULL,           -- pending | synced | dead | skipped
    payload_hash    BLOB,                      -- hash of the payload the destination should hold
    acked_hash      BLOB,                      -- hash of the last payload it acknowledged
    remote_id       TEXT,                      -- destination's own id (EngageLab EUID)
    add_state       TEXT,                      -- OMI: NULL never sent, 'intent' outcome unknown, 'added'
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (contact_id, destination)
);
CREATE INDEX deliveries_due ON deliveries (destination, state, next_attempt_at);
