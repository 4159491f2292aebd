"""standin-pgrepl against a real PostgreSQL 15 pair: initial sync, streaming,
odd data, conflicts, and kill -9 under load with nothing lost or doubled."""
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

import standin_harness as sh
from pgenv import PgEnv
from standin_bin import PGREPL, STANDINCTL, StandinDaemon, query, run, write_pg_conf

pytestmark = pytest.mark.servers


@pytest.fixture
def pg(harness):
    return PgEnv(harness)


def test_initial_sync_then_streaming(pg):
    pg.sql_a("CREATE TABLE contacts (id serial PRIMARY KEY, name text NOT NULL, note text);"
             "INSERT INTO contacts (name) SELECT 'person ' || g FROM generate_series(1, 5000) g;"
             "CREATE TABLE empty_one (k int PRIMARY KEY)")
    pg.start()
    st = pg.wait_state("streaming")
    assert st["source"] == "a" and st["target"] == "b"
    pg.wait_equal("contacts", "empty_one")
    assert pg.sql_b("SELECT last_value FROM contacts_id_seq") == "5000"

    pg.sql_a("INSERT INTO contacts (name) VALUES ('new');"
             "UPDATE contacts SET note = 'changed' WHERE id % 10 = 0;"
             "DELETE FROM contacts WHERE id % 7 = 0;"
             "INSERT INTO empty_one VALUES (1), (2)")
    pg.wait_equal("contacts", "empty_one")
    # The counters follow the standby's answer to COMMIT, read just after.
    sh.wait_until(lambda: pg.status()["rows"] >= 1000, 10, "the rows counted in status")
    st = pg.status()
    assert st["transactions"] >= 1 and st["last_error"] is None
    # The slot on the master is ours and is active.
    assert pg.a.psql("SELECT slot_name, active FROM pg_replication_slots", db="groupware") == \
        "standin_b|t"
    # standinctl status shows the daemon streaming on node b.
    r = run(STANDINCTL, "-c", pg.conf, "status")
    line = [l for l in r.stdout.splitlines() if l.startswith("b ") and "pg" in l]
    assert line and "streaming" in line[0], r.stdout


def test_big_table_copied_in_block_ranges(harness):
    """A table over two chunks is copied in block ranges, in parallel, each
    row exactly once (the split made small here through the environment)."""
    pg = PgEnv(harness)
    pg.sql_a("CREATE TABLE big (id int PRIMARY KEY, pad text);"
             "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;"
             "DELETE FROM big WHERE id % 3 = 0; UPDATE big SET pad = 'y' WHERE id % 5 = 0")
    pages = int(pg.sql_a("SELECT pg_relation_size('big') / 8192"))
    assert pages > 100
    pg.daemon = StandinDaemon(PGREPL, pg.conf, "b", os.path.join(pg.base, "b", "run"),
                              os.path.join(pg.base, "pgrepl-b.log"),
                              env={"STANDIN_PGREPL_CHUNK_PAGES": "40"})
    harness.add_cleanup(pg.daemon.stop)
    pg.wait_state("streaming")
    pg.wait_equal("big")
    assert "parts=5 " in pg.daemon.output() or "parts=4 " in pg.daemon.output(), \
        pg.daemon.output()
    assert f"table=public.big rows={20000 - 20000 // 3} format=binary" in pg.daemon.output()


SCHEMA_OBJECTS = (
    "SELECT string_agg(x, E'\\n' ORDER BY x) FROM ("
    " SELECT indexdef AS x FROM pg_indexes WHERE schemaname = 'public'"
    " UNION ALL SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)"
    "  FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
    " UNION ALL SELECT tgrelid::regclass || ' ' || pg_get_triggerdef(oid) FROM pg_trigger"
    "  WHERE NOT tgisinternal) s")


def _schema_with_everything(pg, rows):
    pg.sql_a("CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE);"
             "CREATE TABLE child (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
             " parent_id int NOT NULL REFERENCES parent ON DELETE CASCADE,"
             " qty int CHECK (qty >= 0), note text);"
             "CREATE INDEX child_parent ON child (parent_id);"
             "CREATE INDEX child_note_part ON child (lower(note)) WHERE note IS NOT NULL;"
             "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS "
             "$$BEGIN NEW.note := coalesce(NEW.note, 'touched'); RETURN NEW; END$$;"
             "CREATE TRIGGER child_touch BEFORE INSERT ON child FOR EACH ROW EXECUTE FUNCTION touch();"
             "INSERT INTO parent SELECT g, 'c' || g FROM generate_series(1, 100) g;"
             f"INSERT INTO child (parent_id, qty, note) SELECT 1 + g % 100, g, "
             f"CASE WHEN g % 2 = 0 THEN 'n' || g END FROM generate_series(1, {rows}) g")


def test_initial_sync_copies_indexes_constraints_and_triggers(pg):
    """Every index (partial and expression ones too), constraint and trigger
    ends up on the standby, and the stream applies with them."""
    _schema_with_everything(pg, 5000)
    pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("parent", "child")
    assert pg.sql_b(SCHEMA_OBJECTS) == pg.sql_a(SCHEMA_OBJECTS)
    assert "child_note_part" in pg.sql_b(SCHEMA_OBJECTS)
    # The standby's foreign key holds: deleting a parent there cascades.
    # An identity column GENERATED ALWAYS (child.id) takes the master's values,
    # on INSERT and UPDATE alike.
    pg.sql_a("DELETE FROM parent WHERE id = 7; INSERT INTO child (parent_id, qty) VALUES (8, 1);"
             "UPDATE child SET qty = qty + 1 WHERE id % 100 = 0")
    pg.wait_equal("parent", "child")


def test_first_sync_cut_short_starts_over(pg):
    """kill -9 while the first copy runs: the next start restores the schema
    again with --clean and copies again; the standby ends complete,
    constraints included."""
    _schema_with_everything(pg, 300000)
    d = pg.start()
    # Kill while the standby is seen taking rows, not at a log line: on a
    # fast machine the copy may be over before a poll of the log comes round.
    copying = ("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
               "AND query LIKE 'COPY %FROM STDIN%'")
    sh.wait_until(lambda: pg.b.psql(copying) != "0", 60, "a COPY running on the standby")
    d.kill9()
    assert "initial sync done" not in d.output(), "the copy ended before the kill"
    d.start()
    pg.wait_state("streaming", timeout=120)
    pg.wait_equal("parent", "child")
    assert pg.sql_b(SCHEMA_OBJECTS) == pg.sql_a(SCHEMA_OBJECTS)
    # The second start copied again, from the marker the first one left.
    assert d.output().count("initial sync source=a target=b") == 2, d.output()


def test_resync_replaces_a_standby_with_foreign_keys_and_views(pg):
    """--resync over a complete standby: its old tables go first, with the
    foreign keys between them and a view of the standby's own (the log names
    it); then the tables, the data, and only then the indexes, constraints
    and triggers, with their comments."""
    _schema_with_everything(pg, 2000)
    pg.sql_a("COMMENT ON INDEX child_parent IS 'by parent';"
             "COMMENT ON CONSTRAINT child_qty_check ON child IS 'no negative qty'")
    # More tables than one DROP takes (200), each with a foreign key to the
    # one before: the drops cascade across lists.
    pg.sql_a("DO $$BEGIN FOR i IN 0..449 LOOP EXECUTE format("
             "'CREATE TABLE chain%s (id int PRIMARY KEY, prev int %s)', i, "
             "CASE WHEN i > 0 THEN format('REFERENCES chain%s', i - 1) ELSE '' END); "
             "END LOOP; END$$")
    pg.sql_a("INSERT INTO chain0 VALUES (1); INSERT INTO chain449 VALUES (1, NULL)")
    d = pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("parent", "child")
    d.stop()
    pg.sql_b("CREATE VIEW standby_report AS SELECT code FROM parent")
    pg.sql_a("INSERT INTO parent VALUES (1000, 'while the daemon was down')")
    d.start(["--resync"])
    pg.wait_state("streaming")
    pg.wait_equal("parent", "child")
    assert pg.sql_b(SCHEMA_OBJECTS) == pg.sql_a(SCHEMA_OBJECTS)
    pg.wait_equal("chain0", "chain449")
    comments = ("SELECT obj_description('child_parent'::regclass, 'pg_class') || '/' || "
                "(SELECT obj_description(oid, 'pg_constraint') FROM pg_constraint "
                "WHERE conname = 'child_qty_check')")
    assert pg.sql_b(comments) == "by parent/no negative qty"
    assert pg.sql_b("SELECT count(*) FROM pg_views WHERE viewname = 'standby_report'") == "0"
    out = d.output()
    second = out[out.index("initial sync source=a target=b", out.index("initial sync done")):]
    assert re.search(r"drop cascades.*view standby_report", second), second[-3000:]
    assert (second.index("created the tables") < second.index("copied table table=public.child")
            < second.index("built the indexes, constraints and triggers")), second[-3000:]
    # The standby's foreign key holds after the resync: deleting a parent cascades.
    pg.sql_a("DELETE FROM parent WHERE id = 5")
    pg.wait_equal("parent", "child")


