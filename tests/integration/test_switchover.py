"""standinctl switchover for real: PostgreSQL 15, slapd 2.5 and Dovecot 2.3 on
nodes a and b, every standin daemon on both nodes (the three replicators, the
proxy, standin-failoverd), a one-member etcd, and clients writing through the
proxy all along.  The switchover goes only through etcd: standinctl writes
orders, each node's standin-failoverd carries out its own.

Every acknowledged write (a PostgreSQL commit, an LDAP add, an IMAP APPEND)
must be on the new master and none twice; the clients see a pause; a failure
before the new epoch rolls back, and the old master takes writes again."""
import imaplib
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import standin_harness as sh
from standin_bin import PGREPL, STANDINCTL, StandinDaemon, run

pytestmark = pytest.mark.servers

LDAPREPL = "replicators/ldap/standin-ldaprepl"
IMAPREPL = "replicators/imap/standin-imaprepl"
PROXY = "proxy/standin-proxy"
FAILOVERD = "failover/standin-failoverd"
NODES = ("a", "b")


class Cluster:
    """Both nodes with everything running; a is the master."""

    def __init__(self, harness, etcd, nodes=NODES):
        self.h = harness
        self.etcd = etcd
        self.nodes = nodes
        pw = "pw-" + os.urandom(6).hex()
        self.pg = {n: harness.start_pg(n, fsync=False, password=pw, preload_ddl=True)
                   for n in nodes}
        for s in self.pg.values():
            s.create_database("groupware")
        ldap_pw = "pw-" + os.urandom(6).hex()
        self.ldap = {n: harness.start_slapd(n, "master" if n == "a" else "standby",
                                            password=ldap_pw, server_id=i + 1)
                     for i, n in enumerate(nodes)}
        imap_pw = "pw-" + os.urandom(6).hex()
        self.imap = {n: harness.start_dovecot(n, master_password=imap_pw) for n in nodes}
        self.base = harness.mkdir("standin")
        self.ports = {n: {s: sh.free_port() for s in ("pg", "ldap", "imap")} for n in nodes}
        self.conf = self.write_conf()
        self.pg["a"].psql("CREATE TABLE w (id int PRIMARY KEY, at timestamptz DEFAULT now())",
                          db="groupware")
        assert self.ctl("a", "state", "init", "--master", "a").returncode == 0
        for n in nodes[1:]:
            assert self.ctl(n, "state", "pull").returncode == 0
        self.daemons = {}
        for n in nodes:
            for prog in (PGREPL, LDAPREPL, IMAPREPL, PROXY, FAILOVERD):
                self.start(n, prog)

    def write_conf(self):
        b = self.base
        pgpass = os.path.join(b, "pgpass")
        with open(os.open(pgpass, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            for s in self.pg.values():
                f.write(f"{s.host}:{s.port}:*:{s.user}:{s.password}\n")
        users = os.path.join(b, "users")
        with open(users, "w") as f:
            f.write("alice\nbob\n")
        kick = os.path.join(b, "kick")
        with open(kick, "w") as f:     # the test's doveadm needs each node's -c
            f.write("#!/bin/sh\ncase \"$1\" in\n" +
                    "".join(f"{n}) exec /usr/bin/doveadm -c {self.imap[n].conf} kick '*' ;;\n"
                            for n in self.nodes) + "esac\nexit 1\n")
        os.chmod(kick, 0o755)
        text = f"[cluster]\nname = itest\netcd = {self.etcd.url}\n"
        for n in self.nodes:
            for d in ("state", "run"):
                os.makedirs(os.path.join(b, n, d), exist_ok=True)
            text += (f"[node {n}]\naddress = 127.0.0.1\nstate_dir = {b}/{n}/state\n"
                     f"run_dir = {b}/{n}/run\n")
        text += "[pg]\n" + "".join(f"endpoint.{n} = {s.host}:{s.port}\n" for n, s in self.pg.items())
        text += (f"dbname = groupware\nuser = {self.pg['a'].user}\npassfile = {pgpass}\n"
                 "sslmode = disable\n")
        la = self.ldap["a"]
        text += "[ldap]\n" + "".join(f"endpoint.{n} = {s.uri}\n" for n, s in self.ldap.items())
        text += (f"suffix = {la.suffix}\nbind_dn = {la.rootdn}\npassword_file = {la.password_file}\n"
                 f"config_bind_dn = cn=config\nconfig_password_file = {la.password_file}\n")
        ia = self.imap["a"]
        text += "[imap]\n" + "".join(f"endpoint.{n} = imap://{s.host}:{s.port}\n"
                                     for n, s in self.imap.items())
        text += (f"admin_user = {ia.master_user}\npassword_file = {ia.master_password_file}\n"
                 f"users_file = {users}\nworkers = 2\nfull_pass_interval = 30s\n"
                 f"kick_command = {kick} %n\n")
        text += "[proxy]\n"
        for n in self.nodes:
            for s in ("pg", "ldap", "imap"):
                text += f"{s}_listen.{n} = 127.0.0.1:{self.ports[n][s]}\n"
        path = os.path.join(b, "standin.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, node, prog):
        name = os.path.basename(prog)
        d = StandinDaemon(prog, self.conf, node, os.path.join(self.base, node, "run"),
                          os.path.join(self.base, f"{name}-{node}.log"))
        self.h.add_cleanup(d.stop)
        self.daemons[(node, name)] = d
        return d

    def host(self, node):
        """Where the test process reaches NODE's proxy."""
        return "127.0.0.1"

    def d(self, node, name):
        return self.daemons[(node, "standin-" + name)]

    def ctl(self, node, *args, timeout=120):
        return run(STANDINCTL, "-c", self.conf, "-n", node, *args, timeout=timeout)

    def wait_streaming(self, standby, timeout=120):
        """Until a switchover to STANDBY would pass its checks (its replicators
        caught up, as their member records in etcd say)."""
        last = []

        def ready():
            r = self.ctl("a", "switchover", "--to", standby, "--dry-run")
            last[:] = [r.stdout]
            return r.returncode == 0
        try:
            sh.wait_until(ready, timeout, f"a switchover to {standby} to be possible")
        except Exception:
            print(last[0] if last else "")
            raise

    def switchover(self, to, *args, timeout=180):
        return self.ctl("a", "switchover", "--to", to, *args, timeout=timeout)


class Writers:
    """Clients writing through node a's proxy as fast as they can: a
    PostgreSQL commit, an LDAP add and an IMAP APPEND, each numbered; what
    the server acknowledged is recorded with its time."""

    def __init__(self, c, base=0):
        self.c = c
        self.base = base
        self.stop = threading.Event()
        self.acked = {"pg": [], "ldap": [], "imap": []}
        self.errors = {"pg": 0, "ldap": 0, "imap": 0}
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self.pg, self.ldap, self.imap)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def ack(self, kind, n):
        self.acked[kind].append((n, time.monotonic()))

    def pg(self):
        s = self.c.pg["a"]
        env = dict(os.environ, PGPASSWORD=s.password)
        n = self.base
        while not self.stop.is_set():
            p = subprocess.Popen([s.bin("psql"), "-X", "-At", "-q", "-h", self.c.host("a"), "-p",
                                  str(self.c.ports["a"]["pg"]), "-U", s.user, "-d", "groupware"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env)
            try:
                while not self.stop.is_set():
                    n += 1
                    p.stdin.write(f"INSERT INTO w (id) VALUES ({n}) RETURNING 'ack ' || id;\n"
                                  f"\\echo done {n}\n")
                    p.stdin.flush()
                    acked = False
                    while True:
                        line = p.stdout.readline()
                        if not line:
                            raise BrokenPipeError
                        if line.strip() == f"ack {n}":
                            acked = True
                        if line.strip() == f"done {n}":
                            break
                    if acked:
                        self.ack("pg", n)
                    else:
                        self.errors["pg"] += 1
            except (BrokenPipeError, OSError):
                self.errors["pg"] += 1
            finally:
                p.kill()
                p.wait()

    def ldap(self):
        s = self.c.ldap["a"]
        n = self.base
        while not self.stop.is_set():
            n += 1
            ldif = (f"dn: uid=w{n},ou=people,{s.suffix}\nobjectClass: inetOrgPerson\n"
                    f"uid: w{n}\ncn: W {n}\nsn: W\n")
            r = subprocess.run(["/usr/bin/ldapadd", "-x", "-H",
                                f"ldap://{self.c.host('a')}:{self.c.ports['a']['ldap']}/", "-D",
                                s.rootdn, "-y", s.password_file], input=ldif, text=True,
                               capture_output=True, timeout=60)
            if r.returncode == 0:
                self.ack("ldap", n)
            else:
                self.errors["ldap"] += 1

    def imap(self):
        s = self.c.imap["a"]
        n = self.base
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = imaplib.IMAP4(self.c.host("a"), self.c.ports["a"]["imap"], timeout=60)
                    conn.login("alice", s.users["alice"])
                n += 1
                msg = (f"From: w@example.com\r\nSubject: w{n}\r\n\r\nbody {n}\r\n").encode()
                typ, _ = conn.append("INBOX", None, None, msg)
                if typ == "OK":
                    self.ack("imap", n)
                else:
                    self.errors["imap"] += 1
            except (OSError, imaplib.IMAP4.error, EOFError):
                self.errors["imap"] += 1
                try:
                    if conn is not None:
                        conn.shutdown()
                except OSError:
                    pass
                conn = None
        if conn is not None:
            try:
                conn.logout()
            except (OSError, imaplib.IMAP4.error):
                pass

    def count(self):
        return {k: len(v) for k, v in self.acked.items()}

    def wait_for(self, more, timeout=60):
        """Until each client had MORE acknowledged writes from now."""
        start = self.count()
        sh.wait_until(lambda: all(self.count()[k] >= start[k] + more for k in start), timeout,
                      f"{more} more writes of each kind")

    def max_gap(self, kind):
        times = [t for _, t in self.acked[kind]]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def content_on(c, node, w):
    """What node NODE holds of the writers' writes: pg ids, ldap uids, imap subjects."""
    ids = set(int(x) for x in c.pg[node].psql("SELECT id FROM w", db="groupware").split())
    uids = set()
    for dn, attrs in c.ldap[node].search(f"ou=people,{c.ldap[node].suffix}", "(uid=w*)", ["uid"]):
        uids.add(int(attrs["uid"][0][1:]))
    subjects = []
    for m in c.imap[node].list_messages("alice", master=True):
        s = re.search(rb"Subject: w(\d+)", m["body"])
        if s:
            subjects.append(int(s.group(1)))
    return ids, uids, subjects


def check_every_ack_on(c, node, w, kinds=("pg", "ldap", "imap")):
    ids, uids, subjects = content_on(c, node, w)
    for kind, have in (("pg", ids), ("ldap", uids), ("imap", set(subjects))):
        if kind not in kinds:
            continue
        lost = [n for n, _ in w.acked[kind] if n not in have]
        assert not lost, f"{kind}: acknowledged writes missing on {node}: {lost[:20]}"
    dup = [s for s in set(subjects) if subjects.count(s) > 1]
    assert not dup, f"imap: messages twice on {node}: {dup[:20]}"


@pytest.fixture
def etcd(harness):
    if not os.path.exists(sh.ETCD):
        pytest.skip("etcd-server is not installed")
    return sh.EtcdServer(harness).start()


@pytest.fixture
def cluster(harness, etcd):
    return Cluster(harness, etcd)


def steps_of(out):
    return re.findall(r"^step \d/\d (\S+) +(ok|FAILED) \((\d+) ms\)", out, re.M)


def test_switchover_there_and_back_while_clients_write(cluster):
    c = cluster
    c.wait_streaming("b")
    with Writers(c) as w:
        w.wait_for(5)
        r = c.switchover("b")
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert [s for s, ok in [(x[0], x[1]) for x in steps_of(r.stdout)]] == \
            ["pause", "fence", "drain", "sequences", "reverse", "epoch", "promote", "follow"]
        assert all(ok == "ok" for _, ok, _ in steps_of(r.stdout)), r.stdout
        assert "switchover done: b is the master at epoch 2" in r.stdout
        w.wait_for(5)
    check_every_ack_on(c, "b", w)
    gaps = {k: w.max_gap(k) for k in w.acked}
    print("max gap between acknowledged writes (s):", gaps, "errors:", w.errors)
    # Every node took epoch 2; the etcd keys of the switchover are gone.
    for n in NODES:
        st = c.ctl(n, "state", "show", "--json")
        assert json.loads(st.stdout)["epoch"] == 2
    assert c.etcd.get("/standin/itest/switchover") is None
    # standinctl status on a shows b's proxy routing to b, from b's member record.
    sh.wait_until(lambda: re.search(r"^b +master +2 +all +standin-proxy +running, to b ",
                                    c.ctl("a", "status").stdout, re.M), 20,
                  "b's proxy to b in a's status")
    # The streams turned around: a write on b reaches a.
    c.wait_streaming("a")
    c.pg["b"].psql("INSERT INTO w (id) VALUES (-1)", db="groupware")
    sh.wait_until(lambda: c.pg["a"].psql("SELECT count(*) FROM w WHERE id = -1",
                                          db="groupware") == "1", 60, "b's row on a")
    # a is read-only for clients now (a standby), b writable.
    with pytest.raises(sh.CommandError):
        c.pg["a"].psql("INSERT INTO w (id) VALUES (-2)", db="groupware")
    # And back, while the clients write again.
    with Writers(c, base=10_000_000) as w2:
        w2.wait_for(5)
        r = c.switchover("a")
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "switchover done: a is the master at epoch 3" in r.stdout
        w2.wait_for(5)
    check_every_ack_on(c, "a", w2)
    print("back: max gap (s):", {k: w2.max_gap(k) for k in w2.acked}, "errors:", w2.errors)
    c.wait_streaming("b")
    c.pg["a"].psql("INSERT INTO w (id) VALUES (-3)", db="groupware")
    sh.wait_until(lambda: c.pg["b"].psql("SELECT count(*) FROM w WHERE id = -3",
                                          db="groupware") == "1", 60, "a's row on b")
    # An order with an older epoch is refused by the agent.
    c.etcd.call("/v3/kv/put", {"key": b64("/standin/itest/orders/b"), "value": b64(json.dumps(
        {"id": "old-1", "seq": 1, "epoch": 1, "op": "unfence", "args": {}}))})
    ack = sh.wait_until(lambda: (v := c.etcd.get("/standin/itest/acks/b")) and
                        json.loads(v)["id"] == "old-1" and json.loads(v), 20, "b's answer")
    assert ack["ok"] is False and "the order is for epoch 1, this node is at 3" in ack["error"], ack
    # ...and by every daemon, for the commands the agent passes on.
    from standin_bin import query
    for name in ("proxy", "pgrepl", "ldaprepl", "imaprepl", "failoverd"):
        sock = c.d("b", name).sock
        r = json.loads(query(sock, "@2 status"))
        assert r["ok"] is False and "the order is for epoch 2, this node is at 3" in r["error"]
        assert "state" in json.loads(query(sock, "@3 status"))
        assert "usage: @EPOCH COMMAND" in query(sock, "@x status")


def b64(text):
    import base64
    return base64.b64encode(text.encode()).decode()


class Lock:
    """A transaction on node b's PostgreSQL holding table w: the standby
    cannot apply, so a drain waits."""

    def __init__(self, c):
        s = c.pg["b"]
        self.p = subprocess.Popen([s.bin("psql"), "-X", "-q", "-h", s.socket_dir, "-p", str(s.port),
                                   "-U", "postgres", "-d", "groupware"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        self.p.stdin.write("BEGIN; LOCK TABLE w IN ACCESS EXCLUSIVE MODE;\n")
        self.p.stdin.flush()
        sh.wait_until(lambda: s.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON "
                                     "c.oid = l.relation WHERE c.relname = 'w' AND l.granted "
                                     "AND l.mode = 'AccessExclusiveLock'", db="groupware") == "1",
                      20, "the lock on b")

    def release(self):
        self.p.stdin.write("ROLLBACK;\n\\q\n")
        self.p.stdin.flush()
        self.p.wait(20)


def writable(c, node):
    """node's PostgreSQL and slapd take writes from clients, and its proxy forwards."""
    n = int(time.time() * 1000) % 1_000_000_000
    c.pg[node].psql(f"INSERT INTO w (id) VALUES ({n})", db="groupware")
    s = c.ldap[node]
    s.ldapadd(f"dn: uid=x{n},ou=people,{s.suffix}\nobjectClass: inetOrgPerson\nuid: x{n}\n"
              f"cn: X\nsn: X\n")
    env = dict(os.environ, PGPASSWORD=c.pg[node].password)
    r = subprocess.run([c.pg[node].bin("psql"), "-X", "-q", "-At", "-h", c.host(node), "-p",
                        str(c.ports[node]["pg"]), "-U", c.pg[node].user, "-d", "groupware", "-c",
                        f"INSERT INTO w (id) VALUES ({n + 1}) RETURNING id"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == str(n + 1), r.stderr


def in_background(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


def phase(c):
    v = c.etcd.get("/standin/itest/switchover")
    return json.loads(v)["phase"] if v else None


def test_switchover_rolls_back_when_the_standby_cannot_drain(cluster):
    """The standby cannot apply (a lock), then its standin-pgrepl is killed
    during the drain: each time the switchover rolls back, naming the step
    and the node; a stays the master, writable, and the proxies forward."""
    c = cluster
    c.wait_streaming("b")
    lock = Lock(c)
    try:
        c.pg["a"].psql("INSERT INTO w (id) VALUES (1)", db="groupware")
        r = c.switchover("b", "--timeout", "3")
        print(r.stdout)
        assert r.returncode == 1, r.stdout
        assert re.search(r"^step 3/8 drain +FAILED \(\d+ ms\): node b: standin-pgrepl on node b "
                         r"has not applied the old master's \S+ in time", r.stdout, re.M), r.stdout
        assert "rollback: a unfenced" in r.stdout and "rollback: proxies resumed" in r.stdout
        assert "rolled back: a is still the master at epoch 1" in r.stdout
        writable(c, "a")
        # A second one is refused while one runs.
        t, out = in_background(lambda: c.switchover("b", "--timeout", "30"))
        sh.wait_until(lambda: phase(c) == "drain", 30, "the drain")
        r2 = c.switchover("b", "--timeout", "3")
        assert r2.returncode == 1 and "another switchover is running" in r2.stdout, r2.stdout
        assert "phase drain" in r2.stdout, r2.stdout
        # The standby's standin-pgrepl killed during the drain.
        c.d("b", "pgrepl").kill9()
        t.join(120)
        r = out["r"]
        print(r.stdout)
        assert r.returncode == 1, r.stdout
        assert re.search(r"^step 3/8 drain +FAILED \(\d+ ms\): node b: standin-pgrepl on node b: "
                         r"drain: .*did it stop", r.stdout, re.M), r.stdout
        assert "rolled back: a is still the master at epoch 1" in r.stdout
        writable(c, "a")
    finally:
        lock.release()
    c.d("b", "pgrepl").start()
    c.wait_streaming("b")
    r = c.switchover("b")
    assert r.returncode == 0, r.stdout


def test_switchover_rolls_back_when_the_target_agent_hangs(cluster):
    c = cluster
    c.wait_streaming("b")
    agent = c.d("b", "failoverd")
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        r = c.switchover("b", "--timeout", "2")
        print(r.stdout)
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    assert r.returncode == 1, r.stdout
    assert re.search(r"^step 1/8 pause +FAILED \(\d+ ms\): node b: no answer within 2.0 s",
                     r.stdout, re.M), r.stdout
    # b's agent could not be told to resume either (it never paused).
    assert "not rolled back everywhere: a stays the master at epoch 1" in r.stdout, r.stdout
    writable(c, "a")
    assert c.etcd.get("/standin/itest/switchover") is None
    assert c.etcd.get("/standin/itest/orders/b") is None     # nothing left for b to do later
    sh.wait_until(lambda: c.d("b", "proxy").status()["state"] == "running", 10, "b's proxy")


def test_etcd_lost_before_the_point_of_no_return(cluster):
    """etcd stops while the standby drains: standinctl cannot go on nor
    reach the nodes; it says so and exits.  Once etcd answers again the
    switchover's key is gone (its lease) and each agent undoes what it did:
    a unfenced, the proxies resumed."""
    c = cluster
    c.wait_streaming("b")
    lock = Lock(c)
    try:
        c.pg["a"].psql("INSERT INTO w (id) VALUES (1)", db="groupware")
        t, out = in_background(lambda: c.switchover("b", "--timeout", "20"))
        sh.wait_until(lambda: phase(c) == "drain", 30, "the drain")
        c.etcd.pause()
        try:
            t.join(120)
            # Nobody can tell whether the switchover went through: a stays fenced.
            with pytest.raises(sh.CommandError):
                c.pg["a"].psql("INSERT INTO w (id) VALUES (2)", db="groupware")
        finally:
            c.etcd.resume()
        r = out["r"]
        print(r.stdout)
        assert r.returncode == 1, r.stdout
        assert re.search(r"^step 3/8 drain +FAILED \(\d+ ms\): etcd: ", r.stdout, re.M), r.stdout
        assert "its standin-failoverd unfences it by itself" in r.stdout, r.stdout
        assert "not rolled back everywhere: a stays the master at epoch 1" in r.stdout, r.stdout
    finally:
        lock.release()
    sh.wait_until(lambda: writable(c, "a") is None, 60, "a writable again")
    assert "order heal (switchover " in c.d("a", "failoverd").output()
    assert json.loads(c.ctl("a", "state", "show", "--json").stdout)["epoch"] == 1
    assert c.etcd.get("/standin/itest/switchover") is None


def test_three_nodes_switchover_to_c_repoints_b(harness, etcd):
    three_nodes_switchover_to_c(Cluster(harness, etcd, nodes=("a", "b", "c")))


def three_nodes_switchover_to_c(c):
    """Master a, standbys b and c: a switchover to c while clients write;
    b then follows c with no copy (no initial sync, no LDAP reload), and the
    three nodes hold the same."""
    c.wait_streaming("b")
    c.wait_streaming("c")
    with Writers(c) as w:
        w.wait_for(5)
        r = c.switchover("c")
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "switchover done: c is the master at epoch 2" in r.stdout
        w.wait_for(5)
    check_every_ack_on(c, "c", w)
    c.pg["c"].psql("INSERT INTO w (id) VALUES (-1)", db="groupware")
    c.ldap["c"].ldapadd(f"dn: uid=onc,ou=people,{c.ldap['c'].suffix}\nobjectClass: inetOrgPerson\n"
                        "uid: onc\ncn: On C\nsn: C\n")
    for n in ("a", "b"):
        sh.wait_until(lambda: c.pg[n].psql("SELECT count(*) FROM w WHERE id = -1",
                                            db="groupware") == "1", 60, f"c's row on {n}")
        sh.wait_until(lambda: c.ldap[n].search(f"uid=onc,ou=people,{c.ldap[n].suffix}",
                                               scope="base"), 60, f"c's entry on {n}")
    digest = "SELECT count(*), md5(string_agg(id::text, ',' ORDER BY id)) FROM w"
    sh.wait_until(lambda: len({c.pg[n].psql(digest, db="groupware") for n in c.nodes}) == 1, 60,
                  "w equal on a, b and c")
    people = {n: sorted(dn for dn, _ in c.ldap[n].search(f"ou=people,{c.ldap[n].suffix}",
                                                         attrs=["1.1"])) for n in c.nodes}
    assert people["a"] == people["b"] == people["c"]

    def inbox(n):
        return sorted(m["body"] for m in c.imap[n].list_messages("alice", master=True))
    sh.wait_until(lambda: inbox("a") == inbox("b") == inbox("c"), 90, "alice's INBOX equal")
    # b re-pointed with no copy: one initial sync (the first), its slot on c,
    # none left on a; the directory not reloaded.
    assert c.d("b", "pgrepl").output().count("initial sync done") == 1
    assert c.d("b", "pgrepl").status()["source"] == "c"
    slots = c.pg["c"].psql("SELECT slot_name FROM pg_replication_slots ORDER BY 1", db="groupware")
    assert slots.split() == ["standin_a", "standin_b"], slots
    assert c.pg["a"].psql("SELECT count(*) FROM pg_replication_slots", db="groupware") == "0"
    st = c.d("b", "ldaprepl").status()
    assert st["refresh_entries"] < 50 and st["reconcile_deletes"] == 0, st


def test_failover_to_b_fences_a_and_a_returns_as_its_standby(harness, etcd):
    """The master is lost: standinctl failover --to b runs the fence command
    (here it stops every server and daemon of node a: STONITH), writes epoch 2
    and unfences b.  Rows a committed while b's stream was stopped are in a's
    divergence report when a comes back; a comes back read-only and follows b."""
    c = Cluster(harness, etcd)
    c.wait_streaming("b")
    # Without a fence command (or with a's agent alive) nothing is done.
    r = c.ctl("b", "failover", "--to", "b")
    assert r.returncode == 1 and "alive" in r.stdout, r.stdout
    # b's stream stops; a commits more; then node a is lost.
    c.d("b", "pgrepl").kill9()
    c.d("b", "ldaprepl").kill9()
    c.d("b", "imaprepl").kill9()
    c.pg["a"].psql("INSERT INTO w (id) SELECT g FROM generate_series(1001, 1010) g",
                   db="groupware")
    la = c.ldap["a"]
    la.ldapadd(f"dn: uid=only-a,ou=people,{la.suffix}\nobjectClass: inetOrgPerson\n"
               "uid: only-a\ncn: Only A\nsn: A\n")
    la.ldapmodify(f"dn: ou=people,{la.suffix}\nchangetype: modify\nadd: description\n"
                  "description: written on a alone\n")
    c.imap["a"].append("alice", "INBOX", b"From: x@example.com\r\nSubject: only on a\r\n"
                       b"Message-ID: <only-a@example.com>\r\n\r\nmail a alone got\r\n")
    c.d("a", "failoverd").kill9()
    sh.wait_until(lambda: c.etcd.get("/standin/itest/members/a") is None, 20,
                  "a's member record to go")
    r = c.ctl("b", "failover", "--to", "b")
    assert r.returncode == 1 and "sets no [failover] fence_command" in r.stdout, r.stdout
    assert json.loads(c.ctl("b", "state", "show", "--etcd", "--json").stdout)["epoch"] == 1
    mark = fence_script(c, "a")
    r = c.ctl("b", "failover", "--to", "b")
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert open(mark).read() == "fenced a\n"
    assert "epoch 2: master b" in r.stdout and "promote b ok" in r.stdout, r.stdout
    # b is the master: writable, clients of its proxy reach it.
    c.d("b", "pgrepl").start()
    c.d("b", "ldaprepl").start()
    c.d("b", "imaprepl").start()
    writable(c, "b")
    # a comes back: it takes epoch 2, stays read-only, its replicators resync
    # it from b; what only it had is in its divergence report.
    restart_node(c, "a")
    sh.wait_until(lambda: json.loads(c.ctl("a", "state", "show", "--json").stdout)["epoch"] == 2,
                  30, "a to take epoch 2")
    sh.wait_until(lambda: c.pg["a"].psql("SHOW default_transaction_read_only") == "on", 30,
                  "a read-only")
    with pytest.raises(sh.CommandError):
        c.pg["a"].psql("INSERT INTO w (id) VALUES (-5)", db="groupware")
    digest = "SELECT count(*), md5(string_agg(id::text, ',' ORDER BY id)) FROM w"
    sh.wait_until(lambda: c.pg["a"].psql(digest, db="groupware") ==
                  c.pg["b"].psql(digest, db="groupware"), 120, "a equal to b")
    assert c.pg["a"].psql("SELECT count(*) FROM w WHERE id BETWEEN 1001 AND 1010",
                          db="groupware") == "0"
    state_a = os.path.join(c.base, "a", "state")
    reports = [f for f in os.listdir(state_a) if f.startswith("divergence-b-") and f.endswith(".sql")]
    assert reports, os.listdir(state_a)
    text = open(os.path.join(state_a, reports[0])).read()
    assert all(f"{i}" in text for i in range(1001, 1011)), text[:2000]
    # LDAP: a's directory is b's again; what only a had is in its LDIF report.
    def people(n):
        return sorted(dn for dn, _ in c.ldap[n].search(f"ou=people,{c.ldap[n].suffix}",
                                                       attrs=["1.1"]))
    sh.wait_until(lambda: people("a") == people("b"), 60, "a's directory equal to b's")
    sh.wait_until(lambda: [f for f in os.listdir(state_a) if f.startswith("divergence-ldap-b-")],
                  60, "the LDAP divergence report")
    ldif = [f for f in os.listdir(state_a) if f.startswith("divergence-ldap-b-")][0]
    text = open(os.path.join(state_a, ldif)).read()
    assert f"dn: uid=only-a,ou=people,{la.suffix}\nchangetype: add\n" in text, text
    assert "add: description\ndescription: written on a alone\n" in text, text
    assert not any(f.startswith("ldaprepl-before-") for f in os.listdir(state_a))
    # IMAP: the mail only a had is copied to b (mail is never lost), once.
    def bodies(n):
        return sorted(m["body"] for m in c.imap[n].list_messages("alice", master=True))
    sh.wait_until(lambda: any(b"mail a alone got" in x for x in bodies("b")), 90,
                  "a's extra mail on b")
    sh.wait_until(lambda: bodies("a") == bodies("b"), 90, "alice's INBOX equal on a and b")
    assert sum(b"mail a alone got" in x for x in bodies("b")) == 1
    c.wait_streaming("a")        # and it can be switched back to


def restart_node(c, node):
    """NODE comes back after a STONITH: its servers and daemons start again
    (what the fence left is killed first)."""
    for s in (c.ldap[node], c.imap[node]):
        s.kill9()
    for (n, _), d in c.daemons.items():
        if n == node:
            d.kill9()
    c.pg[node].start()
    c.ldap[node].start()
    c.imap[node].start()
    for (n, _), d in list(c.daemons.items()):
        if n == node:
            d.start()


def fence_script(c, node):
    """A fence command that stops every server and daemon of NODE (STONITH)."""
    mark = os.path.join(c.base, "fenced")
    path = os.path.join(c.base, "fence")
    sids = " ".join(str(s.pid) for s in (c.ldap[node], c.imap[node]))
    daemons = " ".join(str(d.proc.pid) for (n, _), d in c.daemons.items()
                       if n == node and d.running())
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\n[ \"$1\" = {node} ] || exit 3\n"
                f"runuser -u postgres -- {c.pg[node].bin('pg_ctl')} -D {c.pg[node].datadir} "
                f"-m immediate -w stop >/dev/null\n"
                f"for s in {sids}; do pkill -9 -s $s; done\nkill -9 {daemons} 2>/dev/null\n"
                f"echo \"fenced $1\" >> {mark}\nexit 0\n")
    os.chmod(path, 0o755)
    with open(c.conf, "a") as f:
        f.write(f"[failover]\nfence_command = {path} %n\nfence_timeout = 30s\n")
    return mark


def test_failover_force_without_etcd(harness, etcd):
    """etcd is away: failover --force on b itself, after the fence command,
    writes b's own state file and unfences b; etcd takes epoch 2 from b's
    agent once it answers again."""
    c = Cluster(harness, etcd)
    c.wait_streaming("b")
    mark = fence_script(c, "a")
    etcd.pause()
    try:
        r = c.ctl("b", "failover", "--to", "b")
        assert r.returncode == 1 and "without etcd, failover --force works" in r.stdout, r.stdout
        r = c.ctl("a", "failover", "--to", "b", "--force")
        assert r.returncode == 2 and "run the failover on b itself" in r.stdout, r.stdout
        r = c.ctl("b", "failover", "--to", "b", "--force")
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "WARNING: etcd does not answer" in r.stdout
        assert open(mark).read() == "fenced a\n"
        assert "epoch 2, master b" in r.stdout and "b writable" in r.stdout, r.stdout
        c.pg["b"].psql("INSERT INTO w (id) VALUES (-7)", db="groupware")
        sh.wait_until(lambda: c.d("b", "pgrepl").status()["state"] == "idle (master)", 30,
                      "b's pgrepl idle as master")
    finally:
        etcd.resume()
    sh.wait_until(lambda: "epoch = 2\nmaster = b\n" in (etcd.get("/standin/itest/state") or ""),
                  30, "etcd to take epoch 2 from b")
    sh.wait_until(lambda: "etcd was behind this node: its epoch 2 written there" in
                  c.d("b", "failoverd").output(), 10, "b's agent to say so")


def test_each_agent_sets_its_servers_for_its_role(cluster):
    """A standby's PostgreSQL is read-only for clients; when the state is
    moved by hand (standinctl state set, no switchover), the agents make the
    new master writable and the old one read-only, once per epoch."""
    c = cluster
    c.wait_streaming("b")

    def ro(n):
        return c.pg[n].psql("SHOW default_transaction_read_only")
    sh.wait_until(lambda: ro("b") == "on", 30, "b read-only as a standby")
    assert ro("a") == "off"
    assert c.ctl("a", "state", "set", "--master", "b").returncode == 0
    sh.wait_until(lambda: ro("b") == "off" and ro("a") == "on", 30, "b writable, a read-only")
    assert "the master at epoch 2: its servers writable" in c.d("b", "failoverd").output()
    from standin_bin import query
    assert "standin_failoverd_role_epoch{node=\"b\"} 2" in query(c.d("b", "failoverd").sock,
                                                                  "metrics")


def test_switchover_of_one_service(cluster):
    """--service imap moves IMAP's master alone: its clients pause, the
    others' do not; the proxies route IMAP to b and the rest to a; a whole
    switchover waits until the services have one master again."""
    c = cluster
    c.wait_streaming("b")
    with Writers(c) as w:
        w.wait_for(5)
        r = c.switchover("b", "--service", "imap")
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "switchover of cluster itest, service imap from a to b" in r.stdout, r.stdout
        assert "epoch 2: imap's master b" in r.stdout, r.stdout
        assert "switchover done: b is imap's master at epoch 2" in r.stdout, r.stdout
        w.wait_for(5)
    check_every_ack_on(c, "b", w, ("imap",))          # IMAP's writes on b...
    check_every_ack_on(c, "a", w, ("pg", "ldap"))     # ...the others' still on a
    assert w.max_gap("pg") < w.max_gap("imap"), (w.max_gap("pg"), w.max_gap("imap"))
    st = json.loads(c.ctl("a", "state", "show", "--json").stdout)
    assert st["epoch"] == 2 and st["master"] == "a", st
    sh.wait_until(lambda: re.search(r"^b +master +2 +imap +standin-imaprepl +idle \(master\)",
                                    c.ctl("a", "status").stdout, re.M), 30, "b IMAP's master")
    assert re.search(r"^b +standby +2 +pg ", c.ctl("a", "status").stdout, re.M)
    assert c.pg["a"].psql("SHOW default_transaction_read_only") == "off"
    # IMAP replicates b -> a now.
    c.imap["b"].append("alice", "INBOX", b"Subject: on b\r\n\r\nb's mail\r\n")
    sh.wait_until(lambda: any(b"b's mail" in m["body"] for m in
                              c.imap["a"].list_messages("alice", master=True)), 60, "b's mail on a")
    r = c.switchover("b")
    assert r.returncode == 1 and "imap's master is b, not a: switch the services one by one" \
        in r.stdout, r.stdout
    sh.wait_until(lambda: c.ctl("a", "switchover", "--to", "a", "--service", "imap",
                                "--dry-run").returncode == 0, 90, "IMAP back possible")
    r = c.switchover("a", "--service", "imap")
    assert r.returncode == 0 and "switchover done: a is imap's master at epoch 3" in r.stdout, \
        r.stdout
    c.wait_streaming("b")
    r = c.switchover("b")
    assert r.returncode == 0 and "switchover done: b is the master at epoch 4" in r.stdout, r.stdout


def test_switchover_of_a_service_a_proxy_does_not_carry(cluster):
    """--service ldap while node b's proxy carries no LDAP: nothing to hold
    there, the switchover goes on."""
    c = cluster
    with open(c.conf) as f:
        text = f.read()
    with open(c.conf, "w") as f:
        f.write(re.sub(r"^ldap_listen\.b = .*\n", "", text, flags=re.M))
    c.d("b", "proxy").stop()
    c.d("b", "proxy").start()
    c.wait_streaming("b")
    r = c.switchover("b", "--service", "ldap")
    print(r.stdout)
    assert r.returncode == 0 and "switchover done: b is ldap's master at epoch 2" in r.stdout, \
        r.stdout
