#!/usr/bin/python3
"""Client-side write unavailability during a planned switchover: standin
against Patroni + HAProxy, side by side, in one run.

standin: the cluster of tests/integration/test_switchover.py (PostgreSQL 15,
slapd and Dovecot on nodes a and b, every standin daemon on both nodes, a
one-member etcd); the writer goes through node a's standin-proxy; the
switchovers are `standinctl -c CONF -n a switchover --to X`.

Patroni: Debian's patroni (3.0.2), two PostgreSQL 15 nodes with streaming
replication bootstrapped by Patroni (initdb, then pg_basebackup), a
one-member etcd of their own, HAProxy in front with Patroni's documented
health check (GET /primary, inter 1s fall 2 rise 1, on-marked-down
shutdown-sessions); the switchovers are `patronictl switchover --leader X
--candidate Y --force`.

The same writer on both sides: one long-lived psql reading stdin, one INSERT
per transaction, as fast as it can; every acknowledged commit is recorded
with its id and the monotonic time its answer arrived.  When psql's session
breaks it is started again after --retry-delay.  The unavailability of one
switchover is the largest gap between two consecutive acknowledged commits
among those around the switchover: from the last commit before the command
started to the first commit after it returned.  Afterwards every
acknowledged id must be on the final master (lost = those that are not).
Errors are INSERTs that were sent and not acknowledged (an SQL error, a
session that broke, a connection that failed).

The two sides run one after the other (the machine has 2 cores): the standin
cluster is built, switched N times and stopped, then the Patroni cluster.
See README.md.
"""
import argparse
import bisect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import benchlib  # noqa: E402
from benchlib import log, out  # noqa: E402

HAPROXY = "/usr/sbin/haproxy"
PATRONI = "/usr/bin/patroni"
PATRONICTL = "/usr/bin/patronictl"
RUNUSER = "/usr/sbin/runuser"

# Acknowledged commits the writer must make before each switchover (after
# the cluster said a switchover is possible), and after the whole run.
WARMUP_ACKS = 200