def test_one_huge_transaction(pg):
    """200,000 rows in one source transaction: applied in one piece, with
    the results read as they come (bounded memory), and a long statement on
    the standby is waited for, not timed out."""
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg.start()
    pg.wait_state("streaming")
    pg.sql_a("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
    pg.sql_a("BEGIN; UPDATE t SET v = 'x' WHERE id % 2 = 0; DELETE FROM t WHERE id % 3 = 0; "
             "COMMIT")
    pg.wait_equal("t", timeout=300)
    sh.wait_until(lambda: pg.status()["rows"] >= 200000 + 100000 + 66666, 10,
                  "the rows counted in status")
    assert pg.status()["last_error"] is None


class PsqlSession:
    """One psql process kept open on the master, fed a statement at a time, so
    a transaction can stay in progress while other sessions commit."""

    def __init__(self, server, db):
        self.n = 0
        self.p = subprocess.Popen([server.bin("psql"), "-X", "-A", "-t", "-q", "-v",
                                   "ON_ERROR_STOP=1", "-d", server.conninfo(db)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, bufsize=1)

    def sql(self, text, timeout=120):
        """Run TEXT and wait for it; returns its output."""
        self.n += 1
        mark = f"standin-test-mark-{self.n}"
        end = "" if text.rstrip().endswith(";") else ";"
        self.p.stdin.write(f"{text}{end}\n\\echo {mark}\n")
        self.p.stdin.flush()
        out, deadline = [], time.monotonic() + timeout * sh.timeout_scale()
        while True:
            line = self.p.stdout.readline()
            if line == "" or time.monotonic() > deadline:
                raise AssertionError(f"psql session ended or hung: {''.join(out)}")
            if line.strip() == mark:
                return "".join(out).strip()
            out.append(line)

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait(30)


def _stream_small_work_mem(pg):
    """Make the master stream any transaction past 64 kB of changes."""
    pg.a.psql("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
    pg.a.reload()


def _spool_files(pg):
    d = os.path.join(pg.base, "b", "state", "pgrepl-spool")
    return sorted(f for f in os.listdir(d) if f.endswith(".spool")) if os.path.isdir(d) else []


def _streamed_by_master(pg):
    return int(pg.a.psql("SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots "
                         "WHERE slot_name = 'standin_b'"))


def test_large_transactions_are_streamed_and_applied_at_commit(pg):
    """Protocol 2: a transaction past logical_decoding_work_mem comes while in
    progress, is spooled, and reaches the standby only at its commit, in
    commit order, without its rolled-back savepoints; an aborted one never
    reaches it."""
    _stream_small_work_mem(pg)
    pg.sql_a("CREATE TABLE big (id int PRIMARY KEY, v text, n int);"
             "CREATE TABLE small (id int PRIMARY KEY, v text);"
             "INSERT INTO big SELECT g, 'old', 0 FROM generate_series(1, 100) g")
    pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("big", "small")

    big = PsqlSession(pg.a, "groupware")
    pg.h.add_cleanup(big.close)
    big.sql("BEGIN; INSERT INTO big SELECT g, repeat('a', 200), 1 FROM generate_series(1000, 3999) g")
    big.sql("SAVEPOINT s1; INSERT INTO big SELECT g, 'dropped', 2 FROM generate_series(5000, 6999) g;"
            "SAVEPOINT s2; UPDATE big SET v = 'dropped too' WHERE id <= 100; ROLLBACK TO s1")
    big.sql("SAVEPOINT s3; UPDATE big SET v = 'kept', n = 3 WHERE id <= 50; RELEASE s3")
    big.sql("SAVEPOINT s4; INSERT INTO big SELECT g, repeat('b', 200), 4 FROM "
            "generate_series(7000, 9999) g; DELETE FROM big WHERE id BETWEEN 1000 AND 1099")
    # The master has streamed it, the standby spooled it and applied none of it.
    sh.wait_until(lambda: _spool_files(pg), 30, "a spool file on the standby's node")
    assert _streamed_by_master(pg) >= 1
    # Committed while the big one is open: applied before it, after it on the standby too.
    pg.sql_a("INSERT INTO small VALUES (1, 'before the big one commits')")
    pg.wait_equal("small")
    assert pg.sql_b("SELECT count(*) FROM big") == "100"
    st = pg.status()
    assert st["spooled_transactions"] == 1 and st["spooled_bytes"] > 64 * 1024, st

    # One that is aborted whole: its file goes, nothing reaches the standby.
    doomed = PsqlSession(pg.a, "groupware")
    pg.h.add_cleanup(doomed.close)
    doomed.sql("BEGIN; INSERT INTO small SELECT g, repeat('x', 300) FROM generate_series(100, 2999) g")
    sh.wait_until(lambda: len(_spool_files(pg)) == 2, 30, "the second transaction spooled")
    doomed.sql("ROLLBACK")
    sh.wait_until(lambda: len(_spool_files(pg)) == 1, 30, "the aborted transaction's file removed")

    big.sql("COMMIT")
    pg.sql_a("UPDATE small SET v = 'after' WHERE id = 1")
    pg.wait_equal("big", "small")
    assert pg.sql_b("SELECT count(*) FILTER (WHERE n = 2), count(*) FILTER (WHERE v LIKE 'dropped%'), "
                    "count(*) FILTER (WHERE n = 3), count(*) FILTER (WHERE n = 4) FROM big") == \
        "0|0|50|3000"
    assert pg.sql_b("SELECT v FROM small") == "after"
    assert _streamed_by_master(pg) >= 1
    sh.wait_until(lambda: pg.status()["streamed_transactions"] >= 1, 10, "the count in status")
    st = pg.status()
    assert st["spooled_transactions"] == 0 and st["spooled_bytes"] == 0, st
    assert st["last_error"] is None
    assert _spool_files(pg) == []
    big.close()
    doomed.close()


def test_streaming_off_takes_large_transactions_whole(pg):
    """[pg] streaming = no: protocol 1, the master keeps a large transaction
    until its commit and sends it whole; nothing is spooled."""
    pg.conf = write_pg_conf(pg.base, pg.pair, extra="streaming = no\n")
    _stream_small_work_mem(pg)
    pg.sql_a("CREATE TABLE big (id int PRIMARY KEY, v text)")
    pg.start()
    pg.wait_state("streaming")
    pg.sql_a("BEGIN; INSERT INTO big SELECT g, repeat('a', 200) FROM generate_series(1, 3000) g;"
             "SAVEPOINT s; DELETE FROM big WHERE id <= 1000; ROLLBACK TO s;"
             "UPDATE big SET v = 'x' WHERE id % 2 = 0; COMMIT")
    pg.wait_equal("big")
    assert _streamed_by_master(pg) == 0
    assert not os.path.exists(os.path.join(pg.base, "b", "state", "pgrepl-spool"))
    assert pg.status()["streamed_transactions"] == 0


def test_kill9_while_large_transactions_stream(pg):
    """kill -9 of the replicator at random moments (once with the master's
    walsender, once with the standby server) while large transactions stream,
    commit, roll back savepoints and abort: the master streams them again from
    their start, and each committed one is applied exactly once."""
    _stream_small_work_mem(pg)
    pg.sql_a("CREATE TABLE log (id bigint PRIMARY KEY, writer int, v text)")
    d = pg.start()
    pg.wait_state("streaming")
    script = os.path.join(pg.base, "big.sql")
    with open(script, "w") as f:
        f.write("\\set w random(1, 1000000000)\n"
                "BEGIN;\n"
                "INSERT INTO log SELECT :w::bigint * 10000 + g, :w, repeat('v', 100) "
                "FROM generate_series(1, 1500) g;\n"
                "SAVEPOINT s;\n"
                "INSERT INTO log SELECT :w::bigint * 10000 + 5000 + g, :w, 'rolled back' "
                "FROM generate_series(1, 500) g;\n"
                "ROLLBACK TO s;\n"
                "UPDATE log SET v = 'updated' WHERE id = :w::bigint * 10000 + 1;\n"
                "COMMIT;\n")
    os.chmod(script, 0o644)
    load = _pgbench(pg, "-c", "3", "-R", "15", "-T", "20", "-n", "-f", script)
    doomed = PsqlSession(pg.a, "groupware")
    pg.h.add_cleanup(doomed.close)
    doomed.sql("BEGIN; INSERT INTO log SELECT -g, 0, repeat('z', 300) FROM generate_series(1, 3000) g")
    rnd = random.Random(15)
    kills = 0
    deadline = time.monotonic() + 17
    events = ["walsender", "standby"]
    while time.monotonic() < deadline:
        sh.wait_until(lambda: d.status()["state"] == "streaming", 60, "standin-pgrepl to come back")
        time.sleep(rnd.uniform(0.3, 2.0))     # load runs meanwhile: the kill moment is random
        kills += 1
        if events and kills in (3, 5):
            # The daemon sees these itself, ends its session and starts another.
            if events.pop(0) == "standby":
                pg.b.kill9()
                pg.b.start()
            else:
                pg.a.psql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                          "WHERE slot_name = 'standin_b'")
            continue
        d.kill9()
        d.start()
    out = load.communicate(timeout=120)[0]
    assert load.returncode == 0, out
    doomed.sql("ROLLBACK")
    assert kills >= 5 and not events
    pg.wait_equal("log", timeout=180)
    n = int(pg.sql_b("SELECT count(*) FROM log"))
    assert n >= 1500 * 5 and n % 1500 == 0, n
    assert pg.sql_b("SELECT count(*) FROM log WHERE v = 'rolled back' OR id < 0") == "0"
    assert _streamed_by_master(pg) >= 5
    sh.wait_until(lambda: _spool_files(pg) == [], 30, "the spool to empty")


def test_feedback_moves_the_slot(pg):
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY)")
    pg.start()
    pg.wait_state("streaming")
    pg.sql_a("INSERT INTO t SELECT generate_series(1, 100)")
    pg.wait_equal("t")
    lsn = pg.a.psql("SELECT pg_current_wal_lsn()")

    def confirmed():
        return pg.a.psql(f"SELECT confirmed_flush_lsn >= '{lsn}' FROM pg_replication_slots "
                         f"WHERE slot_name = 'standin_b'") == "t"
    sh.wait_until(confirmed, 30, "the slot's confirmed_flush_lsn to pass the last commit")


def test_standby_session_reports_its_statistics(pg):
    """The apply session's pipeline reaches a SYNC now and then, where
    PostgreSQL reports a session's statistics: the standby's autovacuum sees
    the rows it writes while the daemon keeps streaming, not only once."""
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY, v int)")
    pg.start()
    pg.wait_state("streaming")
    seen = []

    def reported(want):
        def check():
            seen.append(pg.sql_b("SELECT n_tup_ins, n_tup_del FROM pg_stat_user_tables "
                                 "WHERE relname = 't'"))
            return seen[-1] == want
        try:
            sh.wait_until(check, 30, "the standby's pg_stat_user_tables to count the rows")
        except sh.WaitTimeout:
            pytest.fail(f"the standby's pg_stat_user_tables says inserted|deleted {seen[-1]}, "
                        f"not {want}")

    # A backend left in its pipeline reports once, when the timer its last
    # idle moment armed goes off; after that only a SYNC makes it report.
    pg.sql_a("INSERT INTO t SELECT g, 0 FROM generate_series(1, 500) g")
    pg.wait_equal("t")
    reported("500|0")
    for round_ in range(3):
        pg.sql_a(f"DELETE FROM t WHERE id > {round_ * 50} AND id <= {round_ * 50 + 50}")
        pg.wait_equal("t")
        reported(f"500|{round_ * 50 + 50}")
    assert pg.status()["state"] == "streaming"


