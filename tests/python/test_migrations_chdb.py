"""The ClickHouse migrations also run on a current engine (chDB, ClickHouse 26.x in-process).

`touchstream migrate --print-sql-for 26.9` prints exactly the statements the migrator
would run there (including migrations that need a newer server than 18.16), so this
checks our SQL, not a copy of it.
"""
import json
import os
import subprocess
import tempfile

import chdb.session

BIN = os.environ.get("TS_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/touchstream"))
TABLES = {"events", "touchpoint_journey", "processor_state", "touchpoints", "identities", "identity_conflicts", "sessions", "funnel_attempts",
          "funnel_step_minute", "funnel_step_minute_by_breakdown", "touchpoints_daily", "funnel_open_attempts", "funnel_entry_cohort_day",
          "funnel_entry_cohort_hour", "feedback", "store_footfall", "store_audits", "store_hourly",
          "touchpoint_scorecard"}


def plan(version, database):
    out = subprocess.run([BIN, "migrate", "--print-sql-for", version],
                         env={**os.environ, "TOUCHSTREAM__CLICKHOUSE__DATABASE": database},
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_migrations_apply_twice_on_current_clickhouse():
    with tempfile.TemporaryDirectory() as d:
        sess = chdb.session.Session(d)
        version = sess.query("SELECT version()", "CSV").bytes().decode().strip().strip('"')
        major, minor = version.split(".")[:2]
        statements = plan(f"{major}.{minor}", "ts_chdb")
        assert any("CODEC(ZSTD" in s for s in statements), "newer-server migration included"
        for _ in range(2):  # the second pass must be a no-op, not an error
            for stmt in statements:
                sess.query(stmt)
        names = sess.query("SELECT name FROM system.tables WHERE database = 'ts_chdb'", "CSV")
        found = {n.strip('"') for n in names.bytes().decode().split()}
        assert TABLES <= found, TABLES - found
        cols = sess.query("SELECT compression_codec FROM system.columns WHERE database='ts_chdb' "
                          "AND table='events' AND name='properties'", "CSV").bytes().decode()
        assert "ZSTD" in cols
        ddl = sess.query("SHOW CREATE TABLE ts_chdb.sessions", "TSVRaw").bytes().decode()
        assert "non_replicated_deduplication_window = 10000" in ddl, ddl
        # A retried insert with the same deduplication token is dropped (what the processor
        # relies on for servers 22.2+).
        for _ in range(2):
            sess.query("INSERT INTO ts_chdb.identities (anonymous_id, user_id, version) "
                       "SETTINGS insert_deduplication_token = 't1' VALUES ('a', 'u', 1)")
        n = sess.query("SELECT count() FROM ts_chdb.identities", "CSV").bytes().decode().strip()
        assert n == "1", n
        # A funnel attempt flows into the per-minute aggregate view; an excluded attempt and
        # a skipped optional step ('' event id) do not (0004_funnel_step_view_outcomes.sql).
        sess.query("INSERT INTO ts_chdb.funnel_attempts (attempt_id, funnel, customer_id, closed_at, "
                   "outcome, reached_step, total_steps, step_event_ids, version) VALUES "
                   "('a1','web_checkout','c1','2026-11-25 10:00:10','dropped',2,4,['e1','e2'],1), "
                   "('a2','web_checkout','c2','2026-11-25 10:00:20','excluded',2,4,['e3','e4'],1), "
                   "('a3','web_checkout','c3','2026-11-25 10:00:30','dropped',3,4,['e5','','e6'],1)")
        rows = sess.query("SELECT step, reached, dropped FROM ts_chdb.funnel_step_minute ORDER BY step",
                          "CSV").bytes().decode().split()
        assert rows == ["1,2,0", "2,1,1", "3,1,1"], rows
        # The closed attempts and an open one flow into the entry-cohort views, which leave
        # out the excluded attempt and the skipped step the same way.
        sess.query("INSERT INTO ts_chdb.funnel_open_attempts (attempt_id, funnel, customer_id, started_at, "
                   "reached_step, total_steps, step_event_ids, version) VALUES "
                   "('o1','web_checkout','c4','2026-11-25 10:00:00',1,4,['e7'],1)")
        sess.query("ALTER TABLE ts_chdb.funnel_attempts UPDATE started_at = "
                   "if(attempt_id = 'a1', toDateTime('2026-11-25 09:59:00'), toDateTime('2026-11-25 10:00:00')) "
                   "WHERE 1 SETTINGS mutations_sync = 1")
        day = sess.query("SELECT step, reached, dropped, converted, open "
                         "FROM ts_chdb.funnel_entry_cohort_day ORDER BY step", "CSV").bytes().decode().split()
        assert day == ["1,3,0,0,1", "2,1,1,0,0", "3,1,1,0,0"], day
        hour = sess.query("SELECT toHour(hour), step, reached, open "
                          "FROM ts_chdb.funnel_entry_cohort_hour ORDER BY hour, step", "CSV").bytes().decode().split()
        assert hour == ["9,1,1,0", "9,2,1,0", "10,1,2,1", "10,3,1,0"], hour
        # Breakdown values (0008_funnel_breakdowns.sql): one per key, or, for each_step,
        # one per key for each reached step; the view groups steps by their values.
        sess.query("INSERT INTO ts_chdb.funnel_attempts (attempt_id, funnel, customer_id, closed_at, "
                   "outcome, reached_step, total_steps, step_event_ids, breakdown_keys, breakdown_values, "
                   "version) VALUES "
                   "('b1','bd','c1','2026-11-25 10:00:10','dropped',2,3,['e1','e2'],['channel'],['web'],1), "
                   "('b2','bd','c2','2026-11-25 10:00:20','converted',3,3,['e3','e4','e5'],['channel'],"
                   "['app','web','web'],1)")
        bd = sess.query("SELECT step, breakdown, reached, dropped, converted FROM "
                        "ts_chdb.funnel_step_minute_by_breakdown WHERE funnel = 'bd' "
                        "ORDER BY step, breakdown", "CSV").bytes().decode().split()
        assert bd == ['1,"app",1,0,1', '1,"web",1,0,0', '2,"web",2,1,1', '3,"web",1,0,1'], bd


def test_18_16_plan_leaves_out_newer_features():
    statements = plan("18.16", "ts")
    assert not any("CODEC" in s or "bloom_filter" in s for s in statements)
    assert any("ReplacingMergeTree" in s for s in statements)


def test_a_migration_number_for_a_server_version_is_a_clear_error():
    # "13" reads like migration 13; the option wants a server version.
    r = subprocess.run([BIN, "migrate", "--print-sql-for", "13"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "--print-sql-for takes a ClickHouse server version, major.minor" in r.stderr, r.stderr
    assert r.stdout == ""