def client_env(**extra):
    """Our environment without what would redirect libpq, plus EXTRA."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C.UTF-8", **extra)
    return env


# ---------------------------------------------------------------------------
# The writer


class Writer:
    """One thread committing INSERTs through a long-lived psql reading
    stdin, as fast as it can.  acks: [(id, monotonic time)], in order;
    errors: INSERTs sent and not acknowledged; sessions: psql processes
    started; stderr of every psql goes to LOGFILE."""

    def __init__(self, name, argv, env, logfile, retry_delay):
        self.name, self.argv, self.env, self.logfile = name, argv, env, logfile
        self.retry_delay = retry_delay
        self.acks = []
        self.times = []
        self.errors = 0
        self.sessions = 0
        self.stop_ev = threading.Event()
        self.proc = None
        self.thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stop_ev.set()
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()
        self.thread.join(60)

    def _run(self):
        n = 0
        err = open(self.logfile, "ab")
        try:
            while not self.stop_ev.is_set():
                p = self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, stderr=err, text=True,
                                                 env=self.env, start_new_session=True)
                self.sessions += 1
                try:
                    while not self.stop_ev.is_set():
                        n += 1
                        p.stdin.write(f"INSERT INTO w (id) VALUES ({n}) RETURNING 'ack ' || id;\n"
                                      f"\\echo done {n}\n")
                        p.stdin.flush()
                        acked = False
                        while True:
                            line = p.stdout.readline()
                            if not line:
                                raise BrokenPipeError
                            line = line.strip()
                            if line == f"ack {n}":
                                acked = True
                            elif line == f"done {n}":
                                break
                        if acked:
                            t = time.monotonic()
                            self.acks.append((n, t))
                            self.times.append(t)
                        else:
                            self.errors += 1
                except (BrokenPipeError, OSError, ValueError):
                    if not self.stop_ev.is_set():
                        self.errors += 1
                finally:
                    if p.poll() is None:
                        p.kill()
                    p.wait()
                if not self.stop_ev.is_set():
                    self.stop_ev.wait(self.retry_delay)
        finally:
            err.close()

    def count(self):
        return len(self.times)

    def wait_acks(self, more, timeout, what):
        start = self.count()
        wait_for(lambda: self.count() >= start + more, timeout,
                      f"{more} more acknowledged commits ({what})")

    def wait_ack_after(self, t, timeout, what):
        """The time of the first acknowledged commit after T."""
        def first():
            i = bisect.bisect_right(self.times, t)
            return self.times[i] if i < len(self.times) else None
        return wait_for(first, timeout, f"a commit after {what}")

    def max_gap(self, t0, t1):
        """The largest gap between consecutive acknowledged commits among
        the last one at or before T0 through the first one at or after T1."""
        times = self.times
        i = max(0, bisect.bisect_right(times, t0) - 1)
        j = min(len(times) - 1, bisect.bisect_left(times, t1))
        return max((times[k + 1] - times[k] for k in range(i, j)), default=0.0)

    def error_summary(self, limit=8):
        """The distinct psql error lines (numbers masked), most frequent first."""
        counts = {}
        try:
            with open(self.logfile, errors="replace") as f:
                for line in f:
                    if not line.strip() or line[0].isspace():
                        continue        # a continuation of the line before
                    line = line.strip()
                    key = re.sub(r"\d+", "N", re.sub(r"^psql:<stdin>:\d+: ", "", line))
                    counts[key] = counts.get(key, 0) + 1
        except OSError:
            return []
        return sorted(counts.items(), key=lambda kv: -kv[1])[:limit]


def wait_for(pred, timeout, what):
    import standin_harness as sh
    return sh.wait_until(pred, timeout, what, interval=0.05)


# ---------------------------------------------------------------------------
# Measuring a run of switchovers (shared by both sides)


class Round:
    def __init__(self, number, src, dst):
        self.number, self.src, self.dst = number, src, dst
        self.ok = False
        self.unavail = None
        self.cmd_s = None
        self.errors = 0
        self.note = ""


def run_rounds(side, writer, rounds, ready, switchover, settle_timeout):
    """ROUNDS switchovers a->b, b->a, ...: before each, wait for READY(src,
    dst) and WARMUP_ACKS more commits; SWITCHOVER(src, dst) -> (ok, note).
    The unavailability of a round is writer.max_gap over [start, first
    commit after the command returned]."""
    results = []
    master = "a"
    for i in range(rounds):
        src, dst = master, "b" if master == "a" else "a"
        r = Round(i + 1, src, dst)
        ready(src, dst)
        writer.wait_acks(WARMUP_ACKS, 60, f"{side} before switchover {i + 1}")
        e0 = writer.errors
        t0 = time.monotonic()
        r.ok, r.note = switchover(src, dst)
        t_cmd = time.monotonic()
        r.cmd_s = t_cmd - t0
        t1 = writer.wait_ack_after(t_cmd, settle_timeout, f"{side} switchover {i + 1}")
        r.unavail = writer.max_gap(t0, t1)
        r.errors = writer.errors - e0
        results.append(r)
        out(f"{side:8s} switchover {r.number:2d} {src} -> {dst}: "
            f"{'ok    ' if r.ok else 'FAILED'} unavailability {r.unavail * 1000:8.1f} ms  "
            f"command {r.cmd_s * 1000:7.0f} ms  client errors {r.errors:3d}  "
            f"loadavg {benchlib.loadavg()}" + (f"  {r.note}" if r.note else ""))
        if r.ok:
            master = dst
    return results, master


def summarize(side, results, writer, lost, final):
    ok = [r for r in results if r.ok]
    un = [r.unavail for r in ok]
    s = dict(side=side, switchovers=len(results), ok=len(ok), acked=writer.count(),
             lost=lost, errors=writer.errors, sessions=writer.sessions, final=final,
             p50=benchlib.median(un) if un else None, max=max(un) if un else None,
             errors_in_windows=sum(r.errors for r in results))
    return s


# ---------------------------------------------------------------------------
# standin


def run_standin(args):
    import standin_harness as sh
    import test_switchover as ts

    h = sh.Harness("bench-switchover-standin")
    writer = None
    try:
        log("standin: starting etcd, PostgreSQL, slapd, Dovecot and every daemon on a and b")
        etcd = sh.EtcdServer(h).start()
        c = ts.Cluster(h, etcd)
        c.wait_streaming("b", timeout=300)
        log("standin: b streams; starting the writer through node a's standin-proxy")
        s = c.pg["a"]
        writer = Writer("standin", [s.bin("psql"), "-X", "-At", "-q", "-h", "127.0.0.1", "-p",
                                    str(c.ports["a"]["pg"]), "-U", s.user, "-d", "groupware"],
                        client_env(PGPASSWORD=s.password), h.path("writer-standin.err"),
                        args.retry_delay).start()

        def ready(src, dst):
            c.wait_streaming(dst, timeout=300)

        def switchover(src, dst):
            r = c.switchover(dst)
            steps = re.findall(r"^step \d/\d (\S+) +(ok|FAILED) \((\d+) ms\)", r.stdout, re.M)
            note = "steps " + " ".join(f"{n}={ms}" for n, _, ms in steps)
            if r.returncode != 0:
                out(r.stdout + r.stderr)
                return False, note
            return True, note

        baseline = quiet_baseline(writer, args.quiet)
        results, final = run_rounds("standin", writer, args.rounds, ready, switchover, 120)
        writer.wait_acks(WARMUP_ACKS, 60, "standin after the last switchover")
        writer.stop()
        have = set(int(x) for x in c.pg[final].psql("SELECT id FROM w", db="groupware").split())
        lost = [n for n, _ in writer.acks if n not in have]
        if lost:
            out(f"standin: acknowledged ids missing on {final}: {lost[:20]}")
        summ = summarize("standin", results, writer, len(lost), final)
        summ["baseline"] = baseline
        summ["error_lines"] = writer.error_summary()
        return summ
    except Exception:
        h.mark_failed()         # keep the directory (its path is printed)
        raise
    finally:
        if writer is not None:
            writer.stop()
        h.close()


def quiet_baseline(writer, seconds):
    """The largest gap between commits in SECONDS without a switchover
    (the noise floor of the measurement), and the commit rate."""
    writer.wait_acks(WARMUP_ACKS, 60, "warm-up")
    n0, t0 = writer.count(), time.monotonic()
    wait_for(lambda: time.monotonic() - t0 >= seconds, seconds + 5, "the quiet period")
    t1 = time.monotonic()
    return dict(gap=writer.max_gap(t0, t1), rate=(writer.count() - n0) / (t1 - t0))


# ---------------------------------------------------------------------------
# Patroni


def http_get(url, timeout=2):
    """(status, body) of GET URL; status None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return None, ""


