"""Nodes on a network of their own, for the standin test harness: NetLab.

A NetLab gives each node of one test its own Linux network namespace and,
for every command run in it, a private mount namespace that hides the other
nodes' directories, so that two nodes on one machine can talk only over the
network, as two machines would: not through a shared file nor through a
shared loopback.

The network: a bridge in the root namespace (this process's), with address
10.177.X.1/24, and per node a named network namespace with `lo` up and a
veth whose node end ("eth0") is 10.177.X.(2+i)/24 and whose other end is a
port of the bridge.  One L2 segment: the nodes reach each other and the root
namespace (etcd listens there on 10.177.X.1), and the test process reaches
every node address, with no routing and no IP forwarding.  X is free at the
time (no address of the root namespace in 10.177.X.0/24, and the bridge name
stnbrX, created atomically, is ours), so parallel labs do not collide; the
bridge's alias names the owning process, and a lab whose owner is gone (a
test run that was killed) is removed by the next NetLab.

The files: each node's directories are HARNESS_BASE/NODE/... (the harness
puts every server of node N under base/N).  prefix(node) is an argv prefix
that runs a command in the node's network namespace (`ip netns exec`) and in
a new private mount namespace (`unshare --mount --propagation private`) in
which an empty, read-only tmpfs is mounted over every other node's
directory and over each path given to hide() (e.g. etcd's): whatever the
command and its children do, they see only their own node's directories.
The mounts go with the last process of that mount namespace; nothing is
mounted in the root namespace.

    lab = NetLab(harness, ("a", "b"))      # registers its cleanup
    lab.addr("a")                          # '10.177.X.2'
    lab.gateway                            # '10.177.X.1' (the bridge, root ns)
    subprocess.run(lab.prefix("b") + ["ls", harness.path("a")])   # empty

close() (a cleanup of the harness, so it runs after the servers created
later have been stopped, even after a failure) kills what still runs in the
lab's namespaces, then removes the veths, the namespaces and the bridge.

NetLab raises NetLabUnavailable (a HarnessError) when namespaces cannot be
created at all (not root, no ip or unshare, a kernel or container that
refuses): tests skip with its message.
"""

import json
import os
import signal
import sys

from harness_core import (NODES, RUNUSER, HarnessError, _proc_stat, _signal_pids, _wait_pids_gone,
                          free_port, run, wait_until)

IP = "/sbin/ip" if os.access("/sbin/ip", os.X_OK) else "/usr/sbin/ip"
UNSHARE = "/usr/bin/unshare"
MOUNT = "/bin/mount"
SUBNET_PREFIX = "10.177"
OWNER_TAG = "standin-netlab"

# Run in the node's namespaces: mount an empty read-only tmpfs over each path
# up to "--", then exec the command after it.  The paths and the command are
# positional parameters, never part of the script: no quoting to get wrong.
_ENTER = ('while [ "$1" != -- ]; do '
          f'{MOUNT} -t tmpfs -o ro,mode=0755,size=4k standin-hidden "$1"; shift; '
          'done; shift; exec "$@"')


class NetLabUnavailable(HarnessError):
    """Network or mount namespaces cannot be made here (the reason says why)."""


def _ip(*args, check=True, timeout=30):
    return run([IP, *args], check=check, timeout=timeout)


def _start_time(pid):
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _links():
    """{name: link} of the root namespace's links (ip -j link)."""
    return {link["ifname"]: link for link in json.loads(_ip("-j", "link", "show").stdout or "[]")}


def _subnets_in_use():
    """The third octets X of every 10.177.X.0/24 address of the root namespace."""
    used = set()
    for link in json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]"):
        for a in link.get("addr_info", []):
            parts = a.get("local", "").split(".")
            if len(parts) == 4 and ".".join(parts[:2]) == SUBNET_PREFIX:
                used.add(int(parts[2]))
    return used


def _netns_names():
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _netns_pids(name):
    r = _ip("netns", "pids", name, check=False)
    return [int(p) for p in r.stdout.split() if p.isdigit()] if r.returncode == 0 else []


