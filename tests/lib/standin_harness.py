#!/usr/bin/python3
"""Real PostgreSQL 15, slapd 2.5 and Dovecot 2.3 servers on loopback, for tests.

standin replicates PostgreSQL, OpenLDAP and Dovecot from a master node ("a")
to a standby node ("b").  This module starts the real servers those
replicators talk to, each in its own directory under one temporary directory,
on free 127.0.0.1 ports, and stops them again whatever happens.  The
integration tests (tests/integration/conftest.py wraps it in pytest fixtures)
and the demo ./sandbox.sh (through the command line at the bottom) share it.

Typical use::

    with Harness("mytest") as h:
        cluster = start_pairs(h)            # pg, ldap and imap on nodes a and b
        cluster.pg.a.psql("CREATE TABLE t (id int)")
        cluster.ldap.a.ldapadd(ldif)
        cluster.imap.b.append("alice", "INBOX", b"Subject: x\\r\\n\\r\\nbody\\r\\n")
    # every server is stopped; the directory is removed unless something failed

Building blocks:

* free_port(), wait_until(), port_open(), pid_alive(), run(), make_test_ca()
* Harness: owns the base directory and a LIFO list of cleanups; close() runs
  them even after failures, removes the directory on success and keeps it
  (printing its path to stderr) after a failure or with STANDIN_KEEP_TMP=1.
  While a Harness is open SIGTERM and SIGHUP raise KeyboardInterrupt, so an
  interrupted run still stops its servers.
* PgServer, SlapdServer, DovecotServer: one server each, created ready to
  start (initdb, slapd.conf, dovecot.conf written), with start(), stop(),
  kill9(), is_running(), describe() and client helpers.
* Pair, Cluster, start_pairs(): the six servers of a two-node cluster.

Environment:

* STANDIN_TEST_TIMEOUT_SCALE: multiply every timeout (default 1), for slow
  machines or sanitizer builds.
* STANDIN_KEEP_TMP=1: keep the temporary directory even when all went well.
* STANDIN_PG_BINDIR: PostgreSQL programs (default /usr/lib/postgresql/15/bin;
  /usr/local/bin/pg_ctl on the development machine is something else).
* STANDIN_SLAPD_DEBUG: slapd's -d level (default "stats": one log line per
  operation in the server's slapd.log).

The servers need root: initdb and the postmaster run as "postgres" (through
runuser), Dovecot's mail processes as nobody/nogroup.  slapd runs as root.

Note on zombies: on the development machines PID 1 does not reap orphans.  So
that stopped daemons (which detach from whoever started them) do not linger as
<defunct> entries, this process becomes a child subreaper (prctl) while a
Harness is open and reaps the server processes it knows of.  pid_alive() counts
a zombie as dead.
"""

import argparse
import atexit
import base64
import ctypes
import grp
import imaplib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

__all__ = [
    "HarnessError", "CommandError", "WaitTimeout", "StopWaiting", "ServerDied",
    "missing_servers", "timeout_scale", "wait_until", "free_port", "port_open", "pid_alive",
    "process_tree", "run", "make_test_ca", "parse_ldif", "quote_ident", "quote_literal",
    "Harness", "Server", "PgServer", "SlapdServer", "DovecotServer",
    "Pair", "Cluster", "start_pairs", "stop_described", "main",
]

PG_BINDIR = os.environ.get("STANDIN_PG_BINDIR") or "/usr/lib/postgresql/15/bin"


def pg_module_path():
    """standin's PostgreSQL module (DDL capture) of this build, or None:
    $STANDIN_PG_MODULE, else STANDIN_BUILDDIR/replicators/pg/standin_ddl.so."""
    path = os.environ.get("STANDIN_PG_MODULE")
    if not path and os.environ.get("STANDIN_BUILDDIR"):
        path = os.path.join(os.environ["STANDIN_BUILDDIR"], "replicators", "pg", "standin_ddl.so")
    return os.path.abspath(path) if path and os.path.exists(path) else None
SLAPD = "/usr/sbin/slapd"
SLAPPASSWD = "/usr/sbin/slappasswd"
SLAPCAT = "/usr/sbin/slapcat"
LDAP_BINDIR = "/usr/bin"                 # ldapadd, ldapmodify, ldapsearch, ldapdelete
LDAP_SCHEMA_DIR = "/etc/ldap/schema"
LDAP_MODULE_DIR = "/usr/lib/ldap"
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
RUNUSER = "/usr/sbin/runuser"

LOOPBACK = "127.0.0.1"
NODES = ("a", "b")
PG_OS_USER = "postgres"
MAIL_OS_USER = "nobody"
MAIL_OS_GROUP = "nogroup"


# ---------------------------------------------------------------------------
# Errors


class HarnessError(Exception):
    """Something in the test harness itself went wrong."""


class CommandError(HarnessError):
    """A command exited non-zero; carries its output."""

    def __init__(self, cmd, returncode, stdout, stderr):
        self.cmd, self.returncode, self.stdout, self.stderr = cmd, returncode, stdout, stderr
        out = (stderr.strip() or stdout.strip())[-3000:]
        super().__init__(f"{shlex.join(cmd)} exited with {returncode}" + (f":\n{out}" if out else ""))


class WaitTimeout(HarnessError, TimeoutError):
    """wait_until() gave up; the message names what was awaited."""


class StopWaiting(HarnessError):
    """Raised by a wait_until() predicate to give up at once (not retried)."""


class ServerDied(StopWaiting):
    """A server that should be running is not (crashed, or failed to start)."""


# ---------------------------------------------------------------------------
# Small helpers


def timeout_scale():
    """The factor STANDIN_TEST_TIMEOUT_SCALE applies to every timeout (default 1)."""
    try:
        scale = float(os.environ.get("STANDIN_TEST_TIMEOUT_SCALE") or 1)
    except ValueError:
        raise HarnessError("STANDIN_TEST_TIMEOUT_SCALE must be a number") from None
    return scale if scale > 0 else 1.0


def _short(value, limit=2000):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more chars)"


