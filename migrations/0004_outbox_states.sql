-- A delivery with nothing to send is 'skipped', never 'pending' (docs/reliability.md). Rows an
-- earlier version left pending without a payload are settled here, so no pusher spins on them.
UPDATE deliveries SET state = 'skipped', attempts = 0, last_error = NULL
WHERE payload_hash IS NULL AND state <> 'skipped';
