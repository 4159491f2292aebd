"""The server harness itself: the six real servers start on free loopback
ports, accept a write, stop, survive kill -9, and are always stopped, also
when a test fails or the run is interrupted."""
import imaplib
import json
import os
import pathlib
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import textwrap

import pytest

import standin_harness as sh

pytestmark = pytest.mark.servers

HARNESS_PY = os.path.join(os.path.dirname(sh.__file__), "standin_harness.py")


def _person(uid, extra=""):
    return (f"dn: uid={uid},ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\n"
            f"uid: {uid}\ncn: {uid}\nsn: {uid}\n{extra}")


def test_six_servers_start_accept_a_write_and_stop(cluster):
    servers = cluster.servers()
    assert [s.name for s in servers] == ["pg-a", "pg-b", "ldap-a", "ldap-b", "imap-a", "imap-b"]
    assert len({s.port for s in servers}) == 6
    for s in servers:
        assert s.is_running() and sh.port_open(s.port), s
    # One secret per service for both nodes, as standin.conf expects.
    assert cluster.pg.a.password == cluster.pg.b.password
    assert cluster.ldap.a.password == cluster.ldap.b.password
    assert cluster.imap.a.master_password == cluster.imap.b.master_password

    for pg in cluster.pg:
        # wal_level=logical, and the standin role works over TCP with SCRAM
        # and its passfile (the way the replicator connects).
        assert pg.psql("SHOW wal_level") == "logical"
        assert oct(os.stat(pg.passfile).st_mode & 0o777) == "0o600"
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text);"
                "INSERT INTO t VALUES (1, 'caf\u00e9')", tcp=True)
        assert pg.psql("SELECT id, v FROM t", tcp=True) == "1|caf\u00e9"
        assert pg.psql("SELECT rolreplication AND rolsuper FROM pg_roles WHERE rolname = "
                       "current_user", tcp=True) == "t"

    master, standby = cluster.ldap
    assert [dn for dn, _ in master.search(attrs=["1.1"])] == [
        "dc=example,dc=com", "ou=people,dc=example,dc=com"]
    assert standby.search(attrs=["1.1"]) == []
    master.ldapadd(_person("alice", "description: \u00e9t\u00e9\n"))
    [(dn, attrs)] = master.search(filter="(uid=alice)", attrs=["*", "+"])
    assert dn == "uid=alice,ou=people,dc=example,dc=com"
    assert attrs["description"] == ["\u00e9t\u00e9"]
    assert len(attrs["entryUUID"]) == 1
    # syncprov is on: the suffix carries a contextCSN with this server's sid.
    [(_, ctx)] = master.search(scope="base", attrs=["contextCSN"])
    assert ctx["contextCSN"][0].split("#")[2] == "001"
    standby.load_base_entries()
    standby.ldapadd(_person("bob"))
    assert [dn for dn, _ in standby.search(filter="(uid=bob)", attrs=["1.1"])] == [
        "uid=bob,ou=people,dc=example,dc=com"]

    body = b"From: a@example.com\r\nSubject: hello\r\n\r\n8-bit \xe9t\xe9\r\n"
    for imap in cluster.imap:
        uidvalidity, uid = imap.append("alice", "INBOX", body, flags=("\\Seen",))
        assert uid == 1 and uidvalidity > 0
        # The replicator's master-user login reaches every user's mailbox.
        imap.append("bob", "Archive/2026", body, master=True)
        [msg] = imap.list_messages("alice", master=True)
        assert msg["body"] == body and "\\Seen" in msg["flags"]
        assert "Archive/2026" in imap.list_mailboxes("bob")
        # Mail is stored as the unprivileged mail user, not root.
        st = os.stat(imap.maildir("alice"))
        assert st.st_uid != 0

    pids = [p for s in servers for p in s.pids()]
    assert pids
    cluster.stop()
    for s in servers:
        assert not s.is_running(), s
        assert not sh.port_open(s.port), s
    assert not [p for p in pids if sh.pid_alive(p)]


def test_kill9_and_restart(harness):
    pg = harness.start_pg("a")
    pg.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    ldap = harness.start_slapd("a")
    ldap.ldapadd(_person("carol"))
    imap = harness.start_dovecot("a")
    imap.append("alice", "INBOX", b"Subject: x\r\n\r\nx\r\n")
    for server in (pg, ldap, imap):
        pids = server.pids()
        server.kill9()
        assert server.state == "killed"
        assert not [p for p in pids if sh.pid_alive(p)], server
        server.start()
    # Committed data survived the crash.
    assert pg.psql("SELECT count(*) FROM t") == "1"
    assert ldap.search(filter="(uid=carol)", attrs=["1.1"])
    assert len(imap.list_messages("alice")) == 1


