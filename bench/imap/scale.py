#!/usr/bin/python3
"""standin-imaprepl at scale against Dovecot's own replication (dsync), side by side.

N users (--users), each with INBOX, Sent and Archive and 4 small messages
(INBOX 2, Sent 1, Archive 1; some \\Seen, \\Flagged, \\Answered), written as
Maildir files straight into the master's mail directory (owned nobody:nogroup),
not APPENDed.  Two identical fresh pairs of Dovecot 2.3 servers from the test
harness (tests/lib/standin_harness.py), in one Harness, on loopback:

  standin  a (master) -> b (standby): standin-imaprepl on both nodes (a relays
           the master's changes, b replicates), each with its own state dir,
           one config file, a one-member etcd; [imap] changes = dovecot
           (--standin-changes), idle_users = 0, workers = 8: the master's
           Dovecot has the notify and replication plugins with
           mail_replica = standin, its aggregator's listeners off (mode 0), and
           standin-imaprepl on a reads the replication-notify-fifo it creates
           in the master's base_dir (dovecot_fifo.a; b's daemon has its own in
           b's base_dir, dovecot_fifo.b: one path for both would have both
           daemons on this one machine read the master's FIFO); or
           changes = idle (IDLE on a bounded set of users, the rest at each
           full pass).
  dsync    c (master) -> d (standby): Dovecot's replicator (notify and
           replication plugins, aggregator, replicator, mail_replica =
           tcp:127.0.0.1:PORT to the standby's doveadm server,
           replication_max_conns = 10).

Both masters get the same files (c's are a copy of a's), and each master is
started once before its side runs, with no replication configured, for
`doveadm mailbox status -A` to index every folder and give the expected counts
(a master in use has its indexes).  Only one side runs at a time: the other
pair's Dovecots (and standin's daemons and etcd) are stopped.

For each side:
  (1) initial sync: after a sync(2), from the start of the replicator
      (standin: both daemons, Dovecots already up; dsync: the master
      Dovecot's start, the standby already up; the replicator fills its
      queue from the userdb at start) until every user's 4 messages are files in the standby's Maildir AND the
      replicator says it is done (standin: b's first pass ended; dsync: every
      user synced once, queues empty), 0 users in error (standin: status
      users_in_error; dsync: `doveadm replicator status '*'` failed flags), then
      `doveadm -f flow mailbox status -A 'messages unseen vsize' '*'` equal on
      both servers -> messages/s and users/s
  (2) a full pass with nothing changed: standin: the `pass` admin command on
      b's status socket, its last_pass_ms; dsync: `doveadm replicator
      replicate -f '*'` (a full sync of every user) until every user's "full
      sync" is later than the command and the queues are empty (Dovecot shows
      ages in whole seconds: the figure is the middle of the interval the
      polls bound, +-0.5 s)
  (3) push latency for --latency-users random users: APPEND one message to
      the user's INBOX on the master (USER*standin, a connection opened
      before), from the APPEND returning to the message in the standby's
      INBOX (a connection of its own, EXAMINE, NOOP every --poll-ms)
  (4) the steady state after (3), everything quiet: established TCP
      connections to the master's IMAP port (ss -tnp, by process), the
      replicator's open descriptors (standin: both daemons; dsync: the
      replicator, aggregator and doveadm processes of both Dovecots), the
      master Dovecot's imap and doveadm processes and their summed PSS
      (/proc/PID/smaps_rollup); also the highest number of connections to the
      master's IMAP port seen while (1)-(3) ran (sampled at each poll).

Each figure is printed for both sides with the ratio standin/dsync, then a
summary against the targets (at 5000 users: push p99 < 2 s, connections to the
master <= workers + 2, initial sync >= 1.0x dsync's rate, 0 users in error).
See README.md next to this file, section "scale.py".
"""

import argparse
import grp
import json
import os
import pwd
import random
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True   # no __pycache__ in tests/ (other people's directories)
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import BenchError, cmd_out, loadavg, log, out, percentile, preamble  # noqa: E402

SIDES = ("standin", "dsync")
PROGRAMS = ("replicators/imap/standin-imaprepl", "tools/standinctl")
FOLDERS = ("INBOX", "Sent", "Archive")
FOLDER_DIRS = {"INBOX": "", "Sent": ".Sent", "Archive": ".Archive"}
# (folder, maildir flags) of each user's messages; Archive's alternate F / R
LAYOUT = (("INBOX", "S"), ("INBOX", ""), ("Sent", "S"), ("Archive", None))
PER_USER = len(LAYOUT)
DOVEADM_PROCS = ("doveadm-server", "doveadm")
DSYNC_PROCS = ("replicator", "aggregator") + DOVEADM_PROCS


# -- processes ----------------------------------------------------------------

def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def tree_cpu(pid):
    """CPU seconds of PID, its reaped children and its live descendants."""
    if not pid:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        f = stat_fields(pid)
    except OSError:
        return 0.0
    total = sum(int(x) for x in f[11:15])
    for p in sh.process_tree(pid)[1:]:
        try:
            g = stat_fields(p)
        except OSError:
            continue
        total += int(g[11]) + int(g[12])
    return total / tick


def server_procs(server):
    """{pid: comm} of a Dovecot server's processes."""
    res = {}
    for p in server.pids():
        c = comm(p)
        if c:
            res[p] = c
    return res


def client_conns(port):
    """{pid: (process name, count)} of established TCP connections whose peer
    is 127.0.0.1:PORT (the client ends), from `ss -tnpH`."""
    r = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True, timeout=30)
    res = {}
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) < 4 or not f[3].endswith(f":{port}"):
            continue
        for name, pid in re.findall(r'\("([^"]*)",pid=(\d+)', line):
            n, c = res.get(int(pid), (name, 0))
            res[int(pid)] = (n, c + 1)
            break
        else:
            res.setdefault(0, ("?", 0))
            res[0] = ("?", res[0][1] + 1)
    return res


# -- mail -----------------------------------------------------------------------

def message(user, k, seed):
    """A small message (about 400 bytes), LF line ends as Dovecot stores them."""
    return (f"From: Sender {k} <sender{k}@example.com>\nTo: {user}@example.com\n"
            f"Subject: scale {user} message {k}\n"
            f"Message-ID: <scale.{user}.{k}.{seed:08x}@bench.example.com>\n"
            f"Date: Mon, 23 Nov 2026 10:0{k}:00 +0000\nMIME-Version: 1.0\n"
            f"Content-Type: text/plain; charset=us-ascii\n\n"
            f"Hello {user}, this is message {k} of the scale benchmark.\n"
            f"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n").encode()


