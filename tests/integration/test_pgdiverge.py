"""The divergence report of a long-diverged old master, in bounded memory
(issue 30, point 4).

An old master that went on alone for long holds more changes in its slot
than standin-pgrepl may hold in memory, and the report is wanted exactly
then.  The changes are read from the slot a row at a time and written to
the report as they are rendered, so here the report is several times larger
than the memory standin-pgrepl is allowed (prlimit --data), and must
still be complete, with the daemon streaming from the new master after it.

The report is 1 GiB (STANDIN_DIVERGENCE_MB to change it): about 30 s on
two cores, 15 s of them for the report.
"""
import os
import re
import time

import pytest

import standin_harness as sh
from pgenv import PgEnv
from standin_bin import PGREPL, STANDINCTL, StandinDaemon, program, run

pytestmark = pytest.mark.servers

DEFAULT_MB = 1024
LIMIT_MB = 64                   # standin-pgrepl's data (RLIMIT_DATA: heap, thread stacks, every
                                # private writable mapping); about 26 MiB when idle
VALUE_CHARS = 960               # under TOAST's threshold: every value is in the stream
SMALL_TXN = 100                 # rows per small transaction


def _asan_build():
    with open(program(PGREPL), "rb") as f:
        return b"__asan_init" in f.read()


def _line_bytes(row_id):
    return len(f"""INSERT INTO "public"."t" ("id", "v") OVERRIDING SYSTEM VALUE VALUES """
               f"""('{row_id}', '{"x" * VALUE_CHARS}');\n""")


