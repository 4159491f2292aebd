"""standinctl dump and dump-verify against real PostgreSQL 15 and slapd 2.5:
round trips compared with the source, the standby's lag, damaged dumps, a
failing pg_dump, a full disk, the lock, retention and status."""
import fcntl
import json
import os
import re
import subprocess

import pytest

import standin_harness as sh
from standin_bin import PGREPL, STANDINCTL, StandinDaemon, run, write_pg_conf

pytestmark = pytest.mark.servers

PG_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


class PgEnv:
    """A master (a) and standby (b) PostgreSQL with database groupware,
    standin.conf and the cluster state; standin-pgrepl on b by start()."""

    def __init__(self, harness):
        self.h = harness
        password = "pw-" + os.urandom(6).hex()
        self.a = harness.start_pg("a", fsync=False, password=password)
        self.b = harness.start_pg("b", fsync=False, password=password)
        for s in (self.a, self.b):
            s.create_database("groupware")
        self.base = harness.mkdir("standin")
        self.conf = write_pg_conf(self.base, sh.Pair(self.a, self.b))
        for node in ("a", "b"):
            r = run(STANDINCTL, "-c", self.conf, "-n", node, "state", "init", "--master", "a")
            assert r.returncode == 0, r.stderr
        self.daemon = None

    def start(self):
        self.daemon = StandinDaemon(PGREPL, self.conf, "b", os.path.join(self.base, "b", "run"),
                                    os.path.join(self.base, "pgrepl-b.log"))
        self.h.add_cleanup(self.daemon.stop)

    def wait_state(self, state, timeout=60):
        def check():
            if not self.daemon.running():
                raise sh.StopWaiting(f"standin-pgrepl exited:\n{self.daemon.output()[-3000:]}")
            return self.daemon.status()["state"] == state
        sh.wait_until(check, timeout, f"standin-pgrepl state {state}")

    def digest(self, server, table):
        return server.psql(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY "
                           f"t::text), '')) FROM {table} t", db="groupware")

    def wait_equal(self, *tables, timeout=60):
        def same():
            return all(self.digest(self.a, t) == self.digest(self.b, t) for t in tables)
        sh.wait_until(same, timeout, f"standby to equal the master on {tables}")


def ctl(conf, node, *args, timeout=300):
    return run(STANDINCTL, "-c", conf, "-n", node, *args, timeout=timeout)


def add_dump_section(conf, dumpdir, extra=""):
    with open(conf, "a") as f:
        f.write(f"\n[dump]\ndir = {dumpdir}\n{extra}")


def pgbench_init(server, scale=1):
    sh.run([server.bin("pgbench"), "-i", "-q", "-s", str(scale), "-h", server.host,
            "-p", str(server.port), "-U", server.user, "groupware"],
           env={"PGPASSFILE": server.passfile}, timeout=300)


