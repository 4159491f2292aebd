"""A one-member etcd (Debian's etcd-server 3.4) on loopback, for the tests of
the cluster store: its own data directory under the harness, free client and
peer ports, in the foreground as our child (harness_core.ForegroundServer)."""

import json
import os
import signal
import urllib.request

from harness_core import LOOPBACK, ForegroundServer, HarnessError, free_port, wait_until

ETCD = "/usr/bin/etcd"


class EtcdServer(ForegroundServer):
    """etcd on LOOPBACK:port (client, the v3 JSON gateway) and a peer port.
    url is the client URL; pause()/resume() stop and continue the process
    (SIGSTOP/SIGCONT: a member that hangs)."""

    kind = "etcd"

    def __init__(self, harness, node="x", host=LOOPBACK):
        super().__init__(harness, node, host)
        self.peer_port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.data = os.path.join(self.dir, "data")
        self.pidfile = os.path.join(self.dir, "etcd.pid")

    def start(self, timeout=30):
        peer = f"http://{self.host}:{self.peer_port}"
        self._spawn([ETCD, "--name", self.name, "--data-dir", self.data,
                     "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", f"{self.name}={peer}",
                     "--initial-cluster-state", "new", "--log-level", "warn"])
        with open(self.pidfile, "w") as f:
            f.write(f"{self.proc.pid}\n")

        def healthy():
            self.check_alive()
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return json.load(r).get("health") == "true"
        wait_until(healthy, timeout, f"{self.name} health on {self.url}")
        return self

    def call(self, path, body):
        """POST BODY (a dict) to the gateway; the JSON reply."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def get(self, key):
        """KEY's value (str) or None."""
        import base64
        reply = self.call("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
        kvs = reply.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def pause(self):
        if self.proc is None or self.proc.poll() is not None:
            raise HarnessError(f"{self.name} is not running")
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def describe(self):
        return {"kind": self.kind, "node": self.node, "url": self.url, "dir": self.dir,
                "host": self.host, "port": self.port, "pidfile": self.pidfile}
