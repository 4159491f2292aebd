"""standinctl: config check/show, state init/show, status with live, missing,
hung and broken daemons."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading

import pytest

from standin_bin import STANDINCTL, TESTD, program, run, write_cluster_conf
from standin_harness import wait_until


def ctl(conf, *args, node=None, timeout=30):
    argv = ["-c", conf] + (["-n", node] if node else []) + list(args)
    return run(STANDINCTL, *argv, timeout=timeout)


def test_usage():
    assert run(STANDINCTL, "--help").returncode == 0
    assert run(STANDINCTL, "--version").stdout.startswith("standinctl ")
    r = run(STANDINCTL)
    assert r.returncode == 2 and "Usage:" in r.stderr
    r = run(STANDINCTL, "-c", "/nonexistent", "frobnicate")
    assert r.returncode == 2 and "unknown command: frobnicate" in r.stderr
    r = run(STANDINCTL, "-c", "/nonexistent", "status")
    assert r.returncode == 2 and "/nonexistent: cannot open" in r.stderr


def test_config_check_and_show(tmp_path):
    conf = write_cluster_conf(str(tmp_path))
    r = ctl(conf, "config", "check")
    assert r.returncode == 0 and "configuration is valid (2 nodes)" in r.stdout
    r = ctl(conf, "config", "show")
    assert r.returncode == 0
    shown = tmp_path / "shown.conf"
    shown.write_text(r.stdout)
    assert ctl(str(shown), "config", "check").returncode == 0

    # Several errors at once, each with file:line, section and key.
    bad = tmp_path / "bad.conf"
    bad.write_text(open(conf).read().replace("user = standin", "user = standin\nport = 5\n")
                   + "[node a]\naddress = x\n")
    r = ctl(str(bad), "config", "check")
    assert r.returncode == 2
    # Lines 16, 18 and 19 (the file ends "user = standin\n", so a blank line
    # comes before the second [node a]), reported in line order.
    assert r.stderr.splitlines() == [
        f'{bad}:16: [pg] unknown key "port"',
        f'{bad}:18: duplicate node "a" (first defined on line 3)',
        f'{bad}:19: [node a] address: set twice (first on line 4)']


def test_secret_file_mode_refused(tmp_path):
    secret = tmp_path / "pgpass"
    secret.write_text("127.0.0.1:5432:*:standin:pw\n")
    os.chmod(secret, 0o644)
    conf = write_cluster_conf(str(tmp_path), extra=f"passfile = {secret}\n")
    r = ctl(conf, "config", "check")
    assert r.returncode == 2
    assert (f"{conf}:16: [pg] passfile: secret file {secret} is readable or writable by group "
            f"or others (mode 0644); run: chmod 600 {secret}") in r.stderr
    os.chmod(secret, 0o600)
    assert ctl(conf, "config", "check").returncode == 0


def test_state_init_and_show(tmp_path):
    conf = write_cluster_conf(str(tmp_path))
    r = ctl(conf, "state", "show", node="a")
    assert r.returncode == 1 and "does not exist; create it with: standinctl state init" in r.stderr
    r = ctl(conf, "state", "init", node="a")
    assert r.returncode == 2 and "needs --master NODE" in r.stderr
    r = ctl(conf, "state", "init", "--master", "zz", node="a")
    assert r.returncode == 2 and "--master zz: no such node" in r.stderr
    r = ctl(conf, "state", "init", "--master", "a", node="a")
    assert r.returncode == 0, r.stderr
    assert "epoch 1, master a" in r.stdout
    r = ctl(conf, "state", "show", node="a")
    assert r.returncode == 0 and "master = a\npg = a>b\n" in r.stdout
    r = ctl(conf, "state", "show", "--json", node="a")
    st = json.loads(r.stdout)
    assert st["epoch"] == 1 and st["directions"]["pg"] == [{"source": "a", "target": "b"}]

    r = ctl(conf, "state", "init", "--master", "b", node="a")
    assert r.returncode == 1 and "already exists (epoch 1, master a)" in r.stderr
    # --force over a readable state: the epoch still goes forward.
    r = ctl(conf, "state", "init", "--master", "b", "--force", node="a")
    assert r.returncode == 0 and "epoch 2, master b" in r.stdout
    r = ctl(conf, "state", "set", "--master", "a", node="a")
    assert r.returncode == 0 and "epoch 3, master a" in r.stdout
    r = ctl(conf, "state", "show", "--json", node="a")
    assert json.loads(r.stdout)["directions"]["pg"] == [{"source": "a", "target": "b"}]
    r = ctl(conf, "state", "set", "--master", "z", node="a")
    assert r.returncode == 2 and "--master z: no such node" in r.stderr
    r = ctl(conf, "state", "set", "--master", "a", node="b")
    assert r.returncode == 1 and "does not exist; create it with: standinctl state init" in r.stderr

    # A damaged state file is reported, not half read.
    path = tmp_path / "a" / "state" / "cluster.state"
    path.write_text(path.read_text().replace("epoch = 3", "epoch = 9"))
    r = ctl(conf, "state", "show", node="a")
    assert r.returncode == 1
    assert f"{path}: checksum mismatch: the file is damaged or was edited" in r.stderr


def write_state(conf_tmp, node, epoch, master):
    """A valid state file written the way standin writes it (for epoch tests)."""
    body = ("# standin cluster state: written by standin, do not edit\n"
            f"version = 1\ncluster = itest\nepoch = {epoch}\nmaster = {master}\n"
            f"pg = {master}>{'b' if master == 'a' else 'a'}\nldap =\nimap =\n"
            "updated = 2026-11-22T12:00:00Z\n")
    digest = hashlib.sha256(body.encode()).hexdigest()
    d = os.path.join(conf_tmp, node, "state")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "cluster.state"), "w") as f:
        f.write(body + f"checksum = sha256:{digest}\n")


def test_status_without_daemons(tmp_path):
    conf = write_cluster_conf(str(tmp_path))
    r = ctl(conf, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "cluster itest"
    assert lines[1].split() == ["NODE", "ROLE", "EPOCH", "SERVICE", "DAEMON", "STATE", "LAG",
                                "LAST", "ERROR"]
    # No run_dir on this machine yet: unreachable, with the reason.
    assert "unreachable" in lines[2]
    assert "warning: node a:" in r.stdout and "does not exist (standinctl state init)" in r.stdout

    for n in ("a", "b"):
        os.makedirs(tmp_path / n / "run")
        assert ctl(conf, "state", "init", "--master", "a", node=n).returncode == 0
    r = ctl(conf, "status")
    rows = [l.split() for l in r.stdout.splitlines()[2:]]
    assert rows[0][:7] == ["a", "master", "1", "pg", "standin-pgrepl", "not", "running"]
    assert rows[1][:7] == ["b", "standby", "1", "pg", "standin-pgrepl", "not", "running"]
    assert "warning" not in r.stdout


def test_status_epoch_behind_warns(tmp_path):
    conf = write_cluster_conf(str(tmp_path))
    write_state(str(tmp_path), "a", 1, "a")
    write_state(str(tmp_path), "b", 2, "b")
    r = ctl(conf, "status")
    assert "warning: node a is at epoch 1, behind epoch 2" in r.stdout
    rows = [l.split() for l in r.stdout.splitlines()[2:4]]
    assert rows[0][:3] == ["a", "master", "1"] and rows[1][:3] == ["b", "master", "2"]


@pytest.fixture
def fake_pgrepl(tmp_path):
    """standin-testd standing in as standin-pgrepl on node b."""
    conf = write_cluster_conf(str(tmp_path))
    for n in ("a", "b"):
        os.makedirs(tmp_path / n / "run")
        assert ctl(conf, "state", "init", "--master", "a", node=n).returncode == 0
    env = dict(os.environ, STANDIN_TESTD_PROGRAM="standin-pgrepl")
    log = open(tmp_path / "testd.log", "w")
    proc = subprocess.Popen([program(TESTD), "-c", conf, "-n", "b"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    sock = str(tmp_path / "b" / "run" / "standin-pgrepl.sock")
    wait_until(lambda: os.path.exists(sock) and proc.poll() is None, 10, "fake pgrepl socket")
    yield conf, sock
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    log.close()


def test_status_with_live_daemon(fake_pgrepl):
    conf, sock = fake_pgrepl
    r = ctl(conf, "status")
    rows = [l.split() for l in r.stdout.splitlines()[2:]]
    assert rows[1][:7] == ["b", "standby", "1", "pg", "standin-pgrepl", "idle", "0.2s/42B"]
    assert rows[1][7] == "-"

    # The daemon's last error shows, quoted on one line.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(b"fail duplicate key in table \"Orders\"\n")
        s.recv(100)
    r = ctl(conf, "status")
    line = r.stdout.splitlines()[3]
    assert "failed" in line and '"duplicate key in table \\"Orders\\""' in line

    r = ctl(conf, "status", "--json")
    doc = json.loads(r.stdout)
    assert doc["cluster"] == "itest"
    assert doc["nodes"][0] == {"node": "a", "role": "master", "epoch": 1, "master": "a"}
    b = [d for d in doc["daemons"] if d["node"] == "b"][0]
    assert b["state"] == "failed" and b["status"]["lag_bytes"] == 42


def test_status_hung_and_broken_daemons(tmp_path):
    """A daemon that accepts but never answers shows as unreachable after the
    deadline; one that answers garbage shows as a bad reply; neither crashes
    standinctl."""
    conf = write_cluster_conf(str(tmp_path))
    for n in ("a", "b"):
        os.makedirs(tmp_path / n / "run")
    hung = socket.socket(socket.AF_UNIX)
    hung.bind(str(tmp_path / "a" / "run" / "standin-pgrepl.sock"))
    hung.listen(5)
    garbage = socket.socket(socket.AF_UNIX)
    garbage.bind(str(tmp_path / "b" / "run" / "standin-pgrepl.sock"))
    garbage.listen(5)
    stop = threading.Event()

    def serve_garbage():
        garbage.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = garbage.accept()
            except socket.timeout:
                continue
            c.recv(100)
            c.sendall(b"\x00\xffnot json at all\n")
            c.close()
    t = threading.Thread(target=serve_garbage, daemon=True)
    t.start()
    try:
        r = ctl(conf, "status", timeout=20)
    finally:
        stop.set()
        t.join()
        hung.close()
        garbage.close()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "unreachable (timeout)" in lines[2]
    assert "bad reply" in lines[3] and "not a JSON object" in lines[3]