def read_manifest(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition(" ")
            out.setdefault(k, []).append(v)
    return out


def dumps_in(d):
    return sorted(p for p in os.listdir(d) if not p.startswith(".")) if os.path.isdir(d) else []


@pytest.fixture
def pgenv(harness):
    env = PgEnv(harness)
    pgbench_init(env.a)
    env.dumpdir = harness.mkdir("dumps")
    return env


def restore_pg(h, dump, server):
    """The restore procedure of standinctl(8), for PostgreSQL, into SERVER."""
    psql = [server.bin("psql"), "-X", "-q", "-h", server.socket_dir, "-p", str(server.port),
            "-U", "postgres"]
    globals_sql = sh.run(["zstd", "-dc", os.path.join(dump, "globals.sql.zst")]).stdout
    sh.run(psql + ["-d", "postgres"], input=globals_sql)    # existing roles only warn
    server.create_database("groupware")
    restore = [server.bin("pg_restore"), "-h", server.socket_dir, "-p", str(server.port),
               "-U", "postgres", "-d", "groupware", "--exit-on-error"]
    custom = os.path.join(dump, "db-groupware.dump.zst")
    if os.path.exists(custom):
        data = subprocess.run(["zstd", "-dc", custom], capture_output=True, check=True).stdout
        subprocess.run(restore, input=data, check=True, capture_output=True)
    else:
        sh.run(restore + ["-j", "2", os.path.join(dump, "db-groupware.dir")])


def test_pg_dump_from_standby_restore_round_trip(pgenv, harness):
    env = pgenv
    add_dump_section(env.conf, env.dumpdir, "jobs = 1\n")
    env.start()
    env.wait_state("streaming", timeout=120)
    env.wait_equal(*PG_TABLES, timeout=120)
    r = ctl(env.conf, "b", "dump", "pg")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == "", "dump must be silent on success"
    names = dumps_in(os.path.join(env.dumpdir, "pg"))
    assert len(names) == 2 and names[0].startswith("b-pg-") and names[0].endswith(".pgdump"), names
    dump = os.path.join(env.dumpdir, "pg", names[0])
    m = read_manifest(dump + ".manifest")
    assert m["node"] == ["b"] and m["role"] == ["standby"] and m["master"] == ["a"]
    assert int(m["lag_ms"][0]) >= 0
    assert "origin standin_from_a remote_lsn" in m["position"][0]
    files = sorted(v.split(" ", 2)[2] for v in m["file"])
    assert "globals.sql.zst" in files and "db-groupware.dump.zst" in files, files

    r = ctl(env.conf, "b", "dump-verify", dump)
    assert r.returncode == 0, r.stderr
    assert "db-groupware.dump.zst: pg_restore --list read the archive" in r.stdout
    assert r.stdout.rstrip().endswith(": good")

    c = harness.start_pg("c", fsync=False, password=env.a.password)
    restore_pg(harness, dump, c)
    for t in PG_TABLES:
        assert env.digest(c, t) == env.digest(env.a, t), t

    # status shows it
    r = ctl(env.conf, "b", "status")
    assert f"dump pg: {names[0]}," in r.stdout, r.stdout
    assert "warning: dump pg" not in r.stdout


def test_pg_directory_format_from_master_verify_restore(pgenv, harness):
    env = pgenv
    add_dump_section(env.conf, env.dumpdir, "jobs = 2\n")
    r = ctl(env.conf, "b", "dump", "pg", "--from", "master")
    assert r.returncode == 0, r.stderr
    (name,) = [n for n in dumps_in(os.path.join(env.dumpdir, "pg")) if not n.endswith(".manifest")]
    assert name.startswith("a-pg-")
    dump = os.path.join(env.dumpdir, "pg", name)
    assert os.path.isfile(os.path.join(dump, "db-groupware.dir", "toc.dat"))
    m = read_manifest(dump + ".manifest")
    assert m["role"] == ["master"] and m["format"] == ["directory"] and m["lag_ms"] == ["-1"]
    r = ctl(env.conf, "b", "dump-verify", "--restore", dump)
    assert r.returncode == 0, r.stderr
    assert "db-groupware.dir: restored into scratch database" in r.stdout, r.stdout
    # the scratch database is gone
    assert "standin_verify" not in env.a.psql("SELECT string_agg(datname, ',') FROM pg_database")
    c = harness.start_pg("c", fsync=False, password=env.a.password)
    restore_pg(harness, dump, c)
    for t in PG_TABLES:
        assert env.digest(c, t) == env.digest(env.a, t), t


def test_pg_standby_lag_unknown_refused_or_fallback(pgenv):
    env = pgenv
    add_dump_section(env.conf, env.dumpdir)
    r = ctl(env.conf, "b", "dump", "pg")           # no standin-pgrepl running
    assert r.returncode == 1
    assert "refusing to dump pg from standby b" in r.stderr, r.stderr
    assert "standin-pgrepl on node b does not answer" in r.stderr
    assert dumps_in(os.path.join(env.dumpdir, "pg")) == []
    with open(env.conf, "a") as f:
        f.write("fallback_to_master = yes\n")
    r = ctl(env.conf, "b", "dump", "pg")
    assert r.returncode == 0, r.stderr
    names = dumps_in(os.path.join(env.dumpdir, "pg"))
    assert names[0].startswith("a-pg-"), names
    assert read_manifest(os.path.join(env.dumpdir, "pg", names[1]))["role"] == ["master"]


def test_dump_verify_catches_truncated_altered_and_incomplete(pgenv):
    env = pgenv
    add_dump_section(env.conf, env.dumpdir, "jobs = 1\n")
    assert ctl(env.conf, "b", "dump", "pg", "--from", "master").returncode == 0
    (name,) = [n for n in dumps_in(os.path.join(env.dumpdir, "pg")) if not n.endswith(".manifest")]
    dump = os.path.join(env.dumpdir, "pg", name)
    archive = os.path.join(dump, "db-groupware.dump.zst")
    data = open(archive, "rb").read()

    with open(archive, "wb") as f:
        f.write(data[: len(data) // 2])
    r = ctl(env.conf, "b", "dump-verify", dump)
    assert r.returncode == 1 and "truncated or altered" in r.stderr, r.stderr

    with open(archive, "wb") as f:
        f.write(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    r = ctl(env.conf, "b", "dump-verify", dump + ".manifest")
    assert r.returncode == 1 and "SHA-256" in r.stderr and "(altered)" in r.stderr, r.stderr

    with open(archive, "wb") as f:
        f.write(data)
    with open(os.path.join(dump, "extra"), "w") as f:
        f.write("x")
    r = ctl(env.conf, "b", "dump-verify", dump)
    assert r.returncode == 1 and "extra: not in the manifest" in r.stderr, r.stderr
    os.unlink(os.path.join(dump, "extra"))
    assert ctl(env.conf, "b", "dump-verify", dump).returncode == 0

    # a truncated manifest
    mtext = open(dump + ".manifest").read()
    with open(dump + ".manifest", "w") as f:
        f.write(mtext[: len(mtext) - 10])
    r = ctl(env.conf, "b", "dump-verify", dump)
    assert r.returncode == 1 and "truncated" in r.stderr, r.stderr
    os.unlink(dump + ".manifest")
    r = ctl(env.conf, "b", "dump-verify", dump)
    assert r.returncode == 1 and "no manifest: this is not a complete dump" in r.stderr, r.stderr


def test_failing_pg_dump_leaves_nothing_that_looks_good(pgenv, harness):
    env = pgenv
    add_dump_section(env.conf, env.dumpdir)
    wrong = harness.path("wrong-pgpass")
    fd = os.open(wrong, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"*:*:*:{env.a.user}:not-the-password\n".encode())
    os.close(fd)
    text = open(env.conf).read().replace(os.path.join(env.base, "pgpass"), wrong)
    with open(env.conf, "w") as f:
        f.write(text)
    r = ctl(env.conf, "b", "dump", "pg", "--from", "master")
    assert r.returncode == 1
    assert "password authentication failed" in r.stderr, r.stderr
    d = os.path.join(env.dumpdir, "pg")
    assert os.listdir(d) == [], os.listdir(d)


def test_full_disk_reported_and_partial_removed(pgenv, harness):
    env = pgenv
    pgbench_init(env.a, scale=2)
    mnt = harness.mkdir("small")
    sh.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt])
    harness.add_cleanup(lambda: sh.run(["umount", "-l", mnt], check=False))
    add_dump_section(env.conf, mnt, "jobs = 1\ncompress = none\n")
    r = ctl(env.conf, "b", "dump", "pg", "--from", "master")
    assert r.returncode == 1
    assert "is full" in r.stderr and "partial dump was removed" in r.stderr, r.stderr
    assert os.listdir(os.path.join(mnt, "pg")) == []


def test_second_run_refused_while_locked(pgenv):
    env = pgenv
    add_dump_section(env.conf, env.dumpdir)
    os.makedirs(env.dumpdir, exist_ok=True)
    with open(os.path.join(env.dumpdir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        r = ctl(env.conf, "b", "dump", "all", "--from", "master")
        assert r.returncode == 1
        assert f"another standinctl dump is running (pid {os.getpid()}" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(env.dumpdir, "pg"))
    # two real runs at once: one dumps, the other is refused or runs after it
    procs = [subprocess.Popen([os.path.join(os.environ.get("STANDIN_BUILDDIR", "."), STANDINCTL),
                               "-c", env.conf, "-n", "b", "dump", "pg", "--from", "master"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert sorted(o[2] for o in outs) in ([0, 0], [0, 1]), outs
    for out, err, rc in outs:
        assert rc == 0 or "another standinctl dump is running" in err, err


def test_retention_and_leftovers(pgenv):
    env = pgenv
    add_dump_section(env.conf, env.dumpdir, "keep = 2\ndaily = 0\nweekly = 0\n")
    d = os.path.join(env.dumpdir, "pg")
    os.makedirs(d)
    sha = "0" * 64
    for ts in ("20200101T000000Z", "20200102T000000Z", "20200103T000000Z"):
        name = f"b-pg-{ts}.pgdump"
        os.mkdir(os.path.join(d, name))
        with open(os.path.join(d, name + ".manifest"), "w") as f:
            f.write(f"standin-dump-manifest 1\nservice pg\nnode b\nrole standby\ncreated {ts}\n"
                    f"format custom\ncompress zstd\nlag_ms 0\nfile 0 {sha} x\nend 1\n")
    os.mkdir(os.path.join(d, ".tmp-b-pg-20200104T000000Z.pgdump"))     # a killed run
    os.mkdir(os.path.join(d, "b-pg-20200105T000000Z.pgdump"))           # no manifest
    r = ctl(env.conf, "b", "dump", "pg", "--from", "master")
    assert r.returncode == 0, r.stderr
    left = dumps_in(d)
    new = [n for n in left if n.startswith("a-pg-") and not n.endswith(".manifest")]
    assert len(new) == 1
    assert left == sorted([new[0], new[0] + ".manifest", "b-pg-20200103T000000Z.pgdump",
                           "b-pg-20200103T000000Z.pgdump.manifest"]), left
    assert not any(n.startswith(".tmp-") for n in os.listdir(d))


def test_status_warns_when_dump_missing_or_old(pgenv):
    """standinctl status: no dump at all, then only one older than
    [dump] max_age, both shown as warnings; a fresh one is not."""
    env = pgenv
    add_dump_section(env.conf, env.dumpdir, "max_age = 1h\n")
    r = ctl(env.conf, "b", "status")
    assert f"warning: dump pg: no good dump in {env.dumpdir}/pg" in r.stdout, r.stdout
    d = os.path.join(env.dumpdir, "pg")
    os.makedirs(d)
    name = "b-pg-20200101T000000Z.pgdump"
    os.mkdir(os.path.join(d, name))
    with open(os.path.join(d, name + ".manifest"), "w") as f:
        f.write("standin-dump-manifest 1\nservice pg\nnode b\nrole standby\n"
                "created 20200101T000000Z\nformat custom\ncompress zstd\nlag_ms 0\n"
                f"file 0 {'0' * 64} x\nend 1\n")
    r = ctl(env.conf, "b", "status")
    assert re.search(rf"^warning: dump pg: {name}, .* old, .*from node b "
                     r"\(older than \[dump\] max_age\)$", r.stdout, re.M), r.stdout
    doc = json.loads(ctl(env.conf, "b", "status", "--json").stdout)
    (pgdump,) = [x for x in doc["dumps"] if x["service"] == "pg"]
    assert pgdump["dump"] == name and pgdump["warning"] is True
    assert pgdump["age_seconds"] > 3600
    r = ctl(env.conf, "b", "dump", "pg", "--from", "master")
    assert r.returncode == 0, r.stderr
    r = ctl(env.conf, "b", "status")
    assert re.search(r"^dump pg: a-pg-\S+, ", r.stdout, re.M), r.stdout
    assert "warning: dump pg" not in r.stdout


# ------------------------------------------------------------------ LDAP

def ldap_conf(base, a, b, dumpdir, extra=""):
    text = "[cluster]\nname = itest\n"
    for s in (a, b):
        os.makedirs(os.path.join(base, s.node, "state"), exist_ok=True)
        os.makedirs(os.path.join(base, s.node, "run"), exist_ok=True)
        text += (f"[node {s.node}]\naddress = 127.0.0.1\nstate_dir = {base}/{s.node}/state\n"
                 f"run_dir = {base}/{s.node}/run\n")
    text += (f"[ldap]\nendpoint.a = {a.uri.rstrip('/')}\nendpoint.b = {b.uri.rstrip('/')}\n"
             f"suffix = {a.suffix}\nbind_dn = {a.rootdn}\npassword_file = {a.password_file}\n"
             f"[dump]\ndir = {dumpdir}\n{extra}")
    path = os.path.join(base, "standin.conf")
    with open(path, "w") as f:
        f.write(text)
    for n in ("a", "b"):
        r = run(STANDINCTL, "-c", path, "-n", n, "state", "init", "--master", "a")
        assert r.returncode == 0, r.stderr
    return path


def people_ldif(n):
    return "".join(f"dn: uid=u{i},ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\n"
                   f"uid: u{i}\ncn: User {i}\nsn: S\xe9rie {i}\nmail: u{i}@example.com\n\n"
                   for i in range(n))


def sorted_entries(server):
    return sorted((dn.lower(), sorted((k.lower(), sorted(v)) for k, v in attrs.items()))
                  for dn, attrs in server.search(attrs=["*", "entryUUID", "entryCSN",
                                                        "createTimestamp"]))


@pytest.fixture
def ldapenv(harness):
    pw = "pw-" + os.urandom(6).hex()
    a = harness.start_slapd("a", "master", password=pw)
    b = harness.start_slapd("b", "standby", password=pw)
    a.ldapadd(people_ldif(1000))
    base = harness.mkdir("standin")
    dumpdir = harness.mkdir("dumps")
    return a, b, base, dumpdir


def test_ldap_slapcat_round_trip(ldapenv, harness):
    a, b, base, dumpdir = ldapenv
    conf = ldap_conf(base, a, b, dumpdir, f"slapcat_config.a = {a.conf}\n")
    r = ctl(conf, "a", "dump", "ldap", "--from", "master")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
    (name,) = [n for n in dumps_in(os.path.join(dumpdir, "ldap")) if not n.endswith(".manifest")]
    assert name.startswith("a-ldap-") and name.endswith(".ldif.zst")
    dump = os.path.join(dumpdir, "ldap", name)
    m = read_manifest(dump + ".manifest")
    assert m["format"] == ["ldif"] and m["position"][0].startswith("contextCSN ")
    r = ctl(conf, "a", "dump-verify", dump)
    assert r.returncode == 0, r.stderr
    assert "LDIF parsed, 1002 entries" in r.stdout, r.stdout

    # restore (standinctl(8)): slapadd into a stopped, empty slapd
    c = sh.SlapdServer(harness, "c", "standby", password=a.password)
    ldif = harness.path("restore.ldif")
    sh.run(["zstd", "-q", "-d", dump, "-o", ldif])
    sh.run(["/usr/sbin/slapadd", "-f", c.conf, "-q", "-l", ldif])
    c.start()
    assert sorted_entries(c) == sorted_entries(a)


def test_ldap_export_over_ldap_and_standby_refused(ldapenv):
    a, b, base, dumpdir = ldapenv
    conf = ldap_conf(base, a, b, dumpdir)
    r = ctl(conf, "a", "dump", "ldap")          # no standin-ldaprepl: position unknown
    assert r.returncode == 1
    assert "refusing to dump ldap from standby b" in r.stderr and \
        "standin-ldaprepl on node b does not answer" in r.stderr, r.stderr
    r = ctl(conf, "a", "dump", "ldap", "--from", "master")
    assert r.returncode == 0, r.stderr
    (name,) = [n for n in dumps_in(os.path.join(dumpdir, "ldap")) if not n.endswith(".manifest")]
    dump = os.path.join(dumpdir, "ldap", name)
    assert read_manifest(dump + ".manifest")["format"] == ["ldif-export"]
    r = ctl(conf, "a", "dump-verify", dump)
    assert r.returncode == 0 and "LDIF parsed, 1002 entries" in r.stdout, r.stdout + r.stderr
    text = sh.run(["zstd", "-dc", dump]).stdout
    assert "entryUUID: " in text and "entryCSN: " in text and "hasSubordinates" not in text
