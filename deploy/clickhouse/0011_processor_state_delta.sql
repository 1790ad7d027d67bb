-- Incremental processor snapshots (README, "Processor state"; docs/design.md §4, Crashes
-- and copies): between two whole snapshots in `processor_state`, a partition saves only
-- what changed, as numbered deltas over the last whole one. `chain` names that whole
-- snapshot (the `chain` field of its `offsets`), `slot` counts the deltas after it from 1;
-- a restore reads the whole snapshot and then slots 1, 2, ... of its chain, in order, up
-- to the first gap. A new whole snapshot starts a new chain whose slots replace the old
-- chain's (same key, higher version), so the table holds at most one chain's worth of
-- rows per partition.

CREATE TABLE IF NOT EXISTS {db}.processor_state_delta
(
    stage       String,
    partition   Int32,
    chain       UInt64,
    slot        UInt32,
    offsets     String,
    delta       String,
    saved_at_ms Int64,
    version     UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (stage, partition, slot);