# Patroni starts the postmaster through an intermediate process that exits,
# so the postmaster is re-parented to the nearest subreaper: without this
# wrapper that is this script (the harness is a subreaper while open), which
# does not reap it, and Patroni waits for ever for the stopped postmaster (a
# zombie) to go at a demote.  The wrapper is a subreaper that reaps every
# child, and exits with its first child (runuser).
REAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
main = subprocess.Popen(sys.argv[1:]).pid
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    if pid == main:
        sys.exit(os.waitstatus_to_exitcode(status))
"""


class PatroniNode:
    def __init__(self, h, name, etcd, scope, passwords):
        import standin_harness as sh
        self.h, self.name = h, name
        self.dir = h.mkdir("patroni", name, owner="postgres", group="postgres", mode=0o700)
        self.pg_port, self.api_port = sh.free_port(), sh.free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.data = os.path.join(self.dir, "data")
        self.yml = os.path.join(self.dir, "patroni.yml")
        self.logfile = os.path.join(self.dir, "patroni.log")
        self.passwords = passwords
        self.proc = None
        bindir = sh.PG_BINDIR
        with open(self.yml, "w") as f:
            f.write(f"""scope: {scope}
namespace: /service/
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{self.api_port}
  connect_address: 127.0.0.1:{self.api_port}
etcd3:
  hosts: 127.0.0.1:{etcd.port}
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: false
      use_slots: true
      parameters:
        wal_level: logical
        max_connections: 100
        max_wal_senders: 16
        max_replication_slots: 16
        max_worker_processes: 16
        shared_buffers: 32MB
        fsync: 'off'
        synchronous_commit: 'off'
        full_page_writes: 'off'
        password_encryption: scram-sha-256
  initdb:
    - encoding: UTF8
    - no-locale
