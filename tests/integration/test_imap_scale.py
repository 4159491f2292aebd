"""standin-imaprepl learning changes from Dovecot itself ([imap] changes =
dovecot) and at scale, against a real Dovecot 2.3 pair and a real etcd.

Both Dovecots run the replication plugin with their own aggregator listener
disabled, so standin-imaprepl on each node makes and reads the plugin's
FIFO; the master's daemon relays the names through etcd to the standby's.
Checked: new mail, flags, a new folder and a rename reach the standby
within seconds with no IDLE session; notices lost while the master's
daemon is down are made up for; a 1,000-user pair ends equal, with the
standby daemon's descriptors and its connections to the master within the
bounds set by [imap] workers, push within 2 s for random users, and a full
pass over unchanged users that logs into the standby for none of them."""
import grp
import os
import pwd
import random
import stat
import threading
import time

import pytest

import standin_harness as sh
from standin_bin import STANDINCTL, StandinDaemon, query, run
from test_imaprepl import IMAPREPL, ImapEnv, message, q

pytestmark = pytest.mark.servers

WORKERS = 4


class NoticeEnv(ImapEnv):
    """ImapEnv with changes = dovecot: etcd, dovecot_fifo.NODE (each node's
    Dovecot has its own base_dir on this one host), and standin-imaprepl on
    both nodes (a relays, b replicates)."""

    def __init__(self, harness, users, full_pass="10m", debug=False):
        if not os.path.exists(sh.ETCD):
            pytest.skip("etcd-server is not installed")
        self.etcd = sh.EtcdServer(harness).start()
        # The cluster state is made on each node by ImapEnv; etcd and the
        # notices are then added to each node's configuration.
        super().__init__(harness, users=users, dovecot_conf=sh.DOVECOT_NOTICES_CONF, debug=debug)
        with open(self.conf) as f:
            text = f.read()
        text = text.replace("name = itest\n", f"name = itest\netcd = {self.etcd.url}\n", 1)
        text += f"changes = dovecot\ndovecot_fifo_user = {sh.MAIL_OS_USER}\n"
        text = text.replace("full_pass_interval = 30s\n", f"full_pass_interval = {full_pass}\n")
        text = text.replace("workers = 4\n", f"workers = {WORKERS}\n")
        for s in (self.a, self.b):
            text += f"dovecot_fifo.{s.node} = {s.run_dir}/replication-notify-fifo\n"
        with open(self.conf, "w") as f:
            f.write(text)

    def start_both(self):
        self.start("a")
        self.start("b")
        self.wait_status(lambda s: s["notices"]["fifo"] == "open" and s["notices"]["relaying"],
                         "a's FIFO open and relaying", node="a")
        self.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming"
                         and s["notices"]["following"] == "a", "b's first pass", timeout=600)

    def count(self, server, user, folder="INBOX"):
        with server.imap(user, master=True) as c:
            typ, data = c.status(q(folder), "(MESSAGES)")
            if typ != "OK":
                return None
            return int(data[0].decode().rsplit("MESSAGES ", 1)[1].rstrip(")"))

    def push_latency(self, user, folder="INBOX", timeout=20):
        """APPEND one message on the master; seconds until the standby has it."""
        before = self.count(self.b, user, folder) or 0
        self.a.append(user, folder, message(random.randrange(10**9)))
        t0 = time.monotonic()
        sh.wait_until(lambda: (self.count(self.b, user, folder) or 0) > before, timeout,
                      f"{user}/{folder}: the new message on the standby", interval=0.05)
        return time.monotonic() - t0


def passes(env):
    return env.status()["passes"]


