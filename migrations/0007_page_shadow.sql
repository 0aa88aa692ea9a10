-- The page shadow (docs/contact.md, "Unchanged records"; docs/performance.md): per page start
-- offset, what the store made of that page when it was last committed, so a page read again
-- unchanged settles its records without one contact_seen probe each.
-- entries: 24 bytes per record of the page, in page order: the first 16 bytes of its raw hash,
-- then its contact number (contact_seen.seq, 8 bytes little-endian). Written in the page's own
-- transaction.
CREATE TABLE page_shadow (
    page_start BIGINT NOT NULL PRIMARY KEY,
    entries    BLOB   NOT NULL
);

-- The start offset of the page whose shadow may list the contact: the only shadow that can,
-- so a write or a deletion mark knows which claim to withdraw. NULL: listed by none.
ALTER TABLE contact_seen ADD COLUMN page BIGINT;
