#!/usr/bin/python3
"""The master-side cost of standin's DDL capture, against plain PostgreSQL.

Two PostgreSQL 15 servers, started with the test harness
(tests/lib/standin_harness.py), both with wal_level = logical, run side by
side on this machine:

  plain    no standin module, no event triggers: what PostgreSQL costs
           without standin
  standin  shared_preload_libraries = 'standin_ddl' (the module of --build)
           and replicators/pg/ddl_capture.sql applied to the database as
           standin-pgrepl applies it (in one transaction, with
           session_replication_role = replica), the signing key set to a
           fixed value: every DDL statement then writes a signed
           transactional logical message "standin.ddl" to the WAL

Workloads (pgbench -n, custom scripts, --clients clients, a fixed number of
transactions), each measured on both servers for --rounds rounds, the side
going first alternating by round, the two sides' runs of a workload back to
back.  Reported for each: the median tps, the median server CPU time per
transaction (user + system time of all the server's processes, from /proc:
less disturbed than tps by whatever else runs on the machine; pgbench's own
CPU is not in it), the ratio standin/plain of those medians and the median
of the rounds' own ratios ("paired": robust against the machine getting
slower or faster between rounds):

  ddl       BEGIN; CREATE TABLE t_<client> (id int PRIMARY KEY, v text);
            INSERT 10 rows; DROP TABLE; COMMIT  (statements from the client)
  do        the same three statements run by EXECUTE in a DO block (the
            utility hook sees them under the DO: the nested path)
  function  the same in a PL/pgSQL function called by SELECT
  select    pgbench -S (select-only, pgbench -i -s --scale): the hooks' cost
            on plain queries (ExecutorRun hook on every query)
  insert    BEGIN; INSERT one row; COMMIT: DML with utility statements
            (BEGIN/COMMIT go through the ProcessUtility hook)

A warm-up run of each workload on each side (a tenth of a run) is not
counted.  Before each measurement: CHECKPOINT and sync(2); after it: VACUUM
of the database (catalogs included: the DDL workloads leave dead catalog
rows), so both servers start each run in the same state; autovacuum is off
for the same reason.  The WAL written per transaction is pg_current_wal_lsn() after minus
before, divided by the transactions.  A check before the runs decodes one
transaction of each DDL workload on each server (test_decoding, slot dropped
again) and counts the standin.ddl messages and their size.

By default fsync, synchronous_commit and full_page_writes are off: the
servers are CPU-bound, so the capture's CPU cost shows undiluted by commit
flushes (the ratios are the worst case).  --fsync measures with them on.

    STANDIN_BUILDDIR=/tmp/b bench/pg/ddl.py --build /tmp/b [--rounds 5] [--only ddl,do,select]
"""

import argparse
import hashlib
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True   # no __pycache__ in tests/ (other people's directories)
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import standin_harness as sh  # noqa: E402
from benchlib import BenchError, log, out, preamble  # noqa: E402

PGBIN = sh.PG_BINDIR
PGBENCH = os.path.join(PGBIN, "pgbench")
DB = "bench"
SIDES = ("plain", "standin")
DDL_KEY = "benchkey"
MODULE = os.path.join("replicators", "pg", "standin_ddl.so")
CAPTURE_SQL = os.path.join(ROOT, "replicators", "pg", "ddl_capture.sql")

# ---------------------------------------------------------------------------
# Workloads: pgbench scripts (None: pgbench's built-in -S)

ROWS = "SELECT g, 'row ' || g FROM generate_series(1, 10) g"

DDL_SCRIPT = f"""\
BEGIN;
CREATE TABLE bench_ddl_:client_id (id int PRIMARY KEY, v text);
INSERT INTO bench_ddl_:client_id {ROWS};
DROP TABLE bench_ddl_:client_id;
COMMIT;
"""

PLPGSQL_BODY = f"""\
DECLARE
    t text := 'bench_do_' || pg_backend_pid();
BEGIN
    EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, v text)', t);
    EXECUTE format('INSERT INTO %I {ROWS.replace("'", "''")}', t);
    EXECUTE format('DROP TABLE %I', t);
END"""

