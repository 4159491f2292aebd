"""The shared daemon runtime (lib/daemon.c) through the test daemon:
options, config check, pidfile, status socket, SIGHUP reload, SIGTERM, kill -9."""
import json
import os
import signal
import stat
import subprocess

import pytest

from standin_bin import TESTD, program, query, run, write_cluster_conf
from standin_harness import wait_until


class Daemon:
    """A standin-testd process in the foreground, stopped at the end."""

    def __init__(self, tmp, conf, node="a", env=None):
        self.tmp = tmp
        self.conf = conf
        self.node = node
        self.sock = os.path.join(tmp, node, "run", "standin-testd.sock")
        self.pidfile = os.path.join(tmp, node, "run", "standin-testd.pid")
        self.log = open(os.path.join(tmp, f"testd-{node}.log"), "w+")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen([program(TESTD), "-c", conf, "-n", node],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self):
        def ready():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}: {self.output()}"
            return json.loads(query(self.sock, "status"))
        return wait_until(ready, 10, f"standin-testd status socket {self.sock}")

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def daemon_env(tmp_path):
    conf = write_cluster_conf(str(tmp_path))
    started = []

    def start(node="a", env=None):
        d = Daemon(str(tmp_path), conf, node, env)
        started.append(d)
        return d
    yield str(tmp_path), conf, start
    for d in started:
        d.stop()


def test_help_version_and_bad_options():
    r = run(TESTD, "--help")
    assert r.returncode == 0 and "Usage: standin-testd" in r.stdout
    r = run(TESTD, "--version")
    assert r.returncode == 0 and r.stdout.startswith("standin-testd ")
    r = run(TESTD, "--no-such-option")
    assert r.returncode == 2 and "Usage:" in r.stderr
    r = run(TESTD, "-c", "/x", "extra-argument")
    assert r.returncode == 2 and "unexpected argument: extra-argument" in r.stderr
    r = run(TESTD, "-l", "loud", "-t")
    assert r.returncode == 2 and "unknown level loud" in r.stderr


def test_config_check_and_print(tmp_path):
    conf = write_cluster_conf(str(tmp_path))
    r = run(TESTD, "-t", "-c", conf)
    assert r.returncode == 0, r.stderr
    r = run(TESTD, "-T", "-c", conf)
    assert r.returncode == 0 and "[pg]\nendpoint.a = 127.0.0.1:5432" in r.stdout
    bad = write_cluster_conf(str(tmp_path), extra="colour = blue\n")
    r = run(TESTD, "-t", "-c", bad)
    assert r.returncode == 2
    assert f'{bad}:16: [pg] unknown key "colour"' in r.stderr
    r = run(TESTD, "-t", "-c", str(tmp_path / "missing.conf"))
    assert r.returncode == 2 and "cannot open: No such file or directory" in r.stderr


def test_unknown_node_is_refused(daemon_env):
    tmp, conf, _ = daemon_env
    r = run(TESTD, "-c", conf, "-n", "zz")
    assert r.returncode == 2 and f"{conf}: no [node zz] section" in r.stderr


def test_status_metrics_pidfile_and_stop(daemon_env):
    tmp, conf, start = daemon_env
    d = start()
    st = d.wait_ready()
    assert st["program"] == "standin-testd" and st["node"] == "a" and st["cluster"] == "itest"
    assert st["pid"] == d.proc.pid and st["state"] == "idle" and st["last_error"] is None
    assert st["lag_bytes"] == 42
    assert stat.S_IMODE(os.stat(d.sock).st_mode) == 0o660
    with open(d.pidfile) as f:
        assert int(f.read()) == d.proc.pid

    metrics = query(d.sock, "metrics")
    assert 'standin_up{program="standin-testd",node="a"} 1' in metrics
    assert "# TYPE standin_config_reloads_total counter" in metrics
    assert "standin_testd_counter 0" in metrics
    assert "fail: set the last error" in query(d.sock, "help")
    assert json.loads(query(d.sock, "bogus")) == {"ok": False, "error": "unknown command; try help"}

    # A second instance of the same daemon on the same node refuses to start.
    r = run(TESTD, "-c", conf, "-n", "a")
    assert r.returncode == 1
    assert f"pidfile {d.pidfile} is locked: already running as pid {d.proc.pid}" in r.stderr

    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    assert not os.path.exists(d.sock) and not os.path.exists(d.pidfile)
    assert "stopping signal=Terminated" in d.output()


def test_unsafe_run_dir_and_pidfile_are_refused(daemon_env):
    """Issue 30: a run_dir others may write to, or a pidfile that is a
    symbolic link, stops the daemon with a message that says what to fix;
    what the daemon makes itself has exact modes (umask 077 otherwise)."""
    tmp, conf, start = daemon_env
    run_dir = os.path.join(tmp, "a", "run")
    os.makedirs(run_dir, exist_ok=True)
    os.chmod(run_dir, 0o777)
    r = run(TESTD, "-c", conf, "-n", "a")
    assert r.returncode == 1
    assert f"run_dir {run_dir} is writable by group or others (mode 0777); run: chmod go-w" in r.stderr
    os.chmod(run_dir, 0o755)
    pidfile = os.path.join(run_dir, "standin-testd.pid")
    os.symlink(os.path.join(tmp, "elsewhere"), pidfile)
    r = run(TESTD, "-c", conf, "-n", "a")
    assert r.returncode == 1 and f"pidfile {pidfile}: is a symbolic link (refused)" in r.stderr
    assert not os.path.exists(os.path.join(tmp, "elsewhere"))
    os.unlink(pidfile)
    d = start()
    d.wait_ready()
    assert stat.S_IMODE(os.stat(pidfile).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(d.sock).st_mode) == 0o660
    if os.geteuid() == 0:
        assert "running as root" in d.output()


