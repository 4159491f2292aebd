#!/usr/bin/python3
"""standin-proxy against a direct connection and HAProxy, side by side.

One PostgreSQL 15 (tests/lib/standin_harness.py), pgbench -i -s SCALE.  Three
ways to reach it, all on 127.0.0.1:

  direct    pgbench to the server's port
  standin   through standin-proxy (from --build, built without sanitizers)
  haproxy   through HAProxy (Debian package, mode tcp, its default threads)
  sockmap   with --sockmap, -S only: an experimental forwarder whose bytes
            never enter user space (sockmap/: a BPF stream verdict redirects
            each skb to the peer socket), to see how close any forwarder gets
            to a direct connection on this machine; needs clang and libbpf-dev

Each round runs, for every side in an order that rotates by round,
pgbench -n -S -c 16 -j 2 -T SECONDS and the same with -C (a new connection
per transaction).  Then the memory per idle connection: 10,000 clients
connected through the proxy to a backend that accepts and holds them
(a separate process: PostgreSQL cannot hold 10,000 sessions); the
growth of the proxy's resident memory divided by the number of clients,
for standin-proxy and for HAProxy.  The load average is printed with the
figures (the machine is shared).  See README.md.
"""
import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))

import standin_harness as sh  # noqa: E402

HAPROXY = "/usr/sbin/haproxy"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def write_conf(base, pg_port, listen_port, fake_port):
    os.makedirs(os.path.join(base, "a", "state"), exist_ok=True)
    os.makedirs(os.path.join(base, "a", "run"), exist_ok=True)
    path = os.path.join(base, "standin.conf")
    with open(path, "w") as f:
        f.write(f"""[cluster]
name = bench
log_level = notice
[node a]
address = 127.0.0.1
state_dir = {base}/a/state
run_dir = {base}/a/run
[node b]
address = 127.0.0.2
state_dir = {base}/b/state
run_dir = {base}/b/run
[pg]
endpoint.a = 127.0.0.1:{pg_port}
endpoint.b = 127.0.0.1:{fake_port}
dbname = postgres
user = standin
[proxy]
pg_listen.a = 127.0.0.1:{listen_port}
max_clients = 20000
first_byte_timeout = 0
""")
    return path


class StandinProxy:
    def __init__(self, build, base, conf):
        self.build, self.base, self.conf = build, base, conf
        r = subprocess.run([os.path.join(build, "tools/standinctl"), "-c", conf, "-n", "a",
                            "state", "init", "--master", "a", "--force"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        log = open(os.path.join(base, "proxy.log"), "ab")
        self.proc = subprocess.Popen([os.path.join(build, "proxy/standin-proxy"), "-c", conf,
                                      "-n", "a"], stdout=log, stderr=subprocess.STDOUT)
        self.sock = os.path.join(base, "a", "run", "standin-proxy.sock")
        sh.wait_until(lambda: self.status()["services"]["pg"]["backend"], 20, "standin-proxy")

    def status(self):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.sock)
            s.sendall(b"status\n")
            data = b""
            while True:
                c = s.recv(65536)
                if not c:
                    return json.loads(data)
                data += c

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class SockmapForwarder:
    """sockmap/fwd.c and fwd.bpf.c, built here with clang and gcc."""

    def __init__(self, base, backend_port, listen_port):
        obj = os.path.join(base, "fwd.bpf.o")
        exe = os.path.join(base, "sockmap-fwd")
        arch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True,
                              text=True).stdout.strip()
        sh.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}", "-c",
                os.path.join(HERE, "sockmap", "fwd.bpf.c"), "-o", obj])
        sh.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", exe,
                os.path.join(HERE, "sockmap", "fwd.c"), "-lbpf"])
        self.proc = subprocess.Popen([exe, obj, str(listen_port), str(backend_port)],
                                     stdout=subprocess.DEVNULL)
        sh.wait_until(lambda: sh.port_open(listen_port), 20, "sockmap-fwd to listen")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class HAProxy:
    def __init__(self, base, backend_port, listen_port, name="pg"):
        self.cfg = os.path.join(base, f"haproxy-{name}.cfg")
        with open(self.cfg, "w") as f:
            f.write(f"""global
    maxconn 9990
defaults
    maxconn 9990
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen {name}
    bind 127.0.0.1:{listen_port}
    option tcp-check
    server a 127.0.0.1:{backend_port} check inter 2s
""")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sh.wait_until(lambda: sh.port_open(listen_port), 20, "haproxy to listen")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def pgbench(pg, port, seconds, connect):
    argv = [pg.bin("pgbench"), "-n", "-S", "-c", "16", "-j", "2", "-T", str(seconds),
            "-h", "127.0.0.1", "-p", str(port), "-U", pg.user, "postgres"]
    if connect:
        argv.insert(2, "-C")
    r = subprocess.run(argv, capture_output=True, text=True,
                       env=dict(os.environ, PGPASSWORD=pg.password), timeout=seconds + 120)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench failed: {r.stdout}{r.stderr}")
    m = re.search(r"^tps = ([0-9.]+)", r.stdout, re.M)
    return float(m.group(1))


HOLDER = """
import socket, selectors, sys
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(4096)
print(ls.getsockname()[1], flush=True)
held = []
while True:
    c, _ = ls.accept()
    held.append(c)
"""


