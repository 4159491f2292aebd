#!/usr/bin/python3
"""standin-pgrepl against PostgreSQL's native logical replication, side by side.

Two server pairs (master a -> standby b), each started with the test harness
(tests/lib/standin_harness.py, fsync on): pair "native" replicates with
CREATE PUBLICATION ... FOR ALL TABLES / CREATE SUBSCRIPTION, pair "standin"
with standin-pgrepl from --build.  Only the pair being measured runs: the
other one is stopped (pg_ctl stop -m fast, replication stopped first) and
started again for its own turn; the side going first alternates by round.

  (a) initial sync of pgbench -i -s SCALE (plus an empty heartbeat table),
      on fresh pairs each round
  (b) backlog: replication stopped, TXNS pgbench transactions on the master,
      replication started again: time until the standby has applied them all
  (c) lag under pgbench -c 8 -T 30: a heartbeat row inserted on the master
      every 20 ms (--heartbeat-ms), the standby polled every 10-30 ms
  (d) one large transaction (--big-rows rows into pgbench_history and a
      heartbeat row, in one transaction), both sides streaming it while it
      is in progress (protocol 2): time from its COMMIT on the master until
      the standby has it (only with --only d)

See README.md next to this file for the exact criteria.
"""

import argparse
import datetime
import math
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True   # no __pycache__ in tests/ (other people's directories)
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import standin_harness as sh  # noqa: E402
import standin_bin as sb  # noqa: E402

PGBIN = sh.PG_BINDIR
PGBENCH = os.path.join(PGBIN, "pgbench")
DB = "groupware"
PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
HEARTBEAT = "bench_heartbeat"
ALL_TABLES = PGBENCH_TABLES + (HEARTBEAT,)
SIDES = ("native", "standin")
RESTART_SETTLE = 6.0             # (b): replication restarts no sooner after the servers' start
POLL = 0.02                      # seconds between checks in the timed waits
HEARTBEAT_MS = 20                # (c): one heartbeat insert on the master every 20 ms
SAMPLE_MIN, SAMPLE_MAX = 0.010, 0.030   # (c): standby polled every 10-30 ms (uniformly random,
                                        # so the polls are not phase-locked to the heartbeats)

T_START = time.monotonic()
STANDIN_ERRORS = []              # (phase, last_error) of every error standin-pgrepl reported


def log(msg):
    print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", flush=True)


