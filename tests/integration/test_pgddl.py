"""DDL replication (standin_ddl, standin-pgrepl) against a real PostgreSQL 15
pair: each DDL statement applied exactly once on the standby and each row
exactly once, whatever wraps the DDL on the master; the master never refuses
a statement because of standin; what the standby cannot run stops the stream
with an error that says how to go on.  Every test ends by comparing the two
schemas (pg_dump -s) and the content of every table."""
import os
import re
import stat

import pytest

import standin_harness as sh
from pgenv import PgEnv
from standin_bin import STANDINCTL, run

pytestmark = pytest.mark.servers


@pytest.fixture
def pg(harness):
    return PgEnv(harness)


def one(server, *queries, check=True):
    """Each of QUERIES sent whole, as one query string (psql -c), in one
    session: what applications, JDBC batches and schema loaders send."""
    cmd = [server.bin("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h",
           server.socket_dir, "-p", str(server.port), "-U", "postgres", "-d", "groupware"]
    for q in queries:
        cmd += ["-c", q]
    return sh.run(cmd, check=check)


def schema(server):
    """The database's schema as pg_dump -s prints it, without standin's own
    objects on the master (its schema, publication and event triggers)."""
    out = sh.run([server.bin("pg_dump"), "-s", "-h", server.socket_dir, "-p", str(server.port),
                  "-U", "postgres", "-d", "groupware", "--exclude-schema=standin",
                  "--no-publications", "--no-subscriptions"]).stdout
    keep = []
    for chunk in out.split(";\n"):
        lines = [ln for ln in chunk.splitlines()
                 if ln.strip() and not ln.startswith(("--", "\\"))]
        text = "\n".join(lines)
        if text and "EVENT TRIGGER" not in text and "standin" not in text:
            keep.append(text)
    return keep


def tables(server):
    return server.psql("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE "
                       "schemaname NOT IN ('pg_catalog', 'information_schema', 'standin') "
                       "ORDER BY 1", db="groupware").split()


def caught_up(pg, token):
    """Write TOKEN on the master and wait for it on the standby: everything
    before it has been applied."""
    pg.sql_a(f"INSERT INTO mark VALUES ({token})")

    def there():
        if not pg.daemon.running():
            raise sh.StopWaiting(f"standin-pgrepl exited:\n{pg.daemon.output()[-3000:]}")
        st = pg.status()
        if st["state"] == "error":
            raise sh.StopWaiting(f"standin-pgrepl stopped: {st['last_error']}")
        return pg.sql_b(f"SELECT count(*) FROM mark WHERE id = {token}") == "1"
    sh.wait_until(there, 60, f"mark {token} on the standby")


def same_everywhere(pg):
    """Both schemas alike, and every table's rows (duplicates counted)."""
    sa, sb = schema(pg.a), schema(pg.b)
    assert sa == sb, "schemas differ:\n" + "\n".join(
        ["master only: " + s for s in sa if s not in sb] +
        ["standby only: " + s for s in sb if s not in sa])
    names = tables(pg.a)
    assert names == tables(pg.b)
    for t in names:
        assert pg.digest(pg.a, t) == pg.digest(pg.b, t), t
    return names


def test_ddl_inside_code_runs_once_and_rows_arrive_once(pg):
    """DO blocks, PL/pgSQL and SQL functions, a procedure that commits,
    EXECUTE, savepoints rolled back, exception blocks, temporary tables and a
    table without a primary key: the standby runs the DDL, not the code."""
    pg.sql_a("CREATE TABLE mark (id int PRIMARY KEY)")
    pg.start()
    pg.wait_state("streaming")
    # The case: the DO block's INSERTs would have arrived twice.
    one(pg.a, "DO $$ BEGIN CREATE TABLE t_do (id int PRIMARY KEY, v text); "
              "INSERT INTO t_do VALUES (1,'one'),(2,'two'); END $$;")
    one(pg.a, "CREATE FUNCTION mk() RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
              "CREATE TABLE t_fn (id int PRIMARY KEY); INSERT INTO t_fn VALUES (1); END $$")
    one(pg.a, "SELECT mk()")
    one(pg.a, "CREATE FUNCTION mk_sql() RETURNS void LANGUAGE sql AS $$ "
              "CREATE TABLE t_sqlfn (id int, v text DEFAULT 'sql; \"fn\"') $$")
    one(pg.a, "SELECT mk_sql(); INSERT INTO t_sqlfn VALUES (1), (1)")
    # A procedure that commits half-way: two transactions, each in order.
    one(pg.a, "CREATE PROCEDURE p_commit() LANGUAGE plpgsql AS $$ BEGIN "
              "CREATE TABLE t_proc (id int PRIMARY KEY); INSERT INTO t_proc VALUES (1); COMMIT; "
              "ALTER TABLE t_proc ADD COLUMN v text DEFAULT 'x'; "
              "INSERT INTO t_proc VALUES (2, 'two'); END $$")
    one(pg.a, "CALL p_commit()")
    # Dynamic SQL: the text EXECUTE ran, not the loop.
    one(pg.a, "DO $$ BEGIN FOR i IN 1..3 LOOP "
              "EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY)', 't_dyn' || i); "
              "EXECUTE format('INSERT INTO %I VALUES (%s)', 't_dyn' || i, i); END LOOP; END $$")
    # CREATE TABLE AS in code: the table before its rows.
    one(pg.a, "DO $$ BEGIN CREATE TABLE t_do_ctas AS SELECT g FROM generate_series(1, 3) g; "
              "EXECUTE 'CREATE TABLE t_exec_ctas AS SELECT g FROM generate_series(1, 4) g'; END $$")
    # A savepoint rolled back takes its DDL with it.
    one(pg.a, "BEGIN; CREATE TABLE t_kept (id int PRIMARY KEY); SAVEPOINT s; "
              "CREATE TABLE t_gone (id int); INSERT INTO t_kept VALUES (1); ROLLBACK TO s; "
              "INSERT INTO t_kept VALUES (2); COMMIT")
    # So does an exception block.
    one(pg.a, "DO $$ BEGIN CREATE TABLE t_exc (id int PRIMARY KEY); "
              "BEGIN CREATE TABLE t_exc_gone (id int); INSERT INTO t_exc VALUES (1); "
              "RAISE EXCEPTION 'undo'; EXCEPTION WHEN raise_exception THEN "
              "INSERT INTO t_exc VALUES (2); END; END $$")
    # Temporary tables stay on the master, however often they are made.
    one(pg.a, "CREATE FUNCTION tmp_work(n int) RETURNS bigint LANGUAGE plpgsql AS $$ "
              "DECLARE r bigint; BEGIN CREATE TEMP TABLE scratch (v int) ON COMMIT DROP; "
              "INSERT INTO scratch SELECT generate_series(1, n); "
              "SELECT count(*) INTO r FROM scratch; INSERT INTO t_fn VALUES (100 + n); "
              "RETURN r; END $$")
    for n in (3, 4):
        assert one(pg.a, f"SELECT tmp_work({n})").stdout.strip() == str(n)
    one(pg.a, "CREATE TEMP TABLE tt (id int); INSERT INTO tt VALUES (1); DROP TABLE tt")
    # Without a primary key, a doubled row would raise no error: counted.
    one(pg.a, "DO $$ BEGIN CREATE TABLE t_nopk (v text); "
              "INSERT INTO t_nopk VALUES ('dup'), ('dup'), ('one'); END $$")
    caught_up(pg, 1)
    names = same_everywhere(pg)
    for gone in ("public.t_gone", "public.t_exc_gone", "public.scratch", "public.tt"):
        assert gone not in names
    assert pg.sql_b("SELECT v, count(*) FROM t_nopk GROUP BY v ORDER BY v") == "dup|2\none|1"
    assert pg.sql_b("SELECT id, v FROM t_proc ORDER BY id") == "1|x\n2|two"
    assert pg.sql_b("SELECT id FROM t_exc") == "2"
    assert pg.sql_b("SELECT count(*) FROM t_sqlfn") == "2"
    st = pg.status()
    assert st["ddl_rejected"] == 0 and st["ddl_skipped"] == 0, st


def schema_file(n_tables=38):
    """A structure.sql as Rails writes it (SET lines, a schema, tables,
    sequences, constraints, indexes, comments and its migrations table): 200
    statements, loaded as one string."""
    stmts = ["SET statement_timeout = 0", "SET client_encoding = 'UTF8'",
             "SET standard_conforming_strings = on",
             "SELECT pg_catalog.set_config('search_path', '', false)",
             "CREATE SCHEMA app",
             "CREATE TABLE app.schema_migrations (version character varying NOT NULL PRIMARY KEY)"]
    for i in range(n_tables):
        stmts += [f"CREATE TABLE app.t{i} (id bigint NOT NULL, name text DEFAULT 'n''{i}', "
                  f"created timestamp with time zone DEFAULT now())",
                  f"CREATE SEQUENCE app.t{i}_id_seq START WITH 1 INCREMENT BY 1 CACHE 1",
                  f"ALTER TABLE ONLY app.t{i} ALTER COLUMN id SET DEFAULT "
                  f"nextval('app.t{i}_id_seq'::regclass)",
                  f"ALTER TABLE ONLY app.t{i} ADD CONSTRAINT t{i}_pkey PRIMARY KEY (id)",
                  f"CREATE INDEX index_t{i}_on_name ON app.t{i} USING btree (name)"]
    stmts += [f"INSERT INTO app.schema_migrations (version) VALUES ('2026120{i % 10}{i:04d}')"
              for i in range(200 - len(stmts) - 1)]
    stmts.append("COMMENT ON SCHEMA app IS 'loaded as one string'")
    assert len(stmts) == 200
    return ";\n".join(stmts) + ";\n"


def test_multi_statement_strings_ctas_and_migrations(pg):
    """A string that mixes DDL and DML is accepted on the master (it was
    refused), and replicated once: explicit transactions, CREATE TABLE AS and
    SELECT INTO (rows through the stream, not made again), a 200-statement
    schema file, a migration of ALTER TABLE and UPDATE in one transaction."""
    pg.sql_a("CREATE TABLE mark (id int PRIMARY KEY)")
    pg.start()
    pg.wait_state("streaming")
    one(pg.a, "BEGIN; CREATE TABLE m1 (id int PRIMARY KEY, v text); "
              "INSERT INTO m1 SELECT g, 'v' || g FROM generate_series(1, 50) g; COMMIT")
    one(pg.a, "CREATE TABLE m_nopk (v text); INSERT INTO m_nopk VALUES ('dup'), ('dup')")
    one(pg.a, "CREATE TABLE m_ctas AS SELECT g AS id, 'r' || g AS v FROM generate_series(1, 5) g; "
              "SELECT g AS id INTO m_into FROM generate_series(1, 3) g; "
              "CREATE TABLE IF NOT EXISTS m_ctas AS SELECT 1 AS id; "
              "CREATE MATERIALIZED VIEW m_mv AS SELECT id FROM m1 WHERE id < 10; "
              "CREATE TABLE m_empty AS SELECT * FROM m1 WITH NO DATA")
    one(pg.a, schema_file())
    # A migration: add a column, fill it, constrain it; the rows in between.
    one(pg.a, "BEGIN; ALTER TABLE m1 ADD COLUMN status text; UPDATE m1 SET status = 'active'; "
              "ALTER TABLE m1 ALTER COLUMN status SET NOT NULL; "
              "ALTER TABLE m_nopk REPLICA IDENTITY FULL; "
              "UPDATE m_nopk SET v = 'w' WHERE v = 'dup'; "
              "CREATE INDEX CONCURRENTLY_named ON m1 (status); COMMIT")
    one(pg.a, "INSERT INTO app.t7 (name) VALUES ('after')")
    caught_up(pg, 1)
    names = same_everywhere(pg)
    assert len([t for t in names if t.startswith("app.")]) == 39
    assert pg.sql_b("SELECT count(*) FROM m_ctas") == "5"
    assert pg.sql_b("SELECT count(*) FROM m_into") == "3"
    assert pg.sql_b("SELECT count(*) FROM m_nopk WHERE v = 'w'") == "2"
    assert pg.sql_b("SELECT count(*) FROM m1 WHERE status = 'active'") == "50"
    assert pg.sql_b("SELECT count(*) FROM app.schema_migrations") == \
        pg.sql_a("SELECT count(*) FROM app.schema_migrations")
    assert pg.sql_b("SELECT obj_description('app'::regnamespace)") == "loaded as one string"
    assert pg.status()["ddl_rejected"] == 0


def test_backslashes_with_standard_conforming_strings_off(pg):
    """Strings read as PostgreSQL reads them in the session that ran the
    DDL: the issue's silent divergence, a default with an escaped quote, and
    search_path carried with the statement."""
    pg.sql_a("CREATE TABLE mark (id int PRIMARY KEY); CREATE TABLE x (id int); "
             "CREATE TABLE y (id int); CREATE SCHEMA other")
    pg.start()
    pg.wait_state("streaming")
    one(pg.a, "SET standard_conforming_strings = off",
        "COMMENT ON TABLE x IS 'a\\'' ; DROP TABLE y; --'",
        "CREATE TABLE z (id int PRIMARY KEY, c text DEFAULT 'a\\'b', d text DEFAULT E'\\\\n')",
        "INSERT INTO z (id) VALUES (1)",
        "SET search_path = other, public",
        "CREATE TABLE w (id int PRIMARY KEY, c text DEFAULT '\\\\')",
        "INSERT INTO w (id) VALUES (1)")
    caught_up(pg, 1)
    same_everywhere(pg)
    assert pg.sql_a("SELECT to_regclass('public.y') IS NULL") == "t"
    assert pg.sql_b("SELECT to_regclass('public.y') IS NULL") == "t"
    assert pg.sql_b("SELECT obj_description('x'::regclass)") == "a'"
    assert pg.sql_b("SELECT c FROM z") == "a'b"
    assert pg.sql_b("SELECT c FROM other.w") == "\\"
    assert pg.sql_b("SELECT to_regclass('public.w') IS NULL") == "t"


def ddl_error(pg):
    st = pg.wait_state("error")
    err = st["last_error"]
    m = re.search(r'"standinctl pg ddl-done ([0-9A-F]+/[0-9A-F]+)"', err)
    assert m, err
    return err, m.group(1)


def ddl_done(pg, lsn):
    r = run(STANDINCTL, "-c", pg.conf, "-n", "b", "pg", "ddl-done", lsn)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'"marked":"{lsn}"' in r.stdout, r.stdout


def test_ddl_that_fails_on_the_standby_stops_until_done_by_hand(pg):
    """A DDL statement the standby refuses stops the stream there; the error
    names the statement (not its text, which can hold a secret) and a file
    of mode 0600 holding it; "standinctl pg ddl-done LSN" goes on past it."""
    pg.sql_a("CREATE TABLE mark (id int PRIMARY KEY); CREATE TABLE t (id int PRIMARY KEY)")
    pg.start()
    pg.wait_state("streaming")
    pg.sql_b("CREATE TABLE clash (id int)")     # someone made it on the standby
    one(pg.a, "CREATE TABLE clash (id int PRIMARY KEY, note text DEFAULT 'sekrit-4711'); "
              "INSERT INTO clash (id) VALUES (1); INSERT INTO t VALUES (1)")
    err, lsn = ddl_error(pg)
    assert "CREATE TABLE public.clash" in err and "already exists" in err, err
    path = re.search(r"the statement is in (\S+):", err).group(1)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        assert "sekrit-4711" in f.read()
    assert "sekrit" not in err and "sekrit" not in pg.daemon.output()
    assert pg.sql_b("SELECT count(*) FROM t") == "0"    # nothing after it
    r = run(STANDINCTL, "-c", pg.conf, "-n", "b", "pg", "ddl-done", "nonsense")
    assert r.returncode == 2 and "bad LSN" in r.stderr, r.stderr
    # The administrator makes the standby's table what the master's is.
    pg.sql_b("DROP TABLE clash; CREATE TABLE clash (id int PRIMARY KEY, note text "
             "DEFAULT 'sekrit-4711')")
    ddl_done(pg, lsn)
    caught_up(pg, 1)
    same_everywhere(pg)
    assert pg.status()["ddl_skipped"] == 1
    # A DDL after it is applied as usual; the mark does not skip it.
    one(pg.a, "ALTER TABLE clash ADD COLUMN more int")
    caught_up(pg, 2)
    same_everywhere(pg)


def test_ddl_the_master_could_not_capture_stops_with_a_clear_error(harness):
    """standin_ddl not preloaded on the master: a DDL inside a DO block run
    by a fresh backend cannot be isolated (the module came too late).  The
    master runs it; the standby stops there, says so and goes on once it is
    applied by hand and marked done."""
    pg = PgEnv(harness, preload_ddl=False)
    pg.sql_a("CREATE TABLE mark (id int PRIMARY KEY)")
    pg.start()
    pg.wait_state("streaming")
    assert "shared_preload_libraries" in pg.daemon.output()
    # Straight from the client, a fresh backend's statement is still exact.
    one(pg.a, "CREATE TABLE t_top (id int PRIMARY KEY)")
    caught_up(pg, 1)
    one(pg.a, "CREATE TABLE t_top_ctas AS SELECT g FROM generate_series(1, 5) g")
    caught_up(pg, 3)
    one(pg.a, "DO $$ BEGIN CREATE TABLE t_unc (id int PRIMARY KEY); "
              "INSERT INTO t_unc VALUES (1); END $$")
    err, lsn = ddl_error(pg)
    assert "could not be captured" in err and "CREATE TABLE public.t_unc" in err, err
    pg.sql_b("CREATE TABLE t_unc (id int PRIMARY KEY)")
    ddl_done(pg, lsn)
    caught_up(pg, 2)
    same_everywhere(pg)
    assert pg.sql_b("SELECT id FROM t_unc") == "1"


def test_added_column_with_values_computed_as_it_runs_stops(pg):
    """ADD COLUMN with a default such as now() or a serial column on a table
    with rows: run again on the standby it would give those rows other
    values, so it stops there instead; on an empty table, or with an
    immutable default, it is applied."""
    pg.sql_a("CREATE TABLE mark (id int PRIMARY KEY); CREATE TABLE acc (id int PRIMARY KEY);"
             "INSERT INTO acc SELECT generate_series(1, 10)")
    pg.start()
    pg.wait_state("streaming")
    one(pg.a, "ALTER TABLE acc ADD COLUMN flag boolean DEFAULT true, ADD COLUMN k int DEFAULT 7")
    one(pg.a, "CREATE TABLE empty_one (id int); "
              "ALTER TABLE empty_one ADD COLUMN u uuid DEFAULT gen_random_uuid(), "
              "ADD COLUMN n bigserial")
    caught_up(pg, 1)
    same_everywhere(pg)
    one(pg.a, "ALTER TABLE acc ADD COLUMN created timestamptz NOT NULL DEFAULT now()")
    err, lsn = ddl_error(pg)
    assert "cannot be run on the standby as it ran on the master" in err, err
    assert "column created of public.acc" in err and "ALTER TABLE public.acc" in err, err
    path = re.search(r"the statement is in (\S+):", err).group(1)
    with open(path) as f:
        assert "DEFAULT now()" in f.read()
    # By hand: the master's value for the rows there, then its default.
    value = pg.sql_a("SELECT DISTINCT created FROM acc")
    pg.sql_b(f"ALTER TABLE acc ADD COLUMN created timestamptz NOT NULL DEFAULT '{value}'; "
             "ALTER TABLE acc ALTER COLUMN created SET DEFAULT now()")
    ddl_done(pg, lsn)
    one(pg.a, "ALTER TABLE acc ADD COLUMN seq serial")
    err, lsn = ddl_error(pg)
    assert "column seq of public.acc" in err, err
    pg.sql_b("CREATE SEQUENCE acc_seq_seq AS integer OWNED BY acc.id; ALTER TABLE acc "
             "ADD COLUMN seq integer NOT NULL DEFAULT 0")
    for row in pg.sql_a("SELECT id, seq FROM acc").splitlines():
        i, seq = row.split("|")
        pg.sql_b(f"UPDATE acc SET seq = {seq} WHERE id = {i}")
    pg.sql_b("ALTER TABLE acc ALTER COLUMN seq SET DEFAULT nextval('acc_seq_seq'); "
             "ALTER SEQUENCE acc_seq_seq OWNED BY acc.seq; "
             f"SELECT setval('acc_seq_seq', {pg.sql_a('SELECT last_value FROM acc_seq_seq')})")
    ddl_done(pg, lsn)
    caught_up(pg, 2)
    same_everywhere(pg)
    assert pg.status()["ddl_skipped"] == 2
