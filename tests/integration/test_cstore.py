"""The cluster state in etcd (lib/etcd.c, lib/cstore.c) against a real
etcd 3.4 (Debian's etcd-server) on loopback: standinctl state init, set, show
--etcd and pull; of two writers exactly one wins and the epoch never repeats;
an unreachable or hung etcd is an error naming it, and nothing is written."""
import base64
import os
import re
import threading

import pytest

import standin_harness as sh
from standin_bin import STANDINCTL, run, write_cluster_conf

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
