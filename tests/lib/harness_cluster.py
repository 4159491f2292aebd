"""The two-node cluster of the standin test harness, and its command line.

start_pairs() starts PostgreSQL, slapd and Dovecot on nodes a (master) and
b (standby) and returns a Cluster of three Pairs.  missing_servers() tells
why the servers cannot run on this machine.  main() is the up/down/status
command line ./sandbox.sh runs as `python3 tests/lib/standin_harness.py`:
`up DIR` starts the six servers and leaves them running, described in
DIR/servers.json and DIR/servers.env; stop_described() stops one of them
from that description (`down`).
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import sys

from harness_core import (LOOPBACK, NODES, CommandError, Harness, HarnessError, WaitTimeout,
                          _check_traversable, _new_password, _read_pidfile, _signal_pids, _wait_pids_gone,
                          _write_file, make_test_ca, pid_alive, process_tree, run)
from harness_imap import DOVEADM, DOVECOT
from harness_ldap import LDAP_BINDIR, SLAPD
from harness_pg import PG_BINDIR, PG_OS_USER

# The facade, run as a script by ./sandbox.sh (and named in `up`'s output).
HARNESS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin_harness.py")


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

    def __init__(self, harness, pg, ldap, imap, etcd=None):
        self.harness, self.pg, self.ldap, self.imap = harness, pg, ldap, imap
        self.etcd = etcd

    nodes = NODES

    def node(self, name):
        """{'pg': ..., 'ldap': ..., 'imap': ...} of one node."""
        return {"pg": self.pg[name], "ldap": self.ldap[name], "imap": self.imap[name]}

    def servers(self):
        """All six (and etcd), in start order."""
        return ([self.etcd] if self.etcd else []) + \
            [s for pair in (self.pg, self.ldap, self.imap) for s in pair]

    def stop(self):
        """Stop all six (newest first)."""
        for s in reversed(self.servers()):
            s.stop()

    def describe(self):
        """What servers.json holds: {'base_dir', 'nodes': {node: {kind: describe()}}}."""
        d = {"version": 1, "base_dir": self.harness.base_dir,
             "nodes": {n: {k: s.describe() for k, s in self.node(n).items()} for n in self.nodes}}
        if self.etcd is not None:
            d["etcd"] = self.etcd.describe()
        return d


def start_pairs(harness, *, ldap_base="master", fsync=True, pg_options=None, ldap_options=None,
                imap_options=None, etcd=False):
    """Start PostgreSQL, slapd and Dovecot on nodes a and b; returns a Cluster.

    ldap_base: where the base LDAP entries are loaded: 'master' (node a),
    'both' or 'none'.  The two servers of a kind share their password (the
    pg role's, the LDAP rootdn's, the IMAP master user's) unless the options
    give one.  fsync=False makes PostgreSQL faster and unsafe.  The
    *_options dicts go to the server constructors.  etcd=True also starts a
    one-member etcd (the cluster store) first.
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
    store = None
    if etcd:
        from harness_etcd import EtcdServer
        store = EtcdServer(harness, node="etcd").start()
    pg = Pair(*(harness.start_pg(n, fsync=fsync, **pg_options) for n in NODES))
    ldap = Pair(*(harness.start_slapd(n, role, load_base=(ldap_base == "both" or
                                                          (ldap_base == "master" and role == "master")),
                                      **ldap_options)
                  for n, role in zip(NODES, ("master", "standby"))))
    imap = Pair(*(harness.start_dovecot(n, **imap_options) for n in NODES))
    return Cluster(harness, pg, ldap, imap, store)


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
    servers = [info for node in description["nodes"].values() for info in node.values()]
    return ([description["etcd"]] if "etcd" in description else []) + servers


def _tls_options(h):
    """`up --tls`: a test CA and a certificate for the loopback address, and
    the options that give it to every server (PostgreSQL ssl = on with its own
    copy of the key, slapd StartTLS, Dovecot ssl = yes).  Returns (ca.pem,
    pg_options, ldap_options, Dovecot extra_conf)."""
    ca, cert, key = make_test_ca(h.path("tls"), "standin sandbox", LOOPBACK)
    pgd = h.mkdir("tls", "pg", owner=PG_OS_USER, group=PG_OS_USER, mode=0o700)
    pg_files = []
    for src in (cert, key):
        dst = os.path.join(pgd, os.path.basename(src))
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o600)
        shutil.chown(dst, PG_OS_USER, PG_OS_USER)
        pg_files.append(dst)
    pg = {"extra_conf": f"ssl = on\nssl_cert_file = '{pg_files[0]}'\nssl_key_file = '{pg_files[1]}'\n"}
    ldap = {"tls_cert": cert, "tls_key": key, "tls_ca": ca}
    imap = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n"
    return ca, pg, ldap, imap


def _env_lines(description):
    """servers.env: shell assignments such as STANDIN_PG_A_PORT=5433."""
    lines = [f"STANDIN_SANDBOX={shlex.quote(description['base_dir'])}"]
    if "tls" in description:
        lines.append(f"STANDIN_TLS_CA={shlex.quote(description['tls']['ca'])}")
    if "etcd" in description:
        lines.append(f"STANDIN_ETCD_URL={shlex.quote(description['etcd']['url'])}")
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
    if "etcd" in description:
        out.append(f"etcd:  {description['etcd']['url']}  (one member, the cluster store)")
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
        for entry in list(old["nodes"]) + (["etcd"] if "etcd" in old else []) + \
                ["servers.json", "servers.env", "tls"]:   # an old sandbox
            p = os.path.join(base, entry)
            shutil.rmtree(p) if os.path.isdir(p) else os.path.exists(p) and os.unlink(p)
    os.makedirs(base, exist_ok=True)
    _check_traversable(base)
    h = Harness(base_dir=base)
    try:
        from harness_imap import DOVECOT_NOTICES_CONF
        imap_conf, pg_options, ldap_options, ca = "", {}, {}, None
        if args.dovecot_notices:
            imap_conf += DOVECOT_NOTICES_CONF
        if args.tls:
            ca, pg_options, ldap_options, tls_imap = _tls_options(h)
            imap_conf += tls_imap
        cluster = start_pairs(h, ldap_base=args.ldap_base, fsync=not args.no_fsync,
                              etcd=args.etcd, pg_options=pg_options, ldap_options=ldap_options,
                              imap_options={"extra_conf": imap_conf} if imap_conf else None)
        description = cluster.describe()
        if ca is not None:
            description["tls"] = {"ca": ca}
        _write_file(json_path + ".tmp", json.dumps(description, indent=2) + "\n", 0o600)
        os.replace(json_path + ".tmp", json_path)
        _write_file(os.path.join(base, "servers.env"), _env_lines(description), 0o600)
    except BaseException:
        h.close(failed=True)
        raise
    h.detach()
    print(_summary(description))
    print(f"described in {json_path} (shell variables: {os.path.join(base, 'servers.env')});\n"
          f"stop with: {sys.executable} {HARNESS_SCRIPT} down {base}")
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
    up.add_argument("--etcd", action="store_true", help="also a one-member etcd on loopback")
    up.add_argument("--tls", action="store_true",
                    help="every server speaks TLS with a certificate for 127.0.0.1 from a test CA "
                         "(DIR/tls/ca.pem, STANDIN_TLS_CA in servers.env)")
    up.add_argument("--dovecot-notices", action="store_true",
                    help="Dovecots with the replication plugin writing to the FIFO standin-imaprepl reads "
                         "([imap] changes = dovecot)")
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
