-- What `status` needs to show the progress of a running pass from another process
-- (docs/cli.md, "status"): the source's totalResults, and the rate of the run under way.
-- resumed_at / resumed_records: when this run opened (or resumed) the pass and how many records
-- the pass had then; progress_at: when its last page committed. The rate is
-- (records - resumed_records) / (progress_at - resumed_at), so time the pass spent interrupted
-- does not count.
ALTER TABLE passes ADD COLUMN total_results BIGINT;
ALTER TABLE passes ADD COLUMN resumed_at BIGINT;
ALTER TABLE passes ADD COLUMN resumed_records BIGINT NOT NULL DEFAULT 0;
ALTER TABLE passes ADD COLUMN progress_at BIGINT;