def populate(server, users, seed):
    """Write every user's Maildir (INBOX, .Sent, .Archive, subscriptions and
    PER_USER messages in cur/) under SERVER's mail root, owned nobody:nogroup."""
    uid = pwd.getpwnam(sh.MAIL_OS_USER).pw_uid
    gid = grp.getgrnam(sh.MAIL_OS_GROUP).gr_gid
    base_t = 1795000000            # Nov 2026
    host = "scale"
    n = 0
    for ui, user in enumerate(users):
        md = server.maildir(user)
        paths = [md]
        for f in FOLDERS:
            d = os.path.join(md, FOLDER_DIRS[f])
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(d, sub), mode=0o700, exist_ok=True)
                paths.append(os.path.join(d, sub))
            if f != "INBOX":
                paths.append(d)
                mf = os.path.join(d, "maildirfolder")
                open(mf, "w").close()
                paths.append(mf)
        subs = os.path.join(md, "subscriptions")
        with open(subs, "w") as fh:
            fh.write("Sent\nArchive\n")
        paths.append(subs)
        for k, (folder, flags) in enumerate(LAYOUT):
            if flags is None:
                flags = "FS" if ui % 2 == 0 else "RS"
            t = base_t + 60 * (ui * PER_USER + k)
            body = message(user, k, seed)
            name = f"{t}.M{k}P{ui}.{host},S={len(body)}:2,{flags}"
            p = os.path.join(md, FOLDER_DIRS[folder], "cur", name)
            with open(p, "wb") as fh:
                fh.write(body)
            os.utime(p, (t, t))
            paths.append(p)
            n += 1
        for p in paths:
            os.chown(p, uid, gid)
        os.chown(server.home(user), uid, gid)
    return n


def logins(server):
    """IMAP logins in SERVER's log so far."""
    try:
        with open(server.logfile, "rb") as f:
            return f.read().count(b": Login: user=<")
    except OSError:
        return 0


def count_files(server, users, complete=None):
    """(messages as files in cur/ and new/ of the three folders, users with at
    least PER_USER of them).  COMPLETE: a set of users already counted
    complete (PER_USER each), not read again; updated."""
    total = done = 0
    for user in users:
        if complete is not None and user in complete:
            total += PER_USER
            done += 1
            continue
        md = server.maildir(user)
        k = 0
        for f in FOLDERS:
            for sub in ("cur", "new"):
                try:
                    k += sum(1 for e in os.scandir(os.path.join(md, FOLDER_DIRS[f], sub))
                             if not e.name.startswith("."))
                except FileNotFoundError:
                    pass
        total += k
        done += k >= PER_USER
        if complete is not None and k >= PER_USER:
            complete.add(user)
    return total, done


FLOW = re.compile(r"^(\S+) (.+?) messages=(\d+) unseen=(\d+) vsize=(\d+)\s*$")


def mailbox_status(server):
    """{(user, mailbox): (messages, unseen, vsize)} from doveadm -A."""
    text = sh.run([sh.DOVEADM, "-c", server.conf, "-f", "flow", "mailbox", "status", "-A",
                   "messages unseen vsize", "*"], timeout=1800).stdout
    res = {}
    for line in text.splitlines():
        m = FLOW.match(line)
        if m:
            res[(m.group(1), m.group(2))] = tuple(int(x) for x in m.group(3, 4, 5))
    return res


def compare_status(src, tgt):
    """Differences between two mailbox_status() results: a list of strings."""
    diffs = []
    for key in sorted(set(src) | set(tgt)):
        if src.get(key) != tgt.get(key):
            diffs.append(f"{key[0]}/{key[1]}: master {src.get(key)}, standby {tgt.get(key)}")
    return diffs


def hms(text):
    """'01:02:03' -> seconds; '-' -> None."""
    if not text or text.strip() == "-":
        return None
    parts = [int(x) for x in text.strip().split(":")]
    s = 0
    for p in parts:
        s = 60 * s + p
    return s


