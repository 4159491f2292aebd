"""The two-node cluster of test_switchover with each node on its own network:
node N's servers (PostgreSQL, slapd, Dovecot) and standin daemons, and every
standinctl run for N, are in N's network namespace (a veth on a bridge, its
own address; etcd listens on the bridge in the root namespace, so the nodes
reach it over their veth) and in private mount namespaces where the other
node's directories are an empty read-only tmpfs (harness_netns.NetLab).
Each node has its own copy of standin.conf and of the files it names.  So
nothing can work through a shared file or a shared loopback: whatever
standin does between the nodes goes over the network or through etcd.

The test process stays in the root namespace and reaches every node's
services at the node's address, through the bridge."""
import json
import os
import shutil
import subprocess

import pytest

import standin_harness as sh
from harness_netns import NetLab, NetLabUnavailable
from standin_bin import PGREPL, STANDINCTL, StandinDaemon, program
import test_switchover
from test_switchover import (FAILOVERD, IMAPREPL, LDAPREPL, NODES, PROXY, Cluster, Writers,
                             check_every_ack_on, steps_of)

pytestmark = pytest.mark.servers

DAEMONS = ("standin-pgrepl", "standin-ldaprepl", "standin-imaprepl", "standin-proxy",
           "standin-failoverd")


class NetCluster(Cluster):
    """test_switchover.Cluster with each node in its own namespaces: the same
    servers and daemons, node addresses instead of 127.0.0.1, each node's
    standin files (state_dir, run_dir, its standin.conf and the secrets it
    names, the daemons' logs) under base/NODE/standin, which the other node
    does not see.  ctl(node) runs standinctl in that node."""

    def __init__(self, harness, etcd, lab, nodes=NODES):
        self.h = harness
        self.etcd = etcd
        self.lab = lab
        self.nodes = nodes
        # Every server speaks TLS with a certificate of a test CA for the
        # node addresses, and standin.conf leaves sslmode and starttls to
        # their defaults: between hosts that is verify-full and StartTLS
        # demanded, so the default path is the one tested here.
        ca, cert, key = sh.make_test_ca(harness.path("tls"), "standin netns",
                                        [lab.addr(n) for n in nodes])
        self.tls = {n: self._node_tls(harness, n, ca, cert, key) for n in nodes}
        pw = "pw-" + os.urandom(6).hex()
        self.pg = {n: harness.start_pg(n, fsync=False, password=pw, preload_ddl=True, netlab=lab,
                                       extra_conf=(f"ssl = on\nssl_cert_file = '{self.tls[n]['pg_cert']}'\n"
                                                   f"ssl_key_file = '{self.tls[n]['pg_key']}'\n"))
                   for n in nodes}
        for s in self.pg.values():
            s.create_database("groupware")
        ldap_pw = "pw-" + os.urandom(6).hex()
        self.ldap = {n: harness.start_slapd(n, "master" if n == nodes[0] else "standby",
                                            password=ldap_pw, server_id=i + 1, netlab=lab,
                                            tls_cert=self.tls[n]["cert"], tls_key=self.tls[n]["key"],
                                            tls_ca=self.tls[n]["ca"])
                     for i, n in enumerate(nodes)}
        imap_pw = "pw-" + os.urandom(6).hex()
        self.imap = {n: harness.start_dovecot(n, master_password=imap_pw, netlab=lab, extra_conf=(
                         f"ssl = yes\nssl_cert = <{self.tls[n]['cert']}\nssl_key = <{self.tls[n]['key']}\n"))
                     for n in nodes}
        self.base = harness.base_dir
        self.dirs = {n: harness.mkdir(n, "standin") for n in nodes}
        for n in nodes:
            for d in ("state", "run", "etc"):
                os.makedirs(os.path.join(self.dirs[n], d), exist_ok=True)
        self.ports = {n: {s: lab.free_port() for s in ("pg", "ldap", "imap")} for n in nodes}
        self.confs = {n: self.write_node_conf(n) for n in nodes}
        self.conf = self.confs[nodes[0]]
        self.pg[nodes[0]].psql("CREATE TABLE w (id int PRIMARY KEY, at timestamptz DEFAULT now())",
                               db="groupware")
        r = self.ctl(nodes[0], "state", "init", "--master", nodes[0])
        assert r.returncode == 0, r.stdout + r.stderr
        for n in nodes[1:]:
            r = self.ctl(n, "state", "pull")
            assert r.returncode == 0, r.stdout + r.stderr
        self.daemons = {}
        for n in nodes:
            for prog in (PGREPL, LDAPREPL, IMAPREPL, PROXY, FAILOVERD):
                self.start(n, prog)

    @staticmethod
    def _node_tls(harness, node, ca, cert, key):
        """Copies of the CA, certificate and key in NODE's own directory (the
        other nodes' are hidden from it); PostgreSQL's key owned by postgres."""
        d = harness.mkdir(node, "tls", mode=0o755)
        pgd = harness.mkdir(node, "tls", "pg", owner="postgres", group="postgres", mode=0o700)
        out = {}
        for name, src, dst, owner in (("ca", ca, d, None), ("cert", cert, d, None), ("key", key, d, None),
                                      ("pg_cert", cert, pgd, "postgres"), ("pg_key", key, pgd, "postgres")):
            path = os.path.join(dst, os.path.basename(src))
            with open(src, "rb") as f:
                data = f.read()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if "key" in name else 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if owner:
                shutil.chown(path, owner, owner)
            out[name] = path
        return out

    def write_conf(self):
        raise NotImplementedError("each node has its own standin.conf: write_node_conf()")

    def write_node_conf(self, node, etcd=True):
        """Node NODE's standin.conf, and the files it names, in base/NODE/standin/etc:
        every path in it is one of NODE's.  etcd=False: without [cluster] etcd
        (then standinctl status can only look at files and sockets)."""
        etc = os.path.join(self.dirs[node], "etc")

        def secret(name, text):
            path = os.path.join(etc, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return path
        pgpass = secret("pgpass", "".join(f"{s.host}:{s.port}:*:{s.user}:{s.password}\n"
                                          for s in self.pg.values()))
        ldap_pw = secret("ldap-password", self.ldap[node].password)
        imap_pw = secret("imap-password", self.imap[node].master_password)
        users = os.path.join(etc, "users")
        with open(users, "w") as f:
            f.write("alice\nbob\n")
        kick = os.path.join(etc, "kick")
        with open(kick, "w") as f:       # this node's Dovecot only: the other's is not here
            f.write(f"#!/bin/sh\n[ \"$1\" = {node} ] || exit 1\n"
                    f"exec /usr/bin/doveadm -c {self.imap[node].conf} kick '*'\n")
        os.chmod(kick, 0o755)
        text = "[cluster]\nname = itest\n" + (f"etcd = {self.etcd.url}\n" if etcd else "")
        for n in self.nodes:
            text += (f"[node {n}]\naddress = {self.lab.addr(n)}\n"
                     f"state_dir = {self.dirs[n]}/state\nrun_dir = {self.dirs[n]}/run\n")
        text += "[pg]\n" + "".join(f"endpoint.{n} = {s.host}:{s.port}\n"
                                   for n, s in self.pg.items())
        text += (f"dbname = groupware\nuser = {self.pg[node].user}\npassfile = {pgpass}\n"
                 f"sslrootcert = {self.tls[node]['ca']}\n")
        la = self.ldap[node]
        text += "[ldap]\n" + "".join(f"endpoint.{n} = {s.uri}\n" for n, s in self.ldap.items())
        text += (f"suffix = {la.suffix}\nbind_dn = {la.rootdn}\npassword_file = {ldap_pw}\n"
                 f"config_bind_dn = cn=config\nconfig_password_file = {ldap_pw}\n"
                 f"ca_file = {self.tls[node]['ca']}\n")
        ia = self.imap[node]
        text += "[imap]\n" + "".join(f"endpoint.{n} = imap://{s.host}:{s.port}\n"
                                     for n, s in self.imap.items())
        text += (f"admin_user = {ia.master_user}\npassword_file = {imap_pw}\n"
                 f"users_file = {users}\nworkers = 2\nfull_pass_interval = 30s\n"
                 f"ca_file = {self.tls[node]['ca']}\n"
                 f"kick_command = {kick} %n\n")
        text += "[proxy]\n"
        for n in self.nodes:
            for s in ("pg", "ldap", "imap"):
                text += f"{s}_listen.{n} = {self.lab.addr(n)}:{self.ports[n][s]}\n"
        path = os.path.join(etc, "standin.conf" if etcd else "standin-noetcd.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, node, prog):
        name = os.path.basename(prog)
        d = StandinDaemon(prog, self.confs[node], node, os.path.join(self.dirs[node], "run"),
                          os.path.join(self.dirs[node], f"{name}.log"),
                          prefix=self.lab.prefix(node))
        self.h.add_cleanup(d.stop)
        self.daemons[(node, name)] = d
        return d

    def ctl(self, node, *args, timeout=120, conf=None):
        """standinctl -c NODE's conf -n NODE ARGS, run in node NODE."""
        return subprocess.run(self.lab.prefix(node) + [program(STANDINCTL), "-c",
                                                       conf or self.confs[node], "-n", node, *args],
                              capture_output=True, text=True, timeout=timeout)

    def host(self, node):
        return self.lab.addr(node)

    def server_pids(self, node):
        """The main pids of NODE's servers and standin daemons."""
        return ([s.pid for s in (self.pg[node], self.ldap[node], self.imap[node])] +
                [d.proc.pid for (n, _), d in self.daemons.items() if n == node and d.running()])


@pytest.fixture
def lab(harness):
    try:
        return NetLab(harness, NODES)
    except NetLabUnavailable as e:
        pytest.skip(f"no network namespaces here: {e}")


@pytest.fixture
def etcd(harness, lab):
    """etcd in the root namespace, on the bridge: the nodes reach it over their
    veth.  Its directory is hidden from the nodes."""
    if not os.path.exists(sh.ETCD):
        pytest.skip("etcd-server is not installed")
    e = sh.EtcdServer(harness, host=lab.gateway)
    lab.hide(harness.path(e.node))
    return e.start()


@pytest.fixture
def cluster(harness, etcd, lab):
    return NetCluster(harness, etcd, lab)


# What a connect() in a node does, printed by a python3 run there: "ok" or the error.
CONNECT = ("import socket, sys\n"
           "for hp in sys.argv[1:]:\n"
           "    h, p = hp.rsplit(':', 1)\n"
           "    try:\n"
           "        socket.create_connection((h, int(p)), timeout=3).close(); print(hp, 'ok')\n"
           "    except OSError as e:\n"
           "        print(hp, type(e).__name__)\n")


def connect_from(c, node, *targets):
    r = c.lab.run(node, ["/usr/bin/python3", "-c", CONNECT, *targets], timeout=30)
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


def describe(pid):
    with open(f"/proc/{pid}/cmdline") as f:
        cmd = f.read().replace("\0", " ")
    with open(f"/proc/{pid}/mounts") as f:
        return cmd, [m for m in f.read().splitlines() if "standin-hidden" in m]


def ns_inode(pid, kind):
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def test_each_node_sees_only_its_own_files_and_network(cluster):
    """Every server and daemon of node N is in N's network namespace and in a
    mount namespace of its own; what node b's processes see of node a's
    directories is empty; node a's services cannot be reached on b's
    loopback, only at a's address; etcd at the bridge's."""
    c, lab = cluster, cluster.lab
    a_dir, a_state = lab.node_dir("a"), os.path.join(c.dirs["a"], "state")
    assert os.path.exists(os.path.join(a_state, "cluster.state"))     # as root sees it
    our_mnt = ns_inode(os.getpid(), "mnt")
    # Each daemon is past its prefix (it answers on its socket).
    sh.wait_until(lambda: all(d.status() for d in c.daemons.values()), 30, "every daemon up")
    for n in c.nodes:
        netns = os.stat(f"/run/netns/{lab.netns(n)}").st_ino
        other = lab.node_dir("b" if n == "a" else "a")
        for pid in c.server_pids(n):
            assert ns_inode(pid, "net") == netns, (n, pid)
            assert ns_inode(pid, "mnt") != our_mnt, (n, pid)
            # The directory as this process itself sees it: empty.
            assert os.listdir(f"/proc/{pid}/root{other}") == [], (n, pid, describe(pid))
            assert os.listdir(f"/proc/{pid}/root{lab.node_dir(n)}"), (n, pid)
        assert set(lab.pids(n)) >= set(c.server_pids(n))
    # A command run in node b: a's directory is empty, a's state file is not there.
    r = lab.run("b", ["ls", "-A", a_dir])
    assert r.stdout == "", r.stdout
    r = lab.run("b", ["ls", a_state], check=False)
    assert r.returncode != 0 and "No such file" in r.stderr, (r.stdout, r.stderr)
    r = lab.run("b", ["ls", os.path.join(c.dirs["b"], "state")])
    assert "cluster.state" in r.stdout.split()
    # etcd's directory is hidden from both; the tmpfs is read-only.
    assert lab.run("a", ["ls", "-A", c.etcd.dir], check=False).returncode != 0
    r = lab.run("b", ["touch", os.path.join(a_dir, "x")], check=False)
    assert r.returncode != 0 and not os.path.exists(os.path.join(a_dir, "x"))
    # The network: node a's services are not on b's loopback (nor on ours),
    # but at a's address, over the veths; etcd at the bridge's address.
    ports_a = [c.pg["a"].port, c.ldap["a"].port, c.imap["a"].port] + list(c.ports["a"].values())
    seen = connect_from(c, "b", *[f"127.0.0.1:{p}" for p in ports_a],
                        *[f"{lab.addr('a')}:{p}" for p in ports_a],
                        f"{lab.gateway}:{c.etcd.port}")
    for p in ports_a:
        assert seen[f"127.0.0.1:{p}"] == "ConnectionRefusedError", seen
        assert seen[f"{lab.addr('a')}:{p}"] == "ok", seen
        assert not sh.port_open(p, "127.0.0.1")
        assert sh.port_open(p, lab.addr("a"))
    assert seen[f"{lab.gateway}:{c.etcd.port}"] == "ok", seen
    # And standin works across: b copies a's data (over the network, through etcd).
    c.pg["a"].psql("INSERT INTO w (id) VALUES (-7)", db="groupware")
    sh.wait_until(lambda: c.pg["b"].psql("SELECT count(*) FROM w WHERE id = -7",
                                          db="groupware") == "1", 60, "a's row on b")


def test_between_nodes_every_connection_is_verified_tls(cluster):
    """Issue 30: standin.conf sets no sslmode and no starttls, only the test
    CA, and the node addresses are not loopback: so by default every
    connection standin makes to a server is TLS with the certificate checked
    (PostgreSQL sees SSL on each of standin's sessions, slapd a StartTLS,
    Dovecot a TLS login), and no daemon warns of a plaintext server."""
    c = cluster
    c.wait_streaming("b")

    def pg_sessions():
        rows = c.pg["a"].psql("SELECT a.application_name || '|' || s.ssl FROM pg_stat_ssl s "
                              "JOIN pg_stat_activity a USING (pid) "
                              "WHERE a.application_name LIKE 'standin%'").splitlines()
        return rows if rows else None
    rows = sh.wait_until(pg_sessions, 30, "standin's sessions on a's PostgreSQL")
    assert rows and all(r.endswith("|true") for r in rows), rows
    ldap_log = c.ldap["a"].log()
    assert "STARTTLS" in ldap_log and "TLS established" in ldap_log, ldap_log[-2000:]
    def imap_logins():
        return [line for line in c.imap["a"].log().splitlines() if "imap-login: Info: Login:" in line]
    logins = sh.wait_until(imap_logins, 60, "standin's IMAP logins on a")
    assert all(", TLS" in line for line in logins), logins[:5]
    for (node, prog), d in c.daemons.items():
        out = d.output()
        assert "reached in plaintext" not in out and "not checked" not in out, (node, prog, out[-2000:])


def test_a_certificate_of_another_ca_is_refused_on_every_connection(cluster, harness):
    """Issue 30: node b's replicators told to trust another CA (sslrootcert,
    both ca_file) do not talk to a's PostgreSQL, slapd or Dovecot: each stops
    at the certificate and says so in its status."""
    c = cluster
    other_ca, _, _ = sh.make_test_ca(harness.path("tls-other"), "other")
    mine = os.path.join(os.path.dirname(c.tls["b"]["ca"]), "other-ca.pem")   # where b sees it
    shutil.copyfile(other_ca, mine)
    with open(c.confs["b"]) as f:
        text = f.read()
    assert text.count(c.tls["b"]["ca"]) == 3, text
    path = c.confs["b"] + ".other-ca"
    with open(path, "w") as f:
        f.write(text.replace(c.tls["b"]["ca"], mine))
    for prog in (PGREPL, LDAPREPL, IMAPREPL):
        d = c.daemons[("b", os.path.basename(prog))]
        d.stop()
        d.conf = path
        d.start()

    def refused(prog):
        def check():
            st = c.daemons[("b", os.path.basename(prog))].status()
            err = (st.get("last_error") or "").lower()
            return err if "certificate" in err or "verify" in err else None
        return sh.wait_until(check, 60, f"{os.path.basename(prog)} on b to refuse a's certificate")
    for prog in (PGREPL, LDAPREPL, IMAPREPL):
        refused(prog)


# An IMAP server in plaintext only: a greeting and capabilities without STARTTLS.
PLAIN_IMAP = ("import socket, sys, threading\n"
              "srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              "srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(16)\n"
              "def serve(c):\n"
              "    f = c.makefile('rwb')\n"
              "    f.write(b'* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] plaintext only\\r\\n'); f.flush()\n"
              "    for line in f:\n"
              "        tag = line.split(b' ', 1)[0]\n"
              "        if b'CAPABILITY' in line.upper():\n"
              "            f.write(b'* CAPABILITY IMAP4rev1 AUTH=PLAIN\\r\\n')\n"
              "        f.write(tag + b' OK done\\r\\n'); f.flush()\n"
              "while True:\n"
              "    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n")


def test_a_plaintext_server_of_another_host_is_refused_by_default(cluster, harness):
    """Issue 30: with [imap] starttls left to its default, b's standin-imaprepl
    does not log in to an IMAP server at a's address that offers no STARTTLS
    (a plaintext server, or a man in the middle that strips it): it says why,
    and sends no password."""
    c = cluster
    port = c.lab.free_port()
    fake = subprocess.Popen(c.lab.prefix("a") + ["/usr/bin/python3", "-c", PLAIN_IMAP, c.lab.addr("a"),
                                                 str(port)], stdout=subprocess.DEVNULL)
    harness.add_cleanup(lambda: (fake.kill(), fake.wait()))
    sh.wait_until(lambda: connect_from(c, "b", f"{c.lab.addr('a')}:{port}").get(
        f"{c.lab.addr('a')}:{port}") == "ok", 30, "the plaintext IMAP server on a")
    with open(c.confs["b"]) as f:
        text = f.read()
    a_imap = f"endpoint.a = imap://{c.imap['a'].host}:{c.imap['a'].port}\n"
    assert a_imap in text and "starttls" not in text, text
    path = c.confs["b"] + ".plain"
    with open(path, "w") as f:
        f.write(text.replace(a_imap, f"endpoint.a = imap://{c.lab.addr('a')}:{port}\n"))
    d = c.daemons[("b", "standin-imaprepl")]
    d.stop()
    d.conf = path
    d.start()

    def refused():
        err = d.status().get("last_error") or ""
        return err if "does not offer STARTTLS" in err else None
    err = sh.wait_until(refused, 60, "b's standin-imaprepl to refuse the plaintext server")
    assert "starttls" in err, err


def test_switchover_there_and_back_between_namespaces(cluster):
    """standinctl switchover a -> b and back, run in node a, while clients
    write through node a's proxy at a's address: every acknowledged write is
    on the new master."""
    c = cluster
    c.wait_streaming("b")
    with Writers(c) as w:
        w.wait_for(5)
        r = c.switchover("b")
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert [s for s, _, _ in steps_of(r.stdout)] == \
            ["pause", "fence", "drain", "sequences", "reverse", "epoch", "promote", "follow"]
        assert all(ok == "ok" for _, ok, _ in steps_of(r.stdout)), r.stdout
        assert "switchover done: b is the master at epoch 2" in r.stdout
        w.wait_for(5)
    check_every_ack_on(c, "b", w)
    print("there: max gap (s):", {k: w.max_gap(k) for k in w.acked}, "errors:", w.errors)
    for n in c.nodes:
        assert json.loads(c.ctl(n, "state", "show", "--json").stdout)["epoch"] == 2
    c.wait_streaming("a")
    with Writers(c, base=10_000_000) as w2:
        w2.wait_for(5)
        r = c.switchover("a")
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "switchover done: a is the master at epoch 3" in r.stdout
        w2.wait_for(5)
    check_every_ack_on(c, "a", w2)
    print("back: max gap (s):", {k: w2.max_gap(k) for k in w2.acked}, "errors:", w2.errors)
    c.pg["a"].psql("INSERT INTO w (id) VALUES (-3)", db="groupware")
    sh.wait_until(lambda: c.pg["b"].psql("SELECT count(*) FROM w WHERE id = -3",
                                          db="groupware") == "1", 60, "a's row on b")


def test_status_on_a_shows_b_from_etcd(cluster):
    """standinctl status in node a: node b (whose files and sockets a cannot
    see) from its member record in etcd, each of its daemons there; without
    etcd, a cannot tell anything of b."""
    c = cluster

    def status():
        r = c.ctl("a", "status", "--json")
        return json.loads(r.stdout)

    def b_ready():
        st = status()
        rows = {d["daemon"]: d["state"] for d in st["daemons"] if d["node"] == "b"}
        bad = [d for d in DAEMONS if d not in rows or rows[d] in
               ("not running", "no member record", "not in the member record")]
        return not bad and st
    st = sh.wait_until(b_ready, 60, "node b's daemons in node a's status")
    print(json.dumps(st, indent=1))
    nodes = {n["node"]: n for n in st["nodes"]}
    assert nodes["a"]["seen_from"] == "local" and nodes["b"]["seen_from"] == "etcd", nodes
    assert nodes["b"]["role"] == "standby" and nodes["b"]["epoch"] == 1, nodes
    assert nodes["a"]["role"] == "master", nodes
    rows_b = {d["daemon"]: d for d in st["daemons"] if d["node"] == "b"}
    assert set(DAEMONS) <= set(rows_b), rows_b
    assert rows_b["standin-failoverd"]["state"] == "running (member record)", rows_b
    # The other way round too.
    r = c.ctl("b", "status", "--json")
    nodes = {n["node"]: n for n in json.loads(r.stdout)["nodes"]}
    assert nodes["a"]["seen_from"] == "etcd" and nodes["a"]["role"] == "master", nodes
    # Without etcd, status reads b's state file and sockets at their paths:
    # from node a there is nothing there.
    conf = c.write_node_conf("a", etcd=False)
    r = c.ctl("a", "status", "--json", conf=conf)
    nodes = {n["node"]: n for n in json.loads(r.stdout)["nodes"]}
    assert nodes["a"]["role"] == "master" and nodes["b"]["role"] is None, nodes


def test_failover_when_node_a_is_cut_off_and_fenced(cluster, lab):
    """Node a is cut off the network with writes b never got; standinctl
    failover --to b, run in b, fences a with a command that kills every
    process in a's namespace (STONITH) and makes b the master.  When a comes
    back it takes epoch 2, stays read-only, follows b, and what only it had
    is in its divergence reports (PostgreSQL, LDAP) and its extra mail on b."""
    c = cluster
    c.wait_streaming("b")
    for name in ("pgrepl", "ldaprepl", "imaprepl"):
        c.d("b", name).kill9()
    c.pg["a"].psql("INSERT INTO w (id) SELECT g FROM generate_series(2001, 2005) g",
                   db="groupware")
    la = c.ldap["a"]
    la.ldapadd(f"dn: uid=only-a,ou=people,{la.suffix}\nobjectClass: inetOrgPerson\n"
               "uid: only-a\ncn: Only A\nsn: A\n")
    c.imap["a"].append("alice", "INBOX", b"From: x@example.com\r\nSubject: only on a\r\n"
                       b"Message-ID: <only-a@example.com>\r\n\r\nmail a alone got\r\n")
    lab.cut("a")
    sh.wait_until(lambda: c.etcd.get("/standin/itest/members/a") is None, 20,
                  "a's member record to go")
    fence = os.path.join(c.dirs["b"], "etc", "fence")
    with open(fence, "w") as f:
        f.write(f"#!/bin/sh\n[ \"$1\" = a ] || exit 3\n"
                f"for p in $(ip netns pids {lab.netns('a')}); do kill -9 $p; done\n"
                f"echo \"fenced $1\" >> {c.dirs['b']}/fenced\n")
    os.chmod(fence, 0o755)
    with open(c.confs["b"], "a") as f:
        f.write(f"[failover]\nfence_command = {fence} %n\n")
    r = c.ctl("b", "failover", "--to", "b")
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fence: a fenced" in r.stdout and "promote b ok" in r.stdout, r.stdout
    sh.wait_until(lambda: not lab.pids("a"), 20, "nothing left running in a")
    for name in ("pgrepl", "ldaprepl", "imaprepl"):
        c.d("b", name).start()
    # a comes back: its link, its servers, its daemons.
    lab.cut("a", off=False)
    test_switchover.restart_node(c, "a")
    sh.wait_until(lambda: json.loads(c.ctl("a", "state", "show", "--json").stdout)["epoch"] == 2,
                  30, "a to take epoch 2")
    sh.wait_until(lambda: c.pg["a"].psql("SHOW default_transaction_read_only") == "on", 30,
                  "a read-only")
    digest = "SELECT count(*), md5(string_agg(id::text, ',' ORDER BY id)) FROM w"
    sh.wait_until(lambda: c.pg["a"].psql(digest, db="groupware") ==
                  c.pg["b"].psql(digest, db="groupware"), 120, "a equal to b")
    state_a = os.path.join(c.dirs["a"], "state")
    sh.wait_until(lambda: [f for f in os.listdir(state_a) if f.startswith("divergence-ldap-b-")],
                  60, "a's LDAP divergence report")
    sql = [f for f in os.listdir(state_a) if f.startswith("divergence-b-")]
    assert sql and "2003" in open(os.path.join(state_a, sql[0])).read()

    def bodies(n):
        return sorted(m["body"] for m in c.imap[n].list_messages("alice", master=True))
    sh.wait_until(lambda: sum(b"mail a alone got" in x for x in bodies("b")) == 1, 90,
                  "a's extra mail on b")


# The switchover's failures and three nodes, as in test_switchover, each node
# in its own namespaces.

def test_rollback_when_the_standby_cannot_drain_between_namespaces(cluster):
    test_switchover.test_switchover_rolls_back_when_the_standby_cannot_drain(cluster)


def test_rollback_when_the_target_agent_hangs_between_namespaces(cluster):
    test_switchover.test_switchover_rolls_back_when_the_target_agent_hangs(cluster)


def test_etcd_lost_before_the_point_of_no_return_between_namespaces(cluster):
    test_switchover.test_etcd_lost_before_the_point_of_no_return(cluster)


def test_three_nodes_between_namespaces(harness):
    try:
        lab = NetLab(harness, ("a", "b", "c"))
    except NetLabUnavailable as e:
        pytest.skip(f"no network namespaces here: {e}")
    e = sh.EtcdServer(harness, host=lab.gateway)
    lab.hide(harness.path(e.node))
    e.start()
    c = NetCluster(harness, e, lab, nodes=("a", "b", "c"))
    test_switchover.three_nodes_switchover_to_c(c)
