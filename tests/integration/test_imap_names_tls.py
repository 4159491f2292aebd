"""standin-imaprepl against a real Dovecot 2.3 pair, on what a hostile or
odd master can hand it (issue 30): folder names that need quoting, one
with CR LF in it that must not become commands on the standby (Dovecot
neither creates nor lists such a name, it lists it in modified UTF-7: a
proxy in front of the master hands it out raw, as a literal), folder names
too long for a hex state file name (replicated, renamed, and found again
after a restart), and server certificates that must be refused on both
connection kinds (imaps and STARTTLS): another host's, one that names its
host only in the subject's CN, one not meant for a TLS server."""
import imaplib
import os
import shutil
import socket
import threading

import pytest

import standin_harness as sh
from standin_bin import query
from test_imaprepl import ImapEnv, message, q

pytestmark = pytest.mark.servers

EVIL = "evil\r\nX1 DELETE INBOX\r\nX2 CREATE pwned"
EVIL_MUTF7 = b"evil&AA0ACg-X1 DELETE INBOX&AA0ACg-X2 CREATE pwned"     # how Dovecot lists it


class RewritingProxy:
    """A TCP proxy to HOST:PORT that replaces OLD by NEW in what the server
    sends (whole lines at a time), as a master's server that lists a name
    with CR LF in it would: a scripted stand-in for such a server."""

    def __init__(self, harness, host, port, old, new):
        self.target, self.old, self.new = (host, port), old, new
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self.listener.getsockname()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()
        harness.add_cleanup(self.close)

    def close(self):
        self.closed = True
        self.listener.close()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src, dst, rewrite):
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not rewrite:
                    dst.sendall(data)
                    continue
                buf += data
                cut = buf.rfind(b"\r\n") + 2
                if cut >= 2:
                    dst.sendall(buf[:cut].replace(self.old, self.new))
                    buf = buf[cut:]
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def maildir_folder(server, user, name, messages=()):
    """A Maildir++ folder made behind Dovecot's back (it would refuse NAME)."""
    path = os.path.join(server.maildir(user), "." + name)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    for i, m in enumerate(messages):
        with open(os.path.join(path, "new", f"{1700000000 + i}.M{i}P1.standin-test"), "wb") as f:
            f.write(m)
    for root, dirs, files in os.walk(server.maildir(user)):
        for x in dirs + files:
            shutil.chown(os.path.join(root, x), "nobody", "nogroup")
    return path


def raw_names(server, user, port=None):
    """Every folder name the server (or a proxy on PORT) lists, as bytes (literals included)."""
    c = imaplib.IMAP4(server.host, port or server.port, timeout=30)
    c.login(q(server.login_name(user, True)), server.master_password)
    with c:
        typ, data = c.list()
    names = []
    for item in data:
        if isinstance(item, tuple):
            names.append(item[1])
        elif item:
            name = item.split(b' "/" ', 1)[-1]
            if name.startswith(b'"'):
                name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
            names.append(name)
    return names