def wait_until(predicate, timeout, what, interval=0.1):
    """Call predicate() every `interval` seconds until it returns a true value,
    and return that value.

    Exceptions from the predicate count as "not yet" (the last one is reported),
    except StopWaiting (e.g. ServerDied), which ends the wait at once.  After
    `timeout` seconds (times STANDIN_TEST_TIMEOUT_SCALE) raise WaitTimeout,
    whose message names `what` and tells what the last attempt returned or
    raised.  This is the only way the harness waits for something: the sleep
    below is the polling interval, never a synchronisation.
    """
    limit = timeout * timeout_scale()
    deadline = time.monotonic() + limit
    attempts = 0
    while True:
        attempts += 1
        try:
            value = predicate()
        except StopWaiting:
            raise
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = f"raised {type(e).__name__}: {_short(str(e))}"
        else:
            if value:
                return value
            last = f"returned {_short(value)}"
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {limit:.1f}s ({attempts} attempts) waiting for "
                              f"{what}; the last attempt {last}")
        time.sleep(interval)


_ports_lock = threading.Lock()
_ports_given = set()


def free_port(host=LOOPBACK):
    """A TCP port that nothing listens on at the moment, never the same one
    twice in this process (so servers created before they start do not
    collide)."""
    with _ports_lock:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise HarnessError("no free port found")


