-- Raw hashes are XXH3-128 now, 16 bytes (src/domain/contact.rs, `RawHash`;
-- docs/performance.md): BLAKE3 was a quarter of an unchanged pass. A stored BLAKE3 hash never
-- matches a new one, so every record is normalized again once, as when NORMALIZER_VERSION
-- rises; a contact whose canonical content is the same is rewritten and nothing is delivered.
-- Zero hashes of the new width say so without a value no record has.
UPDATE contacts SET raw_hash = zeroblob(16);
-- Shadows list BLAKE3 hashes, which no record will match again.
DELETE FROM page_shadow;
-- Quarantine rows are keyed by the raw hash: the next pass records each quarantined record
-- again under its new hash.
DELETE FROM quarantine;
