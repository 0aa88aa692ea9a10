-- The contact id index in two levels (docs/performance.md, "Round 7"; docs/architecture.md).
-- Contacts arrive in random id order, so a unique index on the id took each new contact into a
-- random page of a large B-tree: a page of 500 new contacts wrote about 500 index pages to the
-- WAL, and at a million contacts the index no longer fit the page cache. Now:
-- - contacts are keyed by their number (seq, 0005), given in arrival order: the table only
--   grows at its end;
-- - ids map to numbers in two tables: new contacts go into the small contact_ids_recent (a
--   B-tree of a few hundred pages, cheap to write into at random), which is merged into the
--   large contact_ids in id order, in one statement, every `contacts::RECENT_IDS` contacts;
-- - every lookup by id reads both (`contacts::number_of!`); the writer looks an id up before
--   giving it a number, so an id is in one of the two tables once (one writer per database).
-- `seq INTEGER PRIMARY KEY` is SQLite's row id; a PostgreSQL backend would use a BIGINT key.

-- deliveries referenced contacts (id), which is no longer a unique key: the same table without
-- that constraint. A delivery is planned only for a contact the same transaction writes.
CREATE TABLE deliveries_by_id (
    contact_id      TEXT   NOT NULL,
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
INSERT INTO deliveries_by_id SELECT contact_id, destination, state, payload_hash, acked_hash,
    remote_id, add_state, attempts, next_attempt_at, last_error, updated_at
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_by_id RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (destination, state, next_attempt_at);

CREATE TABLE contacts_by_number (
    seq            INTEGER PRIMARY KEY,           -- the contact's number, given once (0005)
    id             TEXT    NOT NULL,              -- the source's id: contact_ids / contact_ids_recent
    first_name     TEXT    NOT NULL,
    last_name      TEXT    NOT NULL,
    full_name      TEXT    NOT NULL,
    emails         TEXT    NOT NULL,              -- JSON array of normalized addresses
    phones         TEXT    NOT NULL,              -- JSON array of E.164 numbers
    vip            BOOLEAN NOT NULL,
    fields         TEXT    NOT NULL,              -- JSON object name -> value
    created_at     BIGINT,                        -- source createdDate
    modified_at    BIGINT,                        -- source modifiedDate
    first_seen_at  BIGINT  NOT NULL,
    changed_at     BIGINT  NOT NULL,              -- when the canonical content last changed
    raw_hash       BLOB    NOT NULL,              -- lets an unchanged record skip normalization
    content_hash   BLOB    NOT NULL,              -- hash of the canonical fields
    deleted_at     BIGINT,                        -- set when missing from two complete passes
    page           BIGINT                         -- the page whose shadow may list it (0007)
);
INSERT INTO contacts_by_number (seq, id, first_name, last_name, full_name, emails, phones, vip,
    fields, created_at, modified_at, first_seen_at, changed_at, raw_hash, content_hash,
    deleted_at, page)
SELECT seq, id, first_name, last_name, full_name, emails, phones, vip, fields, created_at,
    modified_at, first_seen_at, changed_at, raw_hash, content_hash, deleted_at, page
FROM contacts ORDER BY seq;

CREATE TABLE contact_ids (
    id  TEXT   NOT NULL PRIMARY KEY,
    seq BIGINT NOT NULL
) WITHOUT ROWID;
CREATE TABLE contact_ids_recent (
    id  TEXT   NOT NULL PRIMARY KEY,
    seq BIGINT NOT NULL
) WITHOUT ROWID;
INSERT INTO contact_ids (id, seq) SELECT id, seq FROM contacts_by_number ORDER BY id;

DROP TABLE contacts;
ALTER TABLE contacts_by_number RENAME TO contacts;
-- Live contacts by number: closing a pass and counting contacts read this narrow index, not
-- the wide rows.
CREATE INDEX contacts_live ON contacts (deleted_at, seq);
