-- The steps of an attempt that an event reached, as bits: bit i - 1 for step i (a
-- skipped optional step has no event, so no bit). Counting attempts per step needs only
-- this of `step_event_ids`: docs/queries/1 groups by 4 bytes per attempt instead of
-- reading and comparing every step's event id (measured at 1M attempts on ClickHouse
-- 18.16: ~3× faster; README "Performance", analysts at scale). Funnels have at most 32
-- steps (README "Funnels").
--
-- A DEFAULT computed from `step_event_ids`, so every writer (the processor, a backfill,
-- an `INSERT … SELECT`) gets it without sending it and it cannot disagree with the ids.
-- Parts written before this migration compute it when read, at the old cost, until a
-- merge stores it; `OPTIMIZE TABLE funnel_attempts FINAL` stores it at once.
-- Runs on ClickHouse 18.16 and current releases (see 0008 for ADD COLUMN repeated).

ALTER TABLE {db}.funnel_attempts
    ADD COLUMN steps_hit UInt32 DEFAULT arraySum(arrayMap((id, i) -> if(id != '', bitShiftLeft(toUInt32(1), i - 1), toUInt32(0)), step_event_ids, arrayEnumerate(step_event_ids))) AFTER step_event_ids;