def test_dovecot_notices_push_without_idle(harness):
    env = NoticeEnv(harness, users=("alice", "bob", "carol"))
    env.bulk_append(env.a, "alice", "INBOX", [message(i) for i in range(5)])
    env.start_both()
    env.wait_equal()
    done = passes(env)
    # New mail, in INBOX and elsewhere: by the notices (the pass is 10 minutes away).
    lat = [env.push_latency(u) for u in ("alice", "bob", "carol", "bob")]
    env.bulk_append(env.a, "carol", "Projects", [message(50)])
    env.wait_equal(timeout=10)
    lat.append(env.push_latency("carol", "Projects"))
    # A flag, a rename and a subscription.
    with env.imap(env.a, "alice") as c:
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Flagged $Work)")
    with env.imap(env.a, "carol") as c:
        assert c.rename(q("Projects"), q("Projects-2026"))[0] == "OK"
        c.subscribe(q("Projects-2026"))
    env.wait_equal(timeout=10)
    st = env.status()
    assert st["passes"] == done, "a full pass ran: the changes did not come by the notices"
    assert st["idling"] == 0 and st["changes"] == "dovecot", st
    assert st["notices"]["applied"] >= 5 and st["notices"]["watch_error"] is None, st["notices"]
    sa = env.status("a")
    assert sa["notices"]["relayed"] >= 5 and sa["notices"]["relay_error"] is None, sa["notices"]
    assert max(lat) < 5, f"push latencies {lat}"
    print(f"push latencies (s): {[round(x, 3) for x in lat]}")


def test_notices_lost_while_the_relay_is_down_are_made_up(harness):
    env = NoticeEnv(harness, users=("alice", "bob"), debug=True)
    env.a.append("alice", "INBOX", message(0))
    env.start_both()
    env.wait_equal()
    # The master's daemon dies: Dovecot finds no reader on the FIFO, and the
    # notice of this message is lost.
    before = passes(env)
    env.daemons["a"].kill9()
    env.a.append("alice", "INBOX", message(1))
    # Its new boot relays a first, empty batch: the standby takes it as a
    # gap and makes up for it with a pass.
    env.start("a")
    env.wait_status(lambda s: s["notices"]["fifo"] == "open", "a's FIFO open again", node="a")
    env.a.append("bob", "INBOX", message(2))
    env.wait_equal(timeout=30)
    st = env.wait_status(lambda s: s["passes"] > before and s["notices"]["gaps"] >= 1, "the pass for the gap")
    # Something under the prefix that is not a batch: said, and a pass makes up for it.
    import base64
    import json
    import urllib.request
    b64 = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731
    req = urllib.request.Request(env.etcd.url + "/v3/kv/put", method="POST", data=json.dumps(
        {"key": b64("/standin/itest/imap-notices/a/zzz"), "value": b64("not json")}).encode())
    urllib.request.urlopen(req, timeout=10).read()
    gaps, done = st["notices"]["gaps"], st["passes"]
    env.wait_status(lambda s: s["notices"]["gaps"] > gaps and s["passes"] > done, "the pass for the bad batch")
    assert "is not a batch of notices; a full pass makes up for it" in env.daemon.output()


def test_fifo_is_checked(harness, tmp_path):
    env = NoticeEnv(harness, users=("alice",))
    # A regular file where the FIFO goes: said, and nothing else breaks.
    path = os.path.join(env.a.run_dir, "replication-notify-fifo")
    with open(path, "w") as f:
        f.write("not a fifo\n")
    env.start("a")
    st = env.wait_status(lambda s: s["notices"]["fifo_error"] is not None, "the FIFO error", node="a")
    assert "exists and is not a FIFO" in st["notices"]["fifo_error"], st["notices"]
    os.unlink(path)
    st = env.wait_status(lambda s: s["notices"]["fifo"] == "open", "the FIFO made", node="a")
    info = os.lstat(path)
    assert stat.S_ISFIFO(info.st_mode) and info.st_mode & 0o777 == 0o600, oct(info.st_mode)
    assert info.st_uid == pwd.getpwnam(sh.MAIL_OS_USER).pw_uid
    # Garbage on the FIFO (a control character, an over-long line) is skipped.
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, b"bad\x01zname\tlow\n" + b"x" * 5000 + b"\tlow\nalice\thigh\n")
    os.close(fd)
    st = env.wait_status(lambda s: s["notices"]["received"] >= 1, "alice's notice", node="a")
    assert st["notices"]["received"] == 1, st["notices"]
    assert "names no user" in env.daemons["a"].output()
    # No [cluster] etcd: the configuration says why it needs one.
    bad = os.path.join(env.base, "noetcd.conf")
    with open(env.conf) as f:
        text = f.read()
    with open(bad, "w") as f:
        f.write(text.replace(f"etcd = {env.etcd.url}\n", ""))
    r = run(STANDINCTL, "-c", bad, "config", "check")
    assert r.returncode != 0 and "changes = dovecot needs [cluster] etcd" in r.stderr + r.stdout, r.stderr


