"""PostgreSQL 15 for the standin test harness: PgServer and its settings.

PgServer initdb's a data directory owned by the OS user postgres (through
runuser), with wal_level = logical, a `standin` superuser with REPLICATION
and a libpq passfile; start() it.  pg_module_path() finds standin's DDL
capture module of the build under test, which every PgServer installs.

Environment:

* STANDIN_PG_BINDIR: PostgreSQL programs (default /usr/lib/postgresql/15/bin;
  /usr/local/bin/pg_ctl on the development machine is something else).
* STANDIN_PG_MODULE, else STANDIN_BUILDDIR: where standin_ddl.so is.
"""

import os
import re
import shutil

from harness_core import (LOOPBACK, CommandError, HarnessError, Server, _new_password, _read_pidfile,
                          _require, _require_root, _tail, _wait_pids_gone, _write_file, pid_alive,
                          process_tree, run, timeout_scale, wait_until)

PG_BINDIR = os.environ.get("STANDIN_PG_BINDIR") or "/usr/lib/postgresql/15/bin"
PG_OS_USER = "postgres"


def pg_module_path():
    """standin's PostgreSQL module (DDL capture) of this build, or None:
    $STANDIN_PG_MODULE, else STANDIN_BUILDDIR/replicators/pg/standin_ddl.so."""
    path = os.environ.get("STANDIN_PG_MODULE")
    if not path and os.environ.get("STANDIN_BUILDDIR"):
        path = os.path.join(os.environ["STANDIN_BUILDDIR"], "replicators", "pg", "standin_ddl.so")
    return os.path.abspath(path) if path and os.path.exists(path) else None


