"""Paths to this build's programs and helpers to run them (shared by tests)."""
import os
import subprocess

BUILDDIR = os.environ.get("STANDIN_BUILDDIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build")
SRCDIR = os.environ.get("STANDIN_SRCDIR") or os.path.join(os.path.dirname(__file__), "..", "..")


def program(name):
    """Absolute path of a built program, e.g. program('tools/standinctl')."""
    path = os.path.abspath(os.path.join(BUILDDIR, name))
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is not built (run make check, or set STANDIN_BUILDDIR)")
    return path


STANDINCTL = "tools/standinctl"
TESTD = "tests/lib/standin-testd"


def run(prog, *args, env=None, timeout=30):
    """Run a program to completion; return the CompletedProcess (text)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([program(prog), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def write_cluster_conf(tmp, extra="", nodes=("a", "b")):
    """A small valid cluster file under TMP with each node's dirs inside TMP."""
    text = "[cluster]\nname = itest\n"
    for i, n in enumerate(nodes):
        text += (f"[node {n}]\naddress = 127.0.0.{i + 1}\n"
                 f"state_dir = {tmp}/{n}/state\nrun_dir = {tmp}/{n}/run\n")
    text += "[pg]\n"
    for i, n in enumerate(nodes):
        text += f"endpoint.{n} = 127.0.0.{i + 1}:5432\n"
    text += "dbname = groupware\nuser = standin\n" + extra
    path = os.path.join(tmp, "standin.conf")
    with open(path, "w") as f:
        f.write(text)
    return path


PGREPL = "replicators/pg/standin-pgrepl"


def query(path, command, timeout=5):
    """Send one command to a daemon's unix socket; return the whole reply."""
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data.decode()
            data += chunk


class StandinDaemon:
    """A standin daemon (this build's PROG) in the foreground for node NODE,
    its output in LOGFILE; stop() (SIGTERM) or kill9() it; start() again.
    PREFIX: an argv prefix to run it with (e.g. NetLab.prefix(node), which
    keeps the daemon's pid)."""

    def __init__(self, prog, conf, node, run_dir, logfile, args=(), env=None, prefix=()):
        self.prog, self.conf, self.node, self.args = prog, conf, node, list(args)
        self.prefix = list(prefix)
        self.name = os.path.basename(prog)
        self.sock = os.path.join(run_dir, f"{self.name}.sock")
        self.logfile = logfile
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.start()

    def start(self, args=None):
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.logfile, "ab")
        self.proc = subprocess.Popen([*self.prefix, program(self.prog), "-c", self.conf,
                                      "-n", self.node, *(self.args if args is None else args)],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        return self

    def status(self):
        import json
        return json.loads(query(self.sock, "status"))

    def output(self):
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.running():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout=30):
        if self.running():
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None:
            return self.proc.wait()
        return None


def write_pg_conf(base, pg_pair, name="itest", extra=""):
    """standin.conf for a harness PostgreSQL pair (nodes a and b), with a
    passfile for both servers.  Returns the path; node dirs are under BASE."""
    pgpass = os.path.join(base, "pgpass")
    fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for s in pg_pair:
            f.write(f"{s.host}:{s.port}:*:{s.user}:{s.password}\n")
    # Row keys in messages: the tests name them (the default hides them,
    # test_pgrepl.test_conflict_stops_with_a_clear_error_and_resumes_when_fixed).
    text = f"[cluster]\nname = {name}\nlog_data = yes\n"
    for s in pg_pair:
        os.makedirs(os.path.join(base, s.node, "state"), exist_ok=True)
        os.makedirs(os.path.join(base, s.node, "run"), exist_ok=True)
        text += (f"[node {s.node}]\naddress = {s.host}\n"
                 f"state_dir = {base}/{s.node}/state\nrun_dir = {base}/{s.node}/run\n")
    text += "[pg]\n"
    for s in pg_pair:
        text += f"endpoint.{s.node} = {s.host}:{s.port}\n"
    text += (f"dbname = groupware\nuser = {pg_pair.a.user}\npassfile = {pgpass}\n"
             f"sslmode = disable\n{extra}")
    path = os.path.join(base, "standin.conf")
    with open(path, "w") as f:
        f.write(text)
    return path
