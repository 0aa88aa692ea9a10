-- Raw hashes are XXH3-128 now, 16 bytes (src/domain/contact.rs, `RawHash`;
-- docs/performance.md): BLAKE3 was a quarter of an unchanged pass. A stored BLAKE3 hash (32
-- bytes) never matches a new one: the lookup reads it as zeros (`contacts::known`), so every
-- record is normalized again once, as when NORMALIZER_VERSION rises, and its contact is
-- rewritten with the new hash, page by page; one whose canonical content is the same is
-- delivered nowhere. Rewriting a million rows here instead would hold their old pages in one
-- transaction's statement journal (about 300 MB at a million contacts).

-- Shadows list BLAKE3 hashes, which no record will match again.
DELETE FROM page_shadow;
-- Quarantine rows are keyed by the raw hash: the next pass records each quarantined record
-- again under its new hash.
DELETE FROM quarantine;
