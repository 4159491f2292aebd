"""The cluster state in etcd (lib/etcd.c, lib/cstore.c) against a real
etcd 3.4 (Debian's etcd-server) on loopback: standinctl state init, set, show
--etcd and pull; of two writers exactly one wins and the epoch never repeats;
an unreachable or hung etcd is an error naming it, and nothing is written."""
import base64
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import standin_harness as sh
from standin_bin import STANDINCTL, StandinDaemon, query, run, write_cluster_conf

pytestmark = pytest.mark.servers


@pytest.fixture
def etcd(harness):
    if not os.path.exists(sh.ETCD):
        pytest.skip("etcd-server is not installed")
    return sh.EtcdServer(harness).start()


def conf_with(tmp, urls, extra_cluster=""):
    os.makedirs(str(tmp), exist_ok=True)
    path = write_cluster_conf(str(tmp))
    with open(path) as f:
        text = f.read()
    text = text.replace("name = itest\n", f"name = itest\netcd = {urls}\n{extra_cluster}", 1)
    with open(path, "w") as f:
        f.write(text)
    return path


def ctl(conf, node, *args, timeout=60):
    return run(STANDINCTL, "-c", conf, "-n", node, *args, timeout=timeout)


def local_epoch(tmp, node):
    path = os.path.join(str(tmp), node, "state", "cluster.state")
    if not os.path.exists(path):
        return None
    return int(re.search(r"^epoch = (\d+)$", open(path).read(), re.M).group(1))


def test_state_in_etcd(etcd, tmp_path):
    conf = conf_with(tmp_path, etcd.url)
    r = ctl(conf, "a", "state", "set", "--master", "b")
    assert r.returncode == 1 and "there is no cluster state in etcd" in r.stderr, r.stderr
    r = ctl(conf, "a", "state", "init", "--master", "a")
    assert r.returncode == 0, r.stderr
    assert f"etcd {etcd.url}: epoch 1, master a" in r.stdout, r.stdout
    value = etcd.get("/standin/itest/state")
    assert "epoch = 1\nmaster = a\npg = a>b\n" in value and "checksum = sha256:" in value, value
    assert local_epoch(tmp_path, "a") == 1 and local_epoch(tmp_path, "b") is None
    # Created once: a second init is refused, from any node.
    r = ctl(conf, "b", "state", "init", "--master", "b")
    assert r.returncode == 1 and "already exists in etcd" in r.stderr
    assert "epoch 1, master a" in r.stderr, r.stderr
    # Node b takes it.
    r = ctl(conf, "b", "state", "pull")
    assert r.returncode == 0 and "epoch 1, master a (from etcd" in r.stdout, r.stdout + r.stderr
    assert local_epoch(tmp_path, "b") == 1
    r = ctl(conf, "b", "state", "pull")
    assert r.returncode == 0 and "(already)" in r.stdout
    r = ctl(conf, "b", "state", "show", "--etcd")
    assert r.returncode == 0 and f"# etcd {etcd.url}, mod_revision " in r.stdout
    assert "master = a\npg = a>b\n" in r.stdout
    # Moving the master: etcd and this node's copy; b pulls it.
    r = ctl(conf, "a", "state", "set", "--master", "b")
    assert r.returncode == 0 and "epoch 2, master b" in r.stdout, r.stderr
    assert local_epoch(tmp_path, "a") == 2 and local_epoch(tmp_path, "b") == 1
    assert ctl(conf, "b", "state", "pull").returncode == 0
    assert local_epoch(tmp_path, "b") == 2
    r = ctl(conf, "b", "state", "show", "--etcd", "--json")
    assert r.returncode == 0 and '"epoch":2' in r.stdout and '"master":"b"' in r.stdout
    # --force over an existing state: the next epoch, never back to 1.
    r = ctl(conf, "b", "state", "init", "--master", "a", "--force")
    assert r.returncode == 0 and "epoch 3, master a" in r.stdout, r.stderr
    # A node whose copy is ahead of etcd keeps it (the epoch never goes back).
    etcd.call("/v3/kv/deleterange", {"key": base64.b64encode(b"/standin/itest/state").decode()})
    r = ctl(conf, "a", "state", "init", "--master", "a")
    assert r.returncode == 0 and "epoch 3, master a" in r.stdout, r.stdout  # a knew epoch 2
    r = ctl(conf, "b", "state", "pull")
    assert r.returncode == 0 and "(already)" in r.stdout, r.stdout + r.stderr


