-- Consecutive failures of the open pass at one offset: a pass that keeps failing at the same
-- place is restarted from offset 0 (see `sync::pass::STUCK_PASS_FAILURES`).
ALTER TABLE passes ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE passes ADD COLUMN failed_at BIGINT;