def test_folder_names_quoted_and_cr_lf_refused(harness):
    env = ImapEnv(harness, users=("alice",))
    odd = ['Say "hi" \\ there', "{5}", "a) (b", "Caf&AOk-", "back\\slash\\"]
    for i, name in enumerate(odd):
        env.bulk_append(env.a, "alice", name, [message(10 * i + k) for k in range(2)])
    env.a.append("alice", "INBOX", message(99))
    maildir_folder(env.a, "alice", EVIL, [message(100)])
    assert EVIL_MUTF7 in raw_names(env.a, "alice")
    proxy = RewritingProxy(env.h, env.a.host, env.a.port, b'"' + EVIL_MUTF7 + b'"',
                           b"{%d}\r\n%s" % (len(EVIL), EVIL.encode()))
    assert EVIL.encode() in raw_names(env.a, "alice", proxy.port)
    with open(env.conf) as f:
        text = f.read()
    with open(env.conf, "w") as f:
        f.write(text.replace(f"endpoint.a = imap://{env.a.host}:{env.a.port}",
                             f"endpoint.a = imap://{proxy.host}:{proxy.port}"))
    env.start()
    st = env.wait_status(lambda s: s["passes"] >= 1, "first pass")
    # Every other folder is replicated, INBOX is still there on the standby,
    # and the name with CR LF went to no command.
    for name in odd + ["INBOX"]:
        got = [m["body"] for m in env.b.list_messages("alice", name, master=True)]
        assert got == [m["body"] for m in env.a.list_messages("alice", name, master=True)], name
    on_b = raw_names(env.b, "alice")
    assert sorted(on_b) == sorted(n.encode() for n in odd + ["INBOX"]), on_b
    # Said as an error naming the user and the folder (escaped: one log line).
    want = ('user alice folder "evil\\x0d\\x0aX1 DELETE INBOX\\x0d\\x0aX2 CREATE pwned" on the master is '
            "not replicated: its name contains a CR (carriage return)")
    assert st["state"] == "error" and want in (st["last_error"] or ""), st
    assert st["users_in_error"] == 1 and st["appended"] == 2 * len(odd) + 1, st
    assert want in env.daemon.output()
    with open(env.b.logfile, errors="replace") as f:
        log_b = f.read()
    assert "pwned" not in log_b and "DELETE" not in log_b
    # Every full pass finds it again (the listing is never taken as copied).
    query_pass(env)
    st = env.wait_status(lambda s: s["passes"] >= 2, "second pass")
    assert want in (st["last_error"] or ""), st
    assert env.daemon.output().count(want) >= 2
    # Gone from the master (behind Dovecot's back again: it cannot DELETE
    # it, and its list index remembers it): the error goes with it.
    shutil.rmtree(os.path.join(env.a.maildir("alice"), "." + EVIL))
    for f in os.listdir(env.a.maildir("alice")):
        if f.startswith("dovecot.list.index"):
            os.unlink(os.path.join(env.a.maildir("alice"), f))
    env.a.doveadm("kick", "alice")
    assert EVIL_MUTF7 not in raw_names(env.a, "alice")
    query_pass(env)
    env.wait_status(lambda s: s["state"] == "streaming" and s["users_in_error"] == 0 and s["last_error"] is None,
                    "a clean pass")
    env.wait_equal()


def query_pass(env):
    query(env.daemon.sock, "pass")


def test_long_folder_names_replicate_rename_and_restart(harness):
    env = ImapEnv(harness, users=("alice",))
    n200 = "L" * 190 + "-200-bytes"
    n200b = "R" * 190 + "-200-again"
    assert len(n200) == len(n200b) == 200
    env.bulk_append(env.a, "alice", n200, [message(i) for i in range(5)],
                    lambda i: ("\\Seen",) if i % 2 else ())
    env.bulk_append(env.a, "alice", "short", [message(50)])
    env.start()
    st = env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "first pass")
    assert env.wait_equal() == 6
    assert st["appended"] == 6 and st["last_error"] is None, st
    # The long name's state is under a hashed file name; the short one's under its hex, as before.
    udir = os.path.join(env.base, "b", "state", "imaprepl-a", "x" + b"alice".hex())
    files = sorted(os.listdir(udir))
    assert "x" + b"short".hex() + ".state" in files, files
    hashed = [f for f in files if f.startswith("h") and f.endswith(".state")]
    assert len(hashed) == 1 and len(hashed[0]) == 65 + 6, files
    with open(os.path.join(udir, hashed[0])) as f:
        assert "name x" + n200.encode().hex() + "\n" in f.read()

    # Renamed on the master: renamed on the standby, nothing copied again.
    with env.imap(env.a, "alice") as c:
        assert c.rename(q(n200), q(n200b))[0] == "OK"
    query_pass(env)
    env.wait_status(lambda s: s["folders_renamed"] == 1, "the rename")
    assert env.wait_equal() == 6
    st = env.status()
    assert st["appended"] == 6 and st["last_error"] is None, st
    # A long name renamed to a short one and back keeps its state too.
    with env.imap(env.a, "alice") as c:
        assert c.rename(q(n200b), q("was-long"))[0] == "OK"
    query_pass(env)
    env.wait_status(lambda s: s["folders_renamed"] == 2, "the rename to a short name")
    with env.imap(env.a, "alice") as c:
        assert c.rename(q("was-long"), q(n200b))[0] == "OK"
    query_pass(env)
    env.wait_status(lambda s: s["folders_renamed"] == 3, "the rename back")
    assert env.wait_equal() == 6
    assert env.status()["appended"] == 6

    # A restart finds the state: one new message is the only one copied.
    env.daemon.stop()
    env.a.append("alice", n200b, message(77))
    env.start()
    st = env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "pass after the restart")
    assert env.wait_equal() == 7
    st = env.status()
    assert st["appended"] == 1 and st["reconciled"] == 0 and st["last_error"] is None, st
    assert "pairing messages by content" not in env.daemon.output()
    files = sorted(os.listdir(udir))
    assert len([f for f in files if f.startswith("h") and f.endswith(".state")]) == 1, files