ODD_SCHEMA = r"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (x int, label text);
CREATE TABLE "Odd Table" (
    "Id" int PRIMARY KEY,
    "select" text,
    "naïve col" text,
    n numeric(30, 10),
    f float8,
    b bytea,
    arr int[],
    tarr text[],
    j json,
    jb jsonb,
    ts timestamptz,
    d date,
    iv interval,
    u uuid,
    m mood,
    p posint,
    c pair,
    big text
);
CREATE TABLE nokey (a int, b text);
ALTER TABLE nokey REPLICA IDENTITY FULL;
CREATE TABLE parted (id int, region text, v text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us');
CREATE TABLE seqd (id bigserial PRIMARY KEY, v text);
CREATE TABLE gen (id int PRIMARY KEY, a int, doubled int GENERATED ALWAYS AS (a * 2) STORED);
CREATE TABLE nothing ();
"""

ODD_ROWS = r"""
INSERT INTO "Odd Table" VALUES
 (1, 'it''s "quoted" \back\slash', 'été ☃ 日本', 12345678901234567890.0123456789, 1e-300,
  '\x00ff10', '{1,NULL,3}', '{"a b","c,d","e\"f",NULL}', '{"k": [1, 2]}', '{"z": 1, "a": null}',
  '2026-11-23 12:34:56.789+05:30', '2000-02-29', '1 year 2 mons 3 days 04:05:06.789',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 42, ROW(1, 'one'), repeat('x', 1000000)),
 (2, NULL, NULL, NULL, 'NaN', NULL, '{}', NULL, 'null', '[]', 'infinity', NULL, NULL, NULL,
  NULL, NULL, NULL, NULL);
INSERT INTO nokey VALUES (1, 'dup'), (1, 'dup'), (2, NULL);
INSERT INTO parted VALUES (1, 'eu', 'a'), (2, 'us', 'b');
INSERT INTO seqd (v) SELECT 'v' FROM generate_series(1, 10);
INSERT INTO gen (id, a) VALUES (1, 21);
INSERT INTO nothing DEFAULT VALUES;
"""


def test_odd_data_and_identifiers(pg):
    pg.sql_a(ODD_SCHEMA)
    pg.sql_a(ODD_ROWS)
    tables = ('"Odd Table"', "nokey", "parted", "seqd", "gen", "nothing")
    pg.start()
    pg.wait_state("streaming")
    pg.wait_equal(*tables)
    # Built-in types only: binary COPY; enum, domain, composite: text.
    out = pg.daemon.output()
    assert 'table="public.\\"Odd Table\\"" rows=2 format=text' in out, out
    assert "table=public.seqd rows=10 format=binary" in out, out
    assert "table=standin.ddl_key rows=1 format=binary" in out, out
    # The same again through the stream (not the copy).
    assert pg.sql_b("SELECT count(*) FROM nothing") == "1"
    pg.sql_a('DELETE FROM "Odd Table"; DELETE FROM nokey; DELETE FROM parted; DELETE FROM gen;')
    pg.sql_a(ODD_ROWS.replace("(1, 'it", "(3, 'it").replace("(2, NULL", "(4, NULL")
             .replace("(1, 'eu'", "(3, 'eu'").replace("(2, 'us'", "(4, 'us'"))
    pg.wait_equal(*tables)
    # An UPDATE that leaves the 1 MB TOAST value out of the stream ('u').
    pg.sql_a("""UPDATE "Odd Table" SET "select" = 'touched' WHERE "Id" = 3""")
    # FULL identity: exactly one of two identical rows changes, one is deleted.
    pg.sql_a("UPDATE nokey SET b = 'one' WHERE ctid = (SELECT min(ctid) FROM nokey WHERE a = 1)")
    pg.sql_a("DELETE FROM nokey WHERE a = 2")
    # A row moves between partitions; TRUNCATE ... RESTART IDENTITY.
    pg.sql_a("UPDATE parted SET region = 'us' WHERE id = 3")
    pg.sql_a("TRUNCATE seqd RESTART IDENTITY; INSERT INTO seqd (v) VALUES ('after')")
    pg.wait_equal(*tables)
    assert pg.sql_b("""SELECT length(big) FROM "Odd Table" WHERE "Id" = 3""") == "1000000"
    assert pg.sql_b("SELECT id FROM seqd") == "1"


def test_conflict_stops_with_a_clear_error_and_resumes_when_fixed(pg):
    """With the default [cluster] log_data = no the error names the table and
    the key's columns, and each key value as a hash (#8 hex digits of its
    SHA-256), never the value (issue 30)."""
    with open(pg.conf) as f:
        text = f.read()
    with open(pg.conf, "w") as f:
        f.write(text.replace("log_data = yes\n", ""))
    pg.sql_a("CREATE TABLE accounts (id int PRIMARY KEY, owner text)")
    pg.start()
    pg.wait_state("streaming")
    # Someone wrote on the standby: the master's insert of id 7 now conflicts.
    pg.sql_b("INSERT INTO accounts VALUES (7, 'intruder')")
    pg.sql_a("BEGIN; INSERT INTO accounts VALUES (6, 'six'); "
             "INSERT INTO accounts VALUES (7, 'seven'); COMMIT")
    st = pg.wait_state("error")
    assert "duplicate key" in st["last_error"] and "public.accounts" in st["last_error"], st
    assert "(id)=(7)" not in st["last_error"] and "log_data = yes shows it" in st["last_error"], st
    # Nothing skipped: not even the row before it in the same transaction.
    assert pg.sql_b("SELECT count(*) FROM accounts WHERE id = 6") == "0"
    r = run(STANDINCTL, "-c", pg.conf, "status")
    assert "duplicate key" in r.stdout, r.stdout
    # A missing row on UPDATE is a conflict too, named with its key.
    pg.sql_b("DELETE FROM accounts WHERE id = 7")
    pg.wait_equal("accounts")
    pg.sql_b("DELETE FROM accounts WHERE id = 6")
    pg.sql_a("UPDATE accounts SET owner = 'x' WHERE id = 6")
    st = pg.wait_state("error")
    six = "#" + hashlib.sha256(b"6").hexdigest()[:8]
    assert f"UPDATE of public.accounts key (id)=({six}) found 0 rows" in st["last_error"], st
    pg.sql_b("INSERT INTO accounts VALUES (6, 'six')")
    pg.wait_equal("accounts")


def test_conflicts_master_wins_resolves_logs_and_counts(pg):
    """[pg] conflicts = master-wins: a duplicate key, an UPDATE and a DELETE
    of rows the standby lacks, and an UPDATE of a key to one the standby
    already has, in one transaction among many rows: the
    standby ends equal to the master, and each conflict is logged with its
    table and key and counted.  An UPDATE that does not carry every column
    (an unchanged TOAST value) of a missing row still stops."""
    with open(pg.conf, "a") as f:
        f.write("conflicts = master-wins\n")
    pg.sql_a("CREATE TABLE accounts (id int PRIMARY KEY, owner text, note text)")
    pg.sql_a("INSERT INTO accounts SELECT g, 'o' || g, NULL FROM generate_series(1, 300) g")
    pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("accounts")
    pg.sql_b("INSERT INTO accounts VALUES (1001, 'intruder', NULL), (1002, 'intruder', NULL); "
             "DELETE FROM accounts WHERE id IN (5, 6)")
    pg.sql_a("BEGIN; UPDATE accounts SET owner = 'batch' WHERE id BETWEEN 100 AND 200; "
             "INSERT INTO accounts VALUES (1001, 'master', NULL); "
             "UPDATE accounts SET owner = 'five' WHERE id = 5; "
             "DELETE FROM accounts WHERE id = 6; "
             "UPDATE accounts SET id = 1002, owner = 'seven' WHERE id = 7; "
             "INSERT INTO accounts SELECT g, 'n', NULL FROM generate_series(2000, 2100) g; COMMIT")
    pg.wait_equal("accounts")
    sh.wait_until(lambda: pg.status()["conflicts_resolved"] == 4, 30,
                  "the four conflicts counted")
    st = pg.status()
    assert st["conflicts"] == "master-wins" and st["state"] == "streaming", st
    log = pg.daemon.output()
    resolved = [line for line in log.splitlines() if "conflict resolved" in line]
    assert len(resolved) == 4, log[-3000:]
    for key, text in (("1001", "the master's replaces it"), ("5", "new row is inserted"),
                      ("6", "nothing to delete"), ("1002", "the master's replaces it")):
        assert any(f"(id)=({key})" in line and text in line for line in resolved), resolved
    r = run(STANDINCTL, "-c", pg.conf, "status")
    assert "streaming, 4 conflicts resolved (see its log)" in r.stdout, r.stdout
    # Unchanged TOAST values are not in the stream: no whole row to insert.
    pg.sql_a("INSERT INTO accounts VALUES (3000, 'toast', (SELECT string_agg(md5(g::text), '') "
             "FROM generate_series(1, 400) g))")
    pg.wait_equal("accounts")
    pg.sql_b("DELETE FROM accounts WHERE id = 3000")
    pg.sql_a("UPDATE accounts SET owner = 'changed' WHERE id = 3000")
    st = pg.wait_state("error")
    assert "UPDATE of public.accounts key (id)=(3000) found 0 rows" in st["last_error"], st
    assert pg.status()["conflicts_resolved"] == 4


def test_merge_only_where_the_standby_has_a_unique_key(pg):
    """UPDATE and DELETE go as MERGE INTO ONLY where the standby's table has a
    unique, immediate index on the key: rows of an inheritance child with the
    same key are left alone, a missing row is still a conflict named by its
    key; a table with a rule or a trigger that fires on the standby, and a
    standby whose key is gone or DEFERRABLE, keep the checked UPDATE and
    DELETE, with the same result."""
    pg.b.psql("ALTER SYSTEM SET log_statement = 'all'")
    pg.b.reload()
    pg.sql_a("CREATE TABLE keyed (id int PRIMARY KEY, v text);"
             "CREATE TABLE parent (id int PRIMARY KEY, v text);"
             "CREATE TABLE child (extra int) INHERITS (parent);"
             "CREATE TABLE deferred (id int PRIMARY KEY, v text);"
             "CREATE TABLE ruled (id int PRIMARY KEY, v text);"
             "CREATE RULE ruled_log AS ON DELETE TO ruled DO ALSO NOTIFY ruled;"
             "CREATE TABLE drifted (id int PRIMARY KEY, v text);"
             "CREATE TABLE triggered (id int PRIMARY KEY, v text);"
             "CREATE FUNCTION nothing() RETURNS trigger LANGUAGE plpgsql AS "
             "$$BEGIN RETURN NULL; END$$;"
             "CREATE TRIGGER triggered_ins AFTER INSERT ON triggered "
             "FOR EACH STATEMENT EXECUTE FUNCTION nothing();"
             "ALTER TABLE triggered ENABLE ALWAYS TRIGGER triggered_ins")
    merged = ("keyed", "parent", "deferred", "ruled", "drifted", "triggered")
    for t in merged:
        pg.sql_a(f"INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 50) g")
    pg.sql_a("INSERT INTO child VALUES (1, 'child one', 1), (2, 'child two', 2)")
    pg.start()
    pg.wait_state("streaming")
    tables = ("keyed", "parent", "child", "deferred", "ruled", "drifted", "triggered")
    pg.wait_equal(*tables)
    # Someone dropped the key on the standby, or made it DEFERRABLE: no MERGE there.
    pg.sql_b("ALTER TABLE drifted DROP CONSTRAINT drifted_pkey")
    pg.sql_b("ALTER TABLE deferred DROP CONSTRAINT deferred_pkey, "
             "ADD CONSTRAINT deferred_id UNIQUE (id) DEFERRABLE")
    # The first change of each table brings its Relation message, and the
    # question whether the standby's table has a unique key: answered once
    # that transaction is in.
    for t in merged:
        pg.sql_a(f"UPDATE ONLY {t} SET v = 'first' WHERE id = 50")
    pg.wait_equal(*tables)
    for t in merged:
        # A batch (many rows in one transaction), then rows alone.
        pg.sql_a(f"BEGIN; UPDATE ONLY {t} SET v = 'b' || id WHERE id <= 20; "
                 f"DELETE FROM ONLY {t} WHERE id BETWEEN 21 AND 30; COMMIT")
        pg.sql_a(f"UPDATE ONLY {t} SET v = 'one' WHERE id = 31")
        pg.sql_a(f"DELETE FROM ONLY {t} WHERE id = 32")
    pg.wait_equal(*tables)
    assert pg.sql_b("SELECT v FROM child ORDER BY id") == "child one\nchild two"
    log = open(pg.b.logfile, errors="replace").read()
    assert re.search(r'MERGE INTO ONLY "public"\."keyed" .*VALUES', log), "no batched MERGE"
    assert re.search(r'MERGE INTO ONLY "public"\."keyed" .*USING \(SELECT\)', log), \
        "no one-row MERGE"
    assert 'MERGE INTO ONLY "public"."parent"' in log
    for t in ("deferred", "ruled", "drifted", "triggered"):
        assert f'MERGE INTO ONLY "public"."{t}"' not in log, t
        assert f'UPDATE ONLY "public"."{t}"' in log, t
    # A missing row is still a conflict, named with its key.
    pg.sql_b("DELETE FROM keyed WHERE id = 40")
    pg.sql_a("UPDATE keyed SET v = 'x' WHERE id = 40")
    st = pg.wait_state("error")
    assert "UPDATE of public.keyed key (id)=(40) found 0 rows" in st["last_error"], st
    pg.sql_b("INSERT INTO keyed VALUES (40, 'v40')")
    pg.wait_equal(*tables)
    pg.sql_b("DELETE FROM keyed WHERE id BETWEEN 41 AND 42")
    pg.sql_a("BEGIN; DELETE FROM keyed WHERE id BETWEEN 40 AND 45; COMMIT")
    st = pg.wait_state("error")
    assert "DELETE of public.keyed key (id)=(41) found 0 rows" in st["last_error"], st
    assert pg.sql_b("SELECT count(*) FROM keyed WHERE id BETWEEN 40 AND 45") == "4"


def test_inheritance_parent_and_child_stay_apart(pg):
    """An inheritance child's rows are its own relation: a change or a
    TRUNCATE ONLY of the parent leaves the child's rows alone, even with the
    same key."""
    pg.sql_a("CREATE TABLE parent (id int PRIMARY KEY, v text);"
             "CREATE TABLE child (extra int) INHERITS (parent);"
             "ALTER TABLE child ADD PRIMARY KEY (id);"
             "INSERT INTO parent VALUES (1, 'parent one'), (2, 'parent two');"
             "INSERT INTO child VALUES (1, 'child one', 1), (2, 'child two', 2)")
    pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("ONLY parent", "child")
    pg.sql_a("UPDATE ONLY parent SET v = 'changed' WHERE id = 1")
    pg.sql_a("DELETE FROM ONLY parent WHERE id = 2")
    pg.sql_a("UPDATE child SET v = 'child changed' WHERE id = 2")
    pg.wait_equal("ONLY parent", "child")
    pg.sql_a("TRUNCATE ONLY parent")
    pg.sql_a("INSERT INTO child VALUES (3, 'child three', 3)")
    pg.wait_equal("ONLY parent", "child")
    assert pg.sql_b("SELECT count(*) FROM ONLY parent") == "0"
    assert pg.sql_b("SELECT string_agg(v, ',' ORDER BY id) FROM child") == \
        "child one,child changed,child three"
    assert pg.status()["last_error"] is None


def test_batches_keep_the_stream_order(pg):
    """Rows of one table and operation go many to one statement within a
    group; whatever the mix, the standby ends as the master."""
    pg.sql_a("CREATE TABLE items (id int PRIMARY KEY, u text UNIQUE, n int, note text);"
             "CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));"
             "CREATE TABLE journal (v text);"
             "INSERT INTO items SELECT g, 'u' || g, g, NULL FROM generate_series(1, 300) g")
    d = pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("items")
    d.stop()                      # a backlog: many transactions in each group
    script = []
    for i in range(1, 301):
        script.append(f"UPDATE items SET n = n + 1 WHERE id = {i};")
        script.append(f"UPDATE items SET n = n + 1, note = 'x{i}' WHERE id = {i % 7 + 1};")
        script.append(f"INSERT INTO journal VALUES ('j{i}'), (NULL);")
        script.append(f"INSERT INTO pairs VALUES ({i % 10}, 'b{i}', E'tab\\there {i}');")
    script.append("BEGIN; DELETE FROM items WHERE id % 5 = 0;"
                  " INSERT INTO items SELECT g, 'again' || g, -g, 'back' FROM"
                  " generate_series(5, 300, 5) g; UPDATE items SET note = NULL WHERE id % 10 = 0;"
                  " COMMIT;")
    # A key change goes alone, after the rows before it.
    script.append("UPDATE items SET n = 0 WHERE id = 3; UPDATE items SET id = 1003 WHERE id = 3;"
                  "UPDATE items SET n = 7 WHERE id = 1003;")
    # An unchanged TOAST value: another column set, another statement.
    script.append("UPDATE items SET note = (SELECT string_agg(md5(g::text), '') FROM "
                  "generate_series(1, 5000) g) WHERE id = 11;"
                  "UPDATE items SET n = 1 WHERE id = 11; UPDATE items SET n = 2 WHERE id = 12;")
    script.append("DELETE FROM pairs WHERE a = 3; UPDATE pairs SET v = 'moved' WHERE a = 4;")
    pg.sql_a("\n".join(script))
    d.start()
    pg.wait_equal("items", "pairs", "journal", timeout=120)
    out = d.output()
    assert "in one statement" not in out and "one statement per row" not in out, out[-3000:]
    st = pg.status()
    assert st["batches"] > 0 and st["batched_rows"] > 600, st


def test_batch_that_fails_is_applied_again_row_by_row(pg):
    """Two rows swapping a unique value in one group cannot go in one
    statement (the unique check sees the first before the second moves):
    the group is applied again one statement per row, and goes through.  A
    row missing on the standby in the middle of a batch is named by its key."""
    pg.sql_a("CREATE TABLE items (id int PRIMARY KEY, u text UNIQUE);"
             "INSERT INTO items SELECT g, 'u' || g FROM generate_series(1, 100) g")
    d = pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("items")
    pg.sql_a("BEGIN; UPDATE items SET u = 'tmp' WHERE id = 1; UPDATE items SET u = 'u1' WHERE id = 2;"
             "UPDATE items SET u = 'u2' WHERE id = 1; COMMIT")
    pg.wait_equal("items")
    out = d.output()
    assert "UPDATE of 2 rows of public.items in one statement failed on the standby" in out, out
    assert "applying again one statement per row" in out, out
    assert pg.status()["last_error"] is None

    pg.sql_b("DELETE FROM items WHERE id = 17")
    pg.sql_a("UPDATE items SET u = u || '!' WHERE id BETWEEN 10 AND 60")
    st = pg.wait_state("error")
    assert "UPDATE of public.items key (id)=(17) found 0 rows" in st["last_error"], st
    assert pg.sql_b("SELECT count(*) FROM items WHERE u LIKE '%!'") == "0"
    pg.sql_b("INSERT INTO items VALUES (17, 'u17')")
    pg.wait_equal("items")


def test_nothing_after_a_failed_row_commits(pg):
    """Groups are committed without waiting for their rows' answers: a row
    that finds nothing on the standby fails there and takes its group's
    COMMIT with it, and the groups sent behind it (the stream goes on while
    the answer travels) do not commit either, however the transactions fall
    into groups."""
    pg.sql_a("CREATE TABLE acc (id int PRIMARY KEY, n int);"
             "INSERT INTO acc SELECT g, 0 FROM generate_series(1, 10) g")
    d = pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("acc")
    for rnd, missing in enumerate((5, 6, 7)):
        pg.sql_b(f"DELETE FROM acc WHERE id = {missing}")
        base = 1000 * (rnd + 1)
        # Autocommit: 400 source transactions around the bad one.
        pg.sql_a("".join(f"INSERT INTO acc VALUES ({base + i}, 0);" for i in range(100)) +
                 f"UPDATE acc SET n = n + 1 WHERE id = {missing};" +
                 "".join(f"INSERT INTO acc VALUES ({base + i}, 0);" for i in range(100, 400)))
        st = pg.wait_state("error")
        what = f"UPDATE of public.acc key (id)=({missing}) found 0 rows"
        assert what in st["last_error"], st
        # The daemon tries again by itself (and fails again).  The standby
        # holds some of the transactions before the bad one (those of the
        # groups before its group), with no gap, and none after it.
        seen = d.output().count(what)
        sh.wait_until(lambda: d.output().count(what) > seen, 30, "another attempt")
        assert pg.sql_b(f"SELECT count(*) = coalesce(max(id) - {base} + 1, 0) AND "
                        f"coalesce(max(id), 0) < {base + 100} FROM acc WHERE id >= {base}") == "t"
        assert pg.sql_b("SELECT count(*) FROM acc WHERE n > 0") == "0"
        pg.sql_b(f"INSERT INTO acc VALUES ({missing}, 0)")
        pg.wait_equal("acc")
        pg.sql_a("UPDATE acc SET n = 0 WHERE n > 0")
        pg.wait_equal("acc")


def test_commit_refused_by_the_standby_stops_and_loses_nothing(pg):
    """A deferred constraint trigger of the standby's own (ENABLE ALWAYS, so
    it fires for the replicator too) fails only at COMMIT, after the
    replicator has gone on without waiting for its answer: the error still
    stops it, and nothing of that group or of the 200 transactions behind
    it stays on the standby."""
    pg.sql_a("CREATE TABLE codes (id int PRIMARY KEY, code text)")
    pg.start()
    pg.wait_state("streaming")
    pg.sql_b("CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS "
             "$$BEGIN IF NEW.code = 'bad' THEN RAISE EXCEPTION 'code bad refused at commit'; "
             "END IF; RETURN NULL; END$$;"
             "CREATE CONSTRAINT TRIGGER refuse_bad AFTER INSERT ON codes "
             "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_bad();"
             "ALTER TABLE codes ENABLE ALWAYS TRIGGER refuse_bad")
    pg.sql_a("INSERT INTO codes VALUES (1, 'bad')")
    # Autocommit: 200 source transactions right behind the bad one.
    pg.sql_a("".join(f"INSERT INTO codes VALUES ({i}, 'ok');" for i in range(2, 202)))
    st = pg.wait_state("error")
    assert "COMMIT failed on the standby" in st["last_error"], st
    assert "code bad refused at commit" in st["last_error"], st
    assert pg.sql_b("SELECT count(*) FROM codes") == "0"
    pg.sql_b("DROP TRIGGER refuse_bad ON codes")
    pg.wait_equal("codes")
    pg.sql_a("INSERT INTO codes VALUES (300, 'three hundred')")
    pg.wait_equal("codes")


def test_refuses_a_non_empty_standby_unless_resync(pg):
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    pg.sql_b("CREATE TABLE precious (id int)")
    d = pg.start()
    st = pg.wait_state("error")
    assert "already holds 1 tables" in st["last_error"] and "--resync" in st["last_error"], st
    assert pg.sql_b("SELECT count(*) FROM precious") == "0"
    d.stop()
    d.start(["--resync"])
    pg.wait_state("streaming")
    pg.wait_equal("t")


def test_missing_slot_is_a_clear_error(pg):
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY)")
    d = pg.start()
    pg.wait_state("streaming")
    d.stop()
    pg.a.psql("SELECT pg_drop_replication_slot('standin_b')", db="groupware")
    d.start()
    st = pg.wait_state("error")
    assert "replication slot standin_b is missing on the master" in st["last_error"], st


def _pgbench(pg, *args, timeout=300):
    return subprocess.Popen([pg.a.bin("pgbench"), "-h", pg.a.host, "-p", str(pg.a.port),
                             "-U", pg.a.user, *args, "groupware"],
                            env=dict(os.environ, PGPASSFILE=pg.a.passfile),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def test_kill9_under_load_loses_and_doubles_nothing(pg):
    """kill -9 of the replicator every few seconds, once of the standby
    server, once of the master's walsender, while pgbench writes."""
    init = _pgbench(pg, "-i", "-s", "2", "-q")
    assert init.wait(300) == 0, init.stdout.read()
    d = pg.start()
    pg.wait_state("streaming", timeout=120)
    load = _pgbench(pg, "-c", "4", "-j", "2", "-T", "25", "-n")
    rnd = random.Random(4533)
    kills = 0
    deadline = time.monotonic() + 22
    events = ["standby", "walsender"]
    while time.monotonic() < deadline:
        sh.wait_until(lambda: d.status()["state"] in ("streaming", "initial sync"), 60,
                      "standin-pgrepl to come back")
        time.sleep(rnd.uniform(0.5, 2.5))     # load runs meanwhile: the kill moment is random
        if events and kills in (3, 5):
            what = events.pop(0)
            if what == "standby":
                pg.b.kill9()
                pg.b.start()
            else:
                pg.a.psql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                          "WHERE slot_name = 'standin_b'")
        d.kill9()
        kills += 1
        d.start()
    out = load.communicate(timeout=120)[0]
    assert load.returncode == 0, out
    assert kills >= 5
    pg.wait_equal(*PGBENCH_TABLES, timeout=180)
    # Every pgbench transaction exactly once: the history rows match.
    n = pg.sql_a("SELECT count(*) FROM pgbench_history")
    assert int(n) > 100
    assert pg.sql_b("SELECT count(*) FROM pgbench_history") == n


