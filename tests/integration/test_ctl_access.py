"""Who may do what on a daemon's admin socket (lib/ctl.c): a monitoring user,
in the socket's group but neither root nor the daemon's user, gets the
read-only commands (status, metrics, help, position) and is refused every
changing one (switch, pause, drain, ddl-done...), each refusal logged with its
uid and pid, and the daemon goes on as if nothing had been asked.  Root and
the daemon's own user may change; a user outside the group cannot connect.

Real daemons (standin-proxy, standin-pgrepl, standin-testd), no servers: the
proxy routes to dead ports and pgrepl keeps trying to connect, which is all
their sockets need.  Runs as root (it switches users: nobody, nogroup)."""
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

import standin_harness as sh
from standin_bin import PGREPL, STANDINCTL, TESTD, StandinDaemon, program, query, run

PROXY = "proxy/standin-proxy"

# A client of the socket protocol, run as another user.
CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
except PermissionError as e:
    print("connect:", e.strerror)
    sys.exit(3)
s.sendall(sys.argv[2].encode() + b"\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"""


def as_user(uid, gid, argv, env=None):
    """Run ARGV as UID:GID with no supplementary groups; (returncode, stdout,
    stderr, pid)."""
    p = subprocess.Popen(argv, user=uid, group=gid, extra_groups=[], cwd="/", env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err, p.pid


def ask(uid, gid, sock, line):
    """LINE's reply on SOCK as UID:GID, and the client's pid."""
    rc, out, err, pid = as_user(uid, gid, [sys.executable, "-c", CLIENT, sock, line])
    assert rc == 0, f"{line}: exit {rc}: {out}{err}"
    return out, pid


class Who:
    """The users of the test: a monitoring user (nobody, in the socket's group
    nogroup), someone outside that group, and another uid in the group."""

    def __init__(self):
        self.nobody = pwd.getpwnam("nobody").pw_uid
        self.group_name = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        self.group = pwd.getpwnam("nobody").pw_gid
        # A uid and a gid no account uses: another monitoring user, and a
        # group that is not the socket's.
        self.other = next(u for u in range(64000, 65000) if not _uid_used(u))
        self.outsider_gid = next(g for g in range(64000, 65000) if not _gid_used(g))


def _uid_used(uid):
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _gid_used(gid):
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def who():
    if os.geteuid() != 0:
        pytest.skip("needs root: the test runs clients as other users")
    try:
        return Who()
    except KeyError:
        pytest.skip("no user nobody on this machine")


@pytest.fixture
def base(request):
    """A directory every user may traverse (pytest's own are root's, 0700);
    removed unless the test failed."""
    path = tempfile.mkdtemp(prefix="standin-ctl-access-", dir="/tmp")
    os.chmod(path, 0o755)
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"kept {path}")


def write_conf(base, group, proxy_port=None):
    """A two-node cluster file whose sockets belong to GROUP; PostgreSQL on
    ports nobody listens on."""
    dead = [sh.free_port(), sh.free_port()]
    text = f"[cluster]\nname = access\nadmin_group = {group}\n"
    for node in ("a", "b"):
        text += (f"[node {node}]\naddress = 127.0.0.1\nstate_dir = {base}/{node}/state\n"
                 f"run_dir = {base}/{node}/run\n")
    text += ("[pg]\n" + "".join(f"endpoint.{n} = 127.0.0.1:{p}\n" for n, p in zip("ab", dead))
             + "dbname = groupware\nuser = standin\nsslmode = disable\n")
    if proxy_port is not None:
        text += f"[proxy]\npg_listen.a = 127.0.0.1:{proxy_port}\n"
    path = os.path.join(base, "standin.conf")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    for node in ("a", "b"):
        os.makedirs(os.path.join(base, node, "state"), exist_ok=True)
        r = run(STANDINCTL, "-c", path, "-n", node, "state", "init", "--master", "a")
        assert r.returncode == 0, r.stderr
    return path


def wait_socket(d):
    def ready():
        if not d.running():
            raise sh.StopWaiting(f"{d.name} exited:\n{d.output()[-3000:]}")
        return d.status()
    return sh.wait_until(ready, 20, f"{d.name} status socket")


def stopped_cleanly(d):
    """D stops on SIGTERM with status 0 (a sanitizer's finding would not)."""
    assert d.running()
    rc = d.stop()
    out = d.output()
    assert rc == 0 and "runtime error" not in out and "Sanitizer" not in out, out[-3000:]


def refused(reply, command, uid):
    """REPLY is the one-line refusal of COMMAND for UID."""
    assert reply.count("\n") == 1, reply
    j = json.loads(reply)
    assert j["ok"] is False, reply
    assert j["error"].startswith(f"refused: {command} is a changing command, only for root"), j
    assert f"this client is uid {uid} " in j["error"], j
    return j["error"]


def test_monitoring_user_reads_the_proxy_but_cannot_switch_it(who, base):
    conf = write_conf(base, who.group_name, proxy_port=sh.free_port())
    d = StandinDaemon(PROXY, conf, "a", os.path.join(base, "a", "run"),
                      os.path.join(base, "proxy.log"))
    try:
        st = wait_socket(d)
        assert st["services"]["pg"]["paused"] is False
        st_sock = os.stat(d.sock)
        assert st_sock.st_mode & 0o777 == 0o660 and st_sock.st_gid == who.group

        # Read-only: status, metrics, help, as nobody in the socket's group.
        reply, _ = ask(who.nobody, who.group, d.sock, "status")
        assert json.loads(reply)["program"] == "standin-proxy"
        reply, _ = ask(who.nobody, who.group, d.sock, "metrics")
        assert "standin_up{" in reply
        helptext, _ = ask(who.nobody, who.group, d.sock, "help")
        ro, _, ch = helptext.partition("changing, only for root:\n")
        assert ro.startswith("read-only, for every client the socket lets in:\n"), helptext
        for name in ("help", "status", "metrics"):
            assert f"\n  {name}: " in ro, helptext
        for name in ("pause", "resume", "switch", "drop"):
            assert f"  {name}: " in ch and f"  {name}: " not in ro, helptext

        # Changing: refused, one line each, the same as an order at an epoch.
        before = d.output()
        pids = {}
        for line in ("switch pg b", "pause pg", "pause all", "resume all", "drop all",
                     "@1 switch pg b"):
            reply, pid = ask(who.nobody, who.group, d.sock, line)
            command = line.split()[1] if line.startswith("@") else line.split()[0]
            msg = refused(reply, command, who.nobody)
            pids[pid] = command
        assert msg == (f"refused: switch is a changing command, only for root; this client is "
                       f"uid {who.nobody} (read-only commands: see help)")
        # Another monitoring uid in the group: the same.
        reply, _ = ask(who.other, who.group, d.sock, "switch pg b")
        refused(reply, "switch", who.other)

        # Nothing changed, and the daemon runs on.
        assert d.running()
        st = d.status()
        assert st["services"]["pg"]["paused"] is False
        assert st["services"]["pg"]["backend"]["node"] == "a", st["services"]["pg"]
        # Each refusal is logged at notice, with the peer's uid and pid.
        log = d.output()[len(before):]
        for pid, command in pids.items():
            assert (f"status socket refused a changing command command={command} "
                    f"peer_uid={who.nobody} peer_pid={pid} ") in log, log
        assert "runs a changing command" not in log

        # Outside the group, not even status: the socket's mode keeps it out.
        rc, out, _, _ = as_user(who.nobody, who.outsider_gid,
                                [sys.executable, "-c", CLIENT, d.sock, "status"])
        assert rc == 3 and "Permission denied" in out

        # standinctl as the monitoring user: proxy status works, proxy pause
        # is refused with the daemon's reason (exit 1).
        ctl = [program(STANDINCTL), "-c", conf, "-n", "a", "proxy"]
        rc, out, err, _ = as_user(who.nobody, who.group, ctl + ["status"])
        assert rc == 0 and json.loads(out)["services"]["pg"]["paused"] is False, err
        rc, out, err, _ = as_user(who.nobody, who.group, ctl + ["pause", "pg"])
        assert rc == 1, (out, err)
        refused(out, "pause", who.nobody)

        # Root may: pause, then resume, each logged with who asked.
        assert json.loads(query(d.sock, "pause pg"))["ok"] is True
        assert d.status()["services"]["pg"]["paused"] is True
        assert json.loads(query(d.sock, "resume pg"))["ok"] is True
        assert d.status()["services"]["pg"]["paused"] is False
        assert f"runs a changing command command=pause args=pg peer_uid=0 peer_pid=" \
            in d.output()
        stopped_cleanly(d)
    finally:
        d.stop()


def test_monitoring_user_cannot_order_the_replicator(who, base):
    conf = write_conf(base, who.group_name)
    d = StandinDaemon(PGREPL, conf, "b", os.path.join(base, "b", "run"),
                      os.path.join(base, "pgrepl.log"))
    try:
        wait_socket(d)
        reply, _ = ask(who.nobody, who.group, d.sock, "position")
        assert json.loads(reply) == {"service": "pg", "position": None}
        helptext, _ = ask(who.nobody, who.group, d.sock, "help")
        ro, _, ch = helptext.partition("changing, only for root:\n")
        assert "\n  position: " in ro, helptext
        for name in ("drain", "sequences", "reverse", "ddl-done"):
            assert f"  {name}: " in ch and f"  {name}: " not in ro, helptext
        for line in ("drain 0/16B3748 60000", "sequences", "reverse a", "ddl-done 0/16B3748"):
            reply, _ = ask(who.nobody, who.group, d.sock, line)
            refused(reply, line.split()[0], who.nobody)
        rc, out, err, _ = as_user(who.nobody, who.group,
                                  [program(STANDINCTL), "-c", conf, "-n", "b", "pg", "ddl-done",
                                   "0/16B3748"])
        assert rc == 1, (out, err)
        refused(out, "ddl-done", who.nobody)
        assert d.running()
        assert not os.path.exists(os.path.join(base, "b", "state", "pgrepl-ddl-done"))
        # Root's drain is run (and answers: not streaming, nothing applied).
        reply = json.loads(query(d.sock, "drain 0/16B3748"))
        assert reply["drained"] is False, reply
        stopped_cleanly(d)
    finally:
        d.stop()


def test_the_daemons_own_user_may_change(who, base):
    """A daemon run as an unprivileged user (nobody here, standin under
    systemd): that user and root may change, another uid may not."""
    conf = write_conf(base, who.group_name)
    for node in ("a", "b"):
        for sub in ("run", "state"):
            os.makedirs(os.path.join(base, node, sub), exist_ok=True)
            os.chown(os.path.join(base, node, sub), who.nobody, who.group)
    log = open(os.path.join(base, "testd.log"), "w+")
    proc = subprocess.Popen([program(TESTD), "-c", conf, "-n", "a"], user=who.nobody,
                            group=who.group, extra_groups=[], cwd="/", stdout=log,
                            stderr=subprocess.STDOUT)
    sock = os.path.join(base, "a", "run", "standin-testd.sock")

    def ready():
        if proc.poll() is not None:
            log.seek(0)
            raise sh.StopWaiting(f"standin-testd exited: {log.read()}")
        return json.loads(query(sock, "status"))
    try:
        sh.wait_until(ready, 20, "standin-testd status socket")
        helptext, _ = ask(who.other, who.group, sock, "help")
        assert (f"changing, only for root and this daemon's user nobody (uid {who.nobody}):\n"
                "  fail: ") in helptext, helptext
        reply, pid = ask(who.other, who.group, sock, "fail by another uid")
        msg = refused(reply, "fail", who.other)
        assert f"only for root and this daemon's user nobody (uid {who.nobody});" in msg
        assert json.loads(query(sock, "status"))["last_error"] is None

        reply, _ = ask(who.nobody, who.group, sock, "fail by the daemon's user")
        assert json.loads(reply) == {"ok": True}
        assert json.loads(query(sock, "status"))["last_error"] == "by the daemon's user"
        assert json.loads(query(sock, "fail by root")) == {"ok": True}
        assert json.loads(query(sock, "status"))["last_error"] == "by root"
        log.flush()
        log.seek(0)
        out = log.read()
        assert (f"status socket refused a changing command command=fail "
                f"peer_uid={who.other} peer_pid={pid} ") in out, out
        assert (f"runs a changing command command=fail args=\"by the daemon's user\" "
                f"peer_uid={who.nobody} ") in out, out
        proc.terminate()
        assert proc.wait(10) == 0
        log.seek(0)
        out = log.read()
        assert "runtime error" not in out and "Sanitizer" not in out, out
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