DO_SCRIPT = f"DO $bench$\n{PLPGSQL_BODY}\n$bench$;\n"

FUNCTION_DEF = (f"CREATE FUNCTION bench_ddl_fn() RETURNS void LANGUAGE plpgsql AS $bench$\n"
                f"{PLPGSQL_BODY.replace('bench_do_', 'bench_fn_')}\n$bench$")
FUNCTION_SCRIPT = "SELECT bench_ddl_fn();\n"

INSERT_SCRIPT = """\
BEGIN;
INSERT INTO bench_dml (v) VALUES ('some text');
COMMIT;
"""

# name -> (kind, script, what it is)
WORKLOADS = {
    "ddl": ("ddl", DDL_SCRIPT, "CREATE TABLE + INSERT 10 + DROP TABLE, from the client"),
    "do": ("ddl", DO_SCRIPT, "the same by EXECUTE in a DO block"),
    "function": ("ddl", FUNCTION_SCRIPT, "the same in a PL/pgSQL function"),
    "select": ("dml", None, "pgbench -S (select-only)"),
    "insert": ("dml", INSERT_SCRIPT, "BEGIN; INSERT 1 row; COMMIT"),
}


# ---------------------------------------------------------------------------
# One server


class Side:
    def __init__(self, name, h, args):
        self.name = name
        self.h = h
        self.args = args
        self.pg = h.start_pg(name, fsync=args.fsync, preload_ddl=(name == "standin"),
                             extra_conf="autovacuum = off\n")
        self.pg.create_database(DB)

    def sql(self, text, timeout=300):
        return self.pg.psql(text, db=DB, timeout=timeout)

    def prepare(self):
        t = time.monotonic()
        pgbench(self.pg, "-i", "-s", str(self.args.scale), "-q")
        self.sql("CREATE TABLE bench_dml (id bigserial PRIMARY KEY, v text);\n" + FUNCTION_DEF)
        if self.name == "standin":
            with open(CAPTURE_SQL) as f:
                capture = f.read()
            # As pgsync.c (pgs_ensure_ddl_capture) installs it; then our key.
            self.sql("BEGIN;\nSET LOCAL session_replication_role = replica;\n" + capture +
                     f"\nCOMMIT;\nINSERT INTO standin.ddl_key VALUES (1, {sh.quote_literal(DDL_KEY)}) "
                     f"ON CONFLICT (id) DO UPDATE SET key = EXCLUDED.key;")
            loaded = self.sql("SHOW shared_preload_libraries")
            trig = self.sql("SELECT string_agg(evtname, ',' ORDER BY evtname) FROM pg_event_trigger")
            if "standin_ddl" not in loaded or trig.count("standin_ddl_") != 3:
                raise BenchError(f"standin: capture not in place (shared_preload_libraries "
                                 f"{loaded!r}, event triggers {trig!r})")
        else:
            trig = self.sql("SELECT count(*) FROM pg_event_trigger")
            loaded = self.sql("SHOW shared_preload_libraries")
            if trig != "0" or "standin" in loaded:
                raise BenchError(f"plain: not plain (event triggers {trig}, "
                                 f"shared_preload_libraries {loaded!r})")
        self.sql("VACUUM ANALYZE")
        log(f"{self.name}: prepared (pgbench -i -s {self.args.scale}"
            f"{', DDL capture installed' if self.name == 'standin' else ''}) in "
            f"{time.monotonic() - t:.1f}s")

    def decode_check(self, workload):
        """Run one transaction of a DDL workload under a test_decoding slot:
        (standin.ddl messages, their total content bytes)."""
        script = WORKLOADS[workload][1]
        slot = "bench_check"
        self.sql(f"SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')")
        try:
            self.sql(script.replace(":client_id", "0"))
            rows = self.sql(f"SELECT data FROM pg_logical_slot_get_changes('{slot}', NULL, NULL, "
                            f"'include-xids', '0')")
        finally:
            self.sql(f"SELECT pg_drop_replication_slot('{slot}')")
        sizes = [int(m.group(1)) for m in
                 re.finditer(r"^message: transactional: 1 prefix: standin\.ddl, sz: (\d+)", rows, re.M)]
        return len(sizes), sum(sizes)

    def children(self):
        """The postmaster's child processes now: (live ones, zombies)."""
        pid = self.pg.pid
        live, zombies = [], []
        for p in sh.process_tree(pid)[1:]:
            st = proc_stat(p)
            if st is not None:
                (zombies if st[0] in ("Z", "X") else live).append(p)
        return live, zombies

    def settle(self):
        """Wait until only the postmaster's own background processes run (every
        client backend gone and reaped), so that cpu() counts each ended
        backend exactly once (a backend reaped while cpu() reads would be
        missed)."""
        def idle():
            live, zombies = self.children()
            return not zombies and all(BACKGROUND.match(cmdline(p)) for p in live)
        sh.wait_until(idle, 60, f"{self.name}: client backends to exit", interval=0.02)

    def cpu(self):
        """CPU seconds used by the server so far: the postmaster's own and its
        reaped children's (the ended backends), plus its live processes'."""
        pid = self.pg.pid
        st = proc_stat(pid)
        ticks = sum(st[1:5])
        for p in self.children()[0]:
            c = proc_stat(p)
            if c is not None:
                ticks += c[1] + c[2]
        return ticks / CLK_TCK

    def measure(self, workload, scripts, txns=None):
        """One pgbench run of WORKLOAD: dict(tps, cpu_us (server CPU per
        transaction), wal_per_txn, txns)."""
        kind, script, _ = WORKLOADS[workload]
        if txns is None:
            txns = self.args.ddl_txns if kind == "ddl" else self.args.dml_txns
        per_client = max(1, txns // self.args.clients)
        self.sql("CHECKPOINT")
        os.sync()               # no writeback of earlier runs (either server's) during this one
        lsn0 = self.sql("SELECT pg_current_wal_lsn()")
        self.settle()
        cpu0 = self.cpu()
        how = ["-S"] if script is None else ["-f", scripts[workload]]
        output = pgbench(self.pg, "-n", "-c", str(self.args.clients), "-j", str(self.args.jobs),
                         "-t", str(per_client), *how)
        self.settle()
        cpu = self.cpu() - cpu0
        wal = int(self.sql(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn0}')"))
        done = pgbench_count(output)
        self.sql("VACUUM", timeout=600)
        if done != per_client * self.args.clients:
            raise BenchError(f"{self.name} {workload}: {done} transactions of "
                             f"{per_client * self.args.clients}:\n{output}")
        return dict(tps=pgbench_tps(output), cpu_us=cpu / done * 1e6, wal_per_txn=wal / done,
                    txns=done)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid):
    """(state, utime, stime, cutime, cstime) of a process in clock ticks, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (fields[0],) + tuple(int(x) for x in fields[11:15])


# The process titles of the postmaster's own background processes.  Anything
# else (a client backend, or any process on its way out: its title is gone
# then) means the server is not settled.
BACKGROUND = re.compile(r"postgres: (?:\S+: )?(?:checkpointer|background writer|walwriter|"
                        r"autovacuum launcher|logical replication launcher|archiver)\s*$")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def pgbench(server, *args, timeout=900):
    """pgbench over TCP as the harness role; returns its output."""
    cmd = [PGBENCH, "-h", server.host, "-p", str(server.port), "-U", server.user, *args, DB]
    r = sh.run(cmd, env=dict(PGPASSFILE=server.passfile), timeout=timeout, check=False)
    if r.returncode != 0:
        raise BenchError(f"{shlex.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r.stdout + r.stderr


def pgbench_tps(output):
    m = re.search(r"tps = ([0-9.]+)", output)
    return float(m.group(1)) if m else float("nan")


def pgbench_count(output):
    m = re.search(r"number of transactions actually processed: (\d+)", output)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------
# Output


def machine_info(args):
    """The machine, the tree and the build (benchlib.preamble), then the
    module the standin server loads and how the servers run."""
    preamble("bench/pg/ddl.py: the master-side cost of standin's DDL capture", ROOT,
             args.build, [MODULE], lambda p: os.path.join(args.build, p),
             f"postgres: {subprocess.run([os.path.join(PGBIN, 'postgres'), '--version'], capture_output=True, text=True).stdout.strip()}",
             make=False)
    out(f"loadavg: {open('/proc/loadavg').read().strip()}")
    module = os.path.join(args.build, MODULE)
    built = os.stat(module).st_mtime
    src = os.path.join(ROOT, "replicators", "pg", "standin_ddl.c")
    newer = os.stat(src).st_mtime > built
    out(f"module:  {module} sha256 {file_sha256(module)[:16]}"
        + ("; standin_ddl.c IS NEWER" if newer else "; standin_ddl.c not newer"))
    out("servers: wal_level = logical, autovacuum off, "
        + ("fsync on" if args.fsync else "fsync/synchronous_commit/full_page_writes off")
        + f"; pgbench -c {args.clients} -j {args.jobs}, {args.ddl_txns} transactions a DDL run, "
        f"{args.dml_txns} a DML run, {args.rounds} rounds")
    out()


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fmt(v, unit="", prec=2):
    if v is None or v != v:
        return "-"
    return f"{v:,.{prec}f}{unit}"


def ratio(s, p):
    return s / p if p else float("nan")


def median(values):
    return statistics.median(values) if values else float("nan")


def table(head, rows):
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()
    out(line)
    out("-" * len(line))
    for r in rows:
        out("  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                      for i, (v, w) in enumerate(zip(r, widths))).rstrip())


def summary(results, checks, workloads, args):
    out(f"RESULTS: median of {args.rounds} rounds; ratio = standin/plain of the medians, "
        f"paired = median of the rounds' own ratios")
    rows = []
    for w in workloads:
        p, s = results[w]["plain"], results[w]["standin"]
        cols = [w]
        for key, prec in (("tps", 0), ("cpu_us", 0)):
            mp, ms = median([x[key] for x in p]), median([x[key] for x in s])
            paired = median([ratio(y[key], x[key]) for x, y in zip(p, s)])
            cols += [fmt(mp, prec=prec), fmt(ms, prec=prec), fmt(ratio(ms, mp), "x"),
                     fmt(paired, "x")]
        wp, ws = median([x["wal_per_txn"] for x in p]), median([x["wal_per_txn"] for x in s])
        cols += [fmt(wp, prec=0), fmt(ws, prec=0), fmt(ws - wp, prec=0)]
        rows.append(tuple(cols))
    table(("workload", "tps plain", "standin", "ratio", "paired",
           "CPU us/txn plain", "standin", "ratio", "paired",
           "WAL B/txn plain", "standin", "extra"), rows)
    out()
    out("CPU us/txn: CPU time of all the server's processes (user + system, from /proc) over the run,")
    out("divided by its transactions (pgbench's own CPU not included).")
    out()
    out("per round: tps plain/standin, CPU us/txn plain/standin (who went first)")
    for w in workloads:
        p, s = results[w]["plain"], results[w]["standin"]
        parts = [f"{x['tps']:.0f}/{y['tps']:.0f} {x['cpu_us']:.0f}/{y['cpu_us']:.0f} ({x['first']})"
                 for x, y in zip(p, s)]
        out(f"  {w:<9} " + "   ".join(parts))
    if checks:
        out()
        out("decoded check, one transaction of each DDL workload: standin.ddl messages (content bytes)")
        for w, c in checks.items():
            out(f"  {w:<9} plain {c['plain'][0]} ({c['plain'][1]} B)   "
                f"standin {c['standin'][0]} ({c['standin'][1]} B)")
    out()
    out("workloads:")
    for w in workloads:
        out(f"  {w:<9} {WORKLOADS[w][2]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--build", default=os.environ.get("STANDIN_BUILDDIR") or "/tmp/b",
                   help=f"standin build directory with {MODULE} (default $STANDIN_BUILDDIR or /tmp/b)")
    p.add_argument("--only", default=",".join(WORKLOADS),
                   help=f"workloads to run, comma-separated (default {','.join(WORKLOADS)})")
    p.add_argument("--ddl-txns", type=int, default=1500,
                   help="transactions of each DDL run, split over --clients (default 1500)")
    p.add_argument("--dml-txns", type=int, default=40000,
                   help="transactions of each select/insert run, split over --clients (default 40000)")
    p.add_argument("--clients", type=int, default=2, help="pgbench -c (default 2)")
    p.add_argument("--jobs", type=int, default=1, help="pgbench -j (default 1)")
    p.add_argument("--scale", type=int, default=1, help="pgbench -i -s for select (default 1)")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds per workload and side, the side going first alternating (default 5)")
    p.add_argument("--first", choices=SIDES, default="plain",
                   help="which side goes first in odd rounds (default plain)")
    p.add_argument("--fsync", action="store_true",
                   help="fsync, synchronous_commit and full_page_writes on (default off: CPU-bound)")
    p.add_argument("--keep", action="store_true", help="keep the servers' directories (STANDIN_KEEP_TMP=1)")
    args = p.parse_args()
    workloads = [x.strip() for x in args.only.split(",") if x.strip()]
    if not workloads or set(workloads) - set(WORKLOADS):
        p.error(f"--only takes a comma-separated subset of {','.join(WORKLOADS)}")
    if args.clients < 1 or args.rounds < 1:
        p.error("--clients and --rounds must be at least 1")
    if args.keep:
        os.environ["STANDIN_KEEP_TMP"] = "1"
    args.build = os.path.abspath(args.build)
    os.environ["STANDIN_BUILDDIR"] = args.build
    os.environ.pop("STANDIN_PG_MODULE", None)
    if not os.path.exists(os.path.join(args.build, MODULE)):
        sys.exit(f"ddl.py: no {MODULE} in {args.build}: make -C {args.build} {MODULE}")
    why = sh.missing_servers()
    if why:
        sys.exit(f"ddl.py: {why}")

    machine_info(args)
    h = sh.Harness("bench-pg-ddl")
    failed = False
    try:
        scripts = {}
        for w in workloads:
            if WORKLOADS[w][1] is not None:
                scripts[w] = os.path.join(h.base_dir, f"{w}.sql")
                with open(scripts[w], "w") as f:
                    f.write(WORKLOADS[w][1])
        sides = {name: Side(name, h, args) for name in SIDES}
        copy = os.path.join(sides["standin"].pg.dir, "lib", "standin_ddl.so")
        log(f"standin server's copy of the module: {copy}, sha256 {file_sha256(copy)[:16]}")
        for side in sides.values():
            side.prepare()
        checks = {}
        for w in workloads:
            if WORKLOADS[w][0] == "ddl":
                checks[w] = {name: side.decode_check(w) for name, side in sides.items()}
                if checks[w]["plain"][0] != 0 or checks[w]["standin"][0] < 1:
                    raise BenchError(f"{w}: decoded standin.ddl messages {checks[w]}: expected "
                                     f"none on plain and some on standin")
        # Warm-up (not counted): every workload once on each side, a tenth of a run.
        for w in workloads:
            for side in sides.values():
                n = args.ddl_txns if WORKLOADS[w][0] == "ddl" else args.dml_txns
                side.measure(w, scripts, txns=max(args.clients, n // 10))
        log("warm-up done")
        order = [args.first] + [s for s in SIDES if s != args.first]
        results = {w: {name: [] for name in SIDES} for w in workloads}
        for rnd in range(args.rounds):
            o = order if rnd % 2 == 0 else order[::-1]
            for w in workloads:
                for name in o:
                    r = sides[name].measure(w, scripts)
                    r["first"] = o[0]
                    results[w][name].append(r)
                    log(f"round {rnd + 1} {w:<9} {name:<8} {r['tps']:9.0f} tps  "
                        f"{r['cpu_us']:7.0f} CPU us/txn  {r['wal_per_txn']:7.0f} WAL B/txn  ({r['txns']} txns)")
        out()
        summary(results, checks, workloads, args)
        out()
        out(f"loadavg at the end: {open('/proc/loadavg').read().strip()}")
    except BaseException:
        failed = True
        raise
    finally:
        try:
            h.close(failed=failed)
        except Exception as e:  # noqa: BLE001
            print(f"ddl.py: closing: {e}", file=sys.stderr)
        log("all servers stopped" + (" (directories kept: see above)" if failed else ""))


if __name__ == "__main__":
    main()