def test_failed_test_stops_servers_and_keeps_directory(capsys):
    if sh.missing_servers():
        pytest.skip(sh.missing_servers())
    with pytest.raises(RuntimeError):
        with sh.Harness("keep-on-failure") as h:
            pg = h.start_pg("a")
            pid = pg.pid
            raise RuntimeError("the test failed")
    assert h.closed and h.kept
    assert not sh.pid_alive(pid)
    assert os.path.isdir(h.base_dir)
    assert f"kept {h.base_dir}" in capsys.readouterr().err
    shutil.rmtree(h.base_dir)


def test_sigterm_stops_servers(tmp_path):
    """A run interrupted by SIGTERM (CI timeout, Ctrl-C) stops its servers."""
    if sh.missing_servers():
        pytest.skip(sh.missing_servers())
    info = tmp_path / "info.json"
    script = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {os.path.dirname(HARNESS_PY)!r})
        import standin_harness as sh
        with sh.Harness("sigterm") as h:
            pg = h.start_pg("a")
            ldap = h.start_slapd("a")
            with open({str(info)!r} + ".tmp", "w") as f:
                json.dump(dict(pids=[pg.pid, ldap.pid], dir=h.base_dir), f)
            import os
            os.rename({str(info)!r} + ".tmp", {str(info)!r})
            while True:
                time.sleep(1)
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        sh.wait_until(lambda: info.exists() or (proc.poll() is not None and
                                                 pytest.fail(proc.stderr.read())),
                      120, "the child to start its servers")
        data = json.loads(info.read_text())
        assert all(sh.pid_alive(p) for p in data["pids"])
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60 * sh.timeout_scale())
        err = proc.stderr.read()
        assert "interrupted by SIGTERM" in err, err
        sh.wait_until(lambda: not any(sh.pid_alive(p) for p in data["pids"]), 30,
                      "the servers of the interrupted run to be gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shutil.rmtree(data["dir"], ignore_errors=True)


def test_command_line_up_status_down():
    """The up/status/down commands ./sandbox.sh uses."""
    if sh.missing_servers():
        pytest.skip(sh.missing_servers())
    # Not pytest's tmp_path: its parents are mode 0700, closed to postgres.
    top = tempfile.mkdtemp(prefix="standin-cli-", dir="/tmp")
    os.chmod(top, 0o755)
    base = pathlib.Path(top) / "sandbox"

    def cli(*args):
        return subprocess.run([sys.executable, HARNESS_PY, *args], capture_output=True,
                              text=True, timeout=300)
    up = cli("up", str(base), "--no-fsync", "--tls")
    try:
        assert up.returncode == 0, up.stderr
        description = json.loads((base / "servers.json").read_text())
        assert set(description["nodes"]) == {"a", "b"}
        assert oct(os.stat(base / "servers.json").st_mode & 0o777) == "0o600"
        env = (base / "servers.env").read_text()
        assert f"STANDIN_PG_A_PORT={description['nodes']['a']['pg']['port']}" in env
        # --tls (the sandbox's): each server's certificate checks out against the test CA.
        ca = description["tls"]["ca"]
        assert f"STANDIN_TLS_CA={ca}" in env
        pg = description["nodes"]["a"]["pg"]
        r = subprocess.run(["psql", "-X", "-A", "-t", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                            f"host={pg['host']} port={pg['port']} user={pg['user']} dbname=postgres "
                            f"passfile={pg['passfile']} sslmode=verify-full sslrootcert={ca}"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == "t", r.stderr
        ldap = description["nodes"]["b"]["ldap"]
        r = subprocess.run(["ldapsearch", "-x", "-ZZ", "-H", ldap["uri"], "-b", "", "-s", "base", "1.1"],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, LDAPTLS_CACERT=ca, LDAPTLS_REQCERT="demand"))
        assert r.returncode == 0, r.stderr
        imap = description["nodes"]["b"]["imap"]
        with imaplib.IMAP4(imap["host"], imap["port"], timeout=30) as m:
            m.starttls(ssl.create_default_context(cafile=ca))
        status = cli("status", str(base))
        assert status.returncode == 0 and status.stdout.count(": running") == 6, status.stdout
        again = cli("up", str(base))
        assert again.returncode == 1 and "still running" in again.stderr
    finally:
        down = cli("down", str(base))
    assert down.returncode == 0, down.stderr
    assert down.stdout.count(": stopped") == 6, down.stdout
    status = cli("status", str(base))
    assert status.returncode == 3 and status.stdout.count(": stopped") == 6
    assert cli("down", str(base)).stdout.count(": not running") == 6
    shutil.rmtree(top)


def test_wait_until_names_what_it_waited_for():
    with pytest.raises(sh.WaitTimeout, match=r"waiting for the moon; the last attempt returned 0"):
        sh.wait_until(lambda: 0, 0.3, "the moon", interval=0.05)
    with pytest.raises(sh.ServerDied):
        sh.wait_until(lambda: (_ for _ in ()).throw(sh.ServerDied("gone")), 5, "x")
    assert sh.free_port() != sh.free_port()
