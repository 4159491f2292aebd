"""The server-independent part of the standin test harness.

What every test server needs, whatever it runs: errors, waiting, ports and
processes, running commands, small file helpers, a throw-away TLS CA, the
Harness (one test's temporary directory and cleanups) and the Server base
classes.  The servers themselves live in harness_pg, harness_ldap and
harness_imap, the two-node cluster and the command line in harness_cluster;
tests import all of it through standin_harness.

* free_port(), wait_until(), port_open(), pid_alive(), process_tree(), run(),
  make_test_ca()
* Harness: owns the base directory and a LIFO list of cleanups; close() runs
  them even after failures, removes the directory on success and keeps it
  (printing its path to stderr) after a failure or with STANDIN_KEEP_TMP=1.
  While a Harness is open SIGTERM and SIGHUP raise KeyboardInterrupt, so an
  interrupted run still stops its servers.  start_pg(), start_slapd() and
  start_dovecot() create and start one server each.
* Server: what every server has (start(), stop(), kill9(), is_running(),
  pids(), check_alive(), describe()); ForegroundServer: one that runs as a
  child of this process.

Environment:

* STANDIN_TEST_TIMEOUT_SCALE: multiply every timeout (default 1), for slow
  machines or sanitizer builds.
* STANDIN_KEEP_TMP=1: keep the temporary directory even when all went well.

Note on zombies: on the development machines PID 1 does not reap orphans.  So
that stopped daemons (which detach from whoever started them) do not linger as
<defunct> entries, this process becomes a child subreaper (prctl) while a
Harness is open and reaps the server processes it knows of.  pid_alive() counts
a zombie as dead.
"""

import atexit
import ctypes
import grp
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

RUNUSER = "/usr/sbin/runuser"
LOOPBACK = "127.0.0.1"
NODES = ("a", "b")


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


def make_test_ca(dirname, name, host=LOOPBACK):
    """A throw-away CA and a server certificate for `host` (an IP address,
    as subjectAltName IP; or a list of them, all in one certificate) signed
    by it, made with openssl in `dirname`.
    Returns (ca.pem, server.pem, server.key); the key is 0600."""
    hosts = [host] if isinstance(host, str) else list(host)
    os.makedirs(dirname, exist_ok=True)
    p = lambda f: os.path.join(dirname, f)  # noqa: E731
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         f"/CN={name} test CA", "-keyout", p("ca.key"), "-out", p("ca.pem")])
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hosts[0]}",
         "-keyout", p("server.key"), "-out", p("server.csr")])
    _write_file(p("ext"), "subjectAltName = " + ", ".join(f"IP:{h}" for h in hosts) + "\n")
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

    # The server modules import this one, so these import them when called.

    def start_pg(self, node="a", **kwargs):
        """A started PgServer (see PgServer for the options)."""
        from harness_pg import PgServer
        return PgServer(self, node, **kwargs).start()

    def start_slapd(self, node="a", role="master", **kwargs):
        """A started SlapdServer."""
        from harness_ldap import SlapdServer
        return SlapdServer(self, node, role, **kwargs).start()

    def start_dovecot(self, node="a", **kwargs):
        """A started DovecotServer."""
        from harness_imap import DovecotServer
        return DovecotServer(self, node, **kwargs).start()

    def __repr__(self):
        return f"<Harness {self.base_dir}>"


# ---------------------------------------------------------------------------
# Servers


class Server:
    """What every server has.

    Attributes: harness, node ('a'/'b'), kind ('pg'/'ldap'/'imap'), name
    ('pg-a'), dir (its directory), host, port, logfile, state ('new',
    'running', 'stopped' or 'killed'), netlab.  start() returns self.

    netlab (a harness_netns.NetLab, default None): the server runs in its
    node's namespaces (netlab.prefix(node)) and listens on the node's
    address, netlab.addr(node), which replaces host.  Clients of this
    process reach it there through the lab's bridge; its files stay where
    they are (this process sees every node's directories).
    """

    kind = "server"

    def __init__(self, harness, node, host=LOOPBACK, owner=None, group=None, netlab=None):
        if harness.closed:
            raise HarnessError("harness already closed")
        self.harness = harness
        self.node = node
        self.name = f"{self.kind}-{node}"
        self.netlab = netlab
        if netlab is not None:
            host = netlab.addr(node)
        self.host = host
        self.port = self._free_port()
        harness.mkdir(node)
        self.dir = harness.mkdir(node, self.kind, owner=owner, group=group)
        self.logfile = os.path.join(self.dir, f"{self.kind}.log")
        self.state = "new"
        harness.servers.append(self)
        harness.add_cleanup(self._cleanup)

    # Subclasses implement: pid (property), start(), stop(), describe().

    def _free_port(self):
        """A free port for this server (on host, or in its node's namespace)."""
        return free_port(self.host) if self.netlab is None else self.netlab.free_port()

    def in_node(self, argv, user=None):
        """argv to run in this server's node (netlab.command()); without a
        netlab, argv as it is (user is then run()'s business)."""
        if self.netlab is None:
            return argv
        return self.netlab.command(self.node, argv, user)

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


class ForegroundServer(Server):
    """A server that runs in the foreground as a child of this process (in a
    session of its own), so its death is seen at once, with no pidfile race.
    Subclasses set self.pidfile (used when the process is not our child, e.g.
    after `up` handed the servers over) and call _spawn(argv)."""

    def __init__(self, harness, node, host=LOOPBACK, owner=None, group=None, netlab=None):
        super().__init__(harness, node, host, owner, group, netlab)
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
        argv = self.in_node(argv)
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