def _vm(pid):
    """VmPeak, VmSize, VmData and VmHWM (peak RSS) of PID, in KiB."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmPeak", "VmHWM", "VmData", "VmSize"):
                got[key] = int(value.split()[0])
    return got


def _diverged_report(harness, mb):
    pg = PgEnv(harness)
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY, v text); "
             "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g")
    d_b = pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("t")
    d_b.stop()

    # Node a goes on alone: half the rows in one transaction (one
    # transaction larger than memory), half in small ones.
    # A transaction that changes no row but runs DDL, rendered larger than
    # the flush size (a DDL message, 400 kB): in the report, like any change
    # the new master never got.
    # (Committed synchronously: a slot is read only as far as WAL is flushed.)
    pg.a.psql(f"SET synchronous_commit = on; "
              f"COMMENT ON TABLE t IS 'no row changed {'c' * 400000}'", db="groupware")
    pubs = pg.sql_a("SELECT string_agg(pubname, ',') FROM pg_publication")
    assert pg.sql_a(f"SELECT count(*) FROM pg_logical_slot_peek_binary_changes('standin_b', "
                    f"NULL, NULL, 'proto_version', '1', 'publication_names', '{pubs}', "
                    f"'messages', 'true') WHERE position('no row changed' in "
                    f"encode(data, 'escape')) > 0") == "1"
    rows = mb * 2**20 // _line_bytes(1000000)
    big = rows // 2
    small_txns = (rows - big + SMALL_TXN - 1) // SMALL_TXN
    rows = big + small_txns * SMALL_TXN
    value = f"repeat(md5(g::text), {VALUE_CHARS // 32})"
    t0 = time.monotonic()
    pg.a.psql(f"INSERT INTO t SELECT g, {value} FROM generate_series(1001, {1000 + big}) g",
              db="groupware", timeout=900)
    pg.a.psql(f"DO $$ BEGIN FOR i IN 0..{small_txns - 1} LOOP "
              f"INSERT INTO t SELECT g, {value} FROM generate_series("
              f"{1001 + big} + i * {SMALL_TXN}, {1000 + big} + (i + 1) * {SMALL_TXN}) g; "
              f"COMMIT; END LOOP; END $$", db="groupware", timeout=900)
    print(f"\ndivergence: {rows} rows, {1 + small_txns} transactions written on a "
          f"in {time.monotonic() - t0:.1f} s")

    # Failover: b is the master and takes writes.
    for node in ("a", "b"):
        r = run(STANDINCTL, "-c", pg.conf, "-n", node, "state", "set", "--master", "b")
        assert r.returncode == 0, r.stderr
    pg.sql_b("INSERT INTO t VALUES (100, 'written on b')")

    # Node a comes back as the standby, its address space limited.
    asan = _asan_build()
    prefix = [] if asan else ["prlimit", f"--data={LIMIT_MB << 20}", "--"]
    d_a = StandinDaemon(PGREPL, pg.conf, "a", os.path.join(pg.base, "a", "run"),
                        os.path.join(pg.base, "pgrepl-a.log"), ["--resync"], prefix=prefix)
    harness.add_cleanup(d_a.stop)
    t0 = time.monotonic()
    def reported():
        out = d_a.output()
        if not d_a.running() or "initial sync from b to a failed" in out:
            pytest.fail(out[-3000:])
        return "divergence: this node had transactions" in out
    sh.wait_until(reported, 600, "the divergence report")
    took = time.monotonic() - t0
    sh.wait_until(lambda: d_a.status()["state"] == "streaming" or (
        not d_a.running() and pytest.fail(d_a.output()[-3000:])), 120, "node a streaming from b")
    vm = _vm(d_a.proc.pid)
    assert d_a.running() and d_a.status()["last_error"] is None
    sh.wait_until(lambda: pg.digest(pg.a, "t") == pg.digest(pg.b, "t"), 60, "a equal to b")
    assert pg.a.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'standin_b'",
                     db="groupware") == "0"

    state_a = os.path.join(pg.base, "a", "state")
    reports = [f for f in os.listdir(state_a) if f.startswith("divergence-b-")]
    assert len(reports) == 1, os.listdir(state_a)      # no temporary file left
    path = os.path.join(state_a, reports[0])
    size = os.path.getsize(path)
    print(f"report: {size / 2**20:.0f} MiB in {took:.1f} s; standin-pgrepl "
          f"{'(ASan, no limit)' if asan else f'data limited to {LIMIT_MB} MiB'}: peak RSS "
          f"{vm['VmHWM'] // 1024} MiB, data {vm['VmData'] // 1024} MiB, address space "
          f"{vm['VmSize'] // 1024} MiB (peak {vm['VmPeak'] // 1024} MiB)")
    assert size > mb * 2**20 * 0.95
    if not asan:
        assert size > 1.5 * (LIMIT_MB << 20)

    # Complete: every transaction, every row once, each statement whole.
    begins = commits = ddl = 0
    ids = []
    insert = re.compile(r"""INSERT INTO "public"\."t" \("id", "v"\) OVERRIDING SYSTEM VALUE """
                        r"""VALUES \('(\d+)', '([0-9a-f]{%d})'\);$""" % (VALUE_CHARS // 32 * 32))
    with open(path) as f:
        head = f.readline()
        for line in f:
            if line == "BEGIN;\n":
                begins += 1
            elif line == "COMMIT;\n":
                commits += 1
            elif line.startswith("INSERT"):
                m = insert.match(line)
                assert m, line[:200]
                ids.append(int(m.group(1)))
            elif line.startswith("COMMENT ON TABLE"):
                ddl += 1
                assert line.endswith("'no row changed " + "c" * 400000 + "';\n"), line[:200]
            else:
                assert line.startswith("--") or line == "\n", line[:200]
    assert re.match(rf"-- standin divergence report: {2 + small_txns} transactions \({rows + 1} "
                    r"changes\) that this node committed as master *\n$", head), head
    assert begins == commits == 2 + small_txns and ddl == 1
    assert ids == list(range(1001, 1001 + rows))
    assert d_a.stop() == 0
    assert "Sanitizer" not in d_a.output(), d_a.output()[-3000:]


def test_1gb_report_under_a_memory_limit(harness):
    _diverged_report(harness, int(os.environ.get("STANDIN_DIVERGENCE_MB", DEFAULT_MB)))