postgresql:
  listen: 127.0.0.1:{self.pg_port}
  connect_address: 127.0.0.1:{self.pg_port}
  data_dir: {self.data}
  bin_dir: {bindir}
  pgpass: {self.dir}/pgpass
  basebackup:
    - checkpoint: fast
  authentication:
    superuser:
      username: postgres
      password: {passwords['superuser']}
    replication:
      username: replicator
      password: {passwords['replication']}
  parameters:
    unix_socket_directories: '{self.dir}'
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication replicator 127.0.0.1/32 scram-sha-256
""")
        os.chown(self.yml, *_ids("postgres"))
        os.chmod(self.yml, 0o600)

    def start(self):
        with open(self.logfile, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-c", REAPER, RUNUSER, "-u", "postgres",
                                          "--", PATRONI, self.yml],
                                         stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, cwd=self.dir,
                                         env=client_env(), start_new_session=True)
        self.h.add_cleanup(self.stop)
        return self

    def patroni_pids(self):
        """[reaper, runuser, patroni] as far as they still run.  Not the
        postmaster, which is the reaper's child too."""
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        for r in _children(self.proc.pid):
            if _comm(r) == "runuser":
                pids.append(r)
                pids += [k for k in _children(r) if self.yml in _cmdline(k)]
        return pids

    def patroni_pid(self):
        """patroni itself (runuser's child), or None."""
        pids = self.patroni_pids()
        return pids[2] if len(pids) > 2 else None

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def stop(self):
        """SIGTERM to patroni itself (not to runuser, which would SIGKILL
        it after 2 s): Patroni stops PostgreSQL and exits, and so do runuser
        and the reaper.  Whatever is left is stopped: the postmaster
        (pg_ctl -m immediate)."""
        import standin_harness as sh
        if self.proc is None:
            return
        pid = self.patroni_pid()
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            sh.wait_until(lambda: self.proc.poll() is not None, 60, f"patroni {self.name} to exit")
        except sh.WaitTimeout:
            for p in self.patroni_pids():
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(10)
        pm = self.postmaster_pid()
        if sh.pid_alive(pm):
            sh.run([os.path.join(sh.PG_BINDIR, "pg_ctl"), "-D", self.data, "-m", "immediate",
                    "-w", "stop"], user="postgres", check=False, timeout=60)
            sh.wait_until(lambda: not sh.pid_alive(pm), 30, f"postgres {self.name} to exit")
        self.proc = None

    def status(self):
        code, body = http_get(self.api + "/patroni")
        return json.loads(body) if code in (200, 503) and body else None

    def psql(self, sql, db="postgres"):
        import standin_harness as sh
        r = sh.run([os.path.join(sh.PG_BINDIR, "psql"), "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1",
                    "-h", self.dir, "-p", str(self.pg_port), "-U", "postgres", "-d", db],
                   input=sql, timeout=60)
        return r.stdout.strip()


def _ids(user):
    import pwd
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid):
    """The processes whose parent is PID."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return kids


class HAProxy:
    def __init__(self, h, nodes):
        import standin_harness as sh
        self.port = sh.free_port()
        self.cfg = h.path("haproxy.cfg")
        self.sock = h.path("haproxy.sock")
        servers = "".join(f"    server {n.name} 127.0.0.1:{n.pg_port} maxconn 100 check port "
                          f"{n.api_port}\n" for n in nodes)
        with open(self.cfg, "w") as f:
            f.write(f"""global
    maxconn 100
    stats socket {self.sock} mode 600 level admin
defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s
listen primary
    bind 127.0.0.1:{self.port}
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
{servers}""")
        self.logfile = h.path("haproxy.log")
        with open(self.logfile, "ab") as logf:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg], stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        h.add_cleanup(self.stop)
        sh.wait_until(lambda: sh.port_open(self.port), 20, "haproxy to listen")

    def servers(self):
        """{server name: status} (UP, DOWN, ...) as HAProxy sees them now."""
        import socket
        with socket.socket(socket.AF_UNIX) as so:
            so.settimeout(5)
            so.connect(self.sock)
            so.sendall(b"show stat\n")
            data = b""
            while True:
                c = so.recv(65536)
                if not c:
                    break
                data += c
        lines = data.decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        st, sv, px = head.index("status"), head.index("svname"), head.index("pxname")
        return {f[sv]: f[st].split()[0] for f in (line.split(",") for line in lines[1:] if line)
                if f[px] == "primary" and f[sv] not in ("FRONTEND", "BACKEND")}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_patroni(args):
    import standin_harness as sh

    h = sh.Harness("bench-switchover-patroni")
    writer = None
    try:
        log("patroni: starting etcd, then Patroni on a (initdb) and b (pg_basebackup)")
        etcd = sh.EtcdServer(h).start()
        pw = {"superuser": "pw-" + os.urandom(6).hex(), "replication": "pw-" + os.urandom(6).hex()}
        h.mkdir("patroni")
        nodes = {n: PatroniNode(h, n, etcd, "bench", pw) for n in ("a", "b")}
        nodes["a"].start()
        sh.wait_until(lambda: http_get(nodes["a"].api + "/primary")[0] == 200, 180,
                      "patroni a to bootstrap and lead")
        nodes["b"].start()
        nodes["a"].psql("CREATE DATABASE groupware")
        nodes["a"].psql("CREATE TABLE w (id int PRIMARY KEY, at timestamptz DEFAULT now())",
                        db="groupware")

        def ready(src, dst):
            L, C = nodes[src], nodes[dst]

            def ok():
                if http_get(L.api + "/primary")[0] != 200:
                    return False
                st, lst = C.status(), L.status()
                if not st or st.get("role") != "replica" or st.get("state") != "running":
                    return False
                if st.get("timeline") != lst.get("timeline"):
                    return False
                code, body = http_get(L.api + "/cluster")
                if code != 200 or {m["name"] for m in json.loads(body)["members"]} != {"a", "b"}:
                    return False
                if L.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                          f"'{dst}' AND state = 'streaming'") != "1":
                    return False
                return ha.servers() == {src: "UP", dst: "DOWN"}
            sh.wait_until(ok, 300, f"patroni: {dst} streaming from {src}, HAProxy sending to "
                          f"{src} only")

        ha = HAProxy(h, nodes.values())
        ready("a", "b")
        log("patroni: b streams; starting the writer through HAProxy")
        writer = Writer("patroni", [os.path.join(sh.PG_BINDIR, "psql"), "-X", "-At", "-q", "-h",
                                    "127.0.0.1", "-p", str(ha.port), "-U", "postgres", "-d",
                                    "groupware"],
                        client_env(PGPASSWORD=pw["superuser"]), h.path("writer-patroni.err"),
                        args.retry_delay).start()

        def switchover(src, dst):
            # Beside the client's view: when the candidate's Patroni starts
            # answering GET /primary with 200 (it holds the leader key), the
            # moment HAProxy's next check can see it.
            t0 = time.monotonic()
            seen = {}
            done = threading.Event()

            def probe():
                while not done.is_set():
                    if http_get(nodes[dst].api + "/primary", timeout=1)[0] == 200:
                        seen["t"] = time.monotonic() - t0
                        return
                    done.wait(0.02)
            th = threading.Thread(target=probe, daemon=True)
            th.start()
            try:
                r = subprocess.run([PATRONICTL, "-c", nodes["a"].yml, "switchover", "--leader",
                                    src, "--candidate", dst, "--force"], capture_output=True,
                                   text=True, timeout=180, env=client_env())
                th.join(30)
            finally:
                done.set()
            note = (f"{dst}'s /primary 200 after {seen['t'] * 1000:.0f} ms" if "t" in seen
                    else f"{dst}'s /primary not 200 yet")
            text = (r.stdout + r.stderr).strip()
            m = re.search(r"Successfully switched over to \"(\w+)\"", text)
            if r.returncode != 0 or not m or m.group(1) != dst:
                out(text)
                return False, note
            return True, note

        baseline = quiet_baseline(writer, args.quiet)
        results, final = run_rounds("patroni", writer, args.rounds, ready, switchover, 120)
        writer.wait_acks(WARMUP_ACKS, 60, "patroni after the last switchover")
        writer.stop()
        have = set(int(x) for x in nodes[final].psql("SELECT id FROM w", db="groupware").split())
        lost = [n for n, _ in writer.acks if n not in have]
        if lost:
            out(f"patroni: acknowledged ids missing on {final}: {lost[:20]}")
        summ = summarize("patroni", results, writer, len(lost), final)
        summ["baseline"] = baseline
        summ["error_lines"] = writer.error_summary()
        return summ
    except Exception:
        h.mark_failed()         # keep the directory (its path is printed)
        raise
    finally:
        if writer is not None:
            writer.stop()
        h.close()


# ---------------------------------------------------------------------------


def ms(x):
    return "-" if x is None else f"{x * 1000:.1f} ms"


def versions():
    import standin_harness as sh
    pg = benchlib.cmd_out([os.path.join(sh.PG_BINDIR, "postgres"), "--version"])
    etcd = benchlib.cmd_out(["/usr/bin/etcd", "--version"]).splitlines()[0]
    ha = benchlib.cmd_out([HAPROXY, "-v"]).splitlines()[0]
    pat = benchlib.cmd_out([PATRONI, "--version"]) if os.path.exists(PATRONI) else "(not installed)"
    return f"versions: {pg}; {etcd}; {ha}; {pat}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="switchovers per side (default 10)")
    ap.add_argument("--build", default=os.environ.get("STANDIN_BUILDDIR") or "/tmp/b2",
                    help="built standin tree (default $STANDIN_BUILDDIR, else /tmp/b2)")
    ap.add_argument("--only", choices=("standin", "patroni"), help="run one side only")
    ap.add_argument("--retry-delay", type=float, default=0.02,
                    help="seconds before the writer starts psql again after its session broke "
                         "(default 0.02)")
    ap.add_argument("--quiet", type=float, default=5,
                    help="seconds of writes without a switchover, for the noise floor (default 5)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the servers run as postgres, nobody, ...)")
    os.environ["STANDIN_BUILDDIR"] = os.path.abspath(args.build)
    import standin_bin

    do_standin = args.only in (None, "standin")
    do_patroni = args.only in (None, "patroni")
    if do_patroni and not os.path.exists(PATRONI):
        sys.exit("patroni is not installed: apt-get install -y patroni (or --only standin)")
    progs = ["tools/standinctl", "replicators/pg/standin-pgrepl", "proxy/standin-proxy",
             "failover/standin-failoverd"] if do_standin else []
    benchlib.preamble("Planned switchover: client write unavailability, standin vs Patroni",
                      ROOT, args.build, progs, standin_bin.program, versions(), make=False)
    out(f"writer: one psql session, one INSERT per transaction, retry after "
        f"{args.retry_delay * 1000:.0f} ms; {args.rounds} switchovers per side, alternating "
        f"a->b, b->a; {WARMUP_ACKS} commits before each")
    out()
    sums = []
    if do_standin:
        sums.append(run_standin(args))
    if do_patroni:
        sums.append(run_patroni(args))
    out()
    out("summary")
    for s in sums:
        b = s["baseline"]
        out(f"{s['side']:8s} switchovers {s['ok']}/{s['switchovers']} ok; unavailability p50 "
            f"{ms(s['p50'])}, max {ms(s['max'])}; acknowledged commits {s['acked']}, lost "
            f"{s['lost']} (checked on final master {s['final']}); client errors {s['errors']} "
            f"({s['errors_in_windows']} during switchovers), psql sessions {s['sessions']}; "
            f"no-switchover baseline: {b['rate']:.0f} commits/s, max gap {ms(b['gap'])}")
        for line, n in s["error_lines"]:
            out(f"{'':8s}   client error x{n}: {line}")
    if len(sums) == 2 and sums[1]["p50"] and sums[1]["max"] and sums[0]["p50"] is not None:
        st, pa = sums
        out(f"ratio standin/patroni: p50 {st['p50'] / pa['p50']:.3f}, "
            f"max {st['max'] / pa['max']:.3f}")
    failed = any(s["ok"] != s["switchovers"] or s["lost"] for s in sums)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
