#!/usr/bin/python3
"""Real PostgreSQL 15, slapd 2.5 and Dovecot 2.3 servers on loopback, for tests.

standin replicates PostgreSQL, OpenLDAP and Dovecot from a master node ("a")
to a standby node ("b").  This harness starts the real servers those
replicators talk to, each in its own directory under one temporary directory,
on free 127.0.0.1 ports, and stops them again whatever happens.  The
integration tests (tests/integration/conftest.py wraps it in pytest fixtures),
the benchmarks (bench/) and the demo ./sandbox.sh (through the command line,
`python3 tests/lib/standin_harness.py up|down|status DIR`) share it.

This module is the stable interface: it holds no code of its own and
re-exports the harness, which is split by server:

* harness_core: errors, wait_until(), free_port(), port_open(), pid_alive(),
  process_tree(), run(), make_test_ca(), timeout_scale(), the Harness
  (temporary directory, cleanups, signals, subreaper) and the Server and
  ForegroundServer base classes.
* harness_pg: PgServer, pg_module_path(), quote_ident(), quote_literal(),
  PG_BINDIR.
* harness_ldap: SlapdServer, parse_ldif(), the slapd and ldap* programs.
* harness_imap: DovecotServer, the dovecot and doveadm programs.
* harness_cluster: Pair, Cluster, start_pairs(), missing_servers(),
  stop_described() and main(), the up/down/status command line.
* harness_netns: NetLab (each node in a network namespace of its own, on a
  bridge, its commands in a mount namespace that hides the other nodes'
  directories; the servers take netlab=), NetLabUnavailable.

Import it as `import standin_harness as sh` (with tests/lib on sys.path).

Typical use::

    with Harness("mytest") as h:
        cluster = start_pairs(h)            # pg, ldap and imap on nodes a and b
        cluster.pg.a.psql("CREATE TABLE t (id int)")
        cluster.ldap.a.ldapadd(ldif)
        cluster.imap.b.append("alice", "INBOX", b"Subject: x\\r\\n\\r\\nbody\\r\\n")
    # every server is stopped; the directory is removed unless something failed

Building blocks:

* free_port(), wait_until(), port_open(), pid_alive(), run(), make_test_ca()
* Harness: owns the base directory and a LIFO list of cleanups; close() runs
  them even after failures, removes the directory on success and keeps it
  (printing its path to stderr) after a failure or with STANDIN_KEEP_TMP=1.
  While a Harness is open SIGTERM and SIGHUP raise KeyboardInterrupt, so an
  interrupted run still stops its servers.
* PgServer, SlapdServer, DovecotServer: one server each, created ready to
  start (initdb, slapd.conf, dovecot.conf written), with start(), stop(),
  kill9(), is_running(), describe() and client helpers.
* Pair, Cluster, start_pairs(): the six servers of a two-node cluster.

Environment:

* STANDIN_TEST_TIMEOUT_SCALE: multiply every timeout (default 1), for slow
  machines or sanitizer builds.
* STANDIN_KEEP_TMP=1: keep the temporary directory even when all went well.
* STANDIN_PG_BINDIR: PostgreSQL programs (default /usr/lib/postgresql/15/bin;
  /usr/local/bin/pg_ctl on the development machine is something else).
* STANDIN_SLAPD_DEBUG: slapd's -d level (default "stats": one log line per
  operation in the server's slapd.log).

The servers need root: initdb and the postmaster run as "postgres" (through
runuser), Dovecot's mail processes as nobody/nogroup.  slapd runs as root.
"""

import sys

import harness_core
from harness_cluster import Cluster, Pair, main, missing_servers, start_pairs, stop_described
from harness_core import (LOOPBACK, NODES, RUNUSER, CommandError, ForegroundServer, Harness,
                          HarnessError, Server, ServerDied, StopWaiting, WaitTimeout, free_port,
                          make_test_ca, pid_alive, port_open, process_tree, run, timeout_scale,
                          wait_until)
from harness_etcd import ETCD, EtcdServer
from harness_imap import DOVEADM, DOVECOT, DOVECOT_NOTICES_CONF, MAIL_OS_GROUP, MAIL_OS_USER, DovecotServer
from harness_netns import NetLab, NetLabUnavailable
from harness_ldap import (LDAP_BINDIR, LDAP_MODULE_DIR, LDAP_SCHEMA_DIR, SLAPCAT, SLAPD, SLAPPASSWD,
                          SlapdServer, parse_ldif)
from harness_pg import PG_BINDIR, PG_OS_USER, PgServer, pg_module_path, quote_ident, quote_literal

__all__ = [
    "HarnessError", "CommandError", "WaitTimeout", "StopWaiting", "ServerDied",
    "missing_servers", "timeout_scale", "wait_until", "free_port", "port_open", "pid_alive",
    "process_tree", "run", "make_test_ca", "parse_ldif", "quote_ident", "quote_literal",
    "Harness", "Server", "ForegroundServer", "PgServer", "SlapdServer", "DovecotServer",
    "EtcdServer", "ETCD", "NetLab", "NetLabUnavailable",
    "Pair", "Cluster", "start_pairs", "stop_described", "main", "pg_module_path",
    "PG_BINDIR", "PG_OS_USER", "SLAPD", "SLAPPASSWD", "SLAPCAT", "LDAP_BINDIR", "LDAP_SCHEMA_DIR",
    "LDAP_MODULE_DIR", "DOVECOT", "DOVEADM", "DOVECOT_NOTICES_CONF", "MAIL_OS_USER", "MAIL_OS_GROUP",
    "RUNUSER",
    "LOOPBACK", "NODES",
]

# Not public, but bench/pg/run.py prints server logs with it.
_tail = harness_core._tail

if __name__ == "__main__":
    sys.exit(main())
