-- touchstream: min_server_version = 20.3
-- Only on servers that have data-skipping indexes with IF NOT EXISTS and column codecs
-- (not on 18.16): speeds up "journey of one customer" and shrinks the JSON columns.
-- On an older server this migration is skipped and not recorded, so it is applied by
-- the first `touchstream migrate` after the server is upgraded.

ALTER TABLE {db}.touchpoint_journey ADD INDEX IF NOT EXISTS idx_customer customer_id TYPE bloom_filter(0.01) GRANULARITY 4;

ALTER TABLE {db}.events MODIFY COLUMN properties String CODEC(ZSTD(3));

ALTER TABLE {db}.events MODIFY COLUMN context String CODEC(ZSTD(3));

ALTER TABLE {db}.funnel_attempts ADD INDEX IF NOT EXISTS idx_customer customer_id TYPE bloom_filter(0.01) GRANULARITY 4;