def _remove_lab(x):
    """Remove lab X's veths, namespaces and bridge (what exists of them), and
    kill what still runs in its namespaces.  Returns (errors, the pids
    killed)."""
    errors = []
    names = [n for n in _netns_names() if n.startswith(f"stn{x}-")]
    pids = sorted({p for n in names for p in _netns_pids(n)})
    if pids:
        _signal_pids(pids, signal.SIGKILL)
        try:
            _wait_pids_gone(pids, 20, f"the processes left in lab {x}'s namespaces to die")
        except HarnessError as e:
            errors.append(str(e))
    links = _links()
    for name in sorted(links):
        if name.startswith(f"stv{x}-"):
            r = _ip("link", "del", name, check=False)
            if r.returncode != 0 and name in _links():
                errors.append(f"ip link del {name}: {r.stderr.strip()}")
    for n in names:
        r = _ip("netns", "del", n, check=False)
        if r.returncode != 0 and n in _netns_names():
            errors.append(f"ip netns del {n}: {r.stderr.strip()}")
    if f"stnbr{x}" in links:
        r = _ip("link", "del", f"stnbr{x}", check=False)
        if r.returncode != 0 and f"stnbr{x}" in _links():
            errors.append(f"ip link del stnbr{x}: {r.stderr.strip()}")
    try:
        wait_until(lambda: not [n for n in _links()
                                if n == f"stnbr{x}" or n.startswith(f"stv{x}-")],
                   10, f"lab {x}'s links to go")
    except HarnessError as e:
        errors.append(str(e))
    return errors, pids


def sweep_stale_labs():
    """Remove the labs whose owning process is gone (a run that was killed
    before its cleanups).  A bridge without our alias is left alone: it is
    being created, or not ours."""
    for name, link in _links().items():
        if not name.startswith("stnbr") or not name[5:].isdigit():
            continue
        alias = link.get("ifalias") or ""
        fields = dict(f.split("=", 1) for f in alias.split()[1:] if "=" in f)
        if not alias.startswith(OWNER_TAG + " ") or "pid" not in fields:
            continue
        try:
            pid, start = int(fields["pid"]), int(fields.get("start", "-1"))
        except ValueError:
            continue
        stat = _proc_stat(pid)
        if stat is not None and stat[0] not in ("Z", "X") and _start_time(pid) == start:
            continue                       # its owner runs: not stale
        errors, _ = _remove_lab(int(name[5:]))
        if errors:
            print("standin_harness: could not remove stale lab " + name + ": " +
                  "; ".join(errors), file=sys.stderr)


