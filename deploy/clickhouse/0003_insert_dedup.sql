-- touchstream: min_server_version = 22.2
-- Servers with insert_deduplication_token (22.2+): keep the hashes of recent inserts on
-- the non-replicated tables, so a retried processor batch (same token: same input
-- offsets, same rows) is dropped at insert time instead of waiting for a merge.
-- ReplacingMergeTree keys still deduplicate everything else, and on 18.16 alone.

ALTER TABLE {db}.events MODIFY SETTING non_replicated_deduplication_window = 10000;

ALTER TABLE {db}.touchpoint_journey MODIFY SETTING non_replicated_deduplication_window = 10000;

ALTER TABLE {db}.identities MODIFY SETTING non_replicated_deduplication_window = 10000;

ALTER TABLE {db}.identity_conflicts MODIFY SETTING non_replicated_deduplication_window = 10000;

ALTER TABLE {db}.sessions MODIFY SETTING non_replicated_deduplication_window = 10000;

ALTER TABLE {db}.funnel_attempts MODIFY SETTING non_replicated_deduplication_window = 10000;