def test_ddl_replicates_in_stream_order(pg):
    pg.sql_a("CREATE TABLE base (id int PRIMARY KEY, v text); INSERT INTO base VALUES (1, 'a')")
    pg.a.psql("CREATE ROLE app LOGIN; GRANT CREATE ON SCHEMA public TO app", db="groupware")
    pg.b.psql("CREATE ROLE app LOGIN", db="groupware")    # roles are per cluster, not replicated
    pg.start()
    pg.wait_state("streaming")
    statements = [
        "CREATE TABLE \"New Table\" (id serial PRIMARY KEY, note text)",
        "INSERT INTO \"New Table\" (note) VALUES ('first')",
        "ALTER TABLE base ADD COLUMN added int DEFAULT 7",
        "INSERT INTO base VALUES (2, 'b', 8)",
        "ALTER TABLE base ALTER COLUMN v TYPE varchar(20)",
        "CREATE INDEX CONCURRENTLY base_v ON base (v)",
        # A body full of semicolons is still one statement.
        "CREATE FUNCTION bump(i int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN i := i + 1; "
        "RETURN i; END $$",
        "CREATE SEQUENCE counter START 100",
        "ALTER TABLE base DROP COLUMN added",
        "UPDATE base SET v = 'bb' WHERE id = 2",
    ]
    for stmt in statements:
        pg.sql_a(stmt)
    # DDL by an ordinary role: the object belongs to it on the standby too.
    pg.a.psql("SET ROLE app; CREATE TABLE owned_by_app (k int PRIMARY KEY); "
              "INSERT INTO owned_by_app VALUES (1)", db="groupware")
    pg.wait_equal("base", '"New Table"', "owned_by_app")
    assert pg.sql_b("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = "
                    "'owned_by_app'") == "app"
    assert pg.sql_b("SELECT indexrelid::regclass FROM pg_index WHERE indrelid = 'base'::regclass "
                    "AND NOT indisprimary") == "base_v"
    assert pg.sql_b("SELECT bump(1)") == "2"
    sh.wait_until(lambda: pg.status()["ddl"] >= len(statements) - 2, 10, "the DDL counted")
    pg.sql_a('DROP TABLE "New Table"')
    sh.wait_until(lambda: pg.sql_b("SELECT to_regclass('\"New Table\"') IS NULL") == "t", 30,
                  "the DROP TABLE on the standby")