class NetLab:
    """One network namespace per node, on one bridge; see the module's text.

    Attributes: harness, nodes, x (the third octet), subnet ('10.177.X.0/24'),
    gateway ('10.177.X.1', the bridge's address in the root namespace),
    bridge, hidden (paths hidden from every node, see hide()).
    """

    def __init__(self, harness, nodes=NODES):
        if os.geteuid() != 0:
            raise NetLabUnavailable("network namespaces need root")
        for prog in (IP, UNSHARE, MOUNT, "/bin/sh"):
            if not os.access(prog, os.X_OK):
                raise NetLabUnavailable(f"{prog} is missing (apt-get install iproute2 util-linux "
                                        "mount)")
        if harness.closed:
            raise HarnessError("harness already closed")
        if len(nodes) > 200:
            raise HarnessError("a NetLab has at most 200 nodes")
        self.harness = harness
        self.nodes = tuple(nodes)
        self.hidden = []
        self.closed = False
        sweep_stale_labs()
        self.x = self._reserve()
        self.bridge = f"stnbr{self.x}"
        harness.add_cleanup(self.close)
        self.subnet = f"{SUBNET_PREFIX}.{self.x}.0/24"
        self.gateway = f"{SUBNET_PREFIX}.{self.x}.1"
        try:
            _ip("link", "set", "dev", self.bridge, "alias",
                f"{OWNER_TAG} pid={os.getpid()} start={_start_time(os.getpid())} "
                f"dir={harness.base_dir}")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, node in enumerate(self.nodes):
                self._add_node(i, node)
        except HarnessError as e:
            raise NetLabUnavailable(f"cannot set up the lab's network: {e}") from None
        # The mount namespace too, once: a kernel or container that refuses
        # it is a reason to skip, not a failure of the test.
        probe = run(self.prefix(self.nodes[0]) + ["/bin/true"], check=False)
        if probe.returncode != 0:
            raise NetLabUnavailable("cannot make a private mount namespace in a network "
                                    f"namespace: {probe.stderr.strip()}")

    # -- set-up ---------------------------------------------------------------

    def _reserve(self):
        """A free X, its bridge created (the name is the reservation)."""
        used = _subnets_in_use()
        start = os.getpid() % 250
        for k in range(250):
            x = (start + k) % 250 + 2                # 2..251
            if x in used:
                continue
            r = _ip("link", "add", "name", f"stnbr{x}", "type", "bridge", check=False)
            if r.returncode == 0:
                return x
            if "File exists" not in r.stderr:
                # Not a name clash: this machine will not make bridges.
                raise NetLabUnavailable(f"cannot create a bridge: {r.stderr.strip()}")
        raise NetLabUnavailable("no free 10.177.X.0/24 subnet for a test network")

    def _add_node(self, i, node):
        ns, veth = self.netns(node), f"stv{self.x}-{i}"
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{self.addr(node)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.harness.mkdir(node)

    # -- use -------------------------------------------------------------------

    def cut(self, node, off=True):
        """Cut NODE off the network (its veth's bridge end down: a partition,
        a dead switch port), or, with off=False, plug it back."""
        veth = f"stv{self.x}-{self.nodes.index(node)}"
        _ip("link", "set", veth, "down" if off else "up")

    def addr(self, node):
        """The node's address (on its veth): 10.177.X.(2+i)."""
        return f"{SUBNET_PREFIX}.{self.x}.{2 + self.nodes.index(node)}"

    def netns(self, node):
        """The name of the node's network namespace (ip netns)."""
        return f"stn{self.x}-{node}"

    def node_dir(self, node):
        """The node's directory, base/NODE: hidden from every other node."""
        return self.harness.path(node)

    def hide(self, path):
        """Hide PATH (an existing directory, not under a node's directory)
        from every node's commands started from now on.  Returns path."""
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise HarnessError(f"{path} is not a directory")
        self.hidden.append(path)
        return path

    def hidden_from(self, node):
        """What node NODE's commands do not see: the other nodes' directories
        and the hide()s."""
        return [self.node_dir(n) for n in self.nodes if n != node] + list(self.hidden)

    def prefix(self, node):
        """argv prefix: run the command in NODE's network namespace, in a
        private mount namespace of its own where hidden_from(NODE) are empty.
        The command keeps its pid (ip netns exec, unshare and sh exec), so a
        Popen of prefix + argv is the command's own process."""
        if node not in self.nodes:
            raise HarnessError(f"{node} is not a node of this lab ({', '.join(self.nodes)})")
        return [IP, "netns", "exec", self.netns(node), UNSHARE, "--mount", "--propagation",
                "private", "--", "/bin/sh", "-ec", _ENTER, "standin-netns",
                *self.hidden_from(node), "--"]

    def command(self, node, argv, user=None):
        """prefix(node) + argv, through runuser -u USER when USER is given
        (runuser goes inside: entering namespaces needs root)."""
        argv = [str(a) for a in argv]
        if user:
            argv = [RUNUSER, "-u", user, "--"] + argv
        return self.prefix(node) + argv

    def run(self, node, argv, *, user=None, **kwargs):
        """harness_core.run() of argv in NODE (see command())."""
        return run(self.command(node, argv, user), **kwargs)

    @staticmethod
    def free_port():
        """A port for a server of a node.  Nothing else listens in a node's
        namespace, so a port this process has not given out before is free
        there (harness_core.free_port never gives one twice)."""
        return free_port()

    def pids(self, node):
        """The pids of the processes in NODE's network namespace now."""
        return _netns_pids(self.netns(node))

    # -- tear-down -------------------------------------------------------------

    def close(self):
        """Kill what still runs in the namespaces, remove the veths, the
        namespaces and the bridge.  Idempotent; raises HarnessError (after
        doing all it can) if something could not be removed."""
        if self.closed:
            return
        self.closed = True
        errors, pids = _remove_lab(self.x)
        if pids:
            print(f"standin_harness: killed processes left in {self}'s namespaces: {pids}",
                  file=sys.stderr)
        if errors:
            raise HarnessError("NetLab cleanup: " + "; ".join(errors))

    def __repr__(self):
        return f"<NetLab {self.subnet} {', '.join(self.nodes)}>"