def test_very_long_folder_name_in_fs_layout(harness):
    """300 bytes: Maildir++ cannot hold it (one directory), LAYOUT=fs can."""
    conf = "mail_location = maildir:~/Maildir:LAYOUT=fs\n"
    env = ImapEnv(harness, users=("alice",), dovecot_conf=conf)
    n300 = "A" * 150 + "/" + "B" * 149
    try:
        env.a.create_mailbox("alice", n300, master=True)
    except sh.HarnessError as e:
        pytest.skip(f"Dovecot takes no 300-byte folder name here: {e}")
    env.bulk_append(env.a, "alice", n300, [message(i) for i in range(3)])
    env.start()
    env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "first pass")
    assert env.wait_equal() == 3
    env.daemon.stop()
    env.start()
    env.wait_status(lambda s: s["passes"] >= 1 and s["state"] == "streaming", "pass after the restart")
    assert env.wait_equal() == 3
    assert env.status()["appended"] == 0


# -- certificates --------------------------------------------------------------

CERTS = {
    # name: (subject CN, extensions, refusal reason or None)
    "good": ("localhost", "subjectAltName = DNS:localhost, IP:127.0.0.1\n", None),
    "other-host": ("localhost", "subjectAltName = DNS:other.example, IP:127.0.0.2\n", "hostname mismatch"),
    "cn-only": ("localhost", "basicConstraints = CA:FALSE\n", "hostname mismatch"),
    "client-only": ("localhost", "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
                    "extendedKeyUsage = clientAuth\n", "unsuitable certificate purpose"),
}


def make_cert(tlsdir, name, cn, ext):
    p = lambda f: os.path.join(tlsdir, f)  # noqa: E731
    sh.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr")])
    with open(p(f"{name}.ext"), "w") as f:
        f.write(ext)
    sh.run(["openssl", "x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
            "-CAcreateserial", "-days", "2", "-extfile", p(f"{name}.ext"), "-out", p(f"{name}.pem")])
    os.chmod(p(f"{name}.key"), 0o600)
    return p(f"{name}.pem"), p(f"{name}.key")


def test_certificate_for_another_host_refused_on_imaps_and_starttls(harness):
    tlsdir = harness.path("tls")
    ca, _, _ = sh.make_test_ca(tlsdir, "standin")
    certs = {n: make_cert(tlsdir, n, cn, ext) for n, (cn, ext, _) in CERTS.items()}
    live_cert, live_key = os.path.join(tlsdir, "live.pem"), os.path.join(tlsdir, "live.key")

    def install(name):
        shutil.copy(certs[name][0], live_cert)
        shutil.copy(certs[name][1], live_key)
        os.chmod(live_key, 0o600)

    install("good")
    imaps_port = sh.free_port()
    env = ImapEnv(harness, users=["alice"], dovecot_conf=(
        f"ssl = required\nssl_cert = <{live_cert}\nssl_key = <{live_key}\n"
        "service imap-login {\n  inet_listener imaps {\n"
        f"    address = 127.0.0.1\n    port = {imaps_port}\n  }}\n}}\n"),
        dovecot_conf_b=f"ssl = required\nssl_cert = <{certs['good'][0]}\nssl_key = <{certs['good'][1]}\n")
    a = env.a

    def conf(kind):
        env.conf = env.write_conf(f"starttls = demand\nca_file = {ca}\n")
        endpoint = (f"imaps://localhost:{imaps_port}" if kind == "imaps" else f"imap://localhost:{a.port}")
        with open(env.conf) as f:
            text = f.read().replace(f"endpoint.a = imap://{a.host}:{a.port}", f"endpoint.a = {endpoint}")
        with open(env.conf, "w") as f:
            f.write(text)

    conf("imaps")

    seen = []
    for name, (_, _, reason) in CERTS.items():
        if name != "good":
            install(name)
            a.stop()
            a.start()
        for kind in ("imaps", "starttls"):
            if env.daemons:
                env.daemon.stop()
            conf(kind)
            env.start()
            st = env.wait_status(lambda s: s["passes"] >= 1, f"first pass, {kind}, certificate {name}")
            if reason is None:
                assert st["state"] == "streaming" and st["last_error"] is None, (kind, name, st)
            else:
                want = f'TLS certificate not accepted for localhost: {reason}'
                assert st["state"] == "error" and want in (st["last_error"] or ""), (kind, name, st)
                assert "node a" in st["last_error"], st
            seen.append((kind, name))
    assert len(seen) == 2 * len(CERTS)