def test_unsigned_ddl_messages_are_ignored(pg):
    """Anyone may emit a logical message: a "standin.ddl" message that
    standin's module did not sign is not run on the standby, and said so."""
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY)")
    pg.start()
    pg.wait_state("streaming")
    pg.a.psql("CREATE ROLE mallory LOGIN", db="groupware")
    body = json.dumps({"format": 2, "kind": "statement", "tag": "ALTER ROLE", "role": "postgres",
                       "objects": [], "settings": {}, "statement": "ALTER ROLE mallory SUPERUSER"})
    for forged in (body, "standin-ddl-1\npostgres\npublic\nALTER ROLE mallory SUPERUSER"):
        pg.a.psql("SET ROLE mallory; SELECT pg_logical_emit_message(true, 'standin.ddl', "
                  f"repeat('0', 64) || E'\\n' || {sh.quote_literal(forged)})", db="groupware")
    pg.sql_a("INSERT INTO t VALUES (2)")
    pg.wait_equal("t")
    assert pg.status()["ddl_rejected"] == 2
    assert "bad signature" in pg.daemon.output()
    assert pg.b.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'mallory'") == "0"


def _ahead_on_the_standby_stays(pg, seq, value):
    """A standby sequence set ahead of the master's (in its own direction) is
    left alone by the next copy."""
    pg.sql_b(f"SELECT setval('{seq}', {value})")
    pg.sql_a(f"SELECT nextval('{seq}')")
    first = pg.status()["sequences_synced_ms"]
    query(pg.daemon.sock, "sequences")
    sh.wait_until(lambda: pg.status()["sequences_synced_ms"] != first, 30, "another sequence copy")
    assert pg.sql_b(f"SELECT last_value FROM {seq}") == str(value)


