"""Dovecot 2.3 IMAP for the standin test harness: DovecotServer.

DovecotServer writes a dovecot.conf (maildir, passwd-file users and a
master-user passdb for the replicator) and runs dovecot in the foreground
as a child of this process; mail is stored as nobody/nogroup.  Its IMAP
helpers (imap(), append(), list_mailboxes(), list_messages()) use imaplib.
"""

import grp
import imaplib
import os
import pwd
import re
import shutil
import socket

from harness_core import (LOOPBACK, ForegroundServer, HarnessError, _new_password, _require,
                          _require_root, _write_file, run, timeout_scale, wait_until)

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
MAIL_OS_USER = "nobody"
MAIL_OS_GROUP = "nogroup"

# extra_conf for [imap] changes = dovecot: the replication plugin names each
# changed user on BASE_DIR/replication-notify-fifo, which standin-imaprepl
# makes and reads; mode 0 keeps Dovecot's own aggregator from making it.
DOVECOT_NOTICES_CONF = """mail_plugins = $mail_plugins notify replication
plugin {
  mail_replica = standin
}
service aggregator {
  fifo_listener replication-notify-fifo {
    mode = 0
  }
  unix_listener replication-notify {
    mode = 0
  }
}
"""


class DovecotServer(ForegroundServer):
    """An unprivileged Dovecot 2.3 IMAP server (mail stored as nobody/nogroup).

    Users live in a passwd-file; a second passdb with master=yes holds the
    replicator's master user, so LOGIN "alice*standin" with standin's password
    logs in as alice.  Attributes: users ({name: password}), master_user,
    master_password, master_password_file (the plain password, 0600),
    mail_root (homes are mail_root/USER, maildirs mail_root/USER/Maildir),
    conf, run_dir (Dovecot's base_dir), pidfile.  Mailbox hierarchy
    separator "/".  With netlab (a harness_netns.NetLab) dovecot runs in its
    node's namespaces and listens on the node's address (see Server).
    """

    kind = "imap"
    DEFAULT_USERS = ("alice", "bob")

    def __init__(self, harness, node="a", *, users=None, master_user="standin", master_password=None,
                 host=LOOPBACK, extra_conf="", netlab=None):
        _require_root("DovecotServer")
        _require(DOVECOT, DOVEADM)
        super().__init__(harness, node, host, netlab=netlab)
        host = self.host
        if users is None:
            users = {u: f"{u}-secret" for u in self.DEFAULT_USERS}
        self.users = dict(users)
        self.master_user = master_user
        self.master_password = master_password or _new_password()
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.run_dir = harness.mkdir(node, self.kind, "run")
        self.state_dir = harness.mkdir(node, self.kind, "lib")
        self.mail_root = harness.mkdir(node, self.kind, "mail", owner=MAIL_OS_USER, group=MAIL_OS_GROUP)
        self.pidfile = os.path.join(self.run_dir, "master.pid")
        self.master_password_file = _write_file(os.path.join(self.dir, "master-password"),
                                                self.master_password, 0o600)
        uid = pwd.getpwnam(MAIL_OS_USER).pw_uid
        gid = grp.getgrnam(MAIL_OS_GROUP).gr_gid
        for user in self.users:
            self.add_user_home(user)
        # The auth process runs as nobody: it must read both files.
        self._passwd = _write_file(os.path.join(self.dir, "passwd"), "".join(
            f"{u}:{{PLAIN}}{pw}:{uid}:{gid}::{self.home(u)}\n" for u, pw in self.users.items()),
            0o640, None, MAIL_OS_GROUP)
        self._master_passwd = _write_file(os.path.join(self.dir, "master-passwd"),
                                          f"{master_user}:{{PLAIN}}{self.master_password}\n",
                                          0o640, None, MAIL_OS_GROUP)
        d = self.dir
        _write_file(self.conf, f"""# dovecot.conf written by standin_harness for {self.name}
protocols = imap
listen = {host}
base_dir = {self.run_dir}
state_dir = {self.state_dir}
instance_name = standin-{os.path.basename(harness.base_dir)}-{node}
log_path = {self.logfile}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_master_user_separator = *
default_internal_user = {MAIL_OS_USER}
default_internal_group = {MAIL_OS_GROUP}
default_login_user = {MAIL_OS_USER}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {host}
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = passwd-file
  args = {d}/master-passwd
  master = yes
  pass = yes
}}
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
{extra_conf}""")

    def home(self, user):
        """The user's home directory (its maildir is home/Maildir)."""
        return os.path.join(self.mail_root, user)

    def maildir(self, user):
        return os.path.join(self.home(user), "Maildir")

    def add_user_home(self, user):
        path = self.home(user)
        os.makedirs(path, mode=0o700, exist_ok=True)
        shutil.chown(path, MAIL_OS_USER, MAIL_OS_GROUP)
        return path

    def greeting(self, timeout=2):
        """The server's first line (b'* OK ...')."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1024)
                if not chunk:
                    break
                data += chunk
            return data

    def start(self, timeout=30):
        """dovecot -F -c conf (in the foreground, our child), then wait for
        the IMAP greeting."""
        self._spawn([DOVECOT, "-F", "-c", self.conf])

        def ready():
            self.check_alive()
            line = self.greeting()
            if not line.startswith(b"* OK"):
                raise HarnessError(f"unexpected greeting {line!r}")
            return line
        wait_until(ready, timeout, f"{self.name} IMAP greeting on port {self.port}")
        return self

    def doveadm(self, *args, check=True):
        """Run doveadm -c conf ARGS; returns stdout."""
        return run([DOVEADM, "-c", self.conf, *args], check=check).stdout

    # -- IMAP client helpers ---------------------------------------------------

    def login_name(self, user, master=False):
        """The login name: user, or "user*standin" for a master-user login."""
        return f"{user}*{self.master_user}" if master else user

    def imap(self, user, *, master=False, password=None, timeout=10):
        """A logged-in imaplib.IMAP4 (use it as a context manager so it logs
        out).  master=True logs in as user*master_user with the master
        password."""
        if password is None:
            password = self.master_password if master else self.users[user]
        conn = imaplib.IMAP4(self.host, self.port, timeout=timeout * timeout_scale())
        try:
            # imaplib quotes the password itself, not the user name (which
            # holds '*', an atom-special, for a master-user login).
            conn.login(_imap_quote(self.login_name(user, master)), password)
        except BaseException:
            conn.shutdown()
            raise
        return conn

    def create_mailbox(self, user, mailbox, *, master=False):
        with self.imap(user, master=master) as c:
            _imap_ok(c.create(_imap_quote(mailbox)), f"CREATE {mailbox}")

    def append(self, user, mailbox, message, flags=(), *, master=False, create=True):
        """APPEND a message (bytes, CRLF line ends) with flags such as
        ('\\\\Seen',); creates the mailbox first if needed and `create`.
        Returns (uidvalidity, uid) from APPENDUID."""
        flag_list = "(" + " ".join(flags) + ")" if flags else None
        with self.imap(user, master=master) as c:
            typ, data = c.append(_imap_quote(mailbox), flag_list, None, message)
            if typ != "OK" and create and b"TRYCREATE" in b"".join(d for d in data if d):
                _imap_ok(c.create(_imap_quote(mailbox)), f"CREATE {mailbox}")
                typ, data = c.append(_imap_quote(mailbox), flag_list, None, message)
            _imap_ok((typ, data), f"APPEND to {mailbox}")
            m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0] or b"")
            return (int(m.group(1)), int(m.group(2))) if m else None

    def list_mailboxes(self, user, *, master=False):
        """Names of the user's mailboxes."""
        with self.imap(user, master=master) as c:
            typ, data = _imap_ok(c.list(), "LIST")
        names = []
        for item in data:
            if isinstance(item, tuple):           # name sent as a literal
                names.append(item[1].decode())
                continue
            m = re.match(rb'\([^)]*\) (?:"[^"]*"|NIL) (.*)$', item or b"")
            if m:
                name = m.group(1)
                if name.startswith(b'"'):
                    name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
                names.append(name.decode())
        return names

    def list_messages(self, user, mailbox="INBOX", *, master=False):
        """The messages of a mailbox in UID order: a list of dicts with uid
        (int), flags (tuple of str) and body (bytes).  Reads with EXAMINE and
        BODY.PEEK, so nothing changes."""
        with self.imap(user, master=master) as c:
            _imap_ok(c.select(_imap_quote(mailbox), readonly=True), f"EXAMINE {mailbox}")
            typ, data = _imap_ok(c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])"), "UID FETCH")
        messages = []
        for i, item in enumerate(data):
            if not isinstance(item, tuple):
                continue
            meta = item[0]
            if i + 1 < len(data) and isinstance(data[i + 1], bytes):
                meta += data[i + 1]               # items after the literal
            uid = re.search(rb"UID (\d+)", meta)
            flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
            messages.append(dict(uid=int(uid.group(1)),
                                 flags=tuple(flags.group(1).decode().split()) if flags else (),
                                 body=item[1]))
        return sorted(messages, key=lambda m: m["uid"])

    def describe(self):
        return dict(kind=self.kind, node=self.node, host=self.host, port=self.port, users=self.users,
                    master_user=self.master_user, master_password=self.master_password,
                    master_password_file=self.master_password_file, mail_root=self.mail_root,
                    conf=self.conf, run_dir=self.run_dir, pidfile=self.pidfile, logfile=self.logfile,
                    mail_user=MAIL_OS_USER)


def _imap_quote(text):
    """An IMAP quoted string (imaplib sends arguments as they are)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _imap_ok(response, what):
    typ, data = response
    if typ != "OK":
        raise HarnessError(f"IMAP {what} failed: {typ} {data!r}")
    return response
