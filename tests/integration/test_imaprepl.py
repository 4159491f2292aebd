"""standin-imaprepl against a real Dovecot 2.3 pair: initial sync of users
with folders, flags and keywords; new mail by IDLE; flag changes and
expunges; folder rename, delete and subscriptions; 8-bit, binary and a
50 MB message byte for byte; kill -9 during a 5,000-message sync with no
duplicate and nothing missing; a standby folder recreated (UIDVALIDITY
reset) without duplicates; switchover and the reverse direction.  At the
end of each test the two servers are compared folder by folder (every
message's bytes, flags and INTERNALDATE)."""
import imaplib
import os
import re
import time

import pytest

import standin_harness as sh
from standin_bin import STANDINCTL, StandinDaemon, query, run

pytestmark = pytest.mark.servers

IMAPREPL = "replicators/imap/standin-imaprepl"
USERS = ("alice", "bob", "carol")


def q(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def message(i, size=0, extra=b""):
    body = (f"Body of message {i}\r\n".encode() + b"x" * size + b"\r\n")
    return (f"From: sender{i}@example.com\r\nTo: alice@example.com\r\nSubject: message {i}\r\n"
            f"Message-ID: <m{i}.{os.urandom(4).hex()}@example.com>\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n").encode() + extra + b"\r\n" + body


class ImapEnv:
    """Dovecot a (master) and b (standby), standin.conf, the cluster state,
    and standin-imaprepl on node b (start())."""

    def __init__(self, harness, users=USERS, extra="", dovecot_conf="", debug=False, dovecot_conf_b=None):
        self.h = harness
        password = "pw-" + os.urandom(6).hex()
        umap = {u: f"{u}-secret" for u in users}
        self.a = harness.start_dovecot("a", users=umap, master_password=password, extra_conf=dovecot_conf)
        self.b = harness.start_dovecot("b", users=umap, master_password=password,
                                       extra_conf=dovecot_conf if dovecot_conf_b is None else dovecot_conf_b)
        self.users = list(users)
        self.base = harness.mkdir("standin")
        self.users_file = os.path.join(self.base, "users")
        with open(self.users_file, "w") as f:
            f.write("# users to replicate\n" + "\n".join(users) + "\n")
        self.conf = self.write_conf(extra, debug)
        for node in ("a", "b"):
            r = run(STANDINCTL, "-c", self.conf, "-n", node, "state", "init", "--master", "a")
            assert r.returncode == 0, r.stderr
        self.daemons = {}

    def write_conf(self, extra, debug=False):
        text = "[cluster]\nname = itest\n" + ("log_level = debug\n" if debug else "")
        for s in (self.a, self.b):
            for d in ("state", "run"):
                os.makedirs(os.path.join(self.base, s.node, d), exist_ok=True)
            text += (f"[node {s.node}]\naddress = {s.host}\n"
                     f"state_dir = {self.base}/{s.node}/state\nrun_dir = {self.base}/{s.node}/run\n")
        text += "[imap]\n"
        for s in (self.a, self.b):
            text += f"endpoint.{s.node} = imap://{s.host}:{s.port}\n"
        text += (f"admin_user = {self.a.master_user}\npassword_file = {self.a.master_password_file}\n"
                 f"users_file = {self.users_file}\nworkers = 4\ntimeout = 20s\n"
                 f"full_pass_interval = 30s\n{extra}")
        path = os.path.join(self.base, "standin.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, node="b"):
        d = self.daemons.get(node)
        if d is None:
            d = StandinDaemon(IMAPREPL, self.conf, node, os.path.join(self.base, node, "run"),
                              os.path.join(self.base, f"imaprepl-{node}.log"))
            self.h.add_cleanup(d.stop)
            self.daemons[node] = d
        else:
            d.start()
        return d

    @property
    def daemon(self):
        return self.daemons["b"]

    def status(self, node="b"):
        return self.daemons[node].status()

    def alive(self, node="b"):
        d = self.daemons.get(node)
        if d is not None and not d.running():
            raise sh.StopWaiting(f"standin-imaprepl exited {d.proc.returncode}:\n{d.output()[-3000:]}")

    def wait_status(self, pred, what, timeout=120, node="b"):
        def check():
            self.alive(node)
            st = self.status(node)
            return st if pred(st) else None
        return sh.wait_until(check, timeout, what)

    # -- reading a whole server ------------------------------------------

    def content(self, server, user):
        """{folder: sorted [(body, flags, internaldate)]}, subscriptions."""
        out = {}
        with server.imap(user, master=True, timeout=60) as c:
            typ, data = c.list()
            names = []
            for item in data:
                m = re.match(rb'\(([^)]*)\) (?:"[^"]*"|NIL) (.*)$', item or b"")
                if not m or b"\\Noselect" in m.group(1):
                    continue
                name = m.group(2)
                if name.startswith(b'"'):
                    name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
                names.append(name.decode())
            for name in names:
                typ, _ = c.select(q(name), readonly=True)
                assert typ == "OK", name
                typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
                msgs = []
                for i, item in enumerate(data):
                    if not isinstance(item, tuple):
                        continue
                    meta = item[0]
                    if i + 1 < len(data) and isinstance(data[i + 1], bytes):
                        meta += data[i + 1]
                    flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
                    date = re.search(rb'INTERNALDATE "([^"]*)"', meta)
                    fl = tuple(sorted(f for f in flags.group(1).decode().split() if f != "\\Recent"))
                    msgs.append((item[1], fl, date.group(1).decode()))
                out[name] = sorted(msgs)
            typ, data = c.lsub()
            subs = sorted(d for d in data if d)
        return out, subs

    def diff(self, users=None):
        problems, total = [], 0
        for u in users or self.users:
            (ca, sa), (cb, sb) = self.content(self.a, u), self.content(self.b, u)
            if sorted(ca) != sorted(cb):
                problems.append(f"{u}: folders differ: master {sorted(ca)} standby {sorted(cb)}")
            for f, msgs in ca.items():
                total += len(msgs)
                other = cb.get(f)
                if other is None:
                    continue
                if len(msgs) != len(other):
                    problems.append(f"{u}/{f}: master has {len(msgs)} messages, standby {len(other)}")
                elif msgs != other:
                    bad = [i for i, (x, y) in enumerate(zip(msgs, other)) if x != y]
                    problems.append(f"{u}/{f}: {len(bad)} message(s) differ, e.g. master "
                                    f"{msgs[bad[0]][1:]} {msgs[bad[0]][0][:80]!r} standby "
                                    f"{other[bad[0]][1:]} {other[bad[0]][0][:80]!r}")
            if sa != sb:
                problems.append(f"{u}: subscriptions differ: master {sa} standby {sb}")
        return problems, total

    def wait_equal(self, timeout=120, users=None, node="b"):
        def same():
            self.alive(node)
            problems, n = self.diff(users)
            if problems:
                raise AssertionError(f"{len(problems)} differences: {problems[:3]}")
            return n
        return sh.wait_until(same, timeout, "the standby's mailboxes to equal the master's",
                             interval=0.5)

    def bulk_append(self, server, user, folder, messages, flags_for=lambda i: ()):
        """APPEND many messages on one connection (creating FOLDER)."""
        with server.imap(user, master=True, timeout=60) as c:
            c.create(q(folder))
            for i, m in enumerate(messages):
                fl = flags_for(i)
                typ, data = c.append(q(folder), "(" + " ".join(fl) + ")" if fl else None, None, m)
                assert typ == "OK", data

    def imap(self, server, user):
        return server.imap(user, master=True, timeout=60)


@pytest.fixture
def env(harness):
    return ImapEnv(harness)


def test_initial_sync_then_push_flags_expunges_folders(env):
    a = env.a
    # Before the daemon: users with folders, flags and keywords.
    env.bulk_append(a, "alice", "INBOX", [message(i) for i in range(30)],
                    lambda i: ("\\Seen",) if i % 3 == 0 else ("\\Flagged", "$Label1") if i % 5 == 0 else ())
    env.bulk_append(a, "alice", "Archive/2026", [message(100 + i) for i in range(20)])
    env.bulk_append(a, "bob", "Sent", [message(200 + i) for i in range(10)], lambda i: ("\\Seen",))
    with env.imap(a, "alice") as c:
        c.subscribe(q("Archive/2026"))
    env.start()
    st = env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "first pass")
    assert st["users"] == 3 and st["appended"] == 60, st
    # Everything copied: nothing behind (not the count the first tree job saw).
    assert st["messages_behind"] == 0 and st["messages"] == 60, st
    assert env.wait_equal() == 60

    # New mail reaches the standby through IDLE, well before the next full pass (30 s).
    env.wait_status(lambda s: s["idling"] == 3, "IDLE on every user's INBOX")
    passes = env.status()["passes"]
    t0 = time.monotonic()
    a.append("alice", "INBOX", message(1000))
    env.wait_status(lambda s: s["appended"] >= 61, "the new message on the standby", timeout=20)
    assert time.monotonic() - t0 < 5
    assert env.status()["passes"] == passes
    # Dovecot has NOTIFY: a message in another folder is pushed too.
    assert env.status()["notifying"] == 3
    t0 = time.monotonic()
    a.append("alice", "Archive/2026", message(1001))
    env.wait_status(lambda s: s["appended"] >= 62, "the message in Archive/2026 on the standby", timeout=20)
    assert time.monotonic() - t0 < 5
    assert env.status()["passes"] == passes

    # Flags, keywords, expunges, a new folder, a rename, a delete, subscriptions.
    with env.imap(a, "alice") as c:
        c.select("INBOX")
        c.uid("STORE", "1:5", "+FLAGS", "(\\Answered $Work)")
        c.uid("STORE", "6", "-FLAGS", "(\\Flagged $Label1)")
        c.uid("STORE", "7:9", "+FLAGS.SILENT", "(\\Deleted)")
        c.expunge()
        c.create(q("Projects"))
        c.rename(q("Archive/2026"), q("Archive/Old 2026"))
        c.unsubscribe(q("Archive/2026"))
        c.subscribe(q("Archive/Old 2026"))
    with env.imap(a, "bob") as c:
        c.delete(q("Sent"))
    query(env.daemon.sock, "pass")
    env.wait_equal()
    st = env.status()
    assert st["folders_renamed"] == 1 and st["folders_deleted"] == 1, st
    assert st["expunged"] == 3 and st["flag_updates"] >= 6, st
    # The rename was a RENAME: nothing was copied again.
    assert st["appended"] == 62, st
    assert st["last_error"] is None
    # QRESYNC told which messages were expunged (no listing of every UID).
    assert "3 message(s) expunged on the standby (found by VANISHED)" in env.daemon.output()


def test_odd_content_byte_for_byte(env):
    a = env.a
    eight_bit = ("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <8bit@example.com>\r\n"
                 "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                 "Grüße aus Köln, ça va? \xa0 日本語\r\n").encode()
    binary = (b"Subject: binary\r\nMessage-ID: <bin@example.com>\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Transfer-Encoding: binary\r\n\r\n" + bytes(b for b in range(256) if b not in (0, 10, 13)) * 64
              + b"\r\n")
    long_line = b"Subject: long\r\nMessage-ID: <long@example.com>\r\n\r\n" + b"y" * 200000 + b"\r\n"
    no_id = b"Subject: no message-id at all\r\n\r\nsame\r\n"
    big = message(50, size=0) + (b"z" * 998 + b"\r\n") * (50 * 1024 * 1024 // 1000)
    for m in (eight_bit, binary, long_line, no_id, no_id):
        a.append("carol", "INBOX", m)
    a.append("carol", "Big", big, create=True)
    a.append("carol", "Entw&APw-rfe", eight_bit, create=True)   # "Entwürfe" in modified UTF-7
    # A name that needs quoting, in a MULTIAPPEND command written by standin itself.
    env.bulk_append(a, "carol", 'Say "hi" \\ there', [long_line, binary, eight_bit])
    env.start()
    env.wait_status(lambda s: s["passes"] >= 1, "first pass", timeout=300)
    env.wait_equal(users=["carol"], timeout=300)
    st = env.status()
    assert st["appended"] == 10 and st["last_error"] is None, st
    assert st["appended_bytes"] >= len(big)


def test_kill9_during_5000_message_sync_no_duplicate_nothing_missing(env):
    a = env.a
    n = 5000
    env.bulk_append(a, "alice", "INBOX", [message(i, size=400) for i in range(n // 2)],
                    lambda i: ("\\Seen",) if i % 2 else ())
    env.bulk_append(a, "alice", "Lists", [message(n + i, size=400) for i in range(n // 2)])
    env.start()
    kills = 0
    while kills < 5:
        # Kill -9 once it has copied a few hundred messages (in the middle of a batch).
        st = env.wait_status(lambda s: s["appended"] >= 300 + 37 * kills or s["passes"] >= 1,
                             "some messages copied", timeout=120)
        if st["passes"] >= 1:
            break
        env.daemon.kill9()
        kills += 1
        env.daemon.start()
    env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "a clean pass after the kills",
                    timeout=300)
    assert kills >= 3
    assert env.wait_equal(users=["alice"], timeout=120) == n
    # Nothing twice on the standby: exactly n messages there.
    with env.imap(env.b, "alice") as c:
        counts = [int(c.select(q(f), readonly=True)[1][0]) for f in ("INBOX", "Lists")]
    assert sum(counts) == n, counts
    # The first kill cut a first fill, which journals nothing: the next start
    # found no state and paired what was on the standby by content.  Later
    # kills cut journaled APPEND batches: their intents were resolved on the
    # standby, not appended twice.
    log = env.daemon.output()
    assert re.search(r"folder (INBOX|Lists): pairing messages by content", log), log[-3000:]
    assert re.search(r"\d+ message\(s\) already on the standby, \d+ to copy", log), log[-3000:]
    assert log.count("interrupted copy resolved") >= 1, log[-3000:]
    # Each says how many of the cut batch (at most 64) were there and how many are copied again.
    for there, again in re.findall(r"interrupted copy resolved: (\d+) message\(s\) were on the "
                                   r"standby already, (\d+) will be copied", log):
        assert int(there) + int(again) <= 64, (there, again)


def test_standby_folder_recreated_no_duplicates(env):
    a, b = env.a, env.b
    env.bulk_append(a, "bob", "Work", [message(i) for i in range(40)], lambda i: ("\\Seen",) if i < 10 else ())
    env.start()
    env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "first pass")
    env.wait_equal(users=["bob"])
    # Someone recreates the folder on the standby, restoring half of it from a backup:
    # a new UIDVALIDITY, half the messages there already.
    keep = env.content(b, "bob")[0]["Work"][:20]
    with env.imap(b, "bob") as c:
        c.delete(q("Work"))
        c.create(q("Work"))
    with env.imap(b, "bob") as c:
        for body, flags, date in keep:
            c.append(q("Work"), "(" + " ".join(flags) + ")" if flags else None, '"' + date + '"', body)
    env.daemon.stop()
    env.start()
    env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "pass after the restart")
    assert env.wait_equal(users=["bob"]) == 40
    st = env.status()
    assert st["reconciled"] >= 1 and st["appended"] == 20, st
    # The source folder recreated too (deleted and made again with other mail): its old copies go.
    with env.imap(a, "bob") as c:
        c.delete(q("Work"))
        c.create(q("Work"))
    a.append("bob", "Work", message(999))
    query(env.daemon.sock, "pass")
    assert env.wait_equal(users=["bob"]) == 1


def test_drain_and_switchover_reverse(env):
    a, b = env.a, env.b
    env.bulk_append(a, "alice", "INBOX", [message(i) for i in range(50)], lambda i: ("\\Seen",) if i % 2 else ())
    env.start()
    env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "first pass")
    for i in range(10):
        a.append("alice", "INBOX", message(100 + i))
    # drain: everything the master had now is on the standby once it says so.
    t = int(time.time() * 1000)
    import json

    def drained():
        return json.loads(query(env.daemon.sock, f"drain {t}"))["drained"] or None
    sh.wait_until(drained, 60, "drain")
    # The admin contract: the position is a time at or after t; sequences: none.
    pos = json.loads(query(env.daemon.sock, "position"))
    assert pos["service"] == "imap" and int(pos["position"]) >= t, pos
    assert json.loads(query(env.daemon.sock, f"drain {t} 5000"))["drained"] is True
    assert json.loads(query(env.daemon.sock, "sequences"))["requested"] is False
    problems, n = env.diff(users=["alice"])
    assert not problems and n == 60, problems
    # Switchover: b becomes the master, and the daemon on a (idle while a was
    # the master) replicates b -> a.  It has no state for source b, so it pairs
    # the messages by content: nothing is copied again.
    env.start("a")
    env.wait_status(lambda s: s["state"] == "idle (master)", "a idle as master", node="a")
    # reverse: on the master's daemon, as in every replicator; nothing to prepare for IMAP.
    assert "replicates from a already: reverse is for the old master's" in query(env.daemon.sock, "reverse a")
    assert "usage: reverse NODE [TIMEOUT_MS]" in query(env.daemons["a"].sock, "reverse a")
    assert json.loads(query(env.daemons["a"].sock, "reverse b"))["done"] is True
    for node in ("a", "b"):
        r = run(STANDINCTL, "-c", env.conf, "-n", node, "state", "set", "--master", "b")
        assert r.returncode == 0, r.stderr + r.stdout
    env.wait_status(lambda s: s["state"] == "idle (master)", "b idle as master")
    env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "reverse pass", node="a")
    b.append("alice", "INBOX", message(500))
    with env.imap(b, "alice") as c:
        c.select("INBOX")
        c.uid("STORE", "1:3", "+FLAGS", "(\\Flagged)")
    env.wait_equal(users=["alice"], node="a")
    st = env.status("a")
    assert st["source"] == "b" and st["appended"] == 1 and st["reconciled"] >= 1, st


def test_bad_password_and_missing_user_are_clear_errors(harness):
    env = ImapEnv(harness, users=("alice",))
    with open(env.users_file, "a") as f:
        f.write("nosuchuser\n")
    env.start()
    st = env.wait_status(lambda s: s["passes"] >= 1, "first pass")
    assert st["state"] == "error" and "nosuchuser" in st["last_error"], st
    assert st["users_in_error"] == 1
    # alice is replicated all the same.
    env.a.append("alice", "INBOX", message(1))
    query(env.daemon.sock, "pass")
    env.wait_equal(users=["alice"])


def test_imaps_and_starttls_with_certificate_checks(harness):
    ca, cert, key = sh.make_test_ca(harness.path("tls"), "standin")
    other_ca, _, _ = sh.make_test_ca(harness.path("tls-other"), "other")
    imaps_port = sh.free_port()
    tls = f"ssl = required\nssl_cert = <{cert}\nssl_key = <{key}\n"
    env = ImapEnv(harness, users=["alice"], dovecot_conf=tls + (
        "service imap-login {\n  inet_listener imaps {\n"
        f"    address = 127.0.0.1\n    port = {imaps_port}\n  }}\n}}\n"), dovecot_conf_b=tls)
    a, password = env.a, env.a.master_password

    def conf(ca_file):
        env.conf = env.write_conf(f"starttls = demand\nca_file = {ca_file}\n")
        with open(env.conf) as f:
            text = f.read().replace(f"endpoint.a = imap://{a.host}:{a.port}",
                                    f"endpoint.a = imaps://127.0.0.1:{imaps_port}")
        with open(env.conf, "w") as f:
            f.write(text)

    conf(ca)

    # imaplib cannot log in over plain text here (ssl = required): write through IMAPS.
    import ssl
    ctx = ssl.create_default_context(cafile=ca)
    with imaplib.IMAP4_SSL("127.0.0.1", imaps_port, ssl_context=ctx) as c:
        c.login('"alice*standin"', password)
        c.append("INBOX", None, None, message(1))
    env.start()
    st = env.wait_status(lambda s: s["passes"] >= 1, "first pass")
    assert st["state"] == "streaming" and st["appended"] == 1, st

    # A certificate from another CA is refused, and the error says so.
    env.daemon.stop()
    conf(other_ca)
    env.daemon.start()
    st = env.wait_status(lambda s: s["passes"] >= 1, "first pass with the wrong CA")
    assert st["state"] == "error" and "TLS" in st["last_error"], st
    assert "node a" in st["last_error"] or "node b" in st["last_error"], st


def test_users_from_ldap_and_new_users_without_restart(harness):
    password = "pw-" + os.urandom(6).hex()
    la = harness.start_slapd("a", "master", password=password)
    lb = harness.start_slapd("b", "standby", password=password)
    umap = {u: f"{u}-secret" for u in ("alice", "bob", "dave")}
    env = ImapEnv.__new__(ImapEnv)
    ipw = "pw-" + os.urandom(6).hex()
    env.h, env.users, env.daemons = harness, ["alice", "bob"], {}
    env.a = harness.start_dovecot("a", users=umap, master_password=ipw)
    env.b = harness.start_dovecot("b", users=umap, master_password=ipw)
    env.base = harness.mkdir("standin")
    env.users_file = "/nonexistent"
    env.conf = env.write_conf("")
    with open(env.conf) as f:
        text = f.read().replace("users_file = /nonexistent\n",
                                "users_ldap_filter = (&(objectClass=inetOrgPerson)(mail=*))\n")
    text += f"[ldap]\nendpoint.a = {la.uri}\nendpoint.b = {lb.uri}\n"
    text += f"suffix = {la.suffix}\nbind_dn = {la.rootdn}\npassword_file = {la.password_file}\n"
    with open(env.conf, "w") as f:
        f.write(text)
    for node in ("a", "b"):
        r = run(STANDINCTL, "-c", env.conf, "-n", node, "state", "init", "--master", "a")
        assert r.returncode == 0, r.stderr + r.stdout
    people = "".join(f"dn: uid={u},ou=people,{la.suffix}\nobjectClass: inetOrgPerson\nuid: {u}\ncn: {u}\n"
                     f"sn: {u}\nmail: {u}@example.com\n\n" for u in ("alice", "bob"))
    la.ldapadd(people + f"dn: uid=nomail,ou=people,{la.suffix}\nobjectClass: inetOrgPerson\nuid: nomail\n"
               "cn: x\nsn: x\n")
    for u in ("alice", "bob", "dave"):
        env.a.append(u, "INBOX", message(hash(u) % 1000))
    env.start()
    st = env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "first pass")
    assert st["users"] == 2 and st["appended"] == 2, st
    env.wait_equal()
    # dave appears in the directory: replicated at the next pass, no restart.
    la.ldapadd(f"dn: uid=dave,ou=people,{la.suffix}\nobjectClass: inetOrgPerson\nuid: dave\ncn: d\nsn: d\n"
               "mail: dave@example.com\n")
    query(env.daemon.sock, "pass")
    env.wait_status(lambda s: s["users"] == 3 and s["appended"] == 3, "dave replicated")
    env.users = ["alice", "bob", "dave"]
    env.wait_equal()


def test_sasl_plain_with_authorization_identity(harness):
    env = ImapEnv(harness, users=("alice",), extra="login = sasl-plain\nnotify = no\n")
    env.a.append("alice", "INBOX", message(7), flags=("\\Seen",))
    env.start()
    st = env.wait_status(lambda s: s["passes"] >= 1, "first pass")
    assert st["state"] == "streaming" and st["appended"] == 1, st
    # notify = no: IDLE on INBOX without NOTIFY.
    st = env.wait_status(lambda s: s["idling"] == 1, "IDLE")
    assert st["notifying"] == 0, st
    env.wait_equal()
    # Dovecot took the admin's credentials for alice through SASL PLAIN.
    with open(env.a.logfile, errors="replace") as f:
        assert "user=<alice>, method=PLAIN" in f.read()


def test_plainer_server_without_multiappend_literalplus_unselect_qresync_condstore(harness):
    """The fallbacks: one APPEND per message, a login per job (no UNSELECT
    to leave a mailbox behind), expunges found by comparing UIDs, flags
    compared in full (no CONDSTORE), no NOTIFY."""
    caps = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE CHILDREN NAMESPACE UIDPLUS "
            "LIST-EXTENDED ESEARCH LIST-STATUS")
    env = ImapEnv(harness, users=("alice",), debug=True,
                  dovecot_conf=f"imap_capability = {caps}\n")
    with env.a.imap("alice") as c:
        typ, data = c.capability()
        assert b"MULTIAPPEND" not in data[0] and b"CONDSTORE" not in data[0], data
    env.bulk_append(env.a, "alice", "INBOX", [message(i) for i in range(12)], lambda i: ("\\Seen",) * (i % 2))
    env.bulk_append(env.a, "alice", 'Say "hi"', [message(50 + i) for i in range(3)])
    env.start()
    env.wait_status(lambda s: s["passes"] >= 1, "first pass")
    assert env.wait_equal() == 15
    with env.imap(env.a, "alice") as c:
        c.select("INBOX")
        c.uid("STORE", "2:4", "+FLAGS.SILENT", "(\\Deleted)")
        c.expunge()
        c.uid("STORE", "5", "+FLAGS", "($Work)")
    env.bulk_append(env.a, "alice", 'Say "hi"', [message(60 + i) for i in range(4)])
    query(env.daemon.sock, "pass")
    assert env.wait_equal() == 16
    st = env.status()
    assert st["appended"] == 19 and st["expunged"] == 3 and st["last_error"] is None, st
    assert st["flag_updates"] >= 1 and st["notifying"] == 0, st
    log = env.daemon.output()
    assert "MULTIAPPEND" not in log.replace("appended one by one", "")
    assert "appended one by one" in log
    assert "3 message(s) expunged on the standby (found by UID comparison)" in log


def special_use_conf(*pairs):
    return "namespace inbox {\n" + "".join(
        f"  mailbox {name} {{\n    special_use = {use}\n  }}\n" for name, use in pairs) + "}\n"


def test_special_use_folders(harness):
    """Dovecot takes special use from its configuration only (no
    CREATE-SPECIAL-USE): where the standby's configuration agrees nothing
    is said; where it does not, the administrator is told which folder."""
    env = ImapEnv(harness, users=("alice",),
                  dovecot_conf=special_use_conf(("Sent", "\\Sent"), ("Trash", "\\Trash")),
                  dovecot_conf_b=special_use_conf(("Trash", "\\Trash")))
    for k, folder in enumerate(("Sent", "Trash")):
        env.bulk_append(env.a, "alice", folder, [message(500 + 10 * k + i) for i in range(2)])
    with env.a.imap("alice") as c:
        typ, data = c.list()
        assert any(b"\\Sent" in d and d.endswith(b"Sent") for d in data), data
    env.start()
    env.wait_status(lambda s: s["passes"] >= 1, "first pass")
    assert env.wait_equal() == 4
    with env.b.imap("alice") as c:
        typ, data = c.list()
        assert any(b"\\Trash" in d and d.endswith(b"Trash") for d in data), data
    log = env.daemon.output()
    assert ("folder Sent is \\Sent on the master, of no special use on the standby, whose server cannot be "
            "told so over IMAP (no CREATE-SPECIAL-USE)") in log, log
    assert "folder Trash is" not in log


def test_folder_created_and_renamed_outside_inbox_reach_the_standby_within_seconds(harness):
    """Dovecot 2.3 sends no NOTIFY event for a folder created or renamed (and
    its imap process may die on it): such changes still reach the standby
    within seconds, not at the next full pass, and a NOTIFY session that dies
    is said at warning level."""
    env = ImapEnv(harness)
    with open(env.conf) as f:
        text = f.read()
    with open(env.conf, "w") as f:
        f.write(text.replace("full_pass_interval = 30s", "full_pass_interval = 10m"))
    env.start()
    env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "first pass")
    env.wait_status(lambda s: s["idling"] == len(env.users), "IDLE on every user's INBOX")

    def folder_count(server, folder):
        with env.imap(server, "alice") as c:
            typ, data = c.select(q(folder), readonly=True)
            return int(data[0]) if typ == "OK" else None

    t0 = time.monotonic()
    env.a.append("alice", "Projects/New", message(1))
    sh.wait_until(lambda: folder_count(env.b, "Projects/New") == 1, 30, "the new folder on b")
    created_s = time.monotonic() - t0
    with env.imap(env.a, "alice") as c:
        assert c.rename(q("Projects/New"), q("Projects/Renamed"))[0] == "OK"
    t0 = time.monotonic()
    sh.wait_until(lambda: folder_count(env.b, "Projects/Renamed") == 1 and
                  folder_count(env.b, "Projects/New") is None, 30, "the rename on b")
    renamed_s = time.monotonic() - t0
    assert created_s < 15 and renamed_s < 15, (created_s, renamed_s)
    assert env.status()["passes"] == 1 and env.status()["polling"] >= 1
    # The push session dies (the master's imap process is gone): said at
    # warning level, and a change in another folder still comes within seconds.
    env.a.doveadm("kick", "alice")
    sh.wait_until(lambda: "user alice: the master ended the IDLE" in env.daemon.output(), 30,
                  "the ended push session in the log")
    assert " warning: user alice: the master ended the IDLE" in env.daemon.output()
    t0 = time.monotonic()
    env.a.append("alice", "Projects/Renamed", message(2))
    sh.wait_until(lambda: folder_count(env.b, "Projects/Renamed") == 2, 30, "the new message on b")
    assert time.monotonic() - t0 < 15
    assert env.status()["passes"] == 1