def test_sequences_follow_and_never_go_back(pg):
    pg.sql_a("CREATE SEQUENCE s; CREATE TABLE t (id bigint PRIMARY KEY DEFAULT nextval('s'))")
    pg.start()
    pg.wait_state("streaming")
    pg.sql_a("SELECT nextval('s') FROM generate_series(1, 41)")

    assert '"requested":true' in query(pg.daemon.sock, "sequences")
    sh.wait_until(lambda: pg.sql_b("SELECT last_value FROM s") == "41", 30,
                  "the standby's sequence to reach 41")
    _ahead_on_the_standby_stays(pg, "s", 1000)
    # Names that need quoting, and a descending sequence (forward is down).
    pg.sql_a('CREATE SCHEMA "Odd Schema"; CREATE SEQUENCE "Odd Schema"."Seq ""q"" \\ é";'
             "CREATE SEQUENCE down INCREMENT -1 MINVALUE -100 MAXVALUE -1 START -1")
    sh.wait_until(lambda: pg.sql_b("SELECT count(*) FROM pg_class WHERE relname IN "
                                   "('down', 'Seq \"q\" \\ é')") == "2", 30,
                  "the new sequences on the standby")
    pg.sql_a('SELECT nextval(\'"Odd Schema"."Seq ""q"" \\ é"\') FROM generate_series(1, 9);'
             "SELECT nextval('down') FROM generate_series(1, 12)")
    query(pg.daemon.sock, "sequences")
    sh.wait_until(lambda: pg.sql_b('SELECT last_value FROM "Odd Schema"."Seq ""q"" \\ é"') == "9"
                  and pg.sql_b("SELECT last_value FROM down") == "-12", 30,
                  "the quoted and the descending sequences on the standby")
    _ahead_on_the_standby_stays(pg, "down", -50)
    # A sequence whose CREATE is still in the stream when sequences are copied
    # (the copy runs first thing in a session) waits for it; no error loop.
    pg.daemon.stop()
    pg.sql_a("CREATE SEQUENCE late")
    pg.sql_a("SELECT nextval('late') FROM generate_series(1, 7)")
    pg.daemon.start()
    pg.wait_state("streaming")
    query(pg.daemon.sock, "sequences")
    sh.wait_until(lambda: pg.sql_b("SELECT last_value FROM late") == "7", 30,
                  "the late sequence on the standby")
    assert pg.status()["last_error"] is None


