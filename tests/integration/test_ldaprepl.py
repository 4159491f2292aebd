"""standin-ldaprepl against a real slapd 2.5 pair (master with syncprov):
refresh, persist, renames and moves, binary and large values, deletes made
while the replicator is down, a standby with content of its own, conflicts,
drain, kill -9 under load with the two directories compared entry by
entry (DN, entryUUID and every attribute) at the end, StartTLS and ldaps://
with certificate checks, and a real e-syncRefreshRequired from the master."""
import base64
import json
import os
import random
import threading
import time

import pytest

import standin_harness as sh
from standin_bin import STANDINCTL, StandinDaemon, query, run

pytestmark = pytest.mark.servers

LDAPREPL = "replicators/ldap/standin-ldaprepl"
ATTRS = ["*", "entryUUID", "createTimestamp", "creatorsName", "modifyTimestamp", "modifiersName"]


class LdapEnv:
    """slapd a (master, base entries) and b (standby, empty), standin.conf,
    cluster state, and standin-ldaprepl on node b (start())."""

    def __init__(self, harness, standby_base=False, extra="", master_conf="", tls=None):
        self.h = harness
        password = "pw-" + os.urandom(6).hex()
        tls = dict(tls_cert=tls[0], tls_key=tls[1]) if tls else {}
        self.a = harness.start_slapd("a", "master", password=password, extra_conf=master_conf, **tls)
        self.b = harness.start_slapd("b", "standby", password=password, load_base=standby_base, **tls)
        self.suffix = self.a.suffix
        self.base = harness.mkdir("standin")
        self.conf = self.write_conf(extra)
        for node in ("a", "b"):
            r = run(STANDINCTL, "-c", self.conf, "-n", node, "state", "init", "--master", "a")
            assert r.returncode == 0, r.stderr
        self.daemon = None

    def write_conf(self, extra, ldaps=False):
        """standin.conf with `extra` at the end of [ldap]; ldaps=True names
        the servers' ldaps:// URIs as the endpoints."""
        text = "[cluster]\nname = ltest\n"
        for s in (self.a, self.b):
            for d in ("state", "run"):
                os.makedirs(os.path.join(self.base, s.node, d), exist_ok=True)
            text += (f"[node {s.node}]\naddress = {s.host}\n"
                     f"state_dir = {self.base}/{s.node}/state\nrun_dir = {self.base}/{s.node}/run\n")
        text += "[ldap]\n"
        for s in (self.a, self.b):
            text += f"endpoint.{s.node} = {s.ldaps_uri if ldaps else s.uri}\n"
        text += (f"suffix = {self.suffix}\nbind_dn = {self.a.rootdn}\n"
                 f"password_file = {self.a.password_file}\ntimeout = 5s\n{extra}")
        path = os.path.join(self.base, "standin.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self):
        if self.daemon is None:
            self.daemon = StandinDaemon(LDAPREPL, self.conf, "b", os.path.join(self.base, "b", "run"),
                                        os.path.join(self.base, "ldaprepl-b.log"))
            self.h.add_cleanup(self.daemon.stop)
        else:
            self.daemon.start()
        return self.daemon

    def status(self):
        return self.daemon.status()

    def alive(self):
        if self.daemon is not None and not self.daemon.running():
            raise sh.StopWaiting(f"standin-ldaprepl exited {self.daemon.proc.returncode}:\n"
                                 f"{self.daemon.output()[-3000:]}")

    def wait_state(self, state, timeout=60):
        def check():
            self.alive()
            st = self.status()
            return st if st["state"] == state else None
        return sh.wait_until(check, timeout, f"standin-ldaprepl state {state}")

    def content(self, server):
        """{entryUUID: (dn, {attr lowercased: sorted values})}"""
        out = {}
        for dn, attrs in server.search(attrs=ATTRS):
            norm = {k.lower(): sorted(v, key=lambda x: x if isinstance(x, bytes) else x.encode())
                    for k, v in attrs.items()}
            out[norm["entryuuid"][0]] = (dn.lower(), norm)
        return out

    def diff(self):
        ca, cb = self.content(self.a), self.content(self.b)
        problems = []
        for u, (dn, attrs) in ca.items():
            if u not in cb:
                problems.append(f"missing on the standby: {dn} ({u})")
            elif cb[u] != (dn, attrs):
                problems.append(f"differs: {dn}: master {attrs} standby {cb[u]}")
        for u, (dn, _) in cb.items():
            if u not in ca:
                problems.append(f"only on the standby: {dn} ({u})")
        return problems, len(ca)

    def wait_equal(self, timeout=90):
        def same():
            self.alive()
            problems, n = self.diff()
            if problems:
                raise AssertionError(f"{len(problems)} differences, e.g. {problems[:3]}")
            return n
        return sh.wait_until(same, timeout, "the standby directory to equal the master's",
                             interval=0.3)

    def context_csn(self, server):
        r = server.search(scope="base", attrs=["contextCSN"])
        return max(r[0][1]["contextCSN"])


def people_ldif(suffix, first, count, extra=""):
    out = []
    for i in range(first, first + count):
        out.append(f"dn: uid=u{i},ou=people,{suffix}\nobjectClass: inetOrgPerson\nuid: u{i}\n"
                   f"cn: User {i}\nsn: S{i}\nmail: u{i}@example.com\n{extra}")
    return "\n".join(out)


@pytest.fixture
def env(harness):
    return LdapEnv(harness)


def test_refresh_then_persist_every_kind_of_change(env):
    a, suffix = env.a, env.suffix
    a.ldapadd(people_ldif(suffix, 0, 300))
    d = env.start()
    env.wait_state("persisting")
    assert env.wait_equal() == 302
    st = env.status()
    assert st["source"] == "a" and st["target"] == "b" and st["applied_csn"]

    # add, modify (replace, add value, delete attribute), binary, big group, 8-bit DN
    photo = bytes(range(256)) * 40
    members = "".join(f"member: uid=u{i % 300},ou=people,{suffix}\n" for i in range(300)) + \
        "".join(f"member: cn=ghost{i},{suffix}\n" for i in range(2700))
    a.ldapadd(f"dn: ou=groups,{suffix}\nobjectClass: organizationalUnit\nou: groups\n\n"
              f"dn: cn=all,ou=groups,{suffix}\nobjectClass: groupOfNames\ncn: all\n{members}\n"
              f"dn: cn=J\u00f6rg M\u00fcller,ou=people,{suffix}\nobjectClass: inetOrgPerson\n"
              f"cn: J\u00f6rg M\u00fcller\nsn: M\u00fcller\ndescription: caf\u00e9 \u2603\n")
    a.ldapmodify(f"dn: uid=u1,ou=people,{suffix}\nchangetype: modify\nreplace: sn\nsn: Changed\n-\n"
                 f"add: telephoneNumber\ntelephoneNumber: +1 555 0100\n-\ndelete: mail\n-\n"
                 f"add: jpegPhoto\njpegPhoto:: {base64.b64encode(photo).decode()}\n")
    # rename, move to another parent, delete
    a.ldapmodify(f"dn: uid=u2,ou=people,{suffix}\nchangetype: modrdn\nnewrdn: uid=u2renamed\n"
                 f"deleteoldrdn: 1\n\n"
                 f"dn: uid=u3,ou=people,{suffix}\nchangetype: modrdn\nnewrdn: uid=u3\n"
                 f"deleteoldrdn: 1\nnewsuperior: ou=groups,{suffix}\n")
    a.ldapdelete(f"uid=u4,ou=people,{suffix}")
    # a group member removed (one value of 3000)
    a.ldapmodify(f"dn: cn=all,ou=groups,{suffix}\nchangetype: modify\ndelete: member\n"
                 f"member: cn=ghost7,{suffix}\n")
    # a very large entry: a 3 MB photo and 2,000 values of another attribute
    big = os.urandom(3 * 1024 * 1024)
    a.ldapadd(f"dn: cn=big,{suffix}\nobjectClass: inetOrgPerson\ncn: big\nsn: big\n"
              f"jpegPhoto:: {base64.b64encode(big).decode()}\n"
              + "".join(f"telephoneNumber: +1 555 {i:06d}\n" for i in range(2000)))
    env.wait_equal()
    got = env.b.search(f"cn=big,{suffix}", scope="base", attrs=["jpegPhoto"])
    assert got[0][1]["jpegPhoto"][0] == big
    got = env.b.search(f"uid=u1,ou=people,{suffix}", scope="base", attrs=["jpegPhoto"])
    assert got[0][1]["jpegPhoto"][0] == photo
    assert env.b.search(f"uid=u3,ou=groups,{suffix}", scope="base")
    st = env.status()
    assert st["session"]["renames"] >= 2, st
    # At rest the lag is the age of the newest read of the master's contextCSN: about 1 s.
    sh.wait_until(lambda: env.status()["lag_seconds"] < 2.5, 10, "lag at rest")

    # drain: the master's contextCSN is applied and durable
    csn = env.context_csn(a)
    reply = sh.wait_until(lambda: (lambda r: r if '"drained":true' in r else None)(
        query(d.sock, f"drain {csn}")), 30, "drain")
    assert csn in reply
    bad = query(d.sock, "drain nonsense")
    assert "usage" in bad
    # The admin contract: position, drain with a timeout, sequences (none).
    pos = json.loads(query(d.sock, "position"))
    assert pos == {"service": "ldap", "position": json.loads(reply)["applied"]}, pos
    assert json.loads(query(d.sock, f"drain {csn} 5000"))["drained"] is True
    assert json.loads(query(d.sock, "sequences"))["requested"] is False


def test_changes_while_down_resume_from_cookie(env):
    a, suffix = env.a, env.suffix
    a.ldapadd(people_ldif(suffix, 0, 100))
    d = env.start()
    env.wait_state("persisting")
    env.wait_equal()
    cookie = os.path.join(env.base, "b", "state", "ldaprepl-a.cookie")
    sh.wait_until(lambda: os.path.exists(cookie), 10, "the cookie file")
    assert os.stat(cookie).st_mode & 0o777 == 0o600
    d.stop()
    # while it is down: deletes (leaf and a subtree), a modify, adds, a rename
    a.ldapadd(f"dn: ou=tmp,{suffix}\nobjectClass: organizationalUnit\nou: tmp\n\n"
              f"dn: cn=x,ou=tmp,{suffix}\nobjectClass: person\ncn: x\nsn: x\n")
    d.start()
    env.wait_equal()
    d.stop()
    a.ldapdelete(*[f"uid=u{i},ou=people,{suffix}" for i in range(10)])
    a.ldapdelete(f"ou=tmp,{suffix}", recursive=True)
    a.ldapmodify(f"dn: uid=u50,ou=people,{suffix}\nchangetype: modify\nreplace: cn\ncn: Fifty\n")
    a.ldapmodify(f"dn: uid=u60,ou=people,{suffix}\nchangetype: modrdn\nnewrdn: uid=u60b\ndeleteoldrdn: 1\n")
    a.ldapadd(people_ldif(suffix, 1000, 20))
    d.start()
    env.wait_state("persisting")
    env.wait_equal()
    st = env.status()
    assert st["refreshes"] == 1
    # The master restarted (its sessionlog is gone): a present phase reconciles.
    d.stop()
    a.stop()
    a.start()
    a.ldapdelete(*[f"uid=u{i},ou=people,{suffix}" for i in range(20, 25)])
    d.start()
    env.wait_equal()


def test_standby_with_content_of_its_own(harness):
    env = LdapEnv(harness, standby_base=True)
    a, b, suffix = env.a, env.b, env.suffix
    # The standby was set up on its own: the same base DNs with other
    # entryUUIDs, and an entry the master does not have (with a child).
    b.ldapadd(f"dn: ou=stale,{suffix}\nobjectClass: organizationalUnit\nou: stale\n\n"
              f"dn: cn=old,ou=stale,{suffix}\nobjectClass: person\ncn: old\nsn: old\n")
    a.ldapadd(people_ldif(suffix, 0, 50))
    env.start()
    env.wait_state("persisting")
    assert env.wait_equal() == 52
    st = env.status()
    assert st["session"]["adopted"] == 2, st
    assert st["reconcile_deletes"] == 2, st
    assert "deleting from the standby: not on the master dn=\"cn=old,ou=stale" in env.daemon.output()


def test_conflict_stops_and_names_the_entry(env):
    a, b, suffix = env.a, env.b, env.suffix
    env.start()
    env.wait_state("persisting")
    env.wait_equal()
    # Someone writes to the standby: the master's add of the same DN conflicts.
    b.ldapadd(f"dn: uid=clash,ou=people,{suffix}\nobjectClass: account\nuid: clash\n")
    a.ldapadd(f"dn: uid=clash,ou=people,{suffix}\nobjectClass: inetOrgPerson\nuid: clash\ncn: c\nsn: c\n")
    st = env.wait_state("error")
    err = st["last_error"]
    assert "uid=clash,ou=people" in err and "Already exists" in err, err
    # Nothing after it is skipped: a later change waits too.
    a.ldapadd(people_ldif(suffix, 0, 3))
    # The administrator removes the standby's own entry; the retry goes on.
    b.ldapdelete(f"uid=clash,ou=people,{suffix}")
    env.wait_state("persisting", timeout=90)
    env.wait_equal()


def test_kill9_during_refresh_and_load(env):
    """kill -9 every one to two and a half seconds while 20,000 entries arrive
    (adds, modifies, deletes), during the refresh, its reconciliation and
    persist; at the end both directories are equal entry by entry."""
    a, suffix = env.a, env.suffix
    a.ldapadd(people_ldif(suffix, 0, 3000))
    d = env.start()
    done = threading.Event()
    errors = []

    def load():
        try:
            for i in range(10000, 27000, 200):
                a.ldapadd(people_ldif(suffix, i, 200))
                n = random.randrange(3000)
                a.ldapmodify(f"dn: uid=u{n},ou=people,{suffix}\nchangetype: modify\n"
                             f"replace: sn\nsn: v{i}\n")
                a.ldapdelete(f"uid=u{i + 7},ou=people,{suffix}")
        except Exception as e:   # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=load)
    t.start()
    kills = 0
    try:
        while not done.is_set() or kills < 4:
            # a different point each time: refresh, reconcile, persist
            done.wait(1.0 + random.random() * 1.5)
            d.kill9()
            kills += 1
            d.start()
    finally:
        done.set()
        t.join()
    assert not errors, errors
    env.wait_state("persisting", timeout=120)
    n = env.wait_equal(timeout=180)
    assert n > 19000, n
    assert kills >= 4


def test_bad_config_and_no_section(harness, tmp_path):
    conf = tmp_path / "standin.conf"
    conf.write_text("[cluster]\nname = x\n"
                    + "".join(f"[node {n}]\naddress = 127.0.0.{i + 1}\nstate_dir = {tmp_path}/{n}/s\n"
                              f"run_dir = {tmp_path}/{n}/r\n" for i, n in enumerate("ab")))
    r = run(LDAPREPL, "-c", str(conf), "-n", "a", timeout=20)
    assert r.returncode != 0
    assert "no [ldap] section" in r.stderr + r.stdout


def test_dump_from_the_standby_uses_the_applied_csn(harness):
    dumpdir = harness.mkdir("dumps")
    env = LdapEnv(harness, extra=f"[dump]\ndir = {dumpdir}\nmax_lag = 1m\n")
    env.a.ldapadd(people_ldif(env.suffix, 0, 20))
    env.start()
    env.wait_state("persisting")
    env.wait_equal()
    r = run(STANDINCTL, "-c", env.conf, "-n", "b", "dump", "ldap", "-v", timeout=60)
    assert r.returncode == 0, r.stderr
    manifests = [os.path.join(dp, f) for dp, _, fs in os.walk(dumpdir) for f in fs
                 if f.endswith(".manifest")]
    assert len(manifests) == 1
    text = open(manifests[0]).read()
    assert "standby" in text and f"applied {env.status()['applied_csn']}" in text, text


def test_poll_mode_refresh_only(harness):
    env = LdapEnv(harness, extra="sync_mode = poll\npoll_interval = 1s\n")
    a, suffix = env.a, env.suffix
    a.ldapadd(people_ldif(suffix, 0, 30))
    env.start()
    env.wait_state("waiting for the next poll")
    env.wait_equal()
    assert env.status()["mode"] == "refreshOnly"
    a.ldapdelete(*[f"uid=u{i},ou=people,{suffix}" for i in range(5)])
    a.ldapmodify(f"dn: uid=u9,ou=people,{suffix}\nchangetype: modrdn\nnewrdn: uid=u9b\ndeleteoldrdn: 1\n")
    a.ldapadd(people_ldif(suffix, 100, 5))
    env.wait_equal()
    sh.wait_until(lambda: env.status()["refreshes"] >= 2, 30, "a second poll")


def test_switchover_reverses_without_a_reload(env):
    """drain on b, reverse on a (the master's daemon), flip the cluster state:
    a then replicates from b starting at b's contextCSN, with no full refresh."""
    a, b, suffix = env.a, env.b, env.suffix
    a.ldapadd(people_ldif(suffix, 0, 40))
    d_b = env.start()
    d_a = StandinDaemon(LDAPREPL, env.conf, "a", os.path.join(env.base, "a", "run"),
                        os.path.join(env.base, "ldaprepl-a.log"))
    env.h.add_cleanup(d_a.stop)
    env.wait_state("persisting")
    sh.wait_until(lambda: d_a.status()["state"] == "idle (master)", 30, "a idle as master")
    a.ldapmodify(f"dn: uid=u1,ou=people,{suffix}\nchangetype: modify\nreplace: sn\nsn: last on a\n")
    csn = env.context_csn(a)
    sh.wait_until(lambda: '"drained":true' in query(d_b.sock, f"drain {csn}"), 30, "b drained")
    env.wait_equal()
    assert "replicates from a already: reverse is for the old master's" in query(d_b.sock, "reverse a")
    for bad in ("reverse", "reverse a", "reverse zz", "reverse b 0", "reverse b 10 x"):
        assert "usage: reverse NODE [TIMEOUT_MS]" in query(d_a.sock, bad), bad
    reply = query(d_a.sock, "reverse b 20000", timeout=30)
    assert '"done":true' in reply, reply
    for node in ("a", "b"):
        r = run(STANDINCTL, "-c", env.conf, "-n", node, "state", "set", "--master", "b")
        assert r.returncode == 0, r.stderr
    sh.wait_until(lambda: d_a.status()["state"] == "persisting", 60, "a persisting from b")
    sh.wait_until(lambda: d_b.status()["state"] == "idle (master)", 30, "b idle as master")
    b.ldapmodify(f"dn: uid=u2,ou=people,{suffix}\nchangetype: modify\nreplace: sn\nsn: first on b\n")
    b.ldapadd(people_ldif(suffix, 500, 3))
    b.ldapdelete(f"uid=u3,ou=people,{suffix}")
    # now b is the source: compare with b as the master side
    env.a, env.b = b, a
    try:
        env.daemon = d_a
        env.wait_equal()
    finally:
        env.a, env.b = a, b
    st = d_a.status()
    assert st["refresh_entries"] < 10, st          # no reload of the directory
    assert st["reconcile_deletes"] == 0, st


EXTRA_SCHEMA = (
    "attributetype ( 1.3.6.1.4.1.99999.1 NAME 'standinTestAttr' EQUALITY caseIgnoreMatch "
    "SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )\n"
    "objectclass ( 1.3.6.1.4.1.99999.2 NAME 'standinTestClass' AUXILIARY MAY standinTestAttr )\n")


def test_entry_the_standby_schema_refuses_stops_the_stream(harness):
    env = LdapEnv(harness, master_conf=EXTRA_SCHEMA)   # the standby lacks this schema
    a, suffix = env.a, env.suffix
    env.start()
    env.wait_state("persisting")
    env.wait_equal()
    a.ldapadd(f"dn: cn=odd,{suffix}\nobjectClass: person\nobjectClass: standinTestClass\n"
              f"cn: odd\nsn: odd\nstandinTestAttr: hello\n")
    a.ldapadd(people_ldif(suffix, 0, 2))                # after it: must wait, not be skipped
    st = env.wait_state("error")
    err = st["last_error"]
    assert "cn=odd," in err and "standinTestClass" in err, err
    assert not env.b.search(f"uid=u1,ou=people,{suffix}", scope="base")
    # Still refused on every retry, with the same message.
    sh.wait_until(lambda: env.daemon.output().count("cn=odd,") >= 2, 30, "a retry")
    assert not env.b.search(f"uid=u1,ou=people,{suffix}", scope="base")
    # The administrator removes it on the master: the stream goes on.
    a.ldapdelete(f"cn=odd,{suffix}")
    env.wait_state("persisting", timeout=60)
    env.wait_equal()


def test_stuck_standby_lag_grows_and_the_error_stays(harness):
    """A change the standby refuses: at every poll for 15 s the state is not
    persisting, last_error names the entry, and lag_seconds (from the
    master's contextCSN read every second) keeps growing; once the master
    drops the entry the error clears and the lag falls back."""
    env = LdapEnv(harness, master_conf=EXTRA_SCHEMA)   # the standby lacks this schema
    a, suffix = env.a, env.suffix
    env.start()
    env.wait_state("persisting")
    env.wait_equal()
    st = sh.wait_until(lambda: (s := env.status())["lag_seconds"] is not None and s, 30,
                       "a first heartbeat")
    assert st["lag_seconds"] < 5 and st["heartbeat_error"] is None, st
    a.ldapadd(f"dn: cn=odd,{suffix}\nobjectClass: person\nobjectClass: standinTestClass\n"
              f"cn: odd\nsn: odd\nstandinTestAttr: hello\n")
    t_refused = time.time()
    env.wait_state("error")
    lags = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 15:
        st = env.status()
        assert st["state"] != "persisting", st
        assert st["last_error"] is not None and "cn=odd," in st["last_error"], st
        assert st["lag_seconds"] is not None, st
        assert st["lag_seconds"] >= time.time() - t_refused - 3, (st, time.time() - t_refused)
        lags.append(st["lag_seconds"])
        time.sleep(0.5)      # the polling interval of an administrator's watch
    assert lags[-1] > lags[0] + 10, lags
    a.ldapdelete(f"cn=odd,{suffix}")
    st = sh.wait_until(lambda: (s := env.status())["state"] == "persisting" and
                       s["last_error"] is None and s["lag_seconds"] < 5 and s, 90,
                       "persisting, no error, a small lag")
    env.wait_equal()
    # The heartbeat survives a restart.
    env.daemon.stop()
    assert os.path.exists(os.path.join(env.base, "b", "state", "ldaprepl.heartbeat"))


def test_refused_entry_in_a_refresh_holds_everything_after_it(harness):
    """Changes made while the daemon is down come in a refresh from the
    cookie, in the master's storage order.  It is applied in entryCSN order
    with writes in order: what came before the entry the standby refuses is
    applied, nothing after it, on every retry; then all of it once the
    master drops the entry."""
    env = LdapEnv(harness, master_conf=EXTRA_SCHEMA)   # the standby lacks this schema
    a, b, suffix = env.a, env.b, env.suffix
    a.ldapadd(people_ldif(suffix, 0, 3))
    d = env.start()
    env.wait_state("persisting")
    env.wait_equal()
    d.stop()
    a.ldapadd(people_ldif(suffix, 100, 3))                              # before
    a.ldapadd(f"dn: cn=odd,{suffix}\nobjectClass: person\nobjectClass: standinTestClass\n"
              f"cn: odd\nsn: odd\nstandinTestAttr: hello\n")          # refused
    a.ldapadd(people_ldif(suffix, 200, 3))                              # after
    a.ldapmodify(f"dn: uid=u0,ou=people,{suffix}\nchangetype: modify\nreplace: sn\nsn: after\n")
    a.ldapdelete(f"uid=u1,ou=people,{suffix}")                          # after
    d.start()

    def holds(uid):
        return bool(b.search(f"uid={uid},ou=people,{suffix}", scope="base"))

    def check():
        assert all(holds(f"u{i}") for i in (100, 101, 102)), "the changes before it"
        assert not any(holds(f"u{i}") for i in (200, 201, 202)), "a change after it"
        assert holds("u1"), "a delete after it"
        got = b.search(f"uid=u0,ou=people,{suffix}", attrs=("sn",), scope="base")
        assert got[0][1]["sn"] == ["S0"], got
    st = env.wait_state("error")
    assert "cn=odd," in st["last_error"] and "standinTestClass" in st["last_error"], st
    check()
    # Every retry is a refresh from the same cookie: the same holds each time.
    n = d.output().count("cn=odd,")
    sh.wait_until(lambda: d.output().count("cn=odd,") > n + 1, 60, "two more retries")
    check()
    assert env.status()["state"] != "persisting"
    a.ldapdelete(f"cn=odd,{suffix}")
    env.wait_state("persisting", timeout=90)
    env.wait_equal()
    assert not holds("u1") and holds("u200")


def test_restart_resumes_when_the_master_has_several_server_ids(env):
    """A master whose contextCSN holds several serverIDs (its serverID was
    changed, or entries were loaded elsewhere): persist-stage cookies name
    one of them only, and a cookie stored as received would forget the
    others (a full refresh at the next start)."""
    a, suffix = env.a, env.suffix
    a.ldapadd(people_ldif(suffix, 0, 300))
    a.stop()
    with open(a.conf) as f:
        text = f.read()
    with open(a.conf, "w") as f:
        f.write(text.replace(f"serverID {a.server_id}\n", "serverID 7\n"))
    a.start()
    a.ldapmodify(f"dn: uid=u0,ou=people,{suffix}\nchangetype: modify\nreplace: sn\nsn: sid 7\n")
    assert len(a.search(scope="base", attrs=["contextCSN"])[0][1]["contextCSN"]) == 2
    d = env.start()
    env.wait_state("persisting")
    env.wait_equal()
    a.ldapmodify(f"dn: uid=u1,ou=people,{suffix}\nchangetype: modify\nreplace: sn\nsn: live\n")
    env.wait_equal()
    sh.wait_until(lambda: (s := env.status())["durable_csn"] == s["applied_csn"], 10, "cookie stored")
    d.stop()
    a.ldapmodify(f"dn: uid=u2,ou=people,{suffix}\nchangetype: modify\nreplace: sn\nsn: while down\n")
    d.start()
    env.wait_state("persisting")
    env.wait_equal()
    st = env.status()
    assert st["refresh_entries"] < 10, st     # resumed, not the whole directory again


def test_starttls_and_ldaps_with_certificate_checks(harness):
    """StartTLS (demanded) on ldap:// and ldaps://, both checked against
    ca_file: they replicate with the right CA; a server certificate from
    another CA is refused, with an error that names the node, its URI and
    what to check, and nothing reaches the standby until the CA is right."""
    ca, cert, key = sh.make_test_ca(harness.path("tls"), "standin")
    other_ca, _, _ = sh.make_test_ca(harness.path("tls-other"), "other")
    env = LdapEnv(harness, tls=(cert, key))
    a, b, suffix = env.a, env.b, env.suffix
    a.ldapadd(people_ldif(suffix, 0, 20))

    def tls_sessions(server):
        with open(server.logfile, errors="replace") as f:
            return f.read().count(" TLS established ")

    def on_standby(i):
        return lambda: b.search(f"uid=u{i},ou=people,{suffix}", scope="base", attrs=["1.1"])

    # (a) StartTLS on ldap://, demanded, with the right CA
    env.write_conf(f"starttls = demand\nca_file = {ca}\n")
    d = env.start()
    env.wait_state("persisting")
    a.ldapadd(people_ldif(suffix, 100, 1))
    sh.wait_until(on_standby(100), 30, "u100 on the standby over StartTLS")
    env.wait_equal()
    assert tls_sessions(a) >= 1 and tls_sessions(b) >= 1
    with open(a.logfile) as f:
        assert " STARTTLS" in f.read()
    d.stop()

    # (b) ldaps:// endpoints with the right CA
    env.write_conf(f"ca_file = {ca}\n", ldaps=True)
    before = tls_sessions(a), tls_sessions(b)
    d.start()
    env.wait_state("persisting")
    a.ldapadd(people_ldif(suffix, 101, 1))
    sh.wait_until(on_standby(101), 30, "u101 on the standby over ldaps://")
    env.wait_equal()
    assert tls_sessions(a) > before[0] and tls_sessions(b) > before[1]
    d.stop()

    # (c) the wrong CA, for StartTLS and for ldaps://: refused, and said so.
    # The standby is connected first, so it is the one named.
    for n, ldaps in enumerate((False, True)):
        env.write_conf(("" if ldaps else "starttls = demand\n") + f"ca_file = {other_ca}\n",
                       ldaps=ldaps)
        d.start()
        st = env.wait_state("error")
        err = st["last_error"]
        uri = b.ldaps_uri if ldaps else b.uri
        assert f"node b ({uri})" in err, err
        assert "TLS handshake failed" in err and f"ca_file {other_ca}" in err, err
        assert ("cannot connect" if ldaps else "StartTLS failed") in err, err
        assert "bind as" not in err, err
        refusals = d.output().count(f"node b ({uri})")
        assert refusals >= 1
        a.ldapadd(people_ldif(suffix, 200 + n, 1))
        # still refused on the next try, and the entry is not replicated
        sh.wait_until(lambda: d.output().count(f"node b ({uri})") > refusals, 30, "a retry")
        assert not on_standby(200 + n)()
        d.stop()

    # the right CA again: what was added meanwhile arrives
    env.write_conf(f"ca_file = {ca}\n", ldaps=True)
    d.start()
    env.wait_state("persisting")
    env.wait_equal()
    assert on_standby(200)() and on_standby(201)()


def test_forced_refresh_required(harness):
    """The master answers e-syncRefreshRequired for real: syncprov with
    reloadhint on and a one-entry sessionlog, and a cookie that no entry on
    the master is as old as any more (while the replicator was down every
    entry it knew was deleted or modified).  The replicator starts again
    from scratch, the whole directory is compared, and what was deleted on
    the master is deleted on the standby."""
    env = LdapEnv(harness, master_conf="syncprov-reloadhint TRUE\nsyncprov-sessionlog 1\n")
    a, b, suffix = env.a, env.b, env.suffix
    a.ldapadd(people_ldif(suffix, 0, 200))
    d = env.start()
    env.wait_state("persisting")
    assert env.wait_equal() == 202
    sh.wait_until(lambda: (s := env.status())["durable_csn"] == s["applied_csn"], 10, "cookie stored")
    cookie_second = env.status()["durable_csn"][:14]
    d.stop()
    # syncprov decides "stale cookie" by looking for an entry whose entryCSN
    # is <= the cookie's, through the entryCSN index, whose keys are whole
    # seconds; more than one candidate counts as found (slapd 2.5.13,
    # syncprov_findcsn and findcsn_cb).  Changes made in the cookie's own
    # second are such candidates, and slapd then answers with a present
    # phase instead of e-syncRefreshRequired.  So they wait for the next second.
    sh.wait_until(lambda: time.strftime("%Y%m%d%H%M%S", time.gmtime()) > cookie_second, 5,
                  "the second after the cookie's CSN")

    # While it is down: many deletes (far more than the sessionlog holds),
    # and every other entry modified, so the cookie's CSN is stale.
    a.ldapdelete(*[f"uid=u{i},ou=people,{suffix}" for i in range(150)])
    a.ldapmodify("".join(f"dn: uid=u{i},ou=people,{suffix}\nchangetype: modify\nreplace: sn\n"
                         f"sn: after {i}\n\n" for i in range(150, 200)))
    a.ldapmodify(f"dn: {suffix}\nchangetype: modify\nreplace: o\no: touched\n\n"
                 f"dn: ou=people,{suffix}\nchangetype: modify\nreplace: description\n"
                 f"description: touched\n")
    a.ldapadd(people_ldif(suffix, 1000, 10))

    d.start()
    env.wait_state("persisting", timeout=90)
    assert env.wait_equal() == 62
    assert not b.search(f"uid=u0,ou=people,{suffix}", scope="base")
    # The master really said so (slapd's stats line for the sync search) ...
    with open(a.logfile, errors="replace") as f:
        assert "err=4096" in f.read()
    # ... and the replicator started again from scratch at once, as a
    # notice, not an error: the second refresh compared the whole directory.
    out = d.output()
    assert out.count("e-syncRefreshRequired") == 1, out[-3000:]
    assert "starting again from scratch" in out, out[-3000:]
    assert " error: " not in out, out[-3000:]
    tail = out[out.index("e-syncRefreshRequired"):]
    assert "refresh from a mode=refreshAndPersist cookie=none" in tail, tail[:3000]
    assert "refresh done entries=62 deleted=150" in tail, tail[:3000]
    st = env.status()
    assert st["refreshes"] == 2, st            # the refused one, then the one from scratch
    assert st["refresh_entries"] == 62 and st["reconcile_deletes"] == 150, st
    assert not st["last_error"], st

    # Persist goes on, and the new cookie is a good one: a restart resumes.
    a.ldapadd(people_ldif(suffix, 2000, 1))
    assert env.wait_equal() == 63
    sh.wait_until(lambda: (s := env.status())["durable_csn"] == s["applied_csn"], 10, "cookie stored")
    d.stop()
    a.ldapmodify(f"dn: uid=u2000,ou=people,{suffix}\nchangetype: modify\nreplace: sn\nsn: later\n")
    d.start()
    env.wait_state("persisting")
    assert env.wait_equal() == 63
    st = env.status()
    assert st["refresh_entries"] < 10, st
    assert d.output().count("e-syncRefreshRequired") == 1


def test_status_answers_while_the_master_does_not(harness):
    """Connecting and binding run off the event loop: with a master that
    takes the TCP connection and never answers, the status socket answers at
    once all along ('connecting'), until the bind's timeout (5 s) is the
    error; the daemon then stops promptly."""
    import socket
    env = LdapEnv(harness)
    silent = socket.socket()
    silent.bind((env.a.host, 0))
    silent.listen(8)
    harness.add_cleanup(silent.close)
    uri = f"ldap://{env.a.host}:{silent.getsockname()[1]}"
    with open(env.conf) as f:
        text = f.read().replace(f"endpoint.a = {env.a.uri}", f"endpoint.a = {uri}")
    with open(env.conf, "w") as f:
        f.write(text)
    env.start()
    seen = {"connecting": 0}

    def until_error():
        env.alive()
        t0 = time.monotonic()
        st = env.status()
        took = time.monotonic() - t0
        if took > 1.0:
            raise sh.StopWaiting(f"status took {took:.1f}s in state {st['state']}")
        if st["state"] == "connecting":
            seen["connecting"] += 1
        return st if st["state"] == "error" else None
    st = sh.wait_until(until_error, 30, "the bind to the silent master to time out")
    assert seen["connecting"] >= 10, seen
    assert uri[len("ldap://"):] in st["last_error"], st
    t0 = time.monotonic()
    env.daemon.stop()
    assert time.monotonic() - t0 < 15
