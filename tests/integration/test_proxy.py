"""standin-proxy against real servers: psql, ldapsearch and an IMAP client
through it; 100 MB both ways byte for byte; half-close; pause and resume;
switch (and a cluster state change) under pgbench -C; limits, garbage and
slow clients; PROXY protocol v2 with Dovecot; restart and kill -9.

The servers (PostgreSQL a and b, slapd a and b, Dovecot a and b) are
started once for the module; each test runs its own standin-proxy."""
import hashlib
import json
import os
import socket
import subprocess
import time

import pytest

import standin_harness as sh
from standin_bin import STANDINCTL, StandinDaemon, query, run

pytestmark = pytest.mark.servers

PROXY = "proxy/standin-proxy"


class Env:
    def __init__(self, h):
        self.h = h
        pw = "pw-" + os.urandom(6).hex()
        self.pg = sh.Pair(h.start_pg("a", fsync=False, password=pw),
                          h.start_pg("b", fsync=False, password=pw))
        self.ldap = sh.Pair(h.start_slapd("a", "master"), h.start_slapd("b", "standby"))
        # Dovecot a also takes PROXY v2 headers on a second listener.
        self.imap_haproxy_port = sh.free_port()
        extra = ("haproxy_trusted_networks = 127.0.0.0/8\n"
                 "service imap-login {\n  inet_listener imap_haproxy {\n"
                 f"    address = 127.0.0.1\n    port = {self.imap_haproxy_port}\n"
                 "    haproxy = yes\n  }\n}\n")
        mpw = "mpw-" + os.urandom(6).hex()
        self.imap = sh.Pair(h.start_dovecot("a", master_password=mpw, extra_conf=extra),
                            h.start_dovecot("b", master_password=mpw))
        for s in self.pg:
            s.psql("CREATE TABLE IF NOT EXISTS blob (n int, data text)")
        self.n = 0
        self.running = []

    def proxy(self, extra="", imap_haproxy=False, master="a"):
        """A standin-proxy for node a with its own directories and ports."""
        self.n += 1
        base = self.h.mkdir(f"proxy{self.n}")
        ports = {s: sh.free_port() for s in ("pg", "ldap", "imap")}
        pgpass = os.path.join(base, "pgpass")
        fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            for s in self.pg:
                f.write(f"{s.host}:{s.port}:*:{s.user}:{s.password}\n")
        users = os.path.join(base, "users")
        with open(users, "w") as f:
            f.write("alice\n")
        text = "[cluster]\nname = ptest\nlog_level = debug\n"
        for node in ("a", "b"):
            text += (f"[node {node}]\naddress = 127.0.0.1\nstate_dir = {base}/{node}/state\n"
                     f"run_dir = {base}/{node}/run\n")
        text += "[pg]\n" + "".join(f"endpoint.{s.node} = {s.host}:{s.port}\n" for s in self.pg)
        text += f"dbname = postgres\nuser = {self.pg.a.user}\npassfile = {pgpass}\n"
        text += "[ldap]\n" + "".join(f"endpoint.{s.node} = {s.uri}\n" for s in self.ldap)
        text += (f"suffix = {self.ldap.a.suffix}\nbind_dn = {self.ldap.a.rootdn}\n"
                 f"password_file = {self.ldap.a.password_file}\n")
        iports = {"a": self.imap_haproxy_port if imap_haproxy else self.imap.a.port,
                  "b": self.imap.b.port}
        text += "[imap]\n" + "".join(f"endpoint.{n} = imap://127.0.0.1:{p}\n"
                                     for n, p in iports.items())
        text += (f"admin_user = standin\npassword_file = {self.imap.a.master_password_file}\n"
                 f"users_file = {users}\n")
        text += (f"[proxy]\npg_listen.a = 127.0.0.1:{ports['pg']}\n"
                 f"ldap_listen.a = 127.0.0.1:{ports['ldap']},[::1]:{ports['ldap']}\n"
                 f"imap_listen.a = 127.0.0.1:{ports['imap']}\n{extra}")
        conf = os.path.join(base, "standin.conf")
        with open(conf, "w") as f:
            f.write(text)
        for node in ("a", "b"):
            os.makedirs(os.path.join(base, node, "state"), exist_ok=True)
            r = run(STANDINCTL, "-c", conf, "-n", node, "state", "init", "--master", master)
            assert r.returncode == 0, r.stderr
        d = StandinDaemon(PROXY, conf, "a", os.path.join(base, "a", "run"),
                          os.path.join(base, "proxy.log"))
        self.running.append(d)
        d.ports, d.base, d.conf_path = ports, base, conf

        def ready():
            if not d.running():
                raise sh.StopWaiting(f"standin-proxy exited:\n{d.output()[-3000:]}")
            st = d.status()
            return st if all(st["services"][s]["backend"] for s in ("pg", "ldap", "imap")) \
                else None
        sh.wait_until(ready, 20, "standin-proxy to route every service")
        return d

    def psql_argv(self, port, sql, db="postgres"):
        return [self.pg.a.bin("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                "-d", f"host=127.0.0.1 port={port} user={self.pg.a.user} dbname={db} "
                "sslmode=disable connect_timeout=10", "-c", sql]

    def psql(self, port, sql, timeout=60):
        r = subprocess.run(self.psql_argv(port, sql), capture_output=True, text=True,
                           timeout=timeout, env=dict(os.environ, PGPASSWORD=self.pg.a.password))
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()


@pytest.fixture(scope="module")
def env(request):
    reason = sh.missing_servers()
    if reason:
        pytest.skip(reason)
    failed_before = request.session.testsfailed
    h = sh.Harness("test_proxy")
    ok = False
    try:
        yield Env(h)
        ok = request.session.testsfailed == failed_before
    finally:
        h.close(failed=not ok)


@pytest.fixture(autouse=True)
def stop_proxies(env):
    """Each test's proxies end with it (their health checks would load the
    servers of the next tests)."""
    yield
    while env.running:
        env.running.pop().stop()


def set_state(d, epoch, master):
    """Write node a's cluster state with EPOCH and MASTER (as a switchover
    would): same format and checksum as lib/cstate.c, written atomically."""
    other = "b" if master == "a" else "a"
    body = ("# standin cluster state: written by standin, do not edit\n"
            f"version = 1\ncluster = ptest\nepoch = {epoch}\nmaster = {master}\n"
            f"pg = {master}>{other}\nldap = {master}>{other}\nimap = {master}>{other}\n"
            f"updated = {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    body += f"checksum = sha256:{hashlib.sha256(body.encode()).hexdigest()}\n"
    path = os.path.join(d.base, "a", "state", "cluster.state")
    with open(path + ".tmp", "w") as f:
        f.write(body)
    os.rename(path + ".tmp", path)


def admin(d, line):
    return json.loads(query(d.sock, line))


def svc_status(d, svc):
    return d.status()["services"][svc]


def test_clients_through_the_proxy(env):
    d = env.proxy()
    port = d.ports["pg"]
    assert env.psql(port, "SELECT 40 + 2") == "42"
    assert env.psql(port, "SELECT inet_server_port()") == str(env.pg.a.port)

    ldap = env.ldap.a
    for host in ("127.0.0.1", "[::1]"):
        r = sh.run(["ldapsearch", "-x", "-LLL", "-H", f"ldap://{host}:{d.ports['ldap']}",
                    "-D", ldap.rootdn, "-y", ldap.password_file, "-b", ldap.suffix, "-s", "base",
                    "dn"], check=False)
        assert r.returncode == 0, r.stderr
        assert f"dn: {ldap.suffix}" in r.stdout

    import imaplib
    c = imaplib.IMAP4("127.0.0.1", d.ports["imap"], timeout=10)
    assert c.welcome.startswith(b"* OK")
    c.login("alice", env.imap.a.users["alice"])
    c.append("INBOX", None, None, b"Subject: via proxy\r\n\r\nhello\r\n")
    typ, data = c.select("INBOX")
    assert typ == "OK" and int(data[0]) >= 1
    c.logout()

    st = d.status()
    assert st["state"] == "running" and st["epoch"] == 1 and st["master"] == "a"
    for s in ("pg", "ldap", "imap"):
        o = st["services"][s]
        assert o["backend"]["node"] == "a" and o["accepted"] >= 1 and o["bytes_up"] > 0
        assert o["bytes_down"] > 0 and o["paused"] is False and o["errors"] == 0
    # Health checks see every node up, and do not count as clients.
    sh.wait_until(lambda: all(svc_status(d, s)["health"][n]["up"] for s in ("pg", "ldap", "imap")
                              for n in ("a", "b")), 10, "health checks of every backend")
    assert svc_status(d, "pg")["clients"] == 0
    # standinctl talks to it too.
    r = run(STANDINCTL, "-c", d.conf_path, "-n", "a", "proxy", "status")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["services"]["pg"]["backend"]["node"] == "a"
    r = run(STANDINCTL, "-c", d.conf_path, "status")
    assert any(l.startswith("a ") and "standin-proxy" in l and "running" in l
               for l in r.stdout.splitlines()), r.stdout


def big_file(path, size):
    """SIZE bytes of COPY text: numbered lines of pseudo-random hex."""
    h = hashlib.sha256()
    with open(path, "w") as f:
        n = 0
        seed = os.urandom(16)
        written = 0
        while written < size:
            line = f"{n}\t{hashlib.sha256(seed + n.to_bytes(8, 'big')).hexdigest() * 3}\n"
            f.write(line)
            written += len(line)
            n += 1
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest(), n


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("splice,size", [("yes", 100 << 20), ("no", 20 << 20)])
def test_bulk_both_ways_byte_for_byte(env, splice, size):
    d = env.proxy(f"splice = {splice}\n")
    src = os.path.join(d.base, "in.txt")
    out = os.path.join(d.base, "out.txt")
    digest, rows = big_file(src, size)
    env.pg.a.psql("TRUNCATE blob")
    port = d.ports["pg"]
    env.psql(port, f"\\copy blob from '{src}'", timeout=300)
    env.psql(port, f"\\copy (SELECT * FROM blob ORDER BY n) to '{out}'", timeout=300)
    assert os.path.getsize(out) == os.path.getsize(src)
    assert sha(out) == digest
    st = d.status()
    assert st["services"]["pg"]["bytes_up"] >= size and st["services"]["pg"]["bytes_down"] >= size
    if splice == "yes":
        assert st["pipes_open"] >= 1
    else:
        assert st["pipes_open"] == 0
    # Nothing in flight any more: buffers back in the free list.
    assert st["buffers_in_use"] == 0


def test_half_close_passed_through(env):
    """The client ends its sending side after a command: the server still
    answers it, then closes, and the client reads the whole answer."""
    d = env.proxy()
    with socket.create_connection(("127.0.0.1", d.ports["imap"]), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        s.sendall(b"a1 CAPABILITY\r\n")
        s.shutdown(socket.SHUT_WR)
        rest = f.read()         # until the proxy passes the server's EOF on
    assert b"* CAPABILITY" in rest and b"a1 OK" in rest, rest
    sh.wait_until(lambda: svc_status(d, "imap")["clients"] == 0, 10, "the session to end")


def test_pause_holds_new_clients_then_serves_them(env):
    d = env.proxy()
    port = d.ports["pg"]
    assert admin(d, "pause pg")["ok"]
    assert d.status()["state"] == "paused"
    envp = dict(os.environ, PGPASSWORD=env.pg.a.password)
    procs = [subprocess.Popen(env.psql_argv(port, f"SELECT {i}"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=envp) for i in range(8)]
    sh.wait_until(lambda: svc_status(d, "pg")["held"] == 8, 20, "8 held clients")
    assert all(p.poll() is None for p in procs), "a held client ended"
    # Other services are not paused.
    assert svc_status(d, "ldap")["paused"] is False
    r = admin(d, "resume pg")
    assert r["ok"] and r["services"][0]["paused"] is False
    for i, p in enumerate(procs):
        outp, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert outp.strip() == str(i)
    assert svc_status(d, "pg")["held"] == 0
    assert "resumed service=pg held=8" in d.output()


def test_pause_timeout_closes_held_clients(env):
    d = env.proxy("pause_timeout = 1s\n")
    assert admin(d, "pause all")["ok"]
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", d.ports["ldap"]), timeout=10) as s:
        assert s.recv(1) == b""         # closed by the proxy, nothing sent
    assert 0.8 < time.monotonic() - t0 < 5
    assert "client held too long while paused, closing service=ldap" in d.output()
    assert svc_status(d, "ldap")["timeouts"] == 1
    assert admin(d, "resume all")["ok"]


def test_admin_errors(env):
    d = env.proxy()
    assert admin(d, "pause mysql") == {
        "ok": False, "error": "unknown service mysql: expected pg, ldap, imap or all"}
    assert admin(d, "switch pg c")["error"] == f"no node c in {d.conf_path}"
    assert admin(d, "switch pg")["error"] == "usage: switch SERVICE NODE"
    # Every failure says "ok": false, also the runtime's own (standin-proxy(8)).
    for line in ("frobnicate", "", "pause\0pg", "x" * 5000):
        reply = admin(d, line)
        assert reply["ok"] is False and reply["error"], (line[:20], reply)
    assert "unknown command" in query(d.sock, "frobnicate")
    # By hand with socat, as the man page says.
    r = sh.run(["socat", "-", f"UNIX-CONNECT:{d.sock}"], input="pause imap\n")
    assert json.loads(r.stdout)["services"][0]["paused"] is True
    assert oct(os.stat(d.sock).st_mode & 0o777) == "0o660"


def test_switch_closes_sessions_on_the_old_master(env):
    d = env.proxy()
    port = d.ports["pg"]
    envp = dict(os.environ, PGPASSWORD=env.pg.a.password)
    long = subprocess.Popen(env.psql_argv(port, "SELECT pg_sleep(60)"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=envp)
    sh.wait_until(lambda: env.pg.a.psql("SELECT count(*) FROM pg_stat_activity WHERE query "
                                        "LIKE 'SELECT pg_sleep%'") == "1", 20, "the long query")
    r = admin(d, "switch pg b")
    assert r["ok"] and r["services"][0]["backend"] == "b"
    _, err = long.communicate(timeout=20)
    assert long.returncode != 0 and "closed" in err, err
    assert env.psql(port, "SELECT inet_server_port()") == str(env.pg.b.port)
    st = svc_status(d, "pg")
    assert st["switched"] is True and st["dropped"] >= 1
    # A new cluster state wins over the switch; an older one is ignored.
    set_state(d, 2, "a")
    sh.wait_until(lambda: svc_status(d, "pg")["switched"] is False, 10, "the state to be reread")
    assert env.psql(port, "SELECT inet_server_port()") == str(env.pg.a.port)
    set_state(d, 1, "b")
    sh.wait_until(lambda: "cluster state refused: epoch 1 master b is older than the one taken, epoch 2" in d.output(), 10,
                  "the old epoch to be refused")
    assert svc_status(d, "pg")["backend"]["node"] == "a"


def test_switch_under_pgbench_connect_load(env):
    """pause, switch to b, resume, under pgbench -C: no client errors, and
    transactions reach both servers.  One client per pgbench thread: a
    thread connects synchronously, so a held connect would also stall the
    other clients of its thread, still on the old master."""
    d = env.proxy()
    port = d.ports["pg"]
    for s in env.pg:
        sh.run([s.bin("pgbench"), "-i", "-q", "-s", "1", "-h", s.socket_dir, "-p", str(s.port),
                "-U", "postgres", "postgres"])
    before = {s.node: int(s.psql("SELECT sum(xact_commit) FROM pg_stat_database")) for s in env.pg}
    envp = dict(os.environ, PGPASSWORD=env.pg.a.password)
    bench = subprocess.Popen([env.pg.a.bin("pgbench"), "-n", "-C", "-S", "-c", "4", "-j", "4",
                              "-T", "8", "-h", "127.0.0.1", "-p", str(port), "-U",
                              env.pg.a.user, "postgres"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=envp)
    sh.wait_until(lambda: svc_status(d, "pg")["accepted"] > 50, 20, "pgbench to run")
    assert admin(d, "pause pg")["ok"]
    # In-flight transactions finish; the rest wait.
    def on_a_done():
        s = svc_status(d, "pg")
        assert s["clients"] == s["held"], s
        return True
    sh.wait_until(on_a_done, 10, "sessions on a to finish")
    assert admin(d, "switch pg b")["ok"]
    assert admin(d, "resume pg")["ok"]
    outp, err = bench.communicate(timeout=60)
    assert bench.returncode == 0, outp + err
    assert "number of failed transactions: 0" in outp or "aborted" not in outp + err, outp
    after = {s.node: int(s.psql("SELECT sum(xact_commit) FROM pg_stat_database")) for s in env.pg}
    assert after["a"] - before["a"] > 20 and after["b"] - before["b"] > 20, (before, after)


def test_cluster_state_change_moves_clients(env):
    d = env.proxy("drain_time = 1s\n")
    port = d.ports["pg"]
    envp = dict(os.environ, PGPASSWORD=env.pg.a.password)
    long = subprocess.Popen(env.psql_argv(port, "SELECT pg_sleep(30)"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=envp)
    sh.wait_until(lambda: svc_status(d, "pg")["clients"] == 1, 10, "the long session")
    set_state(d, 2, "b")
    sh.wait_until(lambda: svc_status(d, "pg")["backend"]["node"] == "b", 10, "route to b")
    assert d.status()["master"] == "b"
    assert env.psql(port, "SELECT inet_server_port()") == str(env.pg.b.port)
    # The old session is closed once the drain time is over.
    t0 = time.monotonic()
    long.communicate(timeout=20)
    assert long.returncode != 0 and time.monotonic() - t0 < 10
    for s in ("ldap", "imap"):
        assert svc_status(d, s)["backend"]["node"] == "b"


def test_max_clients(env):
    d = env.proxy("max_clients = 3\n")
    socks = [socket.create_connection(("127.0.0.1", d.ports["imap"]), timeout=10)
             for _ in range(3)]
    for s in socks:
        assert s.makefile("rb").readline().startswith(b"* OK")
    with socket.create_connection(("127.0.0.1", d.ports["imap"]), timeout=10) as extra:
        assert extra.recv(100) == b""           # closed at once, not queued
    assert "too many clients, closing new ones service=imap max_clients=3" in d.output()
    st = svc_status(d, "imap")
    assert st["refused"] == 1 and st["clients"] == 3
    for s in socks:
        s.close()
    sh.wait_until(lambda: svc_status(d, "imap")["clients"] == 0, 10, "clients to go")


def test_garbage_silent_and_slow_clients(env):
    d = env.proxy("first_byte_timeout = 1s\nidle_timeout = 2s\n")
    # Garbage to PostgreSQL: the server refuses it, the proxy lives on.
    with socket.create_connection(("127.0.0.1", d.ports["pg"]), timeout=10) as s:
        s.sendall(os.urandom(5000))
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
    # A client that sends nothing is closed after first_byte_timeout.
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", d.ports["ldap"]), timeout=10) as s:
        assert s.recv(1) == b""
    assert 0.8 < time.monotonic() - t0 < 5
    assert "client sent nothing in 1000 ms" in d.output()
    # An IMAP client that reads the greeting then stays silent: idle_timeout.
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", d.ports["imap"]), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        s.sendall(b"a NOOP\r\n")
        assert f.readline().startswith(b"a OK")
        assert f.read() == b""
    assert 1.5 < time.monotonic() - t0 < 6
    assert "reason=\"idle for 2000 ms\"" in d.output()
    # A slow reader of a big result: the proxy does not buffer it.
    rss0 = rss_kb(d.proc.pid)
    envp = dict(os.environ, PGPASSWORD=env.pg.a.password)
    # COPY streams: psql writes each row to a pipe nobody reads, then stops
    # reading its socket; the server keeps sending 200 MB.
    reader = subprocess.Popen(env.psql_argv(d.ports["pg"], "COPY (SELECT repeat('x', 1000) FROM "
                                            "generate_series(1, 200000)) TO STDOUT"),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=envp)
    sh.wait_until(lambda: svc_status(d, "pg")["bytes_down"] > 1 << 20, 20, "data to flow")
    time_limit = time.monotonic() + 1
    while time.monotonic() < time_limit:   # poll: status must stay bounded while stalled
        st = d.status()
        assert st["buffers_in_use"] <= 2 and st["pipes_open"] <= 2
        time.sleep(0.1)
    assert rss_kb(d.proc.pid) - rss0 < 20000
    assert svc_status(d, "pg")["bytes_down"] < 100 << 20
    reader.kill()
    reader.wait()
    assert d.running()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_proxy_protocol_v2_to_dovecot(env):
    d = env.proxy("imap_proxy_protocol = yes\n", imap_haproxy=True)
    import imaplib
    # The client comes from 127.0.0.7; Dovecot must log that, not the proxy's 127.0.0.1.
    s = socket.create_connection(("127.0.0.1", d.ports["imap"]), timeout=10,
                                 source_address=("127.0.0.7", 0))
    f = s.makefile("rb")
    assert f.readline().startswith(b"* OK")
    s.sendall(b'a LOGIN alice "' + env.imap.a.users["alice"].encode() + b'"\r\n')
    line = f.readline()
    while line.startswith(b"*"):
        line = f.readline()
    assert line.startswith(b"a OK"), line
    s.sendall(b"b LOGOUT\r\n")
    f.read()
    s.close()
    del imaplib
    sh.wait_until(lambda: "rip=127.0.0.7" in open(env.imap.a.logfile).read(), 10,
                  "Dovecot to log the real client address")


def test_restart_and_kill9(env):
    d = env.proxy()
    assert env.psql(d.ports["pg"], "SELECT 1") == "1"
    assert d.stop() == 0
    d.start()
    sh.wait_until(lambda: d.status()["services"]["pg"]["backend"], 20, "restart")
    assert env.psql(d.ports["pg"], "SELECT 2") == "2"
    d.kill9()
    d.start()           # stale socket and pidfile are taken over
    sh.wait_until(lambda: d.status()["services"]["pg"]["backend"], 20, "start after kill -9")
    assert env.psql(d.ports["pg"], "SELECT 3") == "3"
    r = run(PROXY, "-t", "-c", d.conf_path)
    assert r.returncode == 0, r.stderr
    r = run(PROXY, "--bogus")
    assert r.returncode == 2