def out(msg=""):
    print(msg, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------
# A persistent psql session (no psycopg2 on the machine): one process, queries
# through its stdin, results read up to an \echo marker.  Cheap enough to poll
# every 25 ms.


class Psql:
    MARK = "__bench_end__"
    # psql's own messages (stderr, merged): "psql:<stdin>:3: ERROR:  ...", "NOTICE:  ...",
    # and the DETAIL/HINT/CONTEXT/LINE lines that follow them.
    DIAG = re.compile(r"^(?:psql:[^:]*:\d+: )?(ERROR|FATAL|PANIC|WARNING|NOTICE|INFO|DETAIL|HINT|"
                      r"CONTEXT|LINE \d+|error|could not|server closed|connection to)\b")

    def __init__(self, server, db=DB):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PG") and k not in ("LANGUAGE", "LC_ALL")}
        env["LC_ALL"] = "C.UTF-8"
        self.server = server
        self.proc = subprocess.Popen(
            [server.bin("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=0",
             "-h", server.socket_dir, "-p", str(server.port), "-U", "postgres", "-d", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, env=env, start_new_session=True)

    def rows(self, sql):
        """Rows of the last result as lists of strings; raises BenchError on an
        SQL error."""
        if self.proc.poll() is not None:
            raise BenchError(f"psql session to {self.server.name} exited")
        self.proc.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo " + self.MARK + "\n")
        self.proc.stdin.flush()
        lines, errors = [], []
        while True:
            line = self.proc.stdout.readline()
            if line == "":
                raise BenchError(f"psql session to {self.server.name} ended: {' '.join(errors)}")
            line = line.rstrip("\n")
            if line == self.MARK:
                break
            m = self.DIAG.match(line)
            if m and m.group(1) in ("ERROR", "FATAL", "PANIC"):
                errors.append(line)
            elif m is None and line:
                lines.append(line)
        if errors:
            raise BenchError(f"{self.server.name}: {' '.join(errors)} (SQL: {sql.strip()[:200]})")
        return [l.split("|") for l in lines]

    def value(self, sql):
        r = self.rows(sql)
        return r[0][0] if r else None

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def percentile(values, p):
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


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


COUNT_SQL = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in ALL_TABLES)
DIGEST_SQL = " UNION ALL ".join(
    f"SELECT '{t}', count(*), coalesce(sum(hashtext(x::text)::bigint), 0) FROM {t} x"
    for t in ALL_TABLES)


# ---------------------------------------------------------------------------
# One side: a master/standby pair and how it replicates


class Side:
    name = "?"

    def __init__(self, args):
        self.args = args
        self.h = sh.Harness(f"bench-pg-{self.name}")
        password = "pw-" + os.urandom(8).hex()
        self.a = self.h.start_pg("a", password=password)
        self.b = self.h.start_pg("b", password=password)
        for s in (self.a, self.b):
            s.create_database(DB)
        self.sa = self.sb = None          # Psql sessions while running
        self.running = True

    # -- servers ----------------------------------------------------------------

    def open_sessions(self):
        self.sa, self.sb = Psql(self.a), Psql(self.b)

    def close_sessions(self):
        for s in (self.sa, self.sb):
            if s is not None:
                s.close()
        self.sa = self.sb = None

    def suspend(self):
        """Stop replication and both servers (the other side gets the machine)."""
        self.close_sessions()
        self.stop_replication(wait=False)
        self.b.stop()
        self.a.stop()
        self.running = False

    def resume(self, replicate):
        self.resumed_at = time.monotonic()
        self.a.start()
        self.b.start()
        self.open_sessions()
        self.running = True
        if replicate:
            self.start_replication()
            self.wait_streaming()

    def checkpoint(self):
        self.sa.rows("CHECKPOINT")
        self.sb.rows("CHECKPOINT")

    def prepare_data(self):
        """pgbench -i on the master and the heartbeat table."""
        t = time.monotonic()
        pgbench(self.a, "-i", "-s", str(self.args.scale), "-q")
        self.a.psql(f"CREATE TABLE {HEARTBEAT} (id bigserial PRIMARY KEY, "
                    f"ts timestamptz NOT NULL)", db=DB)
        log(f"{self.name}: pgbench -i -s {self.args.scale} on the master took "
            f"{time.monotonic() - t:.1f}s")

    def counts(self, session):
        return {r[0]: int(r[1]) for r in session.rows(COUNT_SQL)}

    def digests(self, session):
        return {r[0]: (int(r[1]), r[2]) for r in session.rows(DIGEST_SQL)}

    def verify(self, what):
        """The standby equals the master on every table (count and row hash sum)."""
        da, db = self.digests(self.sa), self.digests(self.sb)
        if da != db:
            diff = {t: (da.get(t), db.get(t)) for t in ALL_TABLES if da.get(t) != db.get(t)}
            raise BenchError(f"{self.name} {what}: standby differs from master: {diff}")
        return da

    def slot_active(self):
        r = self.sa.rows("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots")
        return r[0][0] == "t"

    def wait(self, predicate, timeout, what):
        def check():
            self.check_errors()
            return predicate()
        try:
            return sh.wait_until(check, timeout, f"{self.name}: {what}", interval=POLL)
        except sh.HarnessError:
            self.h.mark_failed()
            self.dump_logs()
            raise

    def insert_marker(self):
        """A heartbeat row inserted on the master as its own transaction; returns its id.
        Both appliers commit source transactions in commit order, so once the standby
        has this row it has every transaction committed before it."""
        return int(self.sa.value(f"INSERT INTO {HEARTBEAT} (ts) VALUES (clock_timestamp()) "
                                 f"RETURNING id"))

    def has_marker(self, marker):
        return self.sb.value(f"SELECT count(*) FROM {HEARTBEAT} WHERE id = {marker}") == "1"

    def origin_lsn(self):
        """The standby's replication origin progress (the source commit LSN applied last)."""
        return self.sb.value("SELECT coalesce(max(remote_lsn), '0/0')::text "
                             "FROM pg_replication_origin_status")

    def dump_logs(self):
        for s in (self.a, self.b):
            out(f"--- {self.name} {s.name} log ({s.logfile}), last lines:")
            out(sh._tail(s.logfile, 40))

    def close(self):
        self.close_sessions()
        self.h.close()

    # -- replication (subclasses) ------------------------------------------------

    def initial_sync(self):
        raise NotImplementedError

    def start_replication(self):
        raise NotImplementedError

    def stop_replication(self, wait=True):
        raise NotImplementedError

    def wait_streaming(self):
        raise NotImplementedError

    def check_errors(self):
        pass

    def describe(self):
        return ""


class Native(Side):
    name = "native"
    SUB = "bench_sub"
    PUB = "bench_pub"

    def prepare(self):
        self.prepare_data()
        self.a.psql(f"CREATE PUBLICATION {self.PUB} FOR ALL TABLES", db=DB)
        self.error_base = None

    def conninfo(self):
        a = self.a
        items = dict(host=a.host, port=a.port, user=a.user, dbname=DB, password=a.password)
        return " ".join(f"{k}={a._conn_quote(v)}" for k, v in items.items())

    def error_counts(self):
        r = self.sb.rows("SELECT coalesce(sum(apply_error_count), 0) + "
                         "coalesce(sum(sync_error_count), 0) FROM pg_stat_subscription_stats")
        return int(r[0][0])

    def check_errors(self):
        if self.error_base is None or self.sb is None:
            return
        n = self.error_counts()
        if n > self.error_base:
            raise sh.StopWaiting(f"native subscription reported {n - self.error_base} errors "
                                 f"(pg_stat_subscription_stats); standby log:\n"
                                 f"{sh._tail(self.b.logfile, 30)}")

    def initial_sync(self, expected):
        t0 = time.monotonic()
        dump = sh.run([os.path.join(PGBIN, "pg_dump"), "-h", self.a.socket_dir, "-p", self.a.port,
                       "-U", "postgres", "--schema-only", "--no-publications",
                       "--no-subscriptions", DB], timeout=120).stdout
        self.b.psql(dump, db=DB)
        t1 = time.monotonic()
        self.sb.rows(f"CREATE SUBSCRIPTION {self.SUB} CONNECTION {sh.quote_literal(self.conninfo())} "
                     f"PUBLICATION {self.PUB} WITH (streaming = on)")
        self.error_base = self.error_counts()
        ntables = len(ALL_TABLES)
        timeline, last = [], [None]

        def ready():
            r = self.sb.rows("SELECT srsubstate, count(*) FROM pg_subscription_rel GROUP BY 1 ORDER BY 1")
            states = " ".join(f"{x[1]}{x[0]}" for x in r)
            if states != last[0]:
                timeline.append(f"{time.monotonic() - t0:.2f}s {states}")
                last[0] = states
            return sum(int(x[1]) for x in r if x[0] == "r") == ntables
        self.wait(ready, 900, "every table of pg_subscription_rel in state r (ready)")
        self.wait(lambda: self.counts(self.sb) == expected, 300, "standby row counts to match")
        t2 = time.monotonic()
        return dict(total=t2 - t0, schema=t1 - t0, copy=t2 - t1,
                    timeline="pg_subscription_rel states (i init, d copying, f copied, "
                             "s synchronized, r ready): " + ", ".join(timeline))

    def start_replication(self):
        self.sb.rows(f"ALTER SUBSCRIPTION {self.SUB} ENABLE")

    def stop_replication(self, wait=True):
        if not wait:
            return                      # suspend: the servers stop; the subscription stays enabled
        self.sb.rows(f"ALTER SUBSCRIPTION {self.SUB} DISABLE")
        self.wait(lambda: not self.slot_active(), 60, "the master's slot to become inactive")

    def wait_streaming(self):
        self.error_base = self.error_counts()

        def up():
            r = self.sb.rows(f"SELECT count(*) FROM pg_stat_subscription WHERE subname = '{self.SUB}' "
                             f"AND relid IS NULL AND pid IS NOT NULL")
            return int(r[0][0]) == 1 and self.slot_active()
        self.wait(up, 120, "the apply worker to run and the slot to be active")

    def describe(self):
        r = self.sb.rows("SELECT subname, subenabled, substream, subbinary FROM pg_subscription")
        return f"subscription {r}"


class Standin(Side):
    name = "standin"
    ERROR_GIVE_UP = 120

    def prepare(self):
        self.prepare_data()
        self.base = self.h.mkdir("standin")
        self.conf = sb.write_pg_conf(self.base, sh.Pair(self.a, self.b), name="bench")
        for node in ("a", "b"):
            r = sb.run(sb.STANDINCTL, "-c", self.conf, "-n", node, "state", "init", "--master", "a")
            if r.returncode != 0:
                raise BenchError(f"standinctl state init failed: {r.stderr}")
        self.daemon = None
        self.expect_running = False
        self.error_since = None
        self.phase = "setup"
        self.logfile = os.path.join(self.base, "pgrepl-b.log")

    def status(self):
        return self.daemon.status()

    def check_errors(self):
        if self.daemon is None or not self.expect_running:
            return
        if not self.daemon.running():
            if self.daemon.proc is not None:
                raise sh.StopWaiting(f"standin-pgrepl exited {self.daemon.proc.returncode}:\n"
                                     f"{self.daemon.output()[-3000:]}")
            return
        try:
            st = self.status()
        except OSError:
            return                      # socket not there yet
        # The daemon retries by itself after an error (backoff 1 s doubling to 30 s): an
        # error is recorded and reported, and only one that lasts ERROR_GIVE_UP s ends the run.
        now = time.monotonic()
        if st.get("state") != "error":
            self.error_since = None
            return
        err = st.get("last_error")
        if self.error_since is None:
            self.error_since = now
            STANDIN_ERRORS.append((self.phase, err))
            log(f"standin: standin-pgrepl reports state error (it retries by itself): {err}")
        elif now - self.error_since > self.ERROR_GIVE_UP:
            raise sh.StopWaiting(f"standin-pgrepl in state error for {now - self.error_since:.0f}s: "
                                 f"{err}\ndaemon log ({self.logfile}):\n{self.daemon.output()[-3000:]}")

    def state(self):
        try:
            return self.status().get("state")
        except (OSError, ValueError):
            return None

    def start_replication(self):
        self.expect_running = True
        if self.daemon is None:
            self.daemon = sb.StandinDaemon(sb.PGREPL, self.conf, "b",
                                           os.path.join(self.base, "b", "run"), self.logfile)
            self.h.add_cleanup(self.daemon.stop)
        else:
            self.daemon.start()

    def stop_replication(self, wait=True):
        self.expect_running = False
        if self.daemon is not None and self.daemon.running():
            rc = self.daemon.stop()
            if rc not in (0, None):
                log(f"standin: standin-pgrepl exited {rc} on SIGTERM")
        if wait:
            self.wait(lambda: not self.slot_active(), 60, "the master's slot to become inactive")

    def wait_streaming(self):
        self.wait(lambda: self.state() == "streaming", 120, "standin-pgrepl state streaming")
        self.wait(self.slot_active, 60, "the master's slot to be active")

    def initial_sync(self, expected):
        t0 = time.monotonic()
        self.start_replication()
        self.wait(lambda: self.state() == "streaming", 900, "standin-pgrepl state streaming")
        self.wait(lambda: self.counts(self.sb) == expected, 300, "standby row counts to match")
        t1 = time.monotonic()
        r = dict(total=t1 - t0)
        # From the daemon's log: how many attempts, and how long the last one took.
        stamps = []
        for line in self.daemon.output().splitlines():
            m = re.match(r"(\S+Z) \S+ notice: initial sync (done )?source=", line)
            if m:
                ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
                stamps.append((bool(m.group(2)), ts))
        starts = [t for done, t in stamps if not done]
        dones = [t for done, t in stamps if done]
        if starts and dones:
            r["attempts"] = len(starts)
            r["last_attempt"] = (dones[-1] - starts[-1]).total_seconds()
        # The daemon's log lines of this start, as seconds after its first one.
        lines = self.daemon.output().splitlines()
        begin = max((i for i, l in enumerate(lines) if " info: started " in l), default=0)
        events, first = [], None
        for line in lines[begin:]:
            m = re.match(r"(\S+Z) \S+ (\w+): (.*)", line)
            if not m:
                continue
            ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
            first = first or ts
            msg = re.sub(r" (source|target|slot|start|version|node|config|socket|snapshot|"
                         r"consistent_point|publication)=\S+", "", m.group(3))
            events.append(f"{(ts - first).total_seconds():.2f}s {msg}")
        r["timeline"] = "daemon log: " + ", ".join(events)
        return r

    def describe(self):
        st = self.status()
        return (f"status: state={st.get('state')} transactions={st.get('transactions')} "
                f"groups={st.get('groups')} rows={st.get('rows')} applied_lsn={st.get('applied_lsn')}")


# ---------------------------------------------------------------------------
# CPU accounting: where the CPU time of a window went (from /proc), per role.

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _role(server_role, cmdline):
    c = cmdline
    if not c:
        return "exiting"                         # e.g. pgbench's backends at the load's end
    if server_role == "daemon":
        return "standin-pgrepl"
    if "walsender" in c:
        return f"{server_role} walsender"
    if "logical replication worker" in c or "logical replication apply worker" in c \
            or "logical replication tablesync" in c:
        return f"{server_role} apply worker"
    if "[local]" in c and " postgres " in c:
        return "bench psql"                      # this script's polling sessions
    if re.search(r"postgres: \S+ \S+ (127\.|\[local\])", c):
        return f"{server_role} backends"         # clients: pgbench, standin's apply connection
    return f"{server_role} other"                # checkpointer, walwriter, autovacuum, ...


def cpu_snapshot(side):
    """{pid: (role, cpu ticks)} of both servers' processes and the daemon."""
    groups = [("master", side.a.pids()), ("standby", side.b.pids())]
    d = getattr(side, "daemon", None)
    if d is not None and d.running():
        groups.append(("daemon", [d.proc.pid]))
    snap = {}
    for server_role, pids in groups:
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            snap[pid] = (_role(server_role, cmd), int(fields[11]) + int(fields[12]))
    return snap


def cpu_delta(before, after):
    """CPU seconds per role between two snapshots (new processes count from 0)."""
    roles = {}
    for pid, (role, ticks) in after.items():
        prev = before.get(pid)
        used = ticks - (prev[1] if prev and prev[0] == role else 0)
        roles[role] = roles.get(role, 0.0) + used / CLK_TCK
    return roles


def repl_cpu(roles):
    """CPU seconds of replication: the master's walsenders, every standby
    process but this script's psql sessions, and standin-pgrepl."""
    return sum(v for r, v in roles.items()
               if r in ("master walsender", "standin-pgrepl") or r.startswith("standby "))


def cpu_text(roles, seconds):
    parts = [f"{r} {v:.2f}" for r, v in sorted(roles.items(), key=lambda x: -x[1])
             if v >= 0.005 and r not in ("exiting", "master backends")]
    return (f"CPU s in {seconds:.2f}s: " + ", ".join(parts) +
            f"; replication (master walsender + standby + standin-pgrepl) {repl_cpu(roles):.2f}")


# ---------------------------------------------------------------------------
# The measurements


def phase_a(side, args):
    report = "a" in args.only
    expected = side.counts(side.sa)
    log(f"{side.name}: (a) initial sync of {sum(expected.values())} rows {expected}")
    r = side.initial_sync(expected)
    side.verify("after the initial sync")
    if report:
        extra = (f" (schema pg_dump|psql {r['schema']:.2f}s + subscription copy {r['copy']:.2f}s)"
                 if "copy" in r else "")
        if "attempts" in r:
            extra = (f" ({r['attempts']} attempt(s) in the daemon log; the last one, from its "
                     f"'initial sync' notice to 'initial sync done', took {r['last_attempt']:.2f}s)")
        log(f"{side.name}: (a) initial sync {r['total']:.2f}s{extra}; standby verified equal")
        if r.get("timeline"):
            log(f"{side.name}: (a) {r['timeline']}")
    return r


def phase_b(side, args):
    side.wait_streaming()
    base = int(side.sa.value("SELECT count(*) FROM pgbench_history"))
    side.stop_replication()
    log(f"{side.name}: (b) replication stopped; pgbench -n -c {args.clients} -j {args.jobs} "
        f"-t {args.txns // args.clients} on the master")
    t = time.monotonic()
    output = pgbench(side.a, "-n", "-c", str(args.clients), "-j", str(args.jobs),
                     "-t", str(args.txns // args.clients))
    load_s = time.monotonic() - t
    target = int(side.sa.value("SELECT count(*) FROM pgbench_history"))
    ntx = target - base
    marker = side.insert_marker()
    end_lsn = side.sa.value("SELECT pg_current_wal_lsn()")
    backlog = side.sa.value("SELECT pg_size_pretty(max(pg_wal_lsn_diff(pg_current_wal_lsn(), "
                            "restart_lsn))) FROM pg_replication_slots")
    log(f"{side.name}: (b) load done: {ntx} transactions in {load_s:.1f}s "
        f"(master {pgbench_tps(output):.0f} tps), WAL retained by the slot {backlog}; "
        f"master at {end_lsn}; CHECKPOINT on both")
    side.checkpoint()
    # PostgreSQL's launcher starts apply workers at most once per wal_retrieve_retry_interval
    # (5 s): with a short load, ENABLE would wait for that throttle.  Both sides wait alike.
    settle = RESTART_SETTLE - (time.monotonic() - side.resumed_at)
    if settle > 0:
        log(f"{side.name}: (b) waiting {settle:.1f}s (at least {RESTART_SETTLE:.0f}s after the start "
            f"of the servers before replication starts again)")
        time.sleep(settle)
    origin0 = side.origin_lsn()
    cpu0 = cpu_snapshot(side)
    t0 = time.monotonic()
    side.start_replication()
    first = []

    def done():
        if not first and side.origin_lsn() != origin0:
            first.append(time.monotonic() - t0)
        return side.has_marker(marker)
    side.wait(done, 900, f"the standby to have the marker row {marker} (after the load)")
    elapsed = time.monotonic() - t0
    cpu = cpu_delta(cpu0, cpu_snapshot(side))
    if not first:
        first.append(elapsed)
    got = int(side.sb.value("SELECT count(*) FROM pgbench_history"))
    if got != target:
        raise BenchError(f"{side.name}: the standby has the marker but {got} history rows, "
                         f"the master {target}")
    side.verify("after the backlog")
    # Informational: the slot's confirmed position (feedback) reaching the master's end.
    side.wait(lambda: side.sa.value(f"SELECT bool_and(confirmed_flush_lsn >= '{end_lsn}') "
                                    "FROM pg_replication_slots") == "t",
              120, "the slot's confirmed_flush_lsn to pass the end of the load")
    confirm_s = time.monotonic() - t0
    tps = ntx / elapsed
    log(f"{side.name}: (b) backlog of {ntx} transactions applied in {elapsed:.2f}s = {tps:.0f} "
        f"txn/s (replication origin first advanced after {first[0]:.2f}s; slot "
        f"confirmed_flush_lsn passed {end_lsn} after {confirm_s:.2f}s); "
        f"verified equal. {side.describe()}")
    log(f"{side.name}: (b) {cpu_text(cpu, elapsed)}")
    return dict(txns=ntx, seconds=elapsed, tps=tps, master_tps=pgbench_tps(output),
                confirm_s=confirm_s, first_s=first[0], cpu=cpu)


def phase_c(side, args):
    side.wait_streaming()
    side.checkpoint()
    writer_s, sampler_s = Psql(side.a), Psql(side.b)
    stop_writer, stop_sampler = threading.Event(), threading.Event()
    polls = []                       # (standby clock, [(id, ts), ...])
    errors = []

    def writer():
        try:
            nxt = time.monotonic()
            while not stop_writer.is_set():
                writer_s.rows(f"INSERT INTO {HEARTBEAT} (ts) VALUES (clock_timestamp())")
                nxt += args.heartbeat_ms / 1000
                delay = nxt - time.monotonic()
                if delay > 0:
                    stop_writer.wait(delay)
                else:
                    nxt = time.monotonic()
        except Exception as e:  # noqa: BLE001
            errors.append(f"heartbeat writer: {e}")

    last = [int(sampler_s.value(f"SELECT coalesce(max(id), 0) FROM {HEARTBEAT}"))]

    rnd = random.Random(4533)

    def sampler():
        try:
            while not stop_sampler.is_set():
                r = sampler_s.rows(
                    f"SELECT extract(epoch FROM clock_timestamp()), coalesce(string_agg("
                    f"id || ':' || extract(epoch FROM ts), ',' ORDER BY id), '') "
                    f"FROM {HEARTBEAT} WHERE id > {last[0]}")
                now = float(r[0][0])
                seen = [(int(i), float(t)) for i, t in
                        (x.split(":") for x in r[0][1].split(",") if x)] if len(r[0]) > 1 else []
                if seen:
                    last[0] = seen[-1][0]
                polls.append((now, seen))
                stop_sampler.wait(rnd.uniform(*args.sample))
        except Exception as e:  # noqa: BLE001
            errors.append(f"sampler: {e}")

    threads = [threading.Thread(target=writer, daemon=True), threading.Thread(target=sampler, daemon=True)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)                  # a second of idle heartbeats first
        rate = ["-R", str(args.lag_rate)] if args.lag_rate > 0 else []
        log(f"{side.name}: (c) pgbench -n -c {args.clients} -j {args.jobs} -T {args.lag_seconds}"
            f"{''.join(' ' + a for a in rate)} on the master, heartbeat every "
            f"{args.heartbeat_ms:g} ms, standby polled every "
            f"{args.sample[0] * 1000:g}-{args.sample[1] * 1000:g} ms")
        cpu0 = cpu_snapshot(side)
        load_start = time.time()
        output = pgbench(side.a, "-n", "-c", str(args.clients), "-j", str(args.jobs),
                         "-T", str(args.lag_seconds), *rate)
        load_end = time.time()
        cpu = cpu_delta(cpu0, cpu_snapshot(side))
        t0 = time.monotonic()
        marker = side.insert_marker()
        side.wait(lambda: side.has_marker(marker), 900, f"the standby to have the marker row {marker}")
        drain = time.monotonic() - t0
        stop_writer.set()
        threads[0].join(30)
        last_hb = int(side.sa.value(f"SELECT max(id) FROM {HEARTBEAT}"))
        side.wait(lambda: last[0] >= last_hb or errors, 120, "the sampler to see the last heartbeat")
    finally:
        stop_writer.set()
        stop_sampler.set()
        for t in threads:
            t.join(30)
        writer_s.close()
        sampler_s.close()
    if errors:
        raise BenchError("; ".join(errors))
    side.verify("after the lag run")

    # Delay: per heartbeat inserted during the load, first poll that saw it minus its ts.
    delays, age, maxts, timed = [], [], None, []
    for now, seen in polls:
        for _i, ts in seen:
            if load_start <= ts <= load_end:
                delays.append((now - ts) * 1000)
                timed.append((ts - load_start, (now - ts) * 1000))
            maxts = ts if maxts is None else max(maxts, ts)
        # Age: at each poll during the load, standby clock minus the newest heartbeat it has.
        if maxts is not None and load_start <= now <= load_end:
            age.append((now - maxts) * 1000)
    res = dict(master_tps=pgbench_tps(output), drain=drain, n_delay=len(delays), n_age=len(age),
               delay_p50=percentile(delays, 50), delay_p99=percentile(delays, 99),
               delay_max=max(delays) if delays else float("nan"),
               age_p50=percentile(age, 50), age_p99=percentile(age, 99),
               age_max=max(age) if age else float("nan"), delays=delays, ages=age, cpu=cpu)
    log(f"{side.name}: (c) master {res['master_tps']:.0f} tps; heartbeat delay ms p50 "
        f"{res['delay_p50']:.1f} p99 {res['delay_p99']:.1f} max {res['delay_max']:.1f} "
        f"({res['n_delay']} heartbeats); heartbeat age ms p50 {res['age_p50']:.1f} p99 "
        f"{res['age_p99']:.1f} max {res['age_max']:.1f} ({res['n_age']} samples); standby caught "
        f"up {drain:.2f}s after the load ended; verified equal. {side.describe()}")
    log(f"{side.name}: (c) {cpu_text(cpu, load_end - load_start)}")
    if args.delays_dir:
        path = os.path.join(args.delays_dir, f"c-{side.name}-{int(load_start)}.tsv")
        with open(path, "w") as f:
            f.write("# seconds after the load started\theartbeat delay ms\n")
            for t, d in timed:
                f.write(f"{t:.3f}\t{d:.2f}\n")
        log(f"{side.name}: (c) each heartbeat's delay written to {path}")
    return res


def phase_d(side, args):
    side.wait_streaming()
    side.checkpoint()
    n = args.big_rows
    streamed0 = int(side.sa.value("SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots"))
    log(f"{side.name}: (d) one transaction of {n} rows into pgbench_history and a heartbeat row")
    cpu0 = cpu_snapshot(side)
    t0 = time.monotonic()
    marker = int(side.sa.value(
        f"BEGIN; INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) "
        f"SELECT g % 100 + 1, g % 10 + 1, g, g % 1000, now(), left(md5(g::text), 22) "
        f"FROM generate_series(1, {n}) g; "
        f"INSERT INTO {HEARTBEAT} (ts) VALUES (clock_timestamp()) RETURNING id; COMMIT"))
    t1 = time.monotonic()
    side.wait(lambda: side.has_marker(marker), 900, f"the standby to have the marker row {marker}")
    t2 = time.monotonic()
    cpu = cpu_delta(cpu0, cpu_snapshot(side))
    streamed = int(side.sa.value("SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots"))
    side.verify("after the large transaction")
    res = dict(rows=n, master_s=t1 - t0, after_commit=t2 - t1, total=t2 - t0, cpu=cpu,
               streamed=streamed - streamed0)
    log(f"{side.name}: (d) the master ran it in {res['master_s']:.2f}s; the standby had it "
        f"{res['after_commit']:.2f}s after its COMMIT returned ({res['total']:.2f}s from its "
        f"start); transactions streamed by the master: {res['streamed']}; verified equal. "
        f"{side.describe()}")
    log(f"{side.name}: (d) {cpu_text(cpu, res['total'])}")
    return res


# ---------------------------------------------------------------------------


def machine_info(args):
    def sh_out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.rstrip()
        except OSError as e:
            return f"({e})"
    git = sh_out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = sh_out(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
    out(f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    out(f"host:    {platform.node()} {platform.platform()}")
    out(f"nproc:   {sh_out(['nproc'])}")
    out("free -g:\n" + sh_out(["free", "-g"]))
    out(f"postgres: {sh_out([os.path.join(PGBIN, 'postgres'), '--version'])}")
    out(f"tree:    {ROOT} at {git}{' (with uncommitted changes)' if dirty else ''}")
    out(f"build:   {os.path.abspath(args.build)}: "
        + sh_out(["grep", "-m1", "^CFLAGS =", os.path.join(args.build, "Makefile")]))
    binary = sb.program(sb.PGREPL)
    built = os.stat(binary).st_mtime
    newer = [os.path.relpath(os.path.join(d, f), ROOT)
             for top in ("replicators", "lib") for d, _, files in os.walk(os.path.join(ROOT, top))
             for f in files if f.endswith((".c", ".h")) and os.stat(os.path.join(d, f)).st_mtime > built]
    out(f"binary:  {binary} built {datetime.datetime.fromtimestamp(built).astimezone().isoformat(timespec='seconds')}"
        + (f"; NEWER SOURCES in the tree: {' '.join(newer)}" if newer else "; no newer source in the tree"))
    out(f"command: {shlex.join([sys.executable] + sys.argv)}")
    out()


def fmt(v, unit="", prec=2):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{prec}f}{unit}"


def ratio(s, n):
    if s is None or n is None or not n or math.isnan(s) or math.isnan(n):
        return None
    return s / n


def median(values):
    return statistics.median(values) if values else float("nan")


def summary(results, args):
    rows = []
    a, b, c, d = results.get("a"), results.get("b"), results.get("c"), results.get("d")
    if a:
        na, sa = a["native"], a["standin"]
        n, s = median([x["total"] for x in na]), median([x["total"] for x in sa])
        r = ratio(s, n)
        rows.append((f"(a) initial sync s, scale {args.scale} (median of {len(na)})", fmt(n), fmt(s),
                     fmt(r, "x"), "<= 1.0", "met" if r is not None and r <= 1.0 else "NOT met"))
        for i, (x, y) in enumerate(zip(na, sa)):
            rows.append((f"    round {i + 1}: s", fmt(x["total"]), fmt(y["total"]),
                         fmt(ratio(y["total"], x["total"]), "x"), "", ""))
        n = median([x["copy"] for x in na])
        rows.append(("    native without its schema copy (median)", fmt(n), fmt(s),
                     fmt(ratio(s, n), "x"), "(info)", ""))
    if b:
        nb, sb_ = b["native"], b["standin"]
        n, s = median([x["tps"] for x in nb]), median([x["tps"] for x in sb_])
        r = ratio(s, n)
        rows.append((f"(b) backlog apply txn/s (median of {len(nb)})", fmt(n, prec=0), fmt(s, prec=0),
                     fmt(r, "x"), ">= 1.0 (aim 1.5)", "met" if r is not None and r >= 1.0 else "NOT met"))
        for i, (x, y) in enumerate(zip(nb, sb_)):
            rows.append((f"    round {i + 1}: txn/s ({x['txns']}/{y['txns']} txns)", fmt(x["tps"], prec=0),
                         fmt(y["tps"], prec=0), fmt(ratio(y["tps"], x["tps"]), "x"), "", ""))
        n, s = median([x["seconds"] for x in nb]), median([x["seconds"] for x in sb_])
        rows.append(("    apply time s (median)", fmt(n), fmt(s), fmt(ratio(s, n), "x"), "", ""))
        n, s = median([x["first_s"] for x in nb]), median([x["first_s"] for x in sb_])
        rows.append(("    until the standby's origin first advances s", fmt(n), fmt(s), "", "", ""))
        n = median([x["txns"] / (x["seconds"] - x["first_s"]) for x in nb if x["seconds"] > x["first_s"]])
        s = median([x["txns"] / (x["seconds"] - x["first_s"]) for x in sb_ if x["seconds"] > x["first_s"]])
        rows.append(("    txn/s counted from that first advance", fmt(n, prec=0), fmt(s, prec=0),
                     fmt(ratio(s, n), "x"), "(info)", ""))
        n, s = median([repl_cpu(x["cpu"]) for x in nb]), median([repl_cpu(x["cpu"]) for x in sb_])
        rows.append(("    CPU s of replication (median)", fmt(n), fmt(s), fmt(ratio(s, n), "x"), "", ""))
    if c:
        nc, sc = c["native"], c["standin"]
        pooled = {side: {k: [v for x in runs for v in x[k]] for k in ("delays", "ages")}
                  for side, runs in (("native", nc), ("standin", sc))}
        for key, p_, label in (("delays", 50, "lag p50"), ("delays", 99, "lag p99"),
                               ("ages", 50, "heartbeat age p50"), ("ages", 99, "heartbeat age p99")):
            n = percentile(pooled["native"][key], p_)
            s = percentile(pooled["standin"][key], p_)
            r = ratio(s, n)
            rows.append((f"(c) {label} ms ({len(pooled['native'][key])}/{len(pooled['standin'][key])})",
                         fmt(n, prec=1), fmt(s, prec=1), fmt(r, "x"), "<= 1.0 (lower is better)",
                         "met" if r is not None and r <= 1.0 else "NOT met"))
        for i, (x, y) in enumerate(zip(nc, sc)):
            rows.append((f"    round {i + 1}: lag p50 / p99 ms",
                         f"{fmt(x['delay_p50'], prec=1)} / {fmt(x['delay_p99'], prec=1)}",
                         f"{fmt(y['delay_p50'], prec=1)} / {fmt(y['delay_p99'], prec=1)}", "", "", ""))
        n, s = median([x["master_tps"] for x in nc]), median([x["master_tps"] for x in sc])
        rows.append(("    master pgbench tps during (c) (median)", fmt(n, prec=0), fmt(s, prec=0),
                     fmt(ratio(s, n), "x"), "", ""))
        n, s = median([repl_cpu(x["cpu"]) for x in nc]), median([repl_cpu(x["cpu"]) for x in sc])
        rows.append(("    CPU s of replication (median)", fmt(n), fmt(s), fmt(ratio(s, n), "x"), "", ""))
    if d:
        nd, sd = d["native"], d["standin"]
        n, s = median([x["after_commit"] for x in nd]), median([x["after_commit"] for x in sd])
        rows.append((f"(d) {args.big_rows}-row transaction: COMMIT to standby s (median of {len(nd)})",
                     fmt(n), fmt(s), fmt(ratio(s, n), "x"), "(info)", ""))
        for i, (x, y) in enumerate(zip(nd, sd)):
            rows.append((f"    round {i + 1}: s (streamed {x['streamed']}/{y['streamed']})",
                         fmt(x["after_commit"]), fmt(y["after_commit"]),
                         fmt(ratio(y["after_commit"], x["after_commit"]), "x"), "", ""))
        n, s = median([x["total"] for x in nd]), median([x["total"] for x in sd])
        rows.append(("    from its start s (median)", fmt(n), fmt(s), fmt(ratio(s, n), "x"), "", ""))
        n, s = median([repl_cpu(x["cpu"]) for x in nd]), median([repl_cpu(x["cpu"]) for x in sd])
        rows.append(("    CPU s of replication (median)", fmt(n), fmt(s), fmt(ratio(s, n), "x"), "", ""))
    head = ("measurement", "native", "standin", "standin/native", "target", "")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    out("SUMMARY")
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    out(line.rstrip())
    out("-" * len(line.rstrip()))
    for r in rows:
        out("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="/tmp/bench-build",
                   help="standin build directory with replicators/pg/standin-pgrepl and "
                        "tools/standinctl (default /tmp/bench-build)")
    p.add_argument("--only", default="a,b,c", help="measurements to report: any of a,b,c,d "
                   "(the initial sync always runs: b, c and d need it)")
    p.add_argument("--scale", type=int, default=10, help="pgbench scale for the data (default 10)")
    p.add_argument("--txns", type=int, default=40000,
                   help="pgbench transactions in the backlog (b), split over --clients (default 40000)")
    p.add_argument("--clients", type=int, default=8, help="pgbench -c for (b) and (c) (default 8)")
    p.add_argument("--jobs", type=int, default=2, help="pgbench -j for (b) and (c) (default 2)")
    p.add_argument("--lag-rate", type=int, default=0,
                   help="pgbench -R for (c): the same offered load on both sides (default 0: "
                        "unthrottled, as fast as the machine goes)")
    p.add_argument("--lag-seconds", type=int, default=30, help="pgbench -T for (c) (default 30)")
    p.add_argument("--sample-ms", default=f"{SAMPLE_MIN * 1000:g},{SAMPLE_MAX * 1000:g}",
                   help="(c): the standby is polled every MIN to MAX ms, uniformly random "
                        "(default %(default)s; a finer poll sees the replication delay itself "
                        "rather than the poll's)")
    p.add_argument("--heartbeat-ms", type=float, default=HEARTBEAT_MS,
                   help="(c): one heartbeat row inserted on the master every N ms (default "
                        "%(default)s; fewer ms, more heartbeats: a p99 of more samples)")
    p.add_argument("--delays-dir", default=None,
                   help="(c): write each heartbeat's delay, with its time in the load, to "
                        "DIR/c-SIDE-START.tsv (to see when the slow ones came)")
    p.add_argument("--big-rows", type=int, default=1000000,
                   help="rows of the one transaction of (d) (default 1000000)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of each measurement per side, alternating which side goes "
                        "first ((a) on fresh pairs each round; (a) and (b) report the median, "
                        "(c) pools the samples; default 3)")
    p.add_argument("--first", choices=SIDES, default="native",
                   help="which side goes first in (a) and in odd rounds (default native)")
    p.add_argument("--keep", action="store_true", help="keep the servers' directories (STANDIN_KEEP_TMP=1)")
    args = p.parse_args()
    only = args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    try:
        args.sample = tuple(float(x) / 1000 for x in args.sample_ms.split(","))
        if len(args.sample) != 2 or not 0 < args.sample[0] <= args.sample[1]:
            raise ValueError
    except ValueError:
        p.error("--sample-ms takes MIN,MAX in ms, 0 < MIN <= MAX")
    if not args.heartbeat_ms > 0:
        p.error("--heartbeat-ms must be more than 0")
    if not only or only - {"a", "b", "c", "d"}:
        p.error("--only takes a comma-separated subset of a,b,c,d")
    if args.txns % args.clients:
        p.error("--txns must be a multiple of --clients")
    if args.keep:
        os.environ["STANDIN_KEEP_TMP"] = "1"
    sb.BUILDDIR = os.path.abspath(args.build)
    os.environ["STANDIN_BUILDDIR"] = sb.BUILDDIR
    for prog in (sb.PGREPL, sb.STANDINCTL):
        try:
            sb.program(prog)
        except FileNotFoundError as e:
            sys.exit(f"run.py: {e}\nbuild it: cd {ROOT} && [ -x configure ] || autoreconf -fi; "
                     f"mkdir -p {args.build} && cd {args.build} && {ROOT}/configure -q "
                     f"CFLAGS='-O2 -g' && make -j2 replicators/pg/standin-pgrepl tools/standinctl "
                     f"replicators/pg/standin_ddl.so")
    if sh.pg_module_path() is None:
        sys.exit(f"run.py: no replicators/pg/standin_ddl.so in {args.build} (the master's DDL "
                 f"capture): make -C {args.build} replicators/pg/standin_ddl.so")
    why = sh.missing_servers()
    if why:
        sys.exit(f"run.py: {why}")

    machine_info(args)
    order = [args.first] + [s for s in SIDES if s != args.first]
    sides = {}
    results = {}
    failed = False
    try:
        # (a) on fresh pairs, rounds alternating who goes first; (b) and (c) then run
        # on the pairs of the last (a) round, (b) and (c) for both sides in each round.
        turns = []
        for rnd in range(args.rounds if "a" in only else 1):
            turns.append(("a", rnd, order if rnd % 2 == 0 else order[::-1]))
        for rnd in range(args.rounds if only & {"b", "c", "d"} else 0):
            o = order if rnd % 2 == 0 else order[::-1]
            turns += [(ph, rnd, o) for ph in ("b", "c", "d") if ph in only]
        for ph, rnd, o in turns:
            log(f"--- ({ph}) round {rnd + 1}")
            for name in o:
                if ph == "a":
                    if name in sides:
                        sides.pop(name).close()      # the previous round's pair
                    side = Native(args) if name == "native" else Standin(args)
                    sides[name] = side
                    side.phase = "setup"
                    side.open_sessions()
                    side.prepare()
                    side.suspend()
                side = sides[name]
                side.phase = f"({ph}) round {rnd + 1}"
                side.resume(replicate=(ph != "a"))
                try:
                    fn = {"a": phase_a, "b": phase_b, "c": phase_c, "d": phase_d}[ph]
                    results.setdefault(ph, {}).setdefault(name, []).append(fn(side, args))
                finally:
                    side.suspend()
        if "a" not in only:
            results.pop("a")
        out()
        summary(results, args)
        errs = STANDIN_ERRORS
        out()
        out(f"standin-pgrepl errors during the run (state 'error' on its status socket; the "
            f"daemon retried by itself): {len(errs)}")
        for ph, e in errs:
            out(f"  {ph}: {e}")
    except BaseException:
        failed = True
        raise
    finally:
        for side in sides.values():
            try:
                if failed:
                    side.h.mark_failed()
                side.close()
            except Exception as e:  # noqa: BLE001
                print(f"run.py: closing {side.name}: {e}", file=sys.stderr)
        log("all servers stopped" + (" (directories kept: see above)" if failed else ""))


if __name__ == "__main__":
    main()