def test_idle_set_is_bounded_and_follows_the_users_that_change(harness):
    users = [f"user{i}" for i in range(6)]
    env = ImapEnv(harness, users=users, extra="idle_users = 2\n")
    with open(env.conf) as f:
        text = f.read()
    with open(env.conf, "w") as f:
        f.write(text.replace("full_pass_interval = 30s\n", "full_pass_interval = 10m\n"))
    for u in users:
        env.a.append(u, "INBOX", message(0))
    env.start()
    st = env.wait_status(lambda s: s["passes"] >= 1 and s["idling"] == 2, "two IDLE sessions")
    assert st["idle_users_max"] == 2 and st["changes"] == "idle", st
    # A user outside the set: its change comes with the next pass, and then
    # it is in the set (it changed last), so the next change is pushed.
    x = next(u for u in users if u not in st["idling_users"])
    env.a.append(x, "INBOX", message(1))
    query(env.daemon.sock, "pass")
    env.wait_equal(timeout=30, users=[x])
    st = env.wait_status(lambda s: x in s["idling_users"], f"{x} in the IDLE set", timeout=30)
    assert st["idling"] <= 2, st
    before = st["passes"]
    with env.imap(env.b, x) as c:
        c.select("INBOX", readonly=True)
        n0 = len(c.search(None, "ALL")[1][0].split())
    env.a.append(x, "INBOX", message(2))
    t0 = time.monotonic()

    def arrived():
        with env.imap(env.b, x) as c:
            c.select("INBOX", readonly=True)
            return len(c.search(None, "ALL")[1][0].split()) > n0
    sh.wait_until(arrived, 20, f"{x}'s new message on the standby", interval=0.05)
    lat = time.monotonic() - t0
    st = env.status()
    assert st["passes"] == before and st["idling"] <= 2, st
    assert lat < 5, lat
    env.wait_equal(timeout=60)


def test_descriptor_limit_bounds_idle_and_exhaustion_is_said(harness):
    users = [f"user{i}" for i in range(8)]
    env = ImapEnv(harness, users=users, extra="idle_users = 16\n")
    for u in users:
        env.a.append(u, "INBOX", message(0))
    # 66 descriptors: 32 kept back, 24 for 4 workers' sessions, room for 3 IDLE sessions.
    d = StandinDaemon(IMAPREPL, env.conf, "b", os.path.join(env.base, "b", "run"),
                      os.path.join(env.base, "imaprepl-b.log"), prefix=["prlimit", "--nofile=66:66"])
    harness.add_cleanup(d.stop)
    env.daemons["b"] = d
    st = env.wait_status(lambda s: s["passes"] >= 1 and s["idling"] == 3, "three IDLE sessions")
    assert st["idle_users_max"] == 3, st
    assert "leaves room for 3 IDLE sessions: [imap] idle_users = 16 lowered to 3" in d.output()
    env.wait_equal(timeout=60)
    # Out of descriptors (no new one below 16): said as such, and never
    # taken for a cluster change.
    mark = len(d.output())
    sh.run(["prlimit", "--pid", str(d.proc.pid), "--nofile=16:66"])
    env.a.append("user7", "INBOX", message(1))
    os.utime(os.path.join(env.base, "b", "state", "cluster.state"))   # make it read the state file
    sh.wait_until(lambda: "Too many open files" in d.output()[mark:], 90, "the error said")
    out = d.output()[mark:]
    assert "restarting replication" not in out and "replication stopped" not in out, out[-3000:]
    sh.run(["prlimit", "--pid", str(d.proc.pid), "--nofile=66:66"])
    env.wait_equal(timeout=90)
    assert d.running()
    st = env.wait_status(lambda s: s["state"] == "streaming", "a clean pass again", timeout=90)
    assert st["users_in_error"] == 0, st