def port_open(port, host=LOOPBACK, timeout=0.5):
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _proc_stat(pid):
    """(state, ppid) of a process from /proc, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def pid_alive(pid):
    """True if process `pid` exists and is not a zombie.

    A zombie that is our child (daemons re-parented to this subreaper) is
    reaped.  Do not use this on a subprocess.Popen child: Popen would then
    lose its exit status; use its poll() instead.
    """
    if not pid:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def process_tree(pid):
    """`pid` followed by all its descendants (pids, as of now)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat:
                children.setdefault(stat[1], []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def _signal_pids(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _wait_pids_gone(pids, timeout, what):
    wait_until(lambda: not [p for p in pids if pid_alive(p)] or None, timeout,
               what) if pids else None


def _read_pidfile(path):
    try:
        with open(path) as f:
            return int(f.readline().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def _tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({path}: {e.strerror})"


def _clean_env(extra=None):
    """The environment for every command: ours without variables that would
    redirect libpq or libldap elsewhere, with a predictable locale."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "LDAP")) and k not in ("LANGUAGE", "LC_ALL")}
    env.update(LC_ALL="C.UTF-8", LDAPNOINIT="1")
    env.update(extra or {})
    return env


def run(cmd, *, input=None, user=None, env=None, cwd=None, timeout=60, check=True):
    """Run a command to completion and return its subprocess.CompletedProcess
    (stdout and stderr as text).

    `user`: run as that OS user (through runuser) when we are root.  Output
    goes through temporary files, not pipes, so a daemon the command leaves
    behind cannot hold it open.  The command runs in a session of its own, so
    a Ctrl-C on the terminal reaches only us and we stop the servers in order.
    Raises CommandError if `check` and the exit status is not 0.
    """
    cmd = [str(c) for c in cmd]
    if user and os.geteuid() == 0 and pwd.getpwuid(0).pw_name != user:
        cmd = [RUNUSER, "-u", user, "--"] + cmd
    if isinstance(input, str):
        input = input.encode()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(cmd, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                                  stdout=out, stderr=err, env=_clean_env(env), cwd=cwd,
                                  timeout=timeout * timeout_scale(), start_new_session=True)
        except subprocess.TimeoutExpired:
            out.seek(0)
            err.seek(0)
            raise CommandError(cmd, "timeout", out.read().decode(errors="replace"),
                               err.read().decode(errors="replace")) from None
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(cmd, proc.returncode, out.read().decode(errors="replace"),
                                             err.read().decode(errors="replace"))
    if check and result.returncode != 0:
        raise CommandError(cmd, result.returncode, result.stdout, result.stderr)
    return result


def quote_ident(name):
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value):
    """An SQL string literal (standard_conforming_strings on)."""
    return "'" + str(value).replace("'", "''") + "'"


def make_test_ca(dirname, name, host=LOOPBACK):
    """A throw-away CA and a server certificate for `host` (an IP address,
    as subjectAltName IP) signed by it, made with openssl in `dirname`.
    Returns (ca.pem, server.pem, server.key); the key is 0600."""
    os.makedirs(dirname, exist_ok=True)
    p = lambda f: os.path.join(dirname, f)  # noqa: E731
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         f"/CN={name} test CA", "-keyout", p("ca.key"), "-out", p("ca.pem")])
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
         "-keyout", p("server.key"), "-out", p("server.csr")])
    _write_file(p("ext"), f"subjectAltName = IP:{host}\n")
    run(["openssl", "x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
         "-CAcreateserial", "-days", "2", "-extfile", p("ext"), "-out", p("server.pem")])
    os.chmod(p("server.key"), 0o600)
    return p("ca.pem"), p("server.pem"), p("server.key")


def _write_file(path, text, mode=0o644, owner=None, group=None):
    """Write a file with exactly this mode (set before any content is written)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)
        f.write(text)
    if owner is not None or group is not None:
        os.chown(path, pwd.getpwnam(owner).pw_uid if owner else -1,
                 grp.getgrnam(group).gr_gid if group else -1)
    return path


def _new_password():
    return secrets.token_hex(12)


def _require(*programs):
    for p in programs:
        if not os.access(p, os.X_OK):
            raise HarnessError(f"{p} is missing (apt-get install postgresql-15 slapd ldap-utils "
                               "dovecot-core dovecot-imapd)")


def missing_servers():
    """Why the servers cannot run here (a sentence), or None if they can."""
    if os.geteuid() != 0:
        return "needs root (the servers run as postgres and nobody)"
    needed = [os.path.join(PG_BINDIR, "postgres"), SLAPD, DOVECOT, DOVEADM,
              os.path.join(LDAP_BINDIR, "ldapsearch")]
    missing = [p for p in needed if not os.access(p, os.X_OK)]
    if missing:
        return ("missing " + ", ".join(missing) +
                " (apt-get install postgresql-15 slapd ldap-utils dovecot-core dovecot-imapd)")
    return None


def _require_root(what):
    if os.geteuid() != 0:
        raise HarnessError(f"{what} needs root (it runs server processes as other users)")


def _check_traversable(path):
    """Servers run as postgres and nobody: every directory above `path` must
    let others through."""
    p = os.path.abspath(path)
    while True:
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent
        if not os.stat(p).st_mode & 0o001:
            raise HarnessError(f"{p} is not searchable by other users (mode "
                               f"{oct(os.stat(p).st_mode & 0o777)}): postgres and nobody "
                               f"could not reach {path}; use a directory under /tmp")


# ---------------------------------------------------------------------------
# LDIF


def parse_ldif(text):
    """Entries of LDIF text (as ldapsearch -LLL or slapcat print them) as a
    list of (dn, {attribute: [values]}).  Base64 values are decoded (str when
    UTF-8, else bytes); attribute names keep the case the server used."""
    entries = []
    lines = []
    for raw in text.splitlines():
        if raw.startswith(" ") and lines:
            lines[-1] += raw[1:]                 # continuation of a folded line
        elif not raw.startswith("#"):
            lines.append(raw)
    dn, attrs = None, {}
    for line in lines + [""]:
        if not line.strip():
            if dn is not None:
                entries.append((dn, attrs))
            dn, attrs = None, {}
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        if value.startswith(":"):
            data = base64.b64decode(value[1:].strip())
            try:
                value = data.decode()
            except UnicodeDecodeError:
                value = data
        else:
            value = value[1:] if value.startswith(" ") else value
        if name.lower() == "dn":
            dn = value
        else:
            attrs.setdefault(name, []).append(value)
    return entries


# ---------------------------------------------------------------------------
# Process-wide state: open harnesses, signals, subreaper


_PR_SET_CHILD_SUBREAPER = 36
_open = []                       # open Harness objects, in creation order
_state_lock = threading.RLock()
_saved_handlers = {}             # signum -> handler we replaced
_cleanup_depth = 0               # > 0 while a Harness.close() runs
_deferred = []                   # signals that arrived during a close()
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _set_subreaper(on):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass                     # not Linux: daemons are reaped by init instead


def _on_signal(signum, frame):
    """SIGTERM/SIGHUP/SIGINT -> KeyboardInterrupt, so finalizers (pytest
    fixtures, `with Harness()`, try/finally) stop the servers.  During a
    close() the first signal is held until the cleanups are done; a second
    one interrupts them."""
    name = signal.Signals(signum).name
    if _cleanup_depth and not _deferred:
        _deferred.append(name)
        return
    raise KeyboardInterrupt(f"interrupted by {name}")


def _install_signal_handlers():
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _HANDLED_SIGNALS:
        current = signal.getsignal(sig)
        if sig in _saved_handlers:
            continue
        if current in (signal.SIG_DFL, signal.default_int_handler):
            _saved_handlers[sig] = current
            signal.signal(sig, _on_signal)


def _restore_signal_handlers():
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in list(_saved_handlers.items()):
        if signal.getsignal(sig) is _on_signal:
            signal.signal(sig, handler)
        del _saved_handlers[sig]


def _register(harness):
    with _state_lock:
        if not _open:
            _set_subreaper(True)
            _install_signal_handlers()
        _open.append(harness)


def _unregister(harness):
    with _state_lock:
        if harness in _open:
            _open.remove(harness)
            if not _open:
                _restore_signal_handlers()
                _set_subreaper(False)


@atexit.register
def _close_all_at_exit():
    """A harness nobody closed (a crash in a script) still stops its servers."""
    for h in reversed(list(_open)):
        try:
            h.close()
        except Exception as e:  # noqa: BLE001
            print(f"standin_harness: cleanup at exit failed: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------
# Harness


class Harness:
    """One test's servers and temporary directory.

    Harness(name) makes /tmp/standin-NAME-XXXXXX (mode 0755, so postgres and
    nobody can reach their directories).  Harness(base_dir=DIR) uses DIR
    instead and never removes it.  Servers created with this harness put their
    files under base_dir/NODE/KIND and register their stop as a cleanup.

    close(failed=None): run the cleanups newest first (all of them, even when
    some raise), then remove the directory, or keep it and print its path when
    a test failed (failed=True, mark_failed(), or an exception in a `with`
    block), a cleanup failed, or STANDIN_KEEP_TMP=1.  Raises HarnessError
    afterwards if a cleanup failed.  Idempotent.
    """

    def __init__(self, name="standin", base_dir=None):
        if base_dir is None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:24] or "standin"
            self.base_dir = tempfile.mkdtemp(prefix=f"standin-{slug}-", dir="/tmp")
            self.owns_dir = True
        else:
            self.base_dir = os.path.abspath(base_dir)
            os.makedirs(self.base_dir, exist_ok=True)
            self.owns_dir = False
        os.chmod(self.base_dir, 0o755)
        self.name = name
        self.failed = False
        self.closed = False
        self.kept = False
        self.servers = []
        self._cleanups = []
        _register(self)

    # -- files ---------------------------------------------------------------

    def path(self, *parts):
        """A path inside the base directory."""
        return os.path.join(self.base_dir, *parts)

    def mkdir(self, *parts, owner=None, group=None, mode=0o755):
        """Make base_dir/parts (and parents, mode 0755), chmod/chown the last one."""
        path = self.path(*parts)
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.chmod(path, mode)
        if owner or group:
            os.chown(path, pwd.getpwnam(owner).pw_uid if owner else -1,
                     grp.getgrnam(group).gr_gid if group else -1)
        return path

    # -- cleanups ------------------------------------------------------------

    def add_cleanup(self, func, *args, **kwargs):
        """Run func(*args, **kwargs) at close(), newest first.  Returns func."""
        if self.closed:
            raise HarnessError("harness already closed")
        self._cleanups.append((func, args, kwargs))
        return func

    def mark_failed(self):
        """Keep the directory at close() (the test failed)."""
        self.failed = True

    def close(self, failed=None):
        global _cleanup_depth
        if self.closed:
            return
        self.closed = True
        if failed:
            self.failed = True
        errors = []
        with _state_lock:
            _cleanup_depth += 1
        try:
            while self._cleanups:
                func, args, kwargs = self._cleanups.pop()
                try:
                    func(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - report all, after the rest ran
                    errors.append(f"{getattr(func, '__qualname__', func)}: {e}")
            reason = ("a test failed" if self.failed else "cleanup failed" if errors
                      else "STANDIN_KEEP_TMP=1" if os.environ.get("STANDIN_KEEP_TMP") == "1" else None)
            if self.owns_dir:
                if reason:
                    self.kept = True
                    print(f"standin_harness: kept {self.base_dir} ({reason})", file=sys.stderr)
                else:
                    shutil.rmtree(self.base_dir, ignore_errors=True)
        finally:
            with _state_lock:
                _cleanup_depth -= 1
            _unregister(self)
        if errors:
            raise HarnessError("harness cleanup failed:\n  " + "\n  ".join(errors))
        if _deferred and not _cleanup_depth:
            name = _deferred.pop()
            raise KeyboardInterrupt(f"interrupted by {name}")

    def detach(self):
        """Forget the cleanups and keep the directory: the servers outlive this
        process (the `up` command)."""
        self._cleanups.clear()
        self.closed = True
        self.kept = True
        _unregister(self)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None and issubclass(exc_type, Exception))
        return False

    # -- servers -------------------------------------------------------------

    def check_alive(self):
        """Raise ServerDied naming each server that should run but does not."""
        dead = [s for s in self.servers if s.state == "running" and not s.is_running()]
        if dead:
            raise ServerDied("; ".join(f"{s.name} is not running (log {s.logfile}):\n"
                                       f"{_tail(s.logfile, 15)}" for s in dead))

    def start_pg(self, node="a", **kwargs):
        """A started PgServer (see PgServer for the options)."""
        return PgServer(self, node, **kwargs).start()

    def start_slapd(self, node="a", role="master", **kwargs):
        """A started SlapdServer."""
        return SlapdServer(self, node, role, **kwargs).start()

    def start_dovecot(self, node="a", **kwargs):
        """A started DovecotServer."""
        return DovecotServer(self, node, **kwargs).start()

    def __repr__(self):
        return f"<Harness {self.base_dir}>"


# ---------------------------------------------------------------------------
# Servers


class Server:
    """What every server has.

    Attributes: harness, node ('a'/'b'), kind ('pg'/'ldap'/'imap'), name
    ('pg-a'), dir (its directory), host, port, logfile, state ('new',
    'running', 'stopped' or 'killed').  start() returns self.
    """

    kind = "server"

    def __init__(self, harness, node, host=LOOPBACK, owner=None, group=None):
        if harness.closed:
            raise HarnessError("harness already closed")
        self.harness = harness
        self.node = node
        self.name = f"{self.kind}-{node}"
        self.host = host
        self.port = free_port(host)
        harness.mkdir(node)
        self.dir = harness.mkdir(node, self.kind, owner=owner, group=group)
        self.logfile = os.path.join(self.dir, f"{self.kind}.log")
        self.state = "new"
        harness.servers.append(self)
        harness.add_cleanup(self._cleanup)

    # Subclasses implement: pid (property), start(), stop(), describe().

    def is_running(self):
        """True while the main server process exists (zombies count as gone)."""
        return pid_alive(self.pid)

    def pids(self):
        """The server's processes now: the main one and its descendants."""
        pid = self.pid
        return process_tree(pid) if pid and self.is_running() else []

    def log(self):
        """The server's log so far."""
        return _tail(self.logfile, 10 ** 9)

    def check_alive(self):
        """Raise ServerDied (with the log's end) if the server is not running."""
        if not self.is_running():
            raise ServerDied(f"{self.name} is not running (log {self.logfile}):\n"
                             f"{_tail(self.logfile, 30)}")

    def kill9(self):
        """Crash the server: SIGKILL its main process and all its children,
        and wait until they are gone.  start() works again afterwards."""
        pids = self.pids()
        _signal_pids(pids, signal.SIGKILL)
        _wait_pids_gone(pids, 30, f"{self.name} processes {pids} to die after SIGKILL")
        self.state = "killed"
        return self

    def _terminate(self, sig=signal.SIGTERM, timeout=30):
        """Stop by signal: send `sig` to the main process, wait for all its
        processes to go; SIGKILL them if they take longer than `timeout`."""
        pids = self.pids()
        if not pids:
            return
        _signal_pids(pids[:1], sig)
        try:
            _wait_pids_gone(pids, timeout, f"{self.name} to exit after {sig.name}")
        except WaitTimeout:
            _signal_pids(pids, signal.SIGKILL)
            _wait_pids_gone(pids, 10, f"{self.name} to die after SIGKILL")
            raise

    def _cleanup(self):
        if self.state == "running" or self.is_running():
            try:
                self.stop()
            except Exception:
                self.kill9()
                raise

    def _wait_port_closed(self, timeout=10):
        wait_until(lambda: not port_open(self.port, self.host), timeout,
                   f"{self.name} port {self.port} to close")

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.host}:{self.port} {self.state}>"


class PgServer(Server):
    """A PostgreSQL 15 instance (initdb'd by the constructor; start() it).

    Attributes: datadir, socket_dir, port, user ('standin', a superuser with
    REPLICATION), password, passfile (libpq passfile, 0600), bindir, logfile.
    TCP connections use scram-sha-256; the unix socket trusts everyone.

    Options: fsync (False turns off fsync, synchronous_commit and
    full_page_writes, for speed), extra_conf (appended to postgresql.conf),
    user, password, host, preload_ddl (False: standin's module standin_ddl
    is found by the server, as it is when installed, but not in
    shared_preload_libraries).
    """

    kind = "pg"

    def __init__(self, harness, node="a", *, fsync=True, extra_conf="", user="standin",
                 password=None, host=LOOPBACK, bindir=PG_BINDIR, preload_ddl=True):
        _require_root("PgServer")
        self.bindir = bindir
        _require(*(os.path.join(bindir, p) for p in ("initdb", "pg_ctl", "postgres", "psql", "pg_isready")))
        super().__init__(harness, node, host, owner=PG_OS_USER, group=PG_OS_USER)
        self.datadir = os.path.join(self.dir, "data")
        self.socket_dir = self.dir
        self.user = user
        self.password = password or _new_password()
        self.passfile = os.path.join(self.dir, "pgpass")
        self._role_created = False
        self._initdb(fsync, extra_conf, preload_ddl)
        # host:port:database:user:password; '*' matches "replication" too.
        esc = self.password.replace("\\", "\\\\").replace(":", "\\:")
        _write_file(self.passfile, f"{host}:{self.port}:*:{user}:{esc}\n", 0o600)

    def bin(self, program):
        """Full path of a PostgreSQL program (bindir/program)."""
        return os.path.join(self.bindir, program)

    def _initdb(self, fsync, extra_conf, preload_ddl=True):
        run([self.bin("initdb"), "-D", self.datadir, "-U", "postgres", "--no-sync", "--no-instructions",
             "-E", "UTF8", "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256"],
            user=PG_OS_USER, cwd=self.dir, timeout=120)
        sync = "" if fsync else "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        # standin's module, as if installed in the server's $libdir: a copy the
        # server's user can read, found through dynamic_library_path.
        module = pg_module_path()
        if module:
            libdir = os.path.join(self.dir, "lib")
            os.makedirs(libdir, exist_ok=True)
            shutil.copy(module, os.path.join(libdir, "standin_ddl.so"))
            os.chmod(libdir, 0o755)
            sync += f"dynamic_library_path = '{libdir}:$libdir'\n"
            if preload_ddl:
                sync += "shared_preload_libraries = 'standin_ddl'\n"
        self.append_conf(f"""
# --- standin test harness ---
listen_addresses = '{self.host}'
port = {self.port}
unix_socket_directories = '{self.socket_dir}'
wal_level = logical
max_replication_slots = 16
max_wal_senders = 16
max_worker_processes = 16
max_logical_replication_workers = 8
max_sync_workers_per_subscription = 2
max_connections = 100
shared_buffers = 32MB
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
log_replication_commands = on
{sync}{extra_conf}
""")
        hosts = ["127.0.0.1/32"] + ([f"{self.host}/32"] if self.host != LOOPBACK else [])
        hba = "# TYPE  DATABASE     USER  ADDRESS        METHOD\nlocal   all          all                  trust\n"
        for addr in hosts:
            hba += (f"host    all          all   {addr:<14} scram-sha-256\n"
                    f"host    replication  all   {addr:<14} scram-sha-256\n")
        _write_file(os.path.join(self.datadir, "pg_hba.conf"), hba, 0o600, PG_OS_USER, PG_OS_USER)

    def append_conf(self, text, file="postgresql.conf"):
        """Append to a file of the data directory (reload() or restart() to apply)."""
        path = os.path.join(self.datadir, file)
        with open(path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        return path

    @property
    def pid(self):
        """The postmaster's pid (from postmaster.pid), or None."""
        return _read_pidfile(os.path.join(self.datadir, "postmaster.pid"))

    def conninfo(self, dbname="postgres", **params):
        """A libpq keyword/value connection string for TCP as self.user, with
        passfile; extra keywords are appended (e.g. replication='database')."""
        items = dict(host=self.host, port=self.port, user=self.user, dbname=dbname,
                     passfile=self.passfile, **params)
        return " ".join(f"{k}={self._conn_quote(v)}" for k, v in items.items())

    @staticmethod
    def _conn_quote(value):
        value = str(value)
        if value and not re.search(r"[\s'\\]", value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    @property
    def dsn(self):
        """conninfo() for the postgres database."""
        return self.conninfo()

    def libpq_env(self, dbname="postgres"):
        """PGHOST, PGPORT, PGUSER, PGDATABASE and PGPASSFILE for this server."""
        return dict(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                    PGDATABASE=dbname, PGPASSFILE=self.passfile)

    def start(self, timeout=60):
        """pg_ctl start -w, then wait until TCP connections are accepted; the
        first start also creates the `standin` role.  Returns self."""
        if self.is_running():
            raise HarnessError(f"{self.name} is already running")
        try:
            run([self.bin("pg_ctl"), "-D", self.datadir, "-l", self.logfile, "-w",
                 "-t", str(int(timeout * timeout_scale())), "start"],
                user=PG_OS_USER, cwd=self.dir, timeout=timeout + 10)
        except CommandError as e:
            raise HarnessError(f"{self.name} did not start: {e}\nlog {self.logfile}:\n"
                               f"{_tail(self.logfile)}") from None
        self.state = "running"

        def ready():
            self.check_alive()
            run([self.bin("pg_isready"), "-q", "-h", self.host, "-p", self.port, "-d", "postgres",
                 "-t", "2"], timeout=10)
            return True
        wait_until(ready, timeout, f"{self.name} to accept TCP connections on port {self.port}")
        if not self._role_created:
            self.psql(f"SET password_encryption = 'scram-sha-256';\n"
                      f"CREATE ROLE {quote_ident(self.user)} LOGIN SUPERUSER REPLICATION "
                      f"PASSWORD {quote_literal(self.password)};")
            self._role_created = True
        return self

    def stop(self, mode="fast", timeout=60):
        """pg_ctl stop -m MODE ('smart', 'fast' or 'immediate') and wait until
        the postmaster is gone.  A server that is not running is fine."""
        pid = self.pid
        if not pid_alive(pid):
            self.state = "stopped"
            return self
        pids = process_tree(pid)
        run([self.bin("pg_ctl"), "-D", self.datadir, "-m", mode, "-w",
             "-t", str(int(timeout * timeout_scale())), "stop"],
            user=PG_OS_USER, cwd=self.dir, timeout=timeout + 10)
        _wait_pids_gone(pids, 30, f"{self.name} processes to exit")
        self.state = "stopped"
        return self

    def restart(self, mode="fast"):
        """stop() then start()."""
        return self.stop(mode).start()

    def reload(self):
        """pg_ctl reload (re-read the configuration files)."""
        run([self.bin("pg_ctl"), "-D", self.datadir, "reload"], user=PG_OS_USER, cwd=self.dir)
        return self

    def psql(self, sql, db="postgres", *, tcp=False, check=True, timeout=60):
        """Run SQL with psql -X -A -t -q -v ON_ERROR_STOP=1 and return its
        output without the final newline (rows one a line, columns split by
        '|').  Through the unix socket as the postgres superuser, or with
        tcp=True over TCP as self.user with the passfile (scram-sha-256).
        Raises CommandError on an SQL error if `check`."""
        if tcp:
            target = ["-d", self.conninfo(db)]
        else:
            target = ["-h", self.socket_dir, "-p", str(self.port), "-U", "postgres", "-d", db]
        result = run([self.bin("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", *target],
                     input=sql, timeout=timeout, check=check)
        return result.stdout[:-1] if result.stdout.endswith("\n") else result.stdout

    def create_database(self, name, owner=None):
        """CREATE DATABASE name OWNER owner (default self.user); returns name."""
        self.psql(f"CREATE DATABASE {quote_ident(name)} OWNER {quote_ident(owner or self.user)}")
        return name

    def describe(self):
        return dict(kind=self.kind, node=self.node, host=self.host, port=self.port, user=self.user,
                    password=self.password, passfile=self.passfile, dsn=self.dsn,
                    datadir=self.datadir, socket_dir=self.socket_dir, bindir=self.bindir,
                    pidfile=os.path.join(self.datadir, "postmaster.pid"), logfile=self.logfile)


class ForegroundServer(Server):
    """A server that runs in the foreground as a child of this process (in a
    session of its own), so its death is seen at once, with no pidfile race.
    Subclasses set self.pidfile (used when the process is not our child, e.g.
    after `up` handed the servers over) and call _spawn(argv)."""

    def __init__(self, harness, node, host=LOOPBACK, owner=None, group=None):
        super().__init__(harness, node, host, owner, group)
        self.proc = None

    @property
    def pid(self):
        """The server's main pid (our child's, else the pidfile's), or None."""
        if self.proc is not None:
            return self.proc.pid if self.proc.poll() is None else None
        return _read_pidfile(self.pidfile)

    def is_running(self):
        if self.proc is not None:
            return self.proc.poll() is None
        return pid_alive(_read_pidfile(self.pidfile))

    def _spawn(self, argv, env=None):
        if self.is_running():
            raise HarnessError(f"{self.name} is already running")
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=_clean_env(env), cwd=self.dir,
                                         start_new_session=True)
        self.state = "running"

    def stop(self, timeout=30):
        """SIGTERM and wait for the server's processes to exit (SIGKILL after
        `timeout`)."""
        try:
            self._terminate(signal.SIGTERM, timeout)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
            if self.proc is not None:
                self.proc.wait()
        self.state = "stopped"
        return self

    def kill9(self):
        super().kill9()
        if self.proc is not None:
            self.proc.wait()
        return self


class SlapdServer(ForegroundServer):
    """An OpenLDAP slapd 2.5 instance with back_mdb and the syncprov overlay.

    Both roles get syncprov (so replication can be reversed by a switchover);
    the role only decides whether the base entries (the suffix and
    ou=people) are loaded at the first start: load_base=None means on the
    master only.  Attributes: uri, suffix, rootdn, password, password_file
    (the plain password, no newline, 0600; for ldap* -y), conf, dbdir,
    pidfile, server_id (serverID, 1 for node a, 2 for b: distinct CSN sids).

    TLS (optional): with tls_cert and tls_key (PEM files, e.g. from
    make_test_ca()) slapd offers StartTLS on uri and also listens on
    ldaps_uri (ldaps://host:ldaps_port/); tls_ca sets TLSCACertificateFile.
    Without them ldaps_uri and ldaps_port are None.  The harness's own
    ldap* commands always use the plain uri.

    slapd runs in the foreground (-d LEVEL, output to logfile) as a child
    of this process, in a session of its own.
    """

    kind = "ldap"

    def __init__(self, harness, node="a", role="master", *, suffix="dc=example,dc=com",
                 password=None, load_base=None, server_id=None, host=LOOPBACK, extra_conf="",
                 debug=None, tls_cert=None, tls_key=None, tls_ca=None):
        if role not in ("master", "standby"):
            raise HarnessError(f"role must be master or standby, not {role!r}")
        _require(SLAPD, SLAPPASSWD, os.path.join(LDAP_BINDIR, "ldapsearch"))
        super().__init__(harness, node, host)
        self.role = role
        self.suffix = suffix
        self.rootdn = f"cn=admin,{suffix}"
        self.password = password or _new_password()
        self.password_file = _write_file(os.path.join(self.dir, "rootpw"), self.password, 0o600)
        self.load_base = (role == "master") if load_base is None else load_base
        self.server_id = server_id if server_id is not None else (NODES.index(node) + 1 if node in NODES else 0)
        self.uri = f"ldap://{host}:{self.port}/"
        if (tls_cert is None) != (tls_key is None):
            raise HarnessError("tls_cert and tls_key go together")
        self.ldaps_port = free_port(host) if tls_cert else None
        self.ldaps_uri = f"ldaps://{host}:{self.ldaps_port}/" if tls_cert else None
        tls = ""
        if tls_cert:
            tls = f"TLSCertificateFile {tls_cert}\nTLSCertificateKeyFile {tls_key}\n"
            if tls_ca:
                tls += f"TLSCACertificateFile {tls_ca}\n"
        self.conf = os.path.join(self.dir, "slapd.conf")
        self.dbdir = harness.mkdir(node, self.kind, "db", mode=0o700)
        self.pidfile = os.path.join(self.dir, "slapd.pid")
        self.debug = debug or os.environ.get("STANDIN_SLAPD_DEBUG") or "stats"
        self._base_loaded = False
        hashed = run([SLAPPASSWD, "-s", self.password]).stdout.strip()
        schemas = "".join(f"include {LDAP_SCHEMA_DIR}/{s}.schema\n"
                          for s in ("core", "cosine", "inetorgperson", "nis"))
        _write_file(self.conf, f"""# slapd.conf written by standin_harness for {self.name} ({role})
{schemas}pidfile  {self.pidfile}
argsfile {self.dir}/slapd.args
modulepath {LDAP_MODULE_DIR}
moduleload back_mdb.la
moduleload syncprov.la
serverID {self.server_id}
sizelimit unlimited
{tls}
database mdb
maxsize 1073741824
suffix "{suffix}"
rootdn "{self.rootdn}"
rootpw {hashed}
directory {self.dbdir}
index objectClass,entryCSN,entryUUID eq
limits dn.exact="{self.rootdn}" size=unlimited time=unlimited
overlay syncprov
syncprov-checkpoint 100 10
syncprov-sessionlog 10000
{extra_conf}""", 0o600)

    def start(self, timeout=30):
        """Start slapd, wait until it answers a root DSE search, and load the
        base entries if this server should have them and has not yet."""
        urls = self.uri + (" " + self.ldaps_uri if self.ldaps_uri else "")
        self._spawn([SLAPD, "-h", urls, "-f", self.conf, "-d", self.debug])

        def ready():
            self.check_alive()
            run([os.path.join(LDAP_BINDIR, "ldapsearch"), "-x", "-H", self.uri, "-s", "base",
                 "-b", "", "-LLL", "(objectClass=*)", "namingContexts"], timeout=10)
            return True
        wait_until(ready, timeout, f"{self.name} to answer on {self.uri}")
        if self.load_base and not self._base_loaded:
            if not self.search(self.suffix, scope="base", attrs=["1.1"]):
                self.ldapadd(self.base_ldif())
            self._base_loaded = True
        return self

    def base_ldif(self):
        """LDIF of the suffix entry (dcObject + organization) and ou=people."""
        dc = self.suffix.split(",")[0].split("=", 1)[1]
        return (f"dn: {self.suffix}\nobjectClass: dcObject\nobjectClass: organization\n"
                f"dc: {dc}\no: {dc}\n\n"
                f"dn: ou=people,{self.suffix}\nobjectClass: organizationalUnit\nou: people\n")

    def load_base_entries(self):
        """Add base_ldif() now (e.g. on a standby started without it)."""
        self.ldapadd(self.base_ldif())
        self._base_loaded = True

    def _ldap(self, tool, args, input=None, check=True):
        return run([os.path.join(LDAP_BINDIR, tool), "-x", "-H", self.uri, "-D", self.rootdn,
                    "-y", self.password_file, *args], input=input, check=check)

    def ldapadd(self, ldif):
        """ldapadd the LDIF as the rootdn; returns the tool's output."""
        return self._ldap("ldapadd", [], ldif).stdout

    def ldapmodify(self, ldif):
        """ldapmodify with the LDIF (changetype records) as the rootdn."""
        return self._ldap("ldapmodify", [], ldif).stdout

    def ldapdelete(self, *dns, recursive=False):
        """Delete entries (with recursive=True, their subtrees too)."""
        return self._ldap("ldapdelete", (["-r"] if recursive else []) + list(dns)).stdout

    def ldapsearch(self, base=None, filter="(objectClass=*)", attrs=(), scope="sub", check=True):
        """ldapsearch -LLL (no line wrapping) as the rootdn; returns the LDIF
        text.  base defaults to the suffix, attrs to all user attributes
        (pass ['*', '+'] for operational ones too)."""
        return self._ldap("ldapsearch", ["-LLL", "-o", "ldif_wrap=no", "-s", scope,
                                         "-b", base or self.suffix, filter, *attrs], check=check).stdout

    def search(self, base=None, filter="(objectClass=*)", attrs=(), scope="sub"):
        """ldapsearch() parsed with parse_ldif(): [(dn, {attr: [values]})].
        A base that does not exist gives []."""
        result = self._ldap("ldapsearch", ["-LLL", "-o", "ldif_wrap=no", "-s", scope,
                                           "-b", base or self.suffix, filter, *attrs], check=False)
        if result.returncode == 32:              # noSuchObject
            return []
        if result.returncode != 0:
            raise CommandError(result.args, result.returncode, result.stdout, result.stderr)
        return parse_ldif(result.stdout)

    def slapcat(self):
        """The whole database as LDIF (slapcat, safe while slapd runs)."""
        return run([SLAPCAT, "-f", self.conf, "-o", "ldif_wrap=no"]).stdout

    def describe(self):
        return dict(kind=self.kind, node=self.node, role=self.role, host=self.host, port=self.port,
                    uri=self.uri, suffix=self.suffix, rootdn=self.rootdn, password=self.password,
                    password_file=self.password_file, server_id=self.server_id, conf=self.conf,
                    dbdir=self.dbdir, pidfile=self.pidfile, logfile=self.logfile,
                    ldaps_uri=self.ldaps_uri)


class DovecotServer(ForegroundServer):
    """An unprivileged Dovecot 2.3 IMAP server (mail stored as nobody/nogroup).

    Users live in a passwd-file; a second passdb with master=yes holds the
    replicator's master user, so LOGIN "alice*standin" with standin's password
    logs in as alice.  Attributes: users ({name: password}), master_user,
    master_password, master_password_file (the plain password, 0600),
    mail_root (homes are mail_root/USER, maildirs mail_root/USER/Maildir),
    conf, run_dir (Dovecot's base_dir), pidfile.  Mailbox hierarchy
    separator "/".
    """

    kind = "imap"
    DEFAULT_USERS = ("alice", "bob")

    def __init__(self, harness, node="a", *, users=None, master_user="standin", master_password=None,
                 host=LOOPBACK, extra_conf=""):
        _require_root("DovecotServer")
        _require(DOVECOT, DOVEADM)
        super().__init__(harness, node, host)
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
                    conf=self.conf, run_dir=self.run_dir, pidfile=self.pidfile, logfile=self.logfile)


def _imap_quote(text):
    """An IMAP quoted string (imaplib sends arguments as they are)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _imap_ok(response, what):
    typ, data = response
    if typ != "OK":
        raise HarnessError(f"IMAP {what} failed: {typ} {data!r}")
    return response


# ---------------------------------------------------------------------------
# The six servers of a two-node cluster


class Pair:
    """The two instances of one kind of server: pair.a, pair.b, pair['a'],
    and iteration in node order."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __getitem__(self, node):
        return {"a": self.a, "b": self.b}[node]

    def __iter__(self):
        return iter((self.a, self.b))

    def __repr__(self):
        return f"Pair({self.a!r}, {self.b!r})"


class Cluster:
    """pg, ldap and imap Pairs (node a = master, node b = standby)."""

    def __init__(self, harness, pg, ldap, imap):
        self.harness, self.pg, self.ldap, self.imap = harness, pg, ldap, imap

    nodes = NODES

    def node(self, name):
        """{'pg': ..., 'ldap': ..., 'imap': ...} of one node."""
        return {"pg": self.pg[name], "ldap": self.ldap[name], "imap": self.imap[name]}

    def servers(self):
        """All six, in start order."""
        return [s for pair in (self.pg, self.ldap, self.imap) for s in pair]

    def stop(self):
        """Stop all six (newest first)."""
        for s in reversed(self.servers()):
            s.stop()

    def describe(self):
        """What servers.json holds: {'base_dir', 'nodes': {node: {kind: describe()}}}."""
        return {"version": 1, "base_dir": self.harness.base_dir,
                "nodes": {n: {k: s.describe() for k, s in self.node(n).items()} for n in self.nodes}}


def start_pairs(harness, *, ldap_base="master", fsync=True, pg_options=None, ldap_options=None,
                imap_options=None):
    """Start PostgreSQL, slapd and Dovecot on nodes a and b; returns a Cluster.

    ldap_base: where the base LDAP entries are loaded: 'master' (node a),
    'both' or 'none'.  The two servers of a kind share their password (the
    pg role's, the LDAP rootdn's, the IMAP master user's) unless the options
    give one.  fsync=False makes PostgreSQL faster and unsafe.  The
    *_options dicts go to the server constructors.
    """
    if ldap_base not in ("master", "both", "none"):
        raise HarnessError(f"ldap_base must be master, both or none, not {ldap_base!r}")
    # Like a real cluster with one config file: one secret per service, the
    # same on both nodes (standin.conf names one password file per service).
    pg_options = dict(pg_options or {})
    pg_options.setdefault("password", _new_password())
    ldap_options = dict(ldap_options or {})
    ldap_options.setdefault("password", _new_password())
    imap_options = dict(imap_options or {})
    imap_options.setdefault("master_password", _new_password())
    pg = Pair(*(harness.start_pg(n, fsync=fsync, **pg_options) for n in NODES))
    ldap = Pair(*(harness.start_slapd(n, role, load_base=(ldap_base == "both" or
                                                          (ldap_base == "master" and role == "master")),
                                      **ldap_options)
                  for n, role in zip(NODES, ("master", "standby"))))
    imap = Pair(*(harness.start_dovecot(n, **imap_options) for n in NODES))
    return Cluster(harness, pg, ldap, imap)


# ---------------------------------------------------------------------------
# Command line: up / down / status for shell scripts (./sandbox.sh)


def _describe_running(info):
    """Is the server described by `info` (from servers.json) running?"""
    return pid_alive(_read_pidfile(info["pidfile"]))


def stop_described(info, timeout=30):
    """Stop a server from its servers.json description (the `down` command).
    Returns 'stopped' or 'not running'.  A server that dies or was never
    there is fine; one that will not stop is killed."""
    pid = _read_pidfile(info["pidfile"])
    if not pid_alive(pid):
        return "not running"
    pids = process_tree(pid)
    if info["kind"] == "pg":
        try:
            run([os.path.join(info["bindir"], "pg_ctl"), "-D", info["datadir"], "-m", "fast", "-w",
                 "-t", str(timeout), "stop"], user=PG_OS_USER, cwd="/", timeout=timeout + 10)
        except CommandError:
            if not pid_alive(pid):
                return "stopped"
            _signal_pids(pids, signal.SIGKILL)
    else:
        _signal_pids([pid], signal.SIGTERM)
    try:
        _wait_pids_gone(pids, timeout, f"{info['kind']}-{info['node']} to exit")
    except WaitTimeout:
        _signal_pids(pids, signal.SIGKILL)
        _wait_pids_gone(pids, 10, f"{info['kind']}-{info['node']} to die after SIGKILL")
    return "stopped"


def _servers_in(description):
    return [info for node in description["nodes"].values() for info in node.values()]


def _env_lines(description):
    """servers.env: shell assignments such as STANDIN_PG_A_PORT=5433."""
    lines = [f"STANDIN_SANDBOX={shlex.quote(description['base_dir'])}"]
    for node, kinds in description["nodes"].items():
        for kind, info in kinds.items():
            for key, value in info.items():
                if isinstance(value, (str, int)):
                    var = re.sub(r"[^A-Z0-9]", "_", f"STANDIN_{kind}_{node}_{key}".upper())
                    lines.append(f"{var}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def _summary(description):
    out = []
    for node, kinds in description["nodes"].items():
        pg, ldap, imap = kinds["pg"], kinds["ldap"], kinds["imap"]
        out.append(f"node {node}:\n"
                   f"  pg    {pg['host']}:{pg['port']}  user {pg['user']}  passfile {pg['passfile']}\n"
                   f"        psql \"{pg['dsn']}\"\n"
                   f"  ldap  {ldap['uri']}  ({ldap['role']})  {ldap['rootdn']}  -y {ldap['password_file']}\n"
                   f"  imap  {imap['host']}:{imap['port']}  users {', '.join(imap['users'])}  "
                   f"master user {imap['master_user']}  password file {imap['master_password_file']}")
    return "\n".join(out)


def _cmd_up(args):
    base = os.path.abspath(args.dir)
    json_path = os.path.join(base, "servers.json")
    if os.path.isdir(base) and os.listdir(base):
        if not os.path.exists(json_path):
            print(f"{base} is not empty and holds no servers.json: not touching it", file=sys.stderr)
            return 1
        with open(json_path) as f:
            old = json.load(f)
        if any(_describe_running(i) for i in _servers_in(old)):
            print(f"servers of {json_path} are still running: run `down` first", file=sys.stderr)
            return 1
        for entry in list(old["nodes"]) + ["servers.json", "servers.env"]:   # an old sandbox
            p = os.path.join(base, entry)
            shutil.rmtree(p) if os.path.isdir(p) else os.path.exists(p) and os.unlink(p)
    os.makedirs(base, exist_ok=True)
    _check_traversable(base)
    h = Harness(base_dir=base)
    try:
        cluster = start_pairs(h, ldap_base=args.ldap_base, fsync=not args.no_fsync)
        description = cluster.describe()
        _write_file(json_path + ".tmp", json.dumps(description, indent=2) + "\n", 0o600)
        os.replace(json_path + ".tmp", json_path)
        _write_file(os.path.join(base, "servers.env"), _env_lines(description), 0o600)
    except BaseException:
        h.close(failed=True)
        raise
    h.detach()
    print(_summary(description))
    print(f"described in {json_path} (shell variables: {os.path.join(base, 'servers.env')});\n"
          f"stop with: {sys.executable} {os.path.abspath(__file__)} down {base}")
    return 0


def _cmd_down(args):
    json_path = os.path.join(os.path.abspath(args.dir), "servers.json")
    if not os.path.exists(json_path):
        print(f"{json_path} does not exist: nothing to stop")
        return 0
    with open(json_path) as f:
        description = json.load(f)
    rc = 0
    for info in reversed(_servers_in(description)):
        try:
            print(f"{info['kind']}-{info['node']}: {stop_described(info)}")
        except HarnessError as e:
            print(f"{info['kind']}-{info['node']}: {e}", file=sys.stderr)
            rc = 1
    return rc


def _cmd_status(args):
    json_path = os.path.join(os.path.abspath(args.dir), "servers.json")
    if not os.path.exists(json_path):
        print(f"{json_path} does not exist")
        return 1
    with open(json_path) as f:
        description = json.load(f)
    running = 0
    for info in _servers_in(description):
        up = _describe_running(info)
        running += up
        print(f"{info['kind']}-{info['node']}: {'running' if up else 'stopped'} (port {info['port']})")
    return 0 if running == len(_servers_in(description)) else 3


def main(argv=None):
    """python3 standin_harness.py up|down|status DIR"""
    parser = argparse.ArgumentParser(
        prog="standin_harness.py",
        description="Start or stop the six servers of a standin sandbox (PostgreSQL, slapd and "
                    "Dovecot on nodes a and b) under DIR.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start all six servers under DIR, write DIR/servers.json")
    up.add_argument("dir")
    up.add_argument("--ldap-base", choices=("master", "both", "none"), default="master",
                    help="where to load the base LDAP entries (default: master)")
    up.add_argument("--no-fsync", action="store_true", help="run PostgreSQL with fsync off")
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help="stop the servers DIR/servers.json lists (idempotent)")
    down.add_argument("dir")
    down.set_defaults(func=_cmd_down)
    status = sub.add_parser("status", help="tell which servers run (exit 3 unless all do)")
    status.add_argument("dir")
    status.set_defaults(func=_cmd_status)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (HarnessError, OSError) as e:
        print(f"standin_harness: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"standin_harness: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