# -- the benchmark ----------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.h = sh.Harness("bench-imap-scale")
        n = args.users
        self.users = [f"user{i:05d}" for i in range(n)]
        self.userpw = {u: f"pw-{u}" for u in self.users}
        self.pw = "pw-" + os.urandom(8).hex()
        self.doveadm_pw = "da-" + os.urandom(8).hex()
        # Identical base configuration for all four servers: room for an
        # IMAP session per user (changes = idle) and more.
        reuse = ""
        if args.dovecot_tuning == "performance":
            # Dovecot's "Performance tuning" page, "CPU usage optimization",
            # on all four servers: login processes in high-performance mode
            # (one per core, kept), imap and doveadm processes reused for up
            # to 100 connections of the same uid, an auth cache.
            reuse = "  service_count = 100\n"
            limits_login = (f"service imap-login {{\n  service_count = 0\n"
                            f"  process_min_avail = {os.cpu_count() or 1}\n}}\n"
                            f"service doveadm {{\n{reuse}}}\n"
                            f"auth_cache_size = 10M\n")
        else:
            limits_login = ""
        limits = (f"default_client_limit = {max(1000, 2 * n + 500)}\n"
                  f"service imap {{\n  process_limit = {max(1024, n + 512)}\n{reuse}}}\n"
                  f"service anvil {{\n  client_limit = {max(1000, 2 * n + 500)}\n}}\n"
                  + limits_login)
        self.base_conf = limits
        mk = lambda node: sh.DovecotServer(self.h, node, users=self.userpw, master_password=self.pw,  # noqa: E731
                                           extra_conf=limits)
        t = time.monotonic()
        self.a, self.b, self.c, self.d = mk("a"), mk("b"), mk("c"), mk("d")
        log(f"4 Dovecot configurations with {n} users each written in {time.monotonic() - t:.1f}s "
            f"(passwd-file of {os.path.getsize(self.a._passwd)} bytes, a home per user)")
        self.dsync_port = sh.free_port()
        self.etcd = None
        self.daemons = {}
        self.errors = []             # (side, what) seen while it ran
        self.peak_conns = 0
        self.peak = {}
        self.base = self.h.mkdir("standin")
        self.users_file = os.path.join(self.base, "users")
        with open(self.users_file, "w") as f:
            f.write("".join(u + "\n" for u in self.users))

    # -- the masters' mail -------------------------------------------------------

    def load(self):
        t = time.monotonic()
        n = populate(self.a, self.users, 0x5ca1e)
        t1 = time.monotonic()
        r = subprocess.run(["cp", "-a", self.a.mail_root + "/.", self.c.mail_root], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise BenchError(f"cp -a: {r.stderr}")
        log(f"masters: {n} messages for {len(self.users)} users written as Maildir files in {t1 - t:.1f}s "
            f"(a), copied to c in {time.monotonic() - t1:.1f}s")
        self.messages = n

    def index_master(self, server):
        """Start SERVER with no replication, index every folder with doveadm,
        stop it; returns the expected mailbox_status()."""
        server.start()
        t = time.monotonic()
        st = mailbox_status(server)
        server.stop()
        msgs = sum(v[0] for v in st.values())
        log(f"{server.name}: indexed with doveadm mailbox status -A in {time.monotonic() - t:.1f}s: "
            f"{len(st)} mailboxes, {msgs} messages")
        if msgs != self.messages or len(st) != len(self.users) * len(FOLDERS):
            raise BenchError(f"{server.name}: {len(st)} mailboxes and {msgs} messages, expected "
                             f"{len(self.users) * len(FOLDERS)} and {self.messages}")
        return st

    def append_conf(self, server, text):
        with open(server.conf, "a") as f:
            f.write(f"\n# bench/imap/scale.py\n{text}")

    # -- standin -------------------------------------------------------------------

    def standin_conf(self):
        a, b = self.a, self.b
        text = f"[cluster]\nname = benchscale\netcd = {self.etcd.url}\n"
        if self.args.debug_log:
            text += "log_level = debug\n"
        for s in (a, b):
            for d in ("state", "run"):
                os.makedirs(os.path.join(self.base, s.node, d), exist_ok=True)
            text += (f"[node {s.node}]\naddress = {s.host}\n"
                     f"state_dir = {self.base}/{s.node}/state\nrun_dir = {self.base}/{s.node}/run\n")
        text += "[imap]\n" + "".join(f"endpoint.{s.node} = imap://{s.host}:{s.port}\n" for s in (a, b))
        text += (f"admin_user = {a.master_user}\npassword_file = {a.master_password_file}\n"
                 f"users_file = {self.users_file}\nworkers = {self.args.workers}\n"
                 f"full_pass_interval = 24h\n")
        if self.args.standin_changes == "dovecot":
            text += f"changes = dovecot\ndovecot_fifo_user = {sh.MAIL_OS_USER}\nidle_users = 0\n"
        elif self.args.idle_users is not None:
            text += f"idle_users = {self.args.idle_users}\n"
        # One file for both nodes, each node's daemon reading the FIFO in its
        # own Dovecot's base_dir (dovecot_fifo.NODE).  A build without the
        # per-node key gets one file per node, equal but for dovecot_fifo: with
        # a single dovecot_fifo both daemons, on this one machine, would read
        # the master's FIFO and each take a share of its notices.
        self.confs = {}
        one = os.path.join(self.base, "standin.conf")
        fifo = lambda s, key: f"{key} = {s.run_dir}/replication-notify-fifo\n"  # noqa: E731
        if self.args.standin_changes != "dovecot":
            with open(one, "w") as f:
                f.write(text)
            self.confs = {"a": one, "b": one}
        else:
            with open(one, "w") as f:
                f.write(text + "".join(fifo(s, f"dovecot_fifo.{s.node}") for s in (a, b)))
            r = sb.run(sb.STANDINCTL, "-c", one, "-n", "a", "config", "check", timeout=60)
            if r.returncode == 0:
                self.confs = {"a": one, "b": one}
            else:
                log(f"standinctl config check refuses dovecot_fifo.NODE ({(r.stderr or r.stdout).strip()[:200]}): "
                    f"one configuration file per node, equal but for dovecot_fifo")
                for s in (a, b):
                    path = os.path.join(self.base, f"standin-{s.node}.conf")
                    with open(path, "w") as f:
                        f.write(text + fifo(s, "dovecot_fifo"))
                    self.confs[s.node] = path
        self.conf = self.confs["a"]
        return self.conf

    def ctl(self, node, *args):
        r = sb.run(sb.STANDINCTL, "-c", self.confs[node], "-n", node, *args, timeout=120)
        if r.returncode != 0:
            raise BenchError(f"standinctl -n {node} {' '.join(args)}: {r.stdout}{r.stderr}")
        return r.stdout

    def status(self, node="b"):
        d = self.daemons[node]
        if not d.running():
            tail = [x for x in d.output().splitlines() if not re.search(r"info: user \S+ added$", x)][-12:]
            raise BenchError(f"standin-imaprepl on {node} exited {d.proc.returncode}; the end of its log "
                             f"(without the 'user added' lines):\n" + "\n".join(tail))
        try:
            st = d.status()
        except (OSError, ValueError):
            return None
        if st.get("last_error") and ("standin", st["last_error"]) not in self.errors:
            self.errors.append(("standin", st["last_error"]))
            log(f"standin-imaprepl {node} last_error: {st['last_error']}")
        return st

    def standin_start(self):
        for node in ("a", "b"):
            path = os.path.join(self.base, f"imaprepl-{node}.log")
            d = sb.StandinDaemon(IMAPREPL, self.confs[node], node, os.path.join(self.base, node, "run"), path)
            self.h.add_cleanup(d.stop)
            self.daemons[node] = d

    def standin_stop(self):
        for d in self.daemons.values():
            d.stop()

    # -- dsync ---------------------------------------------------------------------

    def dsync_master_conf(self):
        return (f"mail_plugins = $mail_plugins notify replication\n"
                f"plugin {{\n  mail_replica = tcp:127.0.0.1:{self.dsync_port}\n}}\n"
                f"service aggregator {{\n  fifo_listener replication-notify-fifo {{\n"
                f"    user = {sh.MAIL_OS_USER}\n  }}\n  unix_listener replication-notify {{\n"
                f"    user = {sh.MAIL_OS_USER}\n  }}\n}}\n"
                f"service replicator {{\n  process_min_avail = 1\n"
                f"  unix_listener replicator-doveadm {{\n    mode = 0600\n  }}\n}}\n"
                f"doveadm_password = {self.doveadm_pw}\n"
                f"replication_max_conns = {self.args.dsync_conns}\n")

    def dsync_standby_conf(self):
        return (f"doveadm_password = {self.doveadm_pw}\n"
                f"service doveadm {{\n  inet_listener {{\n    address = 127.0.0.1\n"
                f"    port = {self.dsync_port}\n  }}\n}}\n")

    def replicator_status(self):
        """(summary {name: int}, [per-user dict]) from doveadm replicator status."""
        summ = {}
        for line in self.c.doveadm("replicator", "status").splitlines():
            m = re.match(r"^(.*?)\s+(\d+)\s*$", line)
            if m:
                summ[m.group(1).strip()] = int(m.group(2))
        users = json.loads(self.c.doveadm("-f", "json", "replicator", "status", "*") or "[]")
        return summ, users

    # -- common --------------------------------------------------------------------

    def pair(self, side):
        return (self.a, self.b) if side == "standin" else (self.c, self.d)

    def sample_conns(self, side, procs=False):
        """Connections to the master's IMAP port now (not ours); with PROCS
        also the master's imap and doveadm processes; the highest values
        are kept in self.peak."""
        master = self.pair(side)[0]
        me = os.getpid()
        n = sum(c for pid, (name, c) in client_conns(master.port).items() if pid != me)
        self.peak_conns = max(self.peak_conns, n)
        if procs:
            names = list(server_procs(master).values())
            for key, k in (("imap", sum(1 for c in names if c == "imap")),
                           ("doveadm", sum(1 for c in names if c in DOVEADM_PROCS))):
                self.peak[key] = max(self.peak.get(key, 0), k)
        return n

    def verify(self, side, expected, what):
        master, standby = self.pair(side)
        t = time.monotonic()
        src = mailbox_status(master)
        tgt = mailbox_status(standby)
        diffs = compare_status(src, tgt)
        if expected is not None:
            diffs += [f"master {k}: {v} != expected {expected.get(k)}" for k, v in src.items()
                      if expected.get(k) != v][:5]
        n = sum(v[0] for v in tgt.values())
        if diffs:
            log(f"verify {side} after {what}: {len(diffs)} DIFFERENCES (doveadm mailbox status -A "
                f"messages unseen vsize), e.g.:")
            for d in diffs[:10]:
                log("  " + d)
            raise BenchError(f"{side}: the standby differs from the master after {what}")
        log(f"verify {side} after {what}: master and standby equal: {len(tgt)} mailboxes, {n} messages "
            f"(messages, unseen, vsize per mailbox; {time.monotonic() - t:.1f}s)")
        return src

    # -- (1) initial sync --------------------------------------------------------------

    def initial(self, side):
        master, standby = self.pair(side)
        total = self.messages
        n = len(self.users)
        timeout = self.args.timeout
        t = time.monotonic()
        os.sync()         # what was written before (the mail, the other side) is not flushed while timed
        log(f"(1) {side}: sync(2) before the start took {time.monotonic() - t:.1f}s")
        if side == "standin":
            standby.start()
            master.start()
            self.etcd = sh.EtcdServer(self.h, "x").start()
            self.standin_conf()
            self.ctl("a", "state", "init", "--master", "a")
            self.ctl("b", "state", "pull")
            log(f"(1) standin: loadavg {loadavg()}; starting standin-imaprepl on a and b "
                f"(changes = {self.args.standin_changes}), no state, empty standby")
            cpu0 = (tree_cpu(master.pid), tree_cpu(standby.pid))
            logins0 = (logins(master), logins(standby))
            t0 = time.monotonic()
            self.standin_start()
        else:
            standby.start()
            log(f"(1) dsync: loadavg {loadavg()}; starting the master Dovecot with the replicator, "
                f"empty standby")
            cpu0 = (0.0, tree_cpu(standby.pid))
            logins0 = (logins(master), logins(standby))
            t0 = time.monotonic()
            master.start()
        t_files = t_done = None
        last_log = t0
        st = summ = None
        complete = set()
        while True:
            now = time.monotonic()
            if now - t0 > timeout:
                raise BenchError(f"(1) {side}: not done after {timeout}s: files "
                                 f"{count_files(standby, self.users)}, "
                                 f"status {st or summ}")
            files, users_done = count_files(standby, self.users, complete)
            conns = self.sample_conns(side, procs=True)
            if files >= total and t_files is None:
                t_files = time.monotonic()
            if side == "standin":
                st = self.status("b")
                done = st is not None and st["passes"] >= 1 and not st["pass_active"]
                progress = (f"b: passes {st and st['passes']}, appended {st and st['appended']}, "
                            f"users_in_error {st and st['users_in_error']}")
            else:
                summ, ustat = self.replicator_status()
                queued = sum(v for k, v in summ.items() if k.startswith("Queued"))
                synced = sum(1 for u in ustat if u.get("success sync", "-") != "-")
                failed = sum(1 for u in ustat if u.get("failed") == "y")
                done = queued == 0 and synced >= n and summ.get("Total number of known users", 0) >= n
                progress = (f"replicator: {summ.get('Total number of known users')} users, {synced} synced, "
                            f"{queued} queued, {failed} failed")
            t_poll = time.monotonic() - now
            if done and t_done is None:
                t_done = time.monotonic()
            if t_done is not None and t_files is not None:
                break
            if now - last_log >= 10:
                last_log = now
                log(f"(1) {side}: {now - t0:.0f}s: {files} of {total} messages on the standby, "
                    f"{users_done} users complete; {progress}; {conns} connections to the master's IMAP port; "
                    f"loadavg {loadavg()}")
            # the polls (a scan of the standby's Maildirs, ss, /proc) take at
            # most a sixth of one core
            time.sleep(max(self.args.poll_s, 5 * t_poll))
        t_end = max(t_files, t_done)
        elapsed = t_end - t0
        cpu = (tree_cpu(master.pid) - cpu0[0], tree_cpu(standby.pid) - cpu0[1])
        res = dict(time=elapsed, files_time=t_files - t0, done_time=t_done - t0, rate=total / elapsed,
                   users_rate=n / elapsed, master_cpu=cpu[0], standby_cpu=cpu[1],
                   master_logins=logins(master) - logins0[0], standby_logins=logins(standby) - logins0[1])
        if side == "standin":
            st = self.status("b")
            res["users_in_error"] = st["users_in_error"]
            res["daemon_cpu"] = sum(tree_cpu(d.proc.pid) for d in self.daemons.values())
            extra = (f"b: passes {st['passes']}, last_pass_ms {st['last_pass_ms']}, appended {st['appended']}, "
                     f"folders_created {st['folders_created']}, users {st['users']}, users_in_error "
                     f"{st['users_in_error']}, last_error {st['last_error']}; standin-imaprepl CPU a+b "
                     f"{res['daemon_cpu']:.1f}s")
            r = sb.run(sb.STANDINCTL, "-c", self.confs["b"], "-n", "b", "status", "--json", timeout=120)
            try:
                js = json.loads(r.stdout)
            except ValueError:
                js = None
            res["ctl_status"] = js
            found = re.findall(r'"users_in_error":\s*(\d+)', r.stdout)
            extra += (f"; standinctl status --json: exit {r.returncode}, users_in_error "
                      f"{found or r.stderr.strip()[:200]}")
        else:
            summ, ustat = self.replicator_status()
            res["users_in_error"] = sum(1 for u in ustat if u.get("failed") == "y")
            res["daemon_cpu"] = None
            extra = f"replicator: {summ}; users failed {res['users_in_error']}"
        log(f"(1) {side}: {total} messages of {n} users in {elapsed:.2f}s = {res['rate']:.0f} messages/s, "
            f"{res['users_rate']:.1f} users/s (all files on the standby at {res['files_time']:.2f}s, replicator "
            f"done at {res['done_time']:.2f}s); IMAP logins master {res['master_logins']}, standby "
            f"{res['standby_logins']}; Dovecot CPU master {cpu[0]:.1f}s (whole tree"
            f"{', its start included' if side == 'dsync' else ''}), standby {cpu[1]:.1f}s; {extra}; "
            f"loadavg {loadavg()}")
        if res["users_in_error"]:
            self.errors.append((side, f"{res['users_in_error']} users in error after the initial sync"))
        self.verify(side, self.expected, "(1)")
        return res

    # -- (2) full pass with nothing changed ---------------------------------------------

    def full_pass(self, side):
        n = len(self.users)
        timeout = self.args.timeout
        if side == "standin":
            st0 = self.status("b")
            if st0["pass_active"] or st0["jobs_queued"] or st0["jobs_running"]:
                self.wait_quiet(side)
                st0 = self.status("b")
            log(f"(2) standin: loadavg {loadavg()}; admin command pass on b")
            t0 = time.monotonic()
            r = json.loads(sb.query(self.daemons["b"].sock, "pass"))
            if not r.get("pass_active"):
                raise BenchError(f"pass: {r}")
            while True:
                self.sample_conns(side)
                st = self.status("b")
                if st is not None and st["passes"] > st0["passes"] and not st["pass_active"]:
                    t1 = time.monotonic()
                    break
                if time.monotonic() - t0 > timeout:
                    raise BenchError(f"(2) standin: the pass did not end within {timeout}s: {st}")
                time.sleep(0.01)
            res = dict(time=st["last_pass_ms"] / 1000.0, wall=t1 - t0, users_in_error=st["users_in_error"],
                       appended=st["appended"] - st0["appended"])
            log(f"(2) standin: last_pass_ms {st['last_pass_ms']} (pass command to its end seen: "
                f"{t1 - t0:.2f}s); appended {res['appended']}, users_in_error {st['users_in_error']}")
        else:
            self.wait_quiet(side)
            log(f"(2) dsync: loadavg {loadavg()}; doveadm replicator replicate -f '*'")
            t0w = time.time()
            t0 = time.monotonic()
            self.c.doveadm("replicator", "replicate", "-f", "*")
            lfs = {}                      # user -> latest last-full-sync second bound
            while True:
                self.sample_conns(side)
                w0 = time.time()
                summ, ustat = self.replicator_status()
                w1 = time.time()
                queued = sum(v for k, v in summ.items() if k.startswith("Queued"))
                for u in ustat:
                    age = hms(u.get("full sync"))
                    if age is None:
                        continue
                    # the replicator's clock (whole seconds) when it answered is in
                    # [floor(w0), floor(w1)]; the sync ended in [now - age, now - age + 1)
                    lo = int(w0) - age
                    if lo >= int(t0w) and u["username"] not in lfs:
                        lfs[u["username"]] = (int(w0) - age, int(w1) - age + 1)
                if len(lfs) >= n and queued == 0:
                    t1 = time.monotonic()
                    break
                if time.monotonic() - t0 > timeout:
                    raise BenchError(f"(2) dsync: {len(lfs)} of {n} users fully synced after {timeout}s: {summ}")
                time.sleep(max(0.1, 3 * (time.time() - w0)))     # the polls: at most a quarter of a core
            lo = max(v[0] for v in lfs.values()) - t0w
            hi = min(max(v[1] for v in lfs.values()) - t0w, t1 - t0)
            failed = sum(1 for u in ustat if u.get("failed") == "y")
            res = dict(time=(max(lo, 0) + hi) / 2, lo=lo, hi=hi, wall=t1 - t0, users_in_error=failed)
            log(f"(2) dsync: every user's full sync after the command and queues empty: {res['time']:.2f}s "
                f"(between {max(lo, 0):.2f} and {hi:.2f}s; seen by the polls at {t1 - t0:.2f}s); users failed "
                f"{failed}")
        return res

    def wait_quiet(self, side, timeout=120):
        """Until the replicator has nothing queued or running (standin: no
        pass, no job; dsync: the queues empty).  Not being quiet after
        TIMEOUT seconds is recorded as an error, and the run goes on."""
        t0 = time.monotonic()
        while True:
            self.sample_conns(side)
            if side == "standin":
                st = self.status("b")
                if st and not st["pass_active"] and st["jobs_queued"] == 0 and st["jobs_running"] == 0:
                    return True
                what = {k: st.get(k) for k in ("pass_active", "jobs_queued", "jobs_running", "idling",
                                                "polling", "users_in_error")} if st else st
            else:
                summ, ustat = self.replicator_status()
                if sum(v for k, v in summ.items() if k.startswith("Queued")) == 0:
                    return True
                what = summ
            if time.monotonic() - t0 > timeout:
                msg = f"not quiet after {timeout}s (the run goes on): {what}"
                log(f"{side} {msg}")
                self.errors.append((side, msg))
                return False
            time.sleep(0.05)

    # -- (3) push latency ------------------------------------------------------------------

    def latency(self, side):
        master, standby = self.pair(side)
        self.wait_quiet(side)
        count = min(self.args.latency_users, len(self.users))
        users = random.Random(self.args.seed).sample(self.users, count)
        poll = self.args.poll_ms / 1000.0
        lat, missing = [], []
        log(f"(3) {side}: loadavg {loadavg()}; {count} users, one APPEND each to INBOX on the master, "
            f"{self.args.gap_ms:g} ms apart")
        for k, user in enumerate(users):
            w = standby.imap(user, master=True, timeout=60)
            try:
                typ, data = w.select("INBOX", readonly=True)
                exists = int(data[0])
                body = (f"From: push <push@example.com>\r\nTo: {user}@example.com\r\nSubject: push {k}\r\n"
                        f"Message-ID: <push.{side}.{k}.{user}@bench.example.com>\r\n\r\npush {k}\r\n").encode()
                with master.imap(user, master=True, timeout=60) as c:
                    typ, data = c.append("INBOX", None, None, body)
                    t_ret = time.monotonic()
                    if typ != "OK":
                        raise BenchError(f"APPEND for {user}: {data}")
                seen = None
                while time.monotonic() - t_ret < self.args.latency_timeout:
                    w.noop()
                    t = time.monotonic()
                    typ, data = w.response("EXISTS")
                    if data and data[-1] is not None and int(data[-1]) > exists:
                        seen = t
                        break
                    time.sleep(poll)
                if seen is None:
                    missing.append(user)
                    log(f"(3) {side}: {user}'s message not on the standby after {self.args.latency_timeout:g}s")
                else:
                    lat.append((seen - t_ret) * 1000.0)
            finally:
                try:
                    w.logout()
                except Exception:  # noqa: BLE001
                    pass
            self.sample_conns(side)
            if side == "standin":
                self.status("b")
            time.sleep(self.args.gap_ms / 1000.0)
        if not lat:
            raise BenchError(f"(3) {side}: no message arrived")
        res = dict(p50=percentile(lat, 50), p99=percentile(lat, 99), max=max(lat), min=min(lat), n=len(lat),
                   missing=len(missing))
        log(f"(3) {side}: push latency p50 {res['p50']:.0f} ms, p99 {res['p99']:.0f} ms, min {res['min']:.0f}, "
            f"max {res['max']:.0f} ms ({len(lat)} arrived, {len(missing)} missing); loadavg {loadavg()}")
        if missing:
            self.errors.append((side, f"{len(missing)} pushed messages not on the standby after "
                                      f"{self.args.latency_timeout:g}s, e.g. {missing[:3]}"))
        return res

    # -- (4) steady state ----------------------------------------------------------------------

    def steady(self, side):
        master, standby = self.pair(side)
        self.wait_quiet(side)
        me = os.getpid()
        conns = {pid: v for pid, v in client_conns(master.port).items() if pid != me}
        n_conns = sum(c for _, c in conns.values())
        self.peak_conns = max(self.peak_conns, n_conns)
        mp = server_procs(master)
        sp = server_procs(standby)
        imap = [p for p, c in mp.items() if c == "imap"]
        dadm = [p for p, c in mp.items() if c in DOVEADM_PROCS]
        sdadm = [p for p, c in sp.items() if c in DOVEADM_PROCS]
        if side == "standin":
            rpids = [d.proc.pid for d in self.daemons.values() if d.running()]
            what = "standin-imaprepl a + b"
        else:
            rpids = [p for p, c in mp.items() if c in DSYNC_PROCS] + sdadm
            what = ("master replicator, aggregator, doveadm: " +
                    ", ".join(f"{c}" for p, c in mp.items() if c in DSYNC_PROCS) +
                    f"; standby doveadm: {len(sdadm)}")
        self.sample_conns(side, procs=True)
        res = dict(conns=n_conns, conns_by=sorted(f"{name}[{pid}] {c}" for pid, (name, c) in conns.items()),
                   peak_conns=self.peak_conns, fds=sum(fd_count(p) for p in rpids), repl_procs=len(rpids),
                   repl_pss=sum(pss_kb(p) for p in rpids), imap=len(imap), imap_pss=sum(pss_kb(p) for p in imap),
                   doveadm=len(dadm), doveadm_pss=sum(pss_kb(p) for p in dadm),
                   peak_imap=self.peak.get("imap", 0), peak_doveadm=self.peak.get("doveadm", 0),
                   master_procs=len(mp), master_pss=sum(pss_kb(p) for p in mp),
                   doveadm_conns=sum(c for pid, (n, c) in client_conns(self.dsync_port).items()),
                   what=what)
        log(f"(4) {side}: connections to the master's IMAP port {n_conns} "
            f"({', '.join(res['conns_by']) or 'none'}), "
            f"highest seen in (1)-(3) {self.peak_conns}; replicator descriptors {res['fds']} in "
            f"{len(rpids)} processes ({what}), their PSS {res['repl_pss'] / 1024:.1f} MB; master Dovecot: "
            f"{res['imap']} imap processes, PSS {res['imap_pss'] / 1024:.1f} MB, {res['doveadm']} doveadm "
            f"processes, PSS {res['doveadm_pss'] / 1024:.1f} MB, all {res['master_procs']} processes "
            f"{res['master_pss'] / 1024:.1f} MB; connections to the standby's doveadm port {res['doveadm_conns']}")
        return res

    # -- one side -------------------------------------------------------------------------------

    def run_side(self, side, res):
        """Run (1)-(4) for SIDE, results into RES as they come."""
        master, standby = self.pair(side)
        self.peak_conns = 0
        self.peak = {}
        self.expected = self.index_master(master)
        if side == "standin":
            if self.args.standin_changes == "dovecot":
                self.append_conf(master, "mail_plugins = $mail_plugins notify replication\n"
                                         "plugin {\n  mail_replica = standin\n}\n"
                                         "service aggregator {\n  fifo_listener replication-notify-fifo {\n"
                                         "    mode = 0\n  }\n  unix_listener replication-notify {\n"
                                         "    mode = 0\n  }\n}\n")
        else:
            self.append_conf(master, self.dsync_master_conf())
            self.append_conf(standby, self.dsync_standby_conf())
        try:
            res["initial"] = self.initial(side)
            res["pass"] = self.full_pass(side)
            res["latency"] = self.latency(side)
            self.verify(side, None, "(3)")
            res["steady"] = self.steady(side)
        finally:
            if side == "standin":
                self.standin_stop()
                if self.etcd is not None:
                    self.etcd.stop()
            for s in (master, standby):
                if s.is_running():
                    s.stop()

    def report_logs(self):
        """Lines at warning level or worse in standin's logs and the Dovecots'."""
        bad_total = 0
        for node in ("a", "b"):
            path = os.path.join(self.base, f"imaprepl-{node}.log")
            if not os.path.exists(path):
                continue
            with open(path, errors="replace") as f:
                lines = f.read().splitlines()
            bad = [x for x in lines if re.search(r"\] (warn\w*|err\w*|crit\w*|fatal|alert|emerg)\b", x)
                   or "conflict" in x.lower()]
            bad_total += len(bad)
            out(f"standin-imaprepl {node} log: {len(lines)} lines, {len(bad)} at level warning or worse "
                f"or naming a conflict")
            for x in bad[:15]:
                out("  " + x)
        for s in (self.a, self.b, self.c, self.d):
            if not os.path.exists(s.logfile):
                continue
            with open(s.logfile, errors="replace") as f:
                lines = f.read().splitlines()
            bad = [x for x in lines if re.search(r": (Warning|Error|Fatal|Panic): ", x)
                   and "Killed with signal 15" not in x]     # our stop
            out(f"Dovecot {s.name} log: {len(lines)} lines, {len(bad)} warnings or errors")
            seen = set()
            for x in bad:
                key = re.sub(r"\d+", "N", x.split(": ", 1)[-1])[:120]
                if key not in seen and len(seen) < 8:
                    seen.add(key)
                    out("  " + x[:300])
        return bad_total


def ratio(x, y):
    return f"{x / y:.2f}x" if y else "-"


def main():
    global sh, sb, IMAPREPL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="/tmp/bench-imap-build",
                   help="configured build directory (CFLAGS=-O2 -g, no sanitizers)")
    p.add_argument("--no-make", action="store_true", help="do not run make in --build first")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--standin-changes", choices=("dovecot", "idle"), default="dovecot",
                   help="[imap] changes for standin-imaprepl")
    p.add_argument("--idle-users", type=int, default=None,
                   help="[imap] idle_users with --standin-changes idle (default: not set)")
    p.add_argument("--workers", type=int, default=8, help="[imap] workers")
    p.add_argument("--dsync-conns", type=int, default=10, help="replication_max_conns for dsync")
    p.add_argument("--dovecot-tuning", choices=("none", "performance"), default="none",
                   help="all four Dovecots: their defaults, or the CPU tuning of Dovecot's "
                        "performance tuning page (login processes in high-performance mode, "
                        "imap and doveadm processes reused for 100 connections, auth cache)")
    p.add_argument("--latency-users", type=int, default=50, help="(3): users, one APPEND each")
    p.add_argument("--latency-timeout", type=float, default=10, help="(3): seconds allowed per message")
    p.add_argument("--gap-ms", type=float, default=200, help="(3): pause between two users")
    p.add_argument("--poll-ms", type=float, default=5, help="(3): the standby is polled (NOOP) every POLL_MS")
    p.add_argument("--poll-s", type=float, default=0.25, help="(1): progress polled every POLL_S seconds")
    p.add_argument("--first", choices=SIDES, default="standin", help="which side runs first")
    p.add_argument("--timeout", type=float, default=1500, help="seconds allowed for (1) and for (2), per side")
    p.add_argument("--seed", type=int, default=1, help="(3): which users")
    p.add_argument("--debug-log", action="store_true", help="standin-imaprepl logs at level debug")
    p.add_argument("--keep", action="store_true", help="keep the servers' directories")
    args = p.parse_args()
    build = os.path.abspath(args.build)
    os.environ["STANDIN_BUILDDIR"] = build
    if args.keep:
        os.environ["STANDIN_KEEP_TMP"] = "1"
    import standin_harness as sh_mod
    import standin_bin as sb_mod
    sh, sb = sh_mod, sb_mod
    IMAPREPL = PROGRAMS[0]

    commit = preamble("bench/imap/scale.py: standin-imaprepl against Dovecot's replicator (dsync) at scale",
                      ROOT, build, PROGRAMS, sb.program, f"dovecot: {cmd_out([sh.DOVECOT, '--version'])}",
                      make=not args.no_make)
    src = ""
    for line in open(os.path.join(build, "Makefile")):
        if line.startswith("abs_top_srcdir ="):
            src = line.split("=", 1)[1].strip()
    if src:
        out(f"build source: {src} at {cmd_out(['git', '-C', src, 'rev-parse', '--short', 'HEAD'])}")
    out(f"options: users {args.users}, standin changes = {args.standin_changes}, workers {args.workers}, "
        f"dsync replication_max_conns {args.dsync_conns}, latency users {args.latency_users}, "
        f"first {args.first}, Dovecot tuning {args.dovecot_tuning}")
    load_before = loadavg()
    out(f"loadavg before: {load_before}")
    out()

    bench = None
    failed = True
    res = {}
    t_start = time.monotonic()
    try:
        bench = Bench(args)
        bench.load()
        order = list(SIDES) if args.first == "standin" else list(reversed(SIDES))
        for side in order:
            res[side] = {}
            try:
                bench.run_side(side, res[side])
            except Exception as e:  # noqa: BLE001 - the other side still runs
                log(f"{side} FAILED: {e!r}")
                lines = str(e).splitlines() or [repr(e)]
                res[side]["failed"] = lines[0][:300] + (f" ... {lines[-1][:300]}" if len(lines) > 1 else "")
                bench.errors.append((side, f"FAILED: {e}"[:3000]))
                if not isinstance(e, (BenchError, sh.HarnessError)):
                    import traceback
                    traceback.print_exc(file=sys.stdout)
            if side == "standin" and hasattr(bench, "confs"):
                out(f"{os.path.basename(bench.confs['a'])} [imap]"
                    + (" (standin-b.conf: the same but dovecot_fifo, in b's Dovecot base_dir)"
                       if bench.confs["a"] != bench.confs["b"] else "") + ":\n  "
                    + open(bench.confs["a"]).read().split("[imap]\n", 1)[1].strip().replace("\n", "\n  "))
        failed = any("failed" in r for r in res.values())
    except Exception as e:  # noqa: BLE001 - reported, then the servers are stopped
        log(f"FAILED: {e!r}")
        if not isinstance(e, (BenchError, sh.HarnessError)):
            import traceback
            traceback.print_exc(file=sys.stdout)
    finally:
        if bench is not None:
            out()
            bench.report_logs()
            if bench.errors:
                out("errors seen:")
                for side, e in bench.errors:
                    out(f"  ({side}) {e}")
            try:
                bench.h.close(failed=failed)
            except sh.HarnessError as e:
                out(f"harness: {e}")
    out(f"\nSUMMARY ({args.users} users, {PER_USER} messages each in {len(FOLDERS)} folders; standin "
        f"changes = {args.standin_changes}, workers {args.workers}; dsync replication_max_conns "
        f"{args.dsync_conns}; commit {commit}; {time.monotonic() - t_start:.0f}s in all; loadavg before "
        f"{load_before}, after {loadavg()})")
    for side in SIDES:
        if res.get(side, {}).get("failed"):
            out(f"{side} FAILED: {res[side]['failed']}")

    def g(side, part, key):
        return res.get(side, {}).get(part, {}).get(key)

    def row(what, part, key, fmt="{:.2f}", rat=True):
        v = [g(x, part, key) for x in SIDES]
        cells = [fmt.format(x) if x is not None else "-" for x in v]
        r = ratio(v[0], v[1]) if rat and None not in v else "-"
        out(f"| {what} | {cells[0]} | {cells[1]} | {r} |")

    kb = "{:.1f}"
    out("| figure | standin | dsync | standin/dsync |")
    out("| --- | --- | --- | --- |")
    row("(1) initial sync, time (s)", "initial", "time")
    row("(1) initial sync, messages/s", "initial", "rate", "{:.0f}")
    row("(1) initial sync, users/s", "initial", "users_rate", "{:.1f}")
    row("(1) all files on the standby at (s)", "initial", "files_time")
    row("(1) replicator done at (s)", "initial", "done_time")
    row("(1) Dovecot CPU, master (s)", "initial", "master_cpu", "{:.1f}")
    row("(1) Dovecot CPU, standby (s)", "initial", "standby_cpu", "{:.1f}")
    row("(1) IMAP logins, master", "initial", "master_logins", "{}")
    row("(1) IMAP logins, standby", "initial", "standby_logins", "{}")
    row("(1) users in error", "initial", "users_in_error", "{}", rat=False)
    row("(2) full pass, nothing changed (s)", "pass", "time")
    row("(2) users in error", "pass", "users_in_error", "{}", rat=False)
    for k in ("p50", "p99", "max"):
        row(f"(3) push latency {k} (ms)", "latency", k, "{:.0f}")
    row("(3) pushed messages missing", "latency", "missing", "{}", rat=False)
    row("(4) connections to the master's IMAP port", "steady", "conns", "{}")
    row("(4) connections to the master, highest in (1)-(3)", "steady", "peak_conns", "{}")
    row("(4) replicator open descriptors", "steady", "fds", "{}")
    for key in ("repl_pss", "imap_pss", "doveadm_pss", "master_pss"):
        if res.get("standin", {}).get("steady") or res.get("dsync", {}).get("steady"):
            for x in SIDES:
                st = res.get(x, {}).get("steady")
                if st is not None and not isinstance(st.get(key), float):
                    st[key] = st[key] / 1024.0
    row("(4) replicator PSS (MB)", "steady", "repl_pss", kb)
    row("(4) imap processes on the master", "steady", "imap", "{}")
    row("(4) imap processes on the master, highest in (1)-(3)", "steady", "peak_imap", "{}")
    row("(4) their PSS now (MB)", "steady", "imap_pss", kb)
    row("(4) doveadm processes on the master", "steady", "doveadm", "{}")
    row("(4) doveadm processes on the master, highest in (1)-(3)", "steady", "peak_doveadm", "{}")
    row("(4) their PSS now (MB)", "steady", "doveadm_pss", kb)
    row("(4) master Dovecot, all processes, PSS (MB)", "steady", "master_pss", kb)
    for x in SIDES:
        st = res.get(x, {}).get("steady")
        if st:
            out(f"{x}: replicator processes counted: {st['what']}")
    dp = res.get("dsync", {}).get("pass")
    if dp:
        out(f"dsync's pass time is the middle of [{max(dp['lo'], 0):.2f}, {dp['hi']:.2f}] s (Dovecot shows "
            f"ages in whole seconds)")

    out(f"\nTARGETS ({args.users} users; the targets are set for 5000)")
    sl = res.get("standin", {}).get("latency")
    ss_ = res.get("standin", {}).get("steady")
    si = res.get("standin", {}).get("initial")
    di = res.get("dsync", {}).get("initial")
    sp = res.get("standin", {}).get("pass")
    checks = [
        ("push latency p99 < 2 s",
         sl and (f"{sl['p99']:.0f} ms, {sl['missing']} missing", sl["p99"] < 2000 and sl["missing"] == 0)),
        (f"connections to the master <= workers + 2 = {args.workers + 2}",
         ss_ and (f"{ss_['conns']} in the steady state, {ss_['peak_conns']} at most",
                  ss_["peak_conns"] <= args.workers + 2)),
        ("initial sync >= 1.0x dsync's rate",
         si and di and (f"{si['rate'] / di['rate']:.2f}x", si["rate"] >= di["rate"])),
        ("0 users in error",
         si and sp and (f"{si['users_in_error']} after (1), {sp['users_in_error']} after (2)",
                        si["users_in_error"] + sp["users_in_error"] == 0)),
    ]
    for what, r in checks:
        out(f"- {what}: " + (f"{r[0]}: {'met' if r[1] else 'NOT met'}" if r else "no figure (NOT met)"))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
