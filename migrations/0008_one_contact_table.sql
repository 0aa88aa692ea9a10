-- One table per contact (docs/performance.md, "Ingest profile"). contact_seen held what a pass
-- reads of a contact (hashes, number, deleted mark, claiming page) apart from the canonical
-- fields, keyed by id: every new contact went into two B-trees in random id order (contact_seen
-- and the contacts id index), so a page of 500 new contacts dirtied about a thousand pages.
-- Merged into contacts, a new contact is one random-order insert (the id index); the table
-- itself grows at its end, and the indexes below take contacts in number order, also at the end.
-- A contact some earlier version stored without its contact_seen row gets zero hashes, which no
-- record has: its next record is classified as changed and rewrites it.
ALTER TABLE contacts ADD COLUMN raw_hash BLOB NOT NULL
    DEFAULT x'0000000000000000000000000000000000000000000000000000000000000000';                 -- lets an unchanged record skip normalization
ALTER TABLE contacts ADD COLUMN content_hash BLOB NOT NULL
    DEFAULT x'0000000000000000000000000000000000000000000000000000000000000000';                 -- hash of the canonical fields
ALTER TABLE contacts ADD COLUMN deleted_at BIGINT;                       -- set when missing from two complete passes
ALTER TABLE contacts ADD COLUMN seq BIGINT;                              -- the contact's number (0005)
ALTER TABLE contacts ADD COLUMN page BIGINT;                             -- the page whose shadow may list it (0007)

UPDATE contacts
SET raw_hash = s.raw_hash, content_hash = s.content_hash, deleted_at = s.deleted_at,
    seq = s.seq, page = s.page
FROM contact_seen s
WHERE s.id = contacts.id;

-- A contact numbered by no earlier version gets the next numbers.
UPDATE contacts SET seq = (SELECT COALESCE(MAX(seq), 0) FROM contacts) + n.r
FROM (SELECT id, row_number() OVER (ORDER BY id) AS r FROM contacts WHERE seq IS NULL) AS n
WHERE n.id = contacts.id;

DROP TABLE contact_seen;

CREATE UNIQUE INDEX contacts_seq ON contacts (seq);
-- Live contacts by number: closing a pass and counting contacts read this narrow index, not
-- the wide rows.
CREATE INDEX contacts_live ON contacts (deleted_at, seq);
