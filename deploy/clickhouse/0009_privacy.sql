-- Erasure (README, "Privacy"): the ids of erased people, which the processor never
-- stores again (a replay of Kafka or a late event does not bring them back), and a log
-- of erasure requests without the personal data.

CREATE TABLE IF NOT EXISTS {db}.suppressed_ids
(
    id              String,
    erasure_id      String,
    erased_at       DateTime,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY id;

CREATE TABLE IF NOT EXISTS {db}.erasures
(
    erasure_id      String,
    requested_at    DateTime,
    requested_by    String,
    ids             UInt32,
    rows_deleted    String,
    finished_at     DateTime,
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY erasure_id;