def quote_ident(name):
    """An SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value):
    """An SQL string literal (standard_conforming_strings on)."""
    return "'" + str(value).replace("'", "''") + "'"


class PgServer(Server):
    """A PostgreSQL 15 instance (initdb'd by the constructor; start() it).

    Attributes: datadir, socket_dir, port, user ('standin', a superuser with
    REPLICATION), password, passfile (libpq passfile, 0600), bindir, logfile.
    TCP connections use scram-sha-256; the unix socket trusts everyone.

    Options: fsync (False turns off fsync, synchronous_commit and
    full_page_writes, for speed), extra_conf (appended to postgresql.conf),
    user, password, host, preload_ddl (False: standin's module standin_ddl
    is found by the server, as it is when installed, but not in
    shared_preload_libraries), netlab (a harness_netns.NetLab: the
    postmaster runs in its node's namespaces, listens on the node's address
    and takes TCP connections from the lab's subnet; see Server).
    """

    kind = "pg"

    def __init__(self, harness, node="a", *, fsync=True, extra_conf="", user="standin",
                 password=None, host=LOOPBACK, bindir=PG_BINDIR, preload_ddl=True, netlab=None):
        _require_root("PgServer")
        self.bindir = bindir
        _require(*(os.path.join(bindir, p) for p in ("initdb", "pg_ctl", "postgres", "psql", "pg_isready")))
        super().__init__(harness, node, host, owner=PG_OS_USER, group=PG_OS_USER, netlab=netlab)
        self.datadir = os.path.join(self.dir, "data")
        self.socket_dir = self.dir
        self.user = user
        self.password = password or _new_password()
        self.passfile = os.path.join(self.dir, "pgpass")
        self._role_created = False
        self._initdb(fsync, extra_conf, preload_ddl)
        # host:port:database:user:password; '*' matches "replication" too.
        esc = self.password.replace("\\", "\\\\").replace(":", "\\:")
        _write_file(self.passfile, f"{self.host}:{self.port}:*:{user}:{esc}\n", 0o600)

    def bin(self, program):
        """Full path of a PostgreSQL program (bindir/program)."""
        return os.path.join(self.bindir, program)

    def _initdb(self, fsync, extra_conf, preload_ddl=True):
        run([self.bin("initdb"), "-D", self.datadir, "-U", "postgres", "--no-sync", "--no-instructions",
             "-E", "UTF8", "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256"],
            user=PG_OS_USER, cwd=self.dir, timeout=120)
        sync = "" if fsync else "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        # standin's module, as if installed in the server's $libdir: a copy the
        # server's user can read, found through dynamic_library_path.
        module = pg_module_path()
        if module:
            libdir = os.path.join(self.dir, "lib")
            os.makedirs(libdir, exist_ok=True)
            shutil.copy(module, os.path.join(libdir, "standin_ddl.so"))
            os.chmod(libdir, 0o755)
            sync += f"dynamic_library_path = '{libdir}:$libdir'\n"
            if preload_ddl:
                sync += "shared_preload_libraries = 'standin_ddl'\n"
        self.append_conf(f"""
# --- standin test harness ---
listen_addresses = '{self.host}'
port = {self.port}
unix_socket_directories = '{self.socket_dir}'
wal_level = logical
max_replication_slots = 16
max_wal_senders = 16
max_worker_processes = 16
max_logical_replication_workers = 8
max_sync_workers_per_subscription = 2
max_connections = 100
shared_buffers = 32MB
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
log_replication_commands = on
{sync}{extra_conf}
""")
        hosts = ["127.0.0.1/32"] + ([f"{self.host}/32"] if self.host != LOOPBACK else [])
        if self.netlab is not None:             # the other nodes and this process
            hosts = ["127.0.0.1/32", self.netlab.subnet]
        hba = "# TYPE  DATABASE     USER  ADDRESS        METHOD\nlocal   all          all                  trust\n"
        for addr in hosts:
            hba += (f"host    all          all   {addr:<14} scram-sha-256\n"
                    f"host    replication  all   {addr:<14} scram-sha-256\n")
        _write_file(os.path.join(self.datadir, "pg_hba.conf"), hba, 0o600, PG_OS_USER, PG_OS_USER)

    def append_conf(self, text, file="postgresql.conf"):
        """Append to a file of the data directory (reload() or restart() to apply)."""
        path = os.path.join(self.datadir, file)
        with open(path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        return path

    @property
    def pid(self):
        """The postmaster's pid (from postmaster.pid), or None."""
        return _read_pidfile(os.path.join(self.datadir, "postmaster.pid"))

    def conninfo(self, dbname="postgres", **params):
        """A libpq keyword/value connection string for TCP as self.user, with
        passfile; extra keywords are appended (e.g. replication='database')."""
        items = dict(host=self.host, port=self.port, user=self.user, dbname=dbname,
                     passfile=self.passfile, **params)
        return " ".join(f"{k}={self._conn_quote(v)}" for k, v in items.items())

    @staticmethod
    def _conn_quote(value):
        value = str(value)
        if value and not re.search(r"[\s'\\]", value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    @property
    def dsn(self):
        """conninfo() for the postgres database."""
        return self.conninfo()

    def libpq_env(self, dbname="postgres"):
        """PGHOST, PGPORT, PGUSER, PGDATABASE and PGPASSFILE for this server."""
        return dict(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                    PGDATABASE=dbname, PGPASSFILE=self.passfile)

    def start(self, timeout=60):
        """pg_ctl start -w, then wait until TCP connections are accepted; the
        first start also creates the `standin` role.  Returns self."""
        if self.is_running():
            raise HarnessError(f"{self.name} is already running")
        cmd = [self.bin("pg_ctl"), "-D", self.datadir, "-l", self.logfile, "-w",
               "-t", str(int(timeout * timeout_scale())), "start"]
        try:
            if self.netlab is None:
                run(cmd, user=PG_OS_USER, cwd=self.dir, timeout=timeout + 10)
            else:                               # the postmaster stays in the node
                run(self.in_node(cmd, user=PG_OS_USER), cwd=self.dir, timeout=timeout + 10)
        except CommandError as e:
            raise HarnessError(f"{self.name} did not start: {e}\nlog {self.logfile}:\n"
                               f"{_tail(self.logfile)}") from None
        self.state = "running"

        def ready():
            self.check_alive()
            run([self.bin("pg_isready"), "-q", "-h", self.host, "-p", self.port, "-d", "postgres",
                 "-t", "2"], timeout=10)
            return True
        wait_until(ready, timeout, f"{self.name} to accept TCP connections on port {self.port}")
        if not self._role_created:
            self.psql(f"SET password_encryption = 'scram-sha-256';\n"
                      f"CREATE ROLE {quote_ident(self.user)} LOGIN SUPERUSER REPLICATION "
                      f"PASSWORD {quote_literal(self.password)};")
            self._role_created = True
        return self

    def stop(self, mode="fast", timeout=60):
        """pg_ctl stop -m MODE ('smart', 'fast' or 'immediate') and wait until
        the postmaster is gone.  A server that is not running is fine."""
        pid = self.pid
        if not pid_alive(pid):
            self.state = "stopped"
            return self
        pids = process_tree(pid)
        run([self.bin("pg_ctl"), "-D", self.datadir, "-m", mode, "-w",
             "-t", str(int(timeout * timeout_scale())), "stop"],
            user=PG_OS_USER, cwd=self.dir, timeout=timeout + 10)
        _wait_pids_gone(pids, 30, f"{self.name} processes to exit")
        self.state = "stopped"
        return self

    def restart(self, mode="fast"):
        """stop() then start()."""
        return self.stop(mode).start()

    def reload(self):
        """pg_ctl reload (re-read the configuration files)."""
        run([self.bin("pg_ctl"), "-D", self.datadir, "reload"], user=PG_OS_USER, cwd=self.dir)
        return self

    def psql(self, sql, db="postgres", *, tcp=False, check=True, timeout=60):
        """Run SQL with psql -X -A -t -q -v ON_ERROR_STOP=1 and return its
        output without the final newline (rows one a line, columns split by
        '|').  Through the unix socket as the postgres superuser, or with
        tcp=True over TCP as self.user with the passfile (scram-sha-256).
        Raises CommandError on an SQL error if `check`."""
        if tcp:
            target = ["-d", self.conninfo(db)]
        else:
            target = ["-h", self.socket_dir, "-p", str(self.port), "-U", "postgres", "-d", db]
        result = run([self.bin("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", *target],
                     input=sql, timeout=timeout, check=check)
        return result.stdout[:-1] if result.stdout.endswith("\n") else result.stdout

    def create_database(self, name, owner=None):
        """CREATE DATABASE name OWNER owner (default self.user); returns name."""
        self.psql(f"CREATE DATABASE {quote_ident(name)} OWNER {quote_ident(owner or self.user)}")
        return name

    def describe(self):
        return dict(kind=self.kind, node=self.node, host=self.host, port=self.port, user=self.user,
                    password=self.password, passfile=self.passfile, dsn=self.dsn,
                    datadir=self.datadir, socket_dir=self.socket_dir, bindir=self.bindir,
                    pidfile=os.path.join(self.datadir, "postmaster.pid"), logfile=self.logfile)