def test_follows_the_cluster_state(pg):
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY)")
    d = pg.start()
    pg.wait_state("streaming")
    path = os.path.join(pg.base, "b", "state", "cluster.state")
    with open(path, "rb") as f:
        epoch1 = f.read()
    # Node b becomes the master (as a switchover would record it): b's daemon stops pulling.
    r = run(STANDINCTL, "-c", pg.conf, "-n", "b", "state", "set", "--master", "b")
    assert r.returncode == 0 and "epoch 2, master b" in r.stdout, r.stderr
    pg.wait_state("idle (master)", timeout=30)
    assert "cluster state changed" in d.output()
    # An older state put back (a stale copy, a late order) is refused, loudly.
    with open(path + ".tmp", "wb") as f:
        f.write(epoch1)
    os.rename(path + ".tmp", path)
    sh.wait_until(lambda: "cluster state refused: epoch 1 master a is older than the one taken, "
                  "epoch 2 master b" in d.output(), 30, "the old state refused")
    assert pg.status()["state"] == "idle (master)"
    r = run(STANDINCTL, "-c", pg.conf, "-n", "b", "state", "init", "--master", "a", "--force")
    assert r.returncode == 0 and "epoch 2, master a" in r.stdout, r.stdout
    # Epoch 2 again, saying otherwise: refused too.
    sh.wait_until(lambda: "cluster state refused: epoch 2 master a differs from the one taken with "
                  "the same epoch 2 master b" in d.output(), 30, "the same epoch refused")
    assert pg.status()["state"] == "idle (master)"
    r = run(STANDINCTL, "-c", pg.conf, "-n", "b", "state", "set", "--master", "a")
    assert r.returncode == 0 and "epoch 3, master a" in r.stdout, r.stderr
    pg.wait_state("streaming", timeout=30)
    pg.sql_a("INSERT INTO t VALUES (1)")
    pg.wait_equal("t")


def test_repeated_initial_syncs_never_lose_their_tools_exit_status(pg):
    """pg_dump and pg_restore are waited for by the engine thread; the event
    loop must not reap them first (it did: 'pg_dump failed (signal 112)' in
    about one sync of five)."""
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")
    d = pg.start()
    for i in range(8):
        pg.wait_state("streaming")
        d.stop()
        d.start(["--resync"])
    pg.wait_state("streaming")
    pg.wait_equal("t")
    assert "initial sync from a to b failed" not in d.output(), d.output()[-2000:]
    assert d.output().count("initial sync done") == 9


def test_ddl_in_the_middle_of_load(pg):
    init = _pgbench(pg, "-i", "-s", "1", "-q")
    assert init.wait(300) == 0, init.stdout.read()
    pg.start()
    pg.wait_state("streaming", timeout=120)
    load = _pgbench(pg, "-c", "4", "-j", "2", "-T", "12", "-n")
    ddl = [
        "ALTER TABLE pgbench_history ADD COLUMN note text DEFAULT 'during load'",
        "CREATE INDEX CONCURRENTLY history_tid ON pgbench_history (tid)",
        "ALTER TABLE pgbench_tellers ADD COLUMN extra int",
        "CREATE TABLE side (id serial PRIMARY KEY, at timestamptz DEFAULT now())",
        "INSERT INTO side DEFAULT VALUES",
        "ALTER TABLE pgbench_tellers DROP COLUMN extra",
    ]
    seen = 0
    for stmt in ddl:
        # Some pgbench transactions between two DDL statements, so they interleave.
        target = seen + 200
        seen = sh.wait_until(lambda: (n := int(pg.sql_a("SELECT count(*) FROM pgbench_history")))
                             >= target and n, 60, f"{target} pgbench transactions")
        pg.sql_a(stmt)
    assert load.poll() is None, "the load ended before the DDL did: make it longer"
    out = load.communicate(timeout=120)[0]
    assert load.returncode == 0, out
    pg.wait_equal(*PGBENCH_TABLES, "side", timeout=120)
    assert pg.sql_b("SELECT count(*) FROM pg_indexes WHERE indexname = 'history_tid'") == "1"
    assert pg.status()["last_error"] is None