def test_two_writers_exactly_one_wins(etcd, tmp_path):
    """Node a and node b move the master at the same moment, 20 times: every
    epoch written is written once, and etcd ends at 1 + the writes that won."""
    conf = conf_with(tmp_path, etcd.url)
    assert ctl(conf, "a", "state", "init", "--master", "a").returncode == 0
    won, lost = [], 0
    for i in range(20):
        start = threading.Barrier(2)
        results = {}

        def move(node, master):
            start.wait()
            results[node] = ctl(conf, node, "state", "set", "--master", master)
        threads = [threading.Thread(target=move, args=(n, m)) for n, m in (("a", "b"), ("b", "a"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for node, r in results.items():
            m = re.search(r"^etcd \S+: epoch (\d+), master (\w+)$", r.stdout, re.M)
            if r.returncode == 0:
                won.append(int(m.group(1)))
            else:
                assert "the cluster state in etcd changed while this ran" in r.stderr, r.stderr
                lost += 1
    assert len(won) == len(set(won)), sorted(won)        # no epoch twice
    value = etcd.get("/standin/itest/state")
    final = int(re.search(r"^epoch = (\d+)$", value, re.M).group(1))
    assert final == 1 + len(won) == max(won), (final, sorted(won))
    assert len(won) + lost == 40


def test_etcd_down_or_hung_is_an_error_naming_it(etcd, tmp_path):
    dead = f"http://127.0.0.1:{sh.free_port()}"
    conf = conf_with(tmp_path, f"{dead}, {etcd.url}", "etcd_timeout = 1s\n")
    # The first URL refuses: the second answers.
    r = ctl(conf, "a", "state", "init", "--master", "a")
    assert r.returncode == 0 and f"etcd {etcd.url}: epoch 1" in r.stdout, r.stdout + r.stderr
    # Hung (SIGSTOP): an error within the timeout, nothing written here.
    etcd.pause()
    try:
        r = ctl(conf, "a", "state", "set", "--master", "b", timeout=30)
        assert r.returncode == 1, r.stdout
        assert f"no etcd member answers ({dead}:" in r.stderr and etcd.url in r.stderr, r.stderr
        assert "imeout" in r.stderr or "timed out" in r.stderr, r.stderr
        assert local_epoch(tmp_path, "a") == 1
    finally:
        etcd.resume()
    etcd.stop()
    r = ctl(conf, "b", "state", "pull")
    assert r.returncode == 1 and "no etcd member answers" in r.stderr, r.stderr
    assert local_epoch(tmp_path, "b") is None
    # A configuration error names the file and the line.
    bad = conf_with(tmp_path / "bad", "ftp://127.0.0.1:1")
    r = ctl(bad, "a", "config", "check")
    assert r.returncode == 2 and "[cluster] etcd" in r.stderr, r.stderr
    assert "scheme must be http:// or https://" in r.stderr, r.stderr


FAILOVERD = "failover/standin-failoverd"


def member(etcd, node):
    value = etcd.get(f"/standin/itest/members/{node}")
    return json.loads(value) if value is not None else None


def test_failoverd_follows_etcd_and_publishes_its_node(etcd, tmp_path):
    """Each node's standin-failoverd takes a higher epoch from etcd into its
    own cluster.state (never a lower one) and keeps its member record alive
    under a lease: gone after a kill -9 within the lease, at once after a
    clean stop."""
    conf = conf_with(tmp_path, etcd.url)
    assert ctl(conf, "a", "state", "init", "--master", "a").returncode == 0
    epoch1 = open(os.path.join(str(tmp_path), "a", "state", "cluster.state")).read()
    d = {}
    for n in ("a", "b"):
        run_dir = os.path.join(str(tmp_path), n, "run")
        os.makedirs(run_dir, exist_ok=True)
        d[n] = StandinDaemon(FAILOVERD, conf, n, run_dir, os.path.join(str(tmp_path), f"fo-{n}.log"))
    try:
        sh.wait_until(lambda: local_epoch(tmp_path, "b") == 1, 10, "b to take epoch 1")
        rec = sh.wait_until(lambda: member(etcd, "b"), 10, "b's member record")
        assert rec["node"] == "b" and rec["epoch"] == 1 and rec["role"] == "standby", rec
        assert rec["daemons"]["standin-pgrepl"]["state"] == "not running", rec
        st = sh.wait_until(lambda: (s := d["b"].status())["state"] == "following" and s, 10,
                           "b following")
        assert st["epoch"] == 1 and st["master"] == "a" and st["member_lease"], st
        r = ctl(conf, "b", "status")
        assert re.search(r"^b +standby +1 +all +standin-failoverd +following ", r.stdout, re.M), \
            r.stdout
        # A move made on node a reaches node b through etcd alone.
        t0 = time.monotonic()
        assert ctl(conf, "a", "state", "set", "--master", "b").returncode == 0
        sh.wait_until(lambda: local_epoch(tmp_path, "b") == 2, 10, "b to take epoch 2")
        assert time.monotonic() - t0 < 5
        sh.wait_until(lambda: member(etcd, "b")["role"] == "master", 10, "b's record as master")
        assert d["b"].status()["states_taken"] == 2
        # An older state put back in etcd is not taken: etcd takes the nodes'
        # higher epoch back (as after a failover --force made without etcd).
        etcd.call("/v3/kv/put", {"key": base64.b64encode(b"/standin/itest/state").decode(),
                                 "value": base64.b64encode(epoch1.encode()).decode()})
        sh.wait_until(lambda: "epoch = 2\n" in etcd.get("/standin/itest/state"), 10,
                      "etcd to get epoch 2 back")
        assert local_epoch(tmp_path, "b") == 2
        sh.wait_until(lambda: "etcd was behind this node: its epoch 2 written there" in
                      d["a"].output() + d["b"].output(), 10, "the log line")
        # Dead: the record goes with its lease (5 s); a clean stop takes it at once.
        d["b"].kill9()
        t0 = time.monotonic()
        sh.wait_until(lambda: member(etcd, "b") is None, 15, "b's record to expire")
        assert 2 < time.monotonic() - t0 < 9
        assert member(etcd, "a") is not None
        d["a"].stop()
        assert member(etcd, "a") is None
    finally:
        for x in d.values():
            x.stop()
    # Without [cluster] etcd it refuses to start, saying why.
    os.makedirs(str(tmp_path / "plain"), exist_ok=True)
    plain = write_cluster_conf(str(tmp_path / "plain"))
    r = run(FAILOVERD, "-c", plain, "-n", "a", "-t")
    assert r.returncode == 0, r.stderr       # a valid configuration...
    x = StandinDaemon(FAILOVERD, plain, "a", str(tmp_path / "plain"), str(tmp_path / "fo-plain.log"))
    sh.wait_until(lambda: not x.running(), 10, "standin-failoverd to refuse")
    assert "sets no [cluster] etcd" in x.output()


TESTD = "tests/lib/standin-testd"


def test_switchover_checks_from_etcd(etcd, tmp_path):
    """standinctl switchover --dry-run decides from etcd alone: every node's
    agent alive and at the cluster's epoch, the target's replicators running,
    without error and under the lag bound; then it prints the plan."""
    conf = conf_with(tmp_path, etcd.url)
    assert ctl(conf, "a", "state", "init", "--master", "a").returncode == 0
    assert ctl(conf, "b", "state", "pull").returncode == 0

    def switchover(*args):
        return ctl(conf, "a", "switchover", *args)
    r = switchover("--to", "b", "--dry-run")
    assert r.returncode == 1, r.stdout
    assert "check failed: node a: no member record in etcd" in r.stdout, r.stdout
    assert "check failed: node b: no member record in etcd" in r.stdout, r.stdout
    assert "2 check(s) failed: nothing was done" in r.stdout
    d = []
    for n in ("a", "b"):
        run_dir = os.path.join(str(tmp_path), n, "run")
        os.makedirs(run_dir, exist_ok=True)
        d.append(StandinDaemon(FAILOVERD, conf, n, run_dir, os.path.join(str(tmp_path), f"fo-{n}.log")))
    try:
        sh.wait_until(lambda: member(etcd, "a") and member(etcd, "b"), 10, "both records")
        r = switchover("--dry-run")                 # the one standby: b
        assert r.returncode == 1, r.stdout
        assert "switchover of cluster itest from a to b, at epoch 1" in r.stdout, r.stdout
        assert "check ok: node a: agent alive, epoch 1" in r.stdout, r.stdout
        assert "check failed: node b: standin-pgrepl is not running" in r.stdout, r.stdout
        # A stand-in for node b's standin-pgrepl: lag 0.25 s, no error.
        run_b = os.path.join(str(tmp_path), "b", "run")
        t = StandinDaemon(TESTD, conf, "b", run_b, os.path.join(str(tmp_path), "testd.log"),
                          env={"STANDIN_TESTD_PROGRAM": "standin-pgrepl"})
        t.sock = os.path.join(run_b, "standin-pgrepl.sock")
        d.append(t)
        sh.wait_until(lambda: member(etcd, "b")["daemons"]["standin-pgrepl"].get("lag_seconds"),
                      10, "b's record with the replicator's lag")
        r = switchover("--to", "b", "--dry-run")
        assert r.returncode == 0, r.stdout
        assert "check ok: node b: standin-pgrepl idle, lag 0.2 s" in r.stdout, r.stdout
        assert "plan (dry run: nothing done):" in r.stdout and "epoch + 1 in etcd" in r.stdout
        r = switchover("--to", "b", "--dry-run", "--max-lag", "0.1")
        assert r.returncode == 1
        assert "check failed: node b: standin-pgrepl lags 0.2 s, more than 0.1 s" in r.stdout
        r = switchover("--to", "a", "--dry-run")
        assert r.returncode == 1 and "check failed: a is the master already" in r.stdout
        # For real: node a's PostgreSQL is not there, so the fence fails and
        # the switchover rolls back, naming the step and the node.
        r = switchover("--to", "b", "--timeout", "5")
        assert r.returncode == 1, r.stdout
        assert "step 1/8 pause      ok" in r.stdout, r.stdout
        assert re.search(r"step 2/8 fence +FAILED \(\d+ ms\): node a: PostgreSQL on node a", r.stdout), r.stdout
        # ...and a's PostgreSQL cannot be unfenced either: said so.
        assert "rollback: unfencing a FAILED" in r.stdout, r.stdout
        assert "not rolled back everywhere: a stays the master at epoch 1" in r.stdout, r.stdout
        assert etcd.get("/standin/itest/switchover") is None
        r = switchover("--to", "zz", "--dry-run")
        assert r.returncode == 2 and "--to zz: no such node" in r.stdout, r.stdout
        # An error in the replicator: named, and the switchover refused.
        query(t.sock, "fail conflict on table t")
        sh.wait_until(lambda: member(etcd, "b")["daemons"]["standin-pgrepl"].get("last_error"),
                      10, "the error in b's record")
        r = switchover("--dry-run")
        assert r.returncode == 1
        assert "check failed: node b: standin-pgrepl is failed: conflict on table t" in r.stdout
    finally:
        for x in d:
            x.stop()


def test_failoverd_fences_and_unfences_postgresql(harness, etcd):
    """The first of the switchover's orders: "fence EPOCH" makes the node's
    PostgreSQL read-only for every new transaction and ends the client
    sessions (one in the middle of a transaction included), "unfence EPOCH"
    undoes it; an order older than the node's epoch is refused."""
    from pgenv import PgEnv
    pg = PgEnv(harness)
    with open(pg.conf) as f:
        text = f.read()
    with open(pg.conf, "w") as f:
        f.write(text.replace("name = itest\n", f"name = itest\netcd = {etcd.url}\n", 1))
    pg.sql_a("CREATE TABLE t (id int)")
    d = StandinDaemon(FAILOVERD, pg.conf, "a", os.path.join(pg.base, "a", "run"),
                      os.path.join(pg.base, "fo-a.log"))
    harness.add_cleanup(d.stop)
    sh.wait_until(lambda: d.status()["rounds"] >= 1, 10, "a first round")
    # A client in the middle of a transaction.
    busy = subprocess.Popen([pg.a.bin("psql"), "-X", "-h", pg.a.socket_dir, "-p", str(pg.a.port),
                             "-U", "postgres", "-d", "groupware", "-v", "ON_ERROR_STOP=1", "-c",
                             "BEGIN; INSERT INTO t VALUES (1); SELECT pg_sleep(60); COMMIT"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sh.wait_until(lambda: pg.sql_a("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                                   "'BEGIN; INSERT%'") == "1", 20, "the busy client")
    assert "usage: fence EPOCH" in query(d.sock, "fence x")
    r = json.loads(query(d.sock, "fence 0", timeout=30))
    assert r["ok"] is False and "the order is for epoch 0, this node is at 1" in r["error"], r
    r = json.loads(query(d.sock, "fence 1", timeout=30))
    assert r["ok"] is True and r["fenced"] is True and r["sessions_ended"] >= 1, r
    _, err = busy.communicate(timeout=30)
    assert busy.returncode != 0 and "terminating connection" in err, err
    assert pg.sql_a("SELECT count(*) FROM t") == "0"          # its insert never committed
    with pytest.raises(sh.CommandError) as e:
        pg.sql_a("INSERT INTO t VALUES (2)")
    assert "read-only transaction" in str(e.value), e.value
    assert d.status()["pg_fence"] == "fenced" and d.status()["pg_fence_epoch"] == 1
    # Making a node writable needs its epoch: not with its state unreadable.
    state = os.path.join(pg.base, "a", "state", "cluster.state")
    os.rename(state, state + ".away")
    r = json.loads(query(d.sock, "unfence 1", timeout=30))
    assert r["ok"] is False and "cluster state cannot be read (there is none)" in r["error"], r
    os.rename(state + ".away", state)
    r = json.loads(query(d.sock, "unfence 1", timeout=30))
    assert r["ok"] is True and r["unfenced"] is True, r
    pg.sql_a("INSERT INTO t VALUES (3)")
    assert pg.sql_a("SELECT count(*) FROM t") == "1"
    assert "fenced at epoch 1: PostgreSQL read-only" in d.output()


def test_status_sees_the_other_nodes_through_etcd(etcd, tmp_path):
    """With [cluster] etcd, standinctl status shows the other nodes from their
    member records, never their sockets or files: a frozen agent's record
    still speaks for its node until its lease runs out, then the node shows
    as having no record."""
    conf = conf_with(tmp_path, etcd.url)
    assert ctl(conf, "a", "state", "init", "--master", "a").returncode == 0
    assert ctl(conf, "b", "state", "pull").returncode == 0
    d = {}
    for n in ("a", "b"):
        run_dir = os.path.join(str(tmp_path), n, "run")
        os.makedirs(run_dir, exist_ok=True)
        d[n] = StandinDaemon(FAILOVERD, conf, n, run_dir, os.path.join(str(tmp_path), f"fo-{n}.log"))
    run_b = os.path.join(str(tmp_path), "b", "run")
    t = StandinDaemon(TESTD, conf, "b", run_b, os.path.join(str(tmp_path), "testd.log"),
                      env={"STANDIN_TESTD_PROGRAM": "standin-pgrepl"})
    try:
        sh.wait_until(lambda: (member(etcd, "b") or {}).get("daemons", {})
                      .get("standin-pgrepl", {}).get("lag_seconds"), 10, "b's record")
        row_b = re.compile(r"^b +standby +1 +pg +standin-pgrepl +idle +0\.2s/42B ", re.M)
        r = ctl(conf, "a", "status")
        assert row_b.search(r.stdout), r.stdout
        # Node b's agent hangs and its replicator goes: b's own view says so at
        # once; from node a, b's record speaks for it until its lease ends.
        os.kill(d["b"].proc.pid, signal.SIGSTOP)
        t.stop()
        r = ctl(conf, "b", "status")
        assert re.search(r"^b +standby +1 +pg +standin-pgrepl +not running ", r.stdout, re.M), \
            r.stdout
        r = ctl(conf, "a", "status", "--json")
        nodes = {n["node"]: n for n in json.loads(r.stdout)["nodes"]}
        assert nodes["b"]["seen_from"] == "etcd" and nodes["a"]["seen_from"] == "local", nodes
        sh.wait_until(lambda: member(etcd, "b") is None, 15, "b's record to expire")
        r = ctl(conf, "a", "status")
        assert re.search(r"^b +unknown +- +pg +standin-pgrepl +no member record ", r.stdout,
                         re.M), r.stdout
        assert "warning: node b: no member record in etcd" in r.stdout, r.stdout
    finally:
        if d["b"].running():
            os.kill(d["b"].proc.pid, signal.SIGCONT)
        for x in list(d.values()) + [t]:
            x.stop()