def _populate(server, users):
    """Two messages in INBOX and one in Sent per user, as Maildir files."""
    uid = pwd.getpwnam(sh.MAIL_OS_USER).pw_uid
    gid = grp.getgrnam(sh.MAIL_OS_GROUP).gr_gid
    now = int(time.time())
    for n, u in enumerate(users):
        md = server.maildir(u)
        for sub in ("", ".Sent"):
            for d in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(md, sub, d), exist_ok=True)
        files = [("", 0, "S"), ("", 1, ""), (".Sent", 2, "S")]
        for sub, i, flags in files:
            name = f"{now}.M{n}P{i}.standin:2,{flags}"
            with open(os.path.join(md, sub, "cur", name), "wb") as f:
                f.write(message(n * 10 + i))
        for root, dirs, fs in os.walk(server.home(u)):
            for x in dirs + fs:
                os.chown(os.path.join(root, x), uid, gid)


def _master_connections(daemon_pid, port):
    """TCP connections of DAEMON_PID to PORT on loopback (from /proc)."""
    inodes = set()
    fd_dir = f"/proc/{daemon_pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    with open(f"/proc/{daemon_pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[9] in inodes and int(parts[2].split(":")[1], 16) == port and parts[3] == "01":
                n += 1
    return n


def test_thousand_users(harness):
    users = [f"u{i:04d}" for i in range(1000)]
    env = NoticeEnv(harness, users=users)
    _populate(env.a, users)
    sample = {"fds": 0, "conns": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            d = env.daemons.get("b")
            if d is not None and d.running():
                try:
                    sample["fds"] = max(sample["fds"], len(os.listdir(f"/proc/{d.proc.pid}/fd")))
                    sample["conns"] = max(sample["conns"], _master_connections(d.proc.pid, env.a.port))
                except OSError:
                    pass
            stop.wait(0.2)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        env.start_both()
        env.wait_status(lambda s: s["users_in_error"] == 0 and s["messages_behind"] == 0
                        and s["jobs_queued"] == 0, "every user copied", timeout=600)
        sync_s = time.monotonic() - t0
        st = env.status()
        assert st["users"] == 1000 and st["messages"] == 3000, st
        # Every user's counts are equal (doveadm on both sides), a sample byte for byte.
        def counts(server):
            out = server.doveadm("-f", "tab", "mailbox", "status", "-A", "messages", "*")
            return sorted(line for line in out.splitlines()[1:] if line.strip())
        assert counts(env.a) == counts(env.b)
        problems, n = env.diff(users=random.sample(users, 20))
        assert not problems, problems
        # Push for random users, with nothing else going on.
        lat = [env.push_latency(u) for u in random.sample(users, 10)]
        # A full pass over 1,000 unchanged users: quick checks only.
        before = st["passes"]
        query(env.daemon.sock, "pass")
        st = env.wait_status(lambda s: s["passes"] > before, "the full pass", timeout=300)
        pass_ms = st["last_pass_ms"]
    finally:
        stop.set()
        t.join()
    def logins(server):
        with open(server.logfile, errors="replace") as f:
            return sum(1 for line in f if "imap-login: Info: Login: user=<" in line)
    print(f"1000 users: initial sync {sync_s:.1f} s, full pass {pass_ms} ms, push {sorted(round(x, 3) for x in lat)}, "
          f"daemon fds max {sample['fds']}, connections to the master max {sample['conns']}, "
          f"logins on the master {logins(env.a)}, on the standby {logins(env.b)}")
    assert sample["conns"] <= WORKERS + 2, sample
    assert sample["fds"] <= WORKERS * 2 * 3 + 64, sample
    assert sorted(lat)[len(lat) // 2] < 2.0 and max(lat) < 5, lat
    assert st["idling"] == 0 and st["users_in_error"] == 0, st