def test_divergence_report_after_unplanned_failover(pg):
    """The old master's transactions that the new master never got are
    written as SQL before the old master is resynced from the new one."""
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY, v text); "
             "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g")
    d_b = pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("t")
    d_b.stop()
    # Node a goes on alone, then "dies": these never reach b.
    pg.sql_a("INSERT INTO t VALUES (11, 'lost?')")
    pg.sql_a("UPDATE t SET v = 'changed on a' WHERE id = 1")
    pg.sql_a("DELETE FROM t WHERE id = 2")
    # DDL alone in its transaction is a divergence too.
    pg.sql_a("COMMENT ON TABLE t IS 'commented on a'")
    # Failover: b is the master now, and takes writes.
    for node in ("a", "b"):
        r = run(STANDINCTL, "-c", pg.conf, "-n", node, "state", "set", "--master", "b")
        assert r.returncode == 0, r.stderr
    pg.sql_b("INSERT INTO t VALUES (100, 'written on b')")
    # Node a comes back as the standby: replaced by b's content, after the report.
    d_a = StandinDaemon(PGREPL, pg.conf, "a", os.path.join(pg.base, "a", "run"),
                        os.path.join(pg.base, "pgrepl-a.log"), ["--resync"])
    pg.h.add_cleanup(d_a.stop)
    sh.wait_until(lambda: d_a.status()["state"] == "streaming" or (
        not d_a.running() and pytest.fail(d_a.output())), 60, "node a streaming from b")
    sh.wait_until(lambda: pg.digest(pg.a, "t") == pg.digest(pg.b, "t"), 30, "a equal to b")
    state_a = os.path.join(pg.base, "a", "state")
    reports = [f for f in os.listdir(state_a) if f.startswith("divergence-b-")]
    assert len(reports) == 1, os.listdir(state_a)
    path = os.path.join(state_a, reports[0])
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    text = open(path).read()
    assert "4 transactions (4 changes)" in text, text
    assert "COMMENT ON TABLE" in text and "'commented on a'" in text, text
    assert """INSERT INTO "public"."t" ("id", "v") OVERRIDING SYSTEM VALUE VALUES ('11', 'lost?');""" \
        in text, text
    # The key did not change: it is in the WHERE only.
    assert """UPDATE "public"."t" SET "v" = 'changed on a' WHERE "id" = '1';""" in text, text
    assert """DELETE FROM "public"."t" WHERE "id" = '2';""" in text
    assert "'v3'" not in text               # b had those
    assert "divergence: this node had transactions" in d_a.output()
    assert pg.a.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'standin_b'",
                     db="groupware") == "0"


def test_streams_from_a_read_only_master(pg):
    """A fenced master (read-only, as a switchover leaves it) is still
    streamed from after a restart: nothing is installed on it again."""
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY)")
    d = pg.start()
    pg.wait_state("streaming")
    pg.a.psql("ALTER DATABASE groupware SET default_transaction_read_only = on")
    d.kill9()
    d.start()
    pg.wait_state("streaming")
    pg.sql_a("SET default_transaction_read_only = off; INSERT INTO t VALUES (1)")
    pg.wait_equal("t")
    assert pg.status()["last_error"] is None


def test_sighup(pg):
    """SIGHUP takes the runtime's settings; [pg] changes wait for a restart,
    and status says so.  Streaming goes on either way."""
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY)")
    d = pg.start()
    pg.wait_state("streaming")
    text = open(pg.conf).read()
    with open(pg.conf, "w") as f:
        f.write(text.replace("name = itest\n", "name = itest\nlog_level = debug\n"))
    d.proc.send_signal(signal.SIGHUP)
    sh.wait_until(lambda: pg.status()["config_reloads"] == 1, 10, "the reload")
    assert pg.status()["restart_pending"] is False
    with open(pg.conf, "a") as f:
        f.write("connect_timeout = 3s\n")
    d.proc.send_signal(signal.SIGHUP)
    sh.wait_until(lambda: pg.status()["config_reloads"] == 2, 10, "the second reload")
    st = pg.status()
    assert st["restart_pending"] is True and st["state"] == "streaming"
    assert "take effect when standin-pgrepl restarts" in d.output()
    pg.sql_a("INSERT INTO t VALUES (1)")
    pg.wait_equal("t")


def test_drain_reaches_the_fenced_masters_position(pg):
    """drain LSN, as a switchover uses it: the master's position after
    fencing is past its last replicated commit, and is still reached."""
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY)")
    d = pg.start()
    pg.wait_state("streaming")
    pg.sql_a("INSERT INTO t SELECT generate_series(1, 1000)")
    far = json.loads(query(d.sock, "drain FF/0"))
    assert far["drained"] is False
    assert "error" in json.loads(query(d.sock, "drain nonsense"))
    # Fence: a change with nothing to replicate, then the master's position.
    pg.a.psql("ALTER DATABASE groupware SET default_transaction_read_only = on")
    lsn = pg.a.psql("SELECT pg_current_wal_insert_lsn()")
    # With a timeout the answer waits until drained (the admin contract).
    got = json.loads(query(d.sock, f"drain {lsn} 20000", timeout=30))
    assert got["drained"] is True, got
    assert pg.digest(pg.a, "t") == pg.digest(pg.b, "t")
    pos = json.loads(query(d.sock, "position"))
    assert pos["service"] == "pg" and pos["position"] == got["applied"], (pos, got)
    # ...or until the timeout, undrained, with the position reached.
    t0 = time.monotonic()
    far = json.loads(query(d.sock, "drain FF/0 300", timeout=30))
    assert far["drained"] is False and far["applied"] == pos["position"], far
    assert 0.25 <= time.monotonic() - t0 < 5
    assert "usage" in json.loads(query(d.sock, f"drain {lsn} soon"))["error"]


def test_switchover_reverses_without_a_copy(pg):
    """The pg steps of a planned switchover: fence a, reverse b on a (the
    master's daemon, as in every replicator), flip the cluster state; the
    same daemons then replicate b -> a from where a stopped, with no initial
    sync and nothing lost."""
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY, v text); "
             "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 500) g")
    d_b = pg.start()
    d_a = StandinDaemon(PGREPL, pg.conf, "a", os.path.join(pg.base, "a", "run"),
                        os.path.join(pg.base, "pgrepl-a.log"))
    pg.h.add_cleanup(d_a.stop)
    pg.wait_state("streaming")
    sh.wait_until(lambda: d_a.status()["state"] == "idle (master)", 30, "a idle as master")
    pg.sql_a("UPDATE t SET v = 'last on a' WHERE id = 1")
    assert "replicates from a already: reverse is for the old master's" in query(d_b.sock, "reverse a")  # the standby
    for bad in ("reverse", "reverse a", "reverse zz", "reverse b -5", "reverse b 10 x"):
        assert "usage: reverse NODE [TIMEOUT_MS]" in query(d_a.sock, bad), bad
    # b not confirming (stopped): the reverse gives up within its timeout, says why.
    os.kill(d_b.proc.pid, signal.SIGSTOP)
    try:
        pg.sql_a("UPDATE t SET v = 'while b is stopped' WHERE id = 3")
        reply = json.loads(query(d_a.sock, "reverse b 1500", timeout=30))
        assert "b has not confirmed this node's final position" in reply["error"], reply
        assert d_a.status()["reverse"]["state"] == "failed"
    finally:
        os.kill(d_b.proc.pid, signal.SIGCONT)
    # Fence a, then turn the direction around from a.
    pg.a.psql("ALTER DATABASE groupware SET default_transaction_read_only = on")
    reply = json.loads(query(d_a.sock, "reverse b", timeout=60))
    assert reply.get("done") is True, reply
    st = d_a.status()
    assert st["reverse"]["state"] == "done" and st["reverse"]["lsn"] == reply["start"], st
    pg.wait_equal("t")
    for node in ("a", "b"):
        r = run(STANDINCTL, "-c", pg.conf, "-n", node, "state", "set", "--master", "b")
        assert r.returncode == 0, r.stderr
    sh.wait_until(lambda: d_a.status()["state"] == "streaming", 60, "a streaming from b")
    sh.wait_until(lambda: d_b.status()["state"] == "idle (master)", 30, "b idle as master")
    pg.sql_b("INSERT INTO t VALUES (501, 'first on b'); UPDATE t SET v = 'b' WHERE id = 2")
    sh.wait_until(lambda: pg.digest(pg.a, "t") == pg.digest(pg.b, "t"), 30, "a equal to b")
    assert "initial sync" not in d_a.output()
    assert pg.a.psql("SELECT count(*) FROM pg_replication_slots", db="groupware") == "0"
    assert pg.b.psql("SELECT slot_name, active FROM pg_replication_slots", db="groupware") == \
        "standin_a|t"
    assert not [f for f in os.listdir(os.path.join(pg.base, "a", "state"))
                if f.startswith("divergence")]
