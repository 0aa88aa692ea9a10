-- Leaner ingest (docs/performance.md, "Ingest profile").
-- 1. A contact's raw record is no longer kept: it was about 2 KB a row, written through the WAL
--    and again at checkpoint, and read by nothing. Its hash in contact_seen still lets an
--    unchanged record skip normalization; quarantined records keep their raw text.
ALTER TABLE contacts DROP COLUMN raw;

-- 2. Each contact gets a dense number, assigned once when it is first stored: what a pass saw
--    is kept as a list of these numbers, and closing a pass is one scan of contact_seen
--    against a bitmap instead of a set difference over millions of ids.
ALTER TABLE contact_seen ADD COLUMN seq BIGINT;
UPDATE contact_seen SET seq = n.r
FROM (SELECT id, row_number() OVER (ORDER BY id) AS r FROM contact_seen) AS n
WHERE n.id = contact_seen.id;
CREATE UNIQUE INDEX contact_seen_seq ON contact_seen (seq);

-- 3. What each pass saw, one row per written slice of a page (a JSON array of contact
--    numbers) instead of one row per id: a page's sightings cost one insert, and forgetting a
--    pass frees a few hundred rows, not a million.
CREATE TABLE pass_seen (
    pass_id BIGINT NOT NULL,
    seqs    TEXT   NOT NULL                    -- JSON array of contact_seen.seq
);
INSERT INTO pass_seen (pass_id, seqs)
SELECT p.pass_id, json_group_array(s.seq)
FROM pass_sightings p JOIN contact_seen s ON s.id = p.id
GROUP BY p.pass_id;
DROP TABLE pass_sightings;
