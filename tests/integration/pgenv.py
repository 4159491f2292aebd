"""A PostgreSQL master and standby with standin-pgrepl on the standby, shared
by the pgrepl tests."""
import os

import standin_harness as sh
from standin_bin import PGREPL, STANDINCTL, StandinDaemon, run, write_pg_conf


class PgEnv:
    """A master (a) and standby (b) PostgreSQL, standin.conf, cluster state,
    and standin-pgrepl on node b (started by start())."""

    def __init__(self, harness, fsync=False, preload_ddl=True):
        self.h = harness
        password = "pw-" + os.urandom(6).hex()
        self.a = harness.start_pg("a", fsync=fsync, password=password, preload_ddl=preload_ddl)
        self.b = harness.start_pg("b", fsync=fsync, password=password)
        for s in (self.a, self.b):
            s.create_database("groupware")
        self.pair = sh.Pair(self.a, self.b)
        self.base = harness.mkdir("standin")
        self.conf = write_pg_conf(self.base, self.pair)
        for node in ("a", "b"):
            r = run(STANDINCTL, "-c", self.conf, "-n", node, "state", "init", "--master", "a")
            assert r.returncode == 0, r.stderr
        self.daemon = None

    def start(self, *args):
        self.daemon = StandinDaemon(PGREPL, self.conf, "b", os.path.join(self.base, "b", "run"),
                                    os.path.join(self.base, "pgrepl-b.log"), args)
        self.h.add_cleanup(self.daemon.stop)
        return self.daemon

    def status(self):
        return self.daemon.status()

    def wait_state(self, state, timeout=60):
        def check():
            if not self.daemon.running():
                raise sh.StopWaiting(f"standin-pgrepl exited {self.daemon.proc.returncode}:\n"
                                     f"{self.daemon.output()[-3000:]}")
            st = self.status()
            return st if st["state"] == state else None
        return sh.wait_until(check, timeout, f"standin-pgrepl state {state}")

    def sql_a(self, sql):
        return self.a.psql(sql, db="groupware")

    def sql_b(self, sql):
        return self.b.psql(sql, db="groupware")

    def digest(self, server, table):
        return server.psql(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY "
                           f"t::text), '')) FROM {table} t", db="groupware")

    def wait_equal(self, *tables, timeout=60):
        def same():
            if self.daemon is not None and not self.daemon.running():
                raise sh.StopWaiting(f"standin-pgrepl exited:\n{self.daemon.output()[-3000:]}")
            diff = []
            for t in tables:
                da = self.digest(self.a, t)
                db = self.digest(self.b, t)
                if da != db:
                    diff.append(f"{t}: master {da} standby {db}")
            if diff:
                raise AssertionError("; ".join(diff))
            return True
        sh.wait_until(same, timeout, f"standby to equal the master on {tables}")
