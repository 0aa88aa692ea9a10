-- Leaner ingest (docs/performance.md, "Ingest profile").
-- 1. A contact's raw record is no longer kept: it was about 2 KB a row, written through the WAL
--    and again at checkpoint, and read by nothing. Its hash in contact_seen still lets an
--    unchanged record skip normalization; quarantined records keep their raw text.
ALTER TABLE contacts DROP COLUMN raw;

-- 2. What each pass saw, one row per written slice of a page (a JSON array of ids) instead
--    of one row per id: a page's sightings cost one insert, and dropping a pass's sightings
--    frees a few hundred rows, not a million.
CREATE TABLE pass_seen (
    pass_id BIGINT NOT NULL,
    ids     TEXT   NOT NULL                    -- JSON array of contact ids
);
INSERT INTO pass_seen (pass_id, ids)
SELECT pass_id, json_group_array(id) FROM pass_sightings GROUP BY pass_id;
DROP TABLE pass_sightings;