class HoldingBackend:
    """A process that accepts connections and holds them (never reads or
    writes): its own descriptor budget, not this script's."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE,
                                     text=True)
        self.port = int(self.proc.stdout.readline())

    def established(self):
        r = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{self.port} )"],
                           capture_output=True, text=True)
        return len(r.stdout.splitlines())

    def close(self):
        self.proc.kill()
        self.proc.wait()


def idle_memory(n, pid, port, backend):
    base_rss = rss_kb(pid)
    clients = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        clients.append(s)
    sh.wait_until(lambda: backend.established() >= n, 120, f"{n} connections at the backend")
    grown = rss_kb(pid) - base_rss
    for s in clients:
        s.close()
    return grown * 1024 / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="/tmp/bench-proxy-build",
                    help="build directory with proxy/standin-proxy (no sanitizers)")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--sockmap", action="store_true",
                    help="also the experimental in-kernel forwarder (sockmap/), -S only")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * args.idle + 100 > hard:
        # The proxy holds two descriptors per client (client and backend).
        args.idle = (hard - 100) // 2
        print(f"note: the descriptor limit is {hard} (not raisable here): "
              f"{args.idle} idle clients instead")

    with sh.Harness("bench-proxy") as h:
        pg = h.start_pg("a", fsync=False, extra_conf="max_connections = 100\n")
        sh.run([pg.bin("pgbench"), "-i", "-q", "-s", str(args.scale), "-h", pg.socket_dir,
                "-p", str(pg.port), "-U", "postgres", "postgres"])
        # Trust on 127.0.0.1, so -C measures connections, not SCRAM's 4096 rounds.
        hba = os.path.join(pg.datadir, "pg_hba.conf")
        with open(hba) as f:
            text = f.read()
        with open(hba, "w") as f:
            f.write("host all all 127.0.0.1/32 trust\n" + text)
        pg.reload()
        base = h.mkdir("proxy")
        sp_port, ha_port = sh.free_port(), sh.free_port()
        conf = write_conf(base, pg.port, sp_port, sh.free_port())
        sp = StandinProxy(args.build, base, conf)
        h.add_cleanup(sp.stop)
        ha = HAProxy(base, pg.port, ha_port)
        h.add_cleanup(ha.stop)
        sides = [("direct", pg.port), ("standin", sp_port), ("haproxy", ha_port)]
        if args.sockmap:
            sm_port = sh.free_port()
            sm = SockmapForwarder(base, pg.port, sm_port)
            h.add_cleanup(sm.stop)
            sides.append(("sockmap", sm_port))
        results = {(s, m): [] for s, _ in sides for m in ("S", "C")}
        print(f"pgbench -n -S [-C] -c 16 -j 2 -T {args.seconds}, scale {args.scale}, "
              f"{args.rounds} rounds; cpus {os.cpu_count()}; loadavg {loadavg()}", flush=True)
        for rnd in range(args.rounds):
            order = sides[rnd % len(sides):] + sides[:rnd % len(sides)]
            for connect in (False, True):
                for name, port in order:
                    if connect and name == "sockmap":
                        continue            # it does not forward a peer's last bytes before EOF
                    tps = pgbench(pg, port, args.seconds, connect)
                    mode = "C" if connect else "S"
                    results[(name, mode)].append(tps)
                    print(f"round {rnd + 1} {'-C' if connect else '  '} {name:8s} "
                          f"tps {tps:10.1f}  loadavg {loadavg()}", flush=True)
        print()
        for mode, label in (("S", "-S (persistent connections)"), ("C", "-S -C (connect per "
                                                                        "transaction)")):
            med = {s: statistics.median(results[(s, mode)]) for s, _ in sides if results[(s, mode)]}
            print(f"{label}: median tps direct {med['direct']:.1f}, standin {med['standin']:.1f}, "
                  f"haproxy {med['haproxy']:.1f}; standin/direct {med['standin'] / med['direct']:.3f}, "
                  f"standin/haproxy {med['standin'] / med['haproxy']:.3f}")
            if mode == "S" and args.sockmap:
                sm_med = statistics.median(results[("sockmap", "S")])
                print(f"{label}: in-kernel forwarder (sockmap) median tps {sm_med:.1f}, "
                      f"sockmap/direct {sm_med / med['direct']:.3f}, "
                      f"haproxy/direct {med['haproxy'] / med['direct']:.3f}")
        st = sp.status()["services"]["pg"]
        print(f"standin-proxy counters: accepted {st['accepted']} errors {st['errors']} "
              f"connect_errors {st['connect_errors']}")
        sp.stop()
        ha.stop()

        # Idle memory: each proxy in front of a backend that holds connections.
        for name in ("standin", "haproxy"):
            backend = HoldingBackend()
            port = sh.free_port()
            if name == "standin":
                b2 = h.mkdir(f"idle-{name}")
                conf = write_conf(b2, backend.port, port, sh.free_port())
                p = StandinProxy(args.build, b2, conf)
                pid = p.proc.pid
            else:
                p = HAProxy(base, backend.port, port, name="idle")
                pid = p.proc.pid
            per = idle_memory(args.idle, pid, port, backend)
            print(f"idle: {args.idle} clients through {name}: {per:.0f} bytes of proxy RSS per "
                  f"client connection (backend socket included); loadavg {loadavg()}", flush=True)
            p.stop()
            backend.close()


if __name__ == "__main__":
    main()