def test_sighup_reload(daemon_env):
    tmp, conf, start = daemon_env
    d = start()
    d.wait_ready()
    text = open(conf).read()

    # A valid change is taken.
    with open(conf, "w") as f:
        f.write(text.replace("name = itest", "name = renamed"))
    d.proc.send_signal(signal.SIGHUP)
    st = wait_until(lambda: (s := json.loads(query(d.sock, "status")))["config_reloads"] == 1 and s,
                    10, "reload counted")
    assert st["cluster"] == "renamed"

    # A broken file is refused, the daemon keeps running with the old one.
    with open(conf, "w") as f:
        f.write(text + "nonsense line\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "standin_config_reload_errors_total{program=\"standin-testd\",node=\"a\"} 1"
               in query(d.sock, "metrics"), 10, "reload error counted")
    st = json.loads(query(d.sock, "status"))
    assert st["cluster"] == "renamed" and st["config_reloads"] == 1
    assert "reload refused, keeping the running configuration" in d.output()
    assert "syntax error" in d.output()


def test_last_error_is_one_log_line(daemon_env):
    tmp, conf, start = daemon_env
    d = start()
    d.wait_ready()
    query(d.sock, "fail table \"x\" broke\rhere")
    st = json.loads(query(d.sock, "status"))
    assert st["state"] == "failed" and st["last_error"] == "table \"x\" broke\rhere"
    # The error's line, and before it the socket's line saying who ran the
    # changing command "fail" with what: each one line, the CR escaped.
    lines = [l for l in d.output().splitlines() if "broke" in l]
    assert len(lines) == 2 and all("\\x0dhere" in l for l in lines), lines
    assert "status socket runs a changing command command=fail" in lines[0]


def test_kill9_then_restart(daemon_env):
    """A daemon killed with SIGKILL leaves a stale socket and pidfile; the next
    start takes them over."""
    tmp, conf, start = daemon_env
    d = start()
    d.wait_ready()
    d.proc.kill()
    d.proc.wait()
    assert os.path.exists(d.sock) and os.path.exists(d.pidfile)
    d2 = start()
    st = d2.wait_ready()
    assert st["pid"] == d2.proc.pid


def test_detach_and_syslog(daemon_env):
    tmp, conf, _ = daemon_env
    r = run(TESTD, "-c", conf, "-n", "b", "-D")
    assert r.returncode == 0, r.stderr
    sock = os.path.join(tmp, "b", "run", "standin-testd.sock")
    pidfile = os.path.join(tmp, "b", "run", "standin-testd.pid")
    try:
        st = wait_until(lambda: json.loads(query(sock, "status")), 10, "detached daemon answers")
        assert st["pid"] != os.getpid()
        os.kill(st["pid"], signal.SIGTERM)
        wait_until(lambda: not os.path.exists(sock), 10, "detached daemon stopped")
    finally:
        if os.path.exists(pidfile):
            try:
                os.kill(int(open(pidfile).read()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


def cpu_seconds(pid):
    """utime + stime of PID so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_is_said_once_and_does_not_spin(daemon_env):
    """A daemon that runs out of descriptors says so once, waits instead of
    spinning on its status socket, and answers again once they are free."""
    import socket
    import time
    tmp, conf, start = daemon_env
    d = start()
    d.wait_ready()
    subprocess.run(["prlimit", "--pid", str(d.proc.pid), "--nofile=24:"], check=True)
    held = []
    try:
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(d.sock)        # past the backlog: refused at once, fine
            held.append(s)
        wait_until(lambda: "Too many open files" in d.output(), 10, "the daemon to say it")
        before = cpu_seconds(d.proc.pid)
        t0 = time.monotonic()
        wait_until(lambda: time.monotonic() - t0 >= 2, 5, "two seconds")  # the window measured
        used = cpu_seconds(d.proc.pid) - before
        assert used < 0.5, f"{used} s of CPU in 2 s: spinning"
        # Said once per episode (idle clients time out after 10 s, then the
        # queue fills it again), not once per try.
        assert d.output().count("Too many open files") <= 2, d.output()[-2000:]
    finally:
        for s in held:
            s.close()
    subprocess.run(["prlimit", "--pid", str(d.proc.pid), "--nofile=1024:"], check=True)
    wait_until(lambda: json.loads(query(d.sock, "status"))["state"] == "idle", 15,
               "the status socket to answer again")
    wait_until(lambda: "status socket accepts again" in d.output(), 10, "the log line")
