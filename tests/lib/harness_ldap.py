"""OpenLDAP slapd 2.5 for the standin test harness: SlapdServer and parse_ldif().

SlapdServer writes a slapd.conf (back_mdb with the syncprov overlay, optional
StartTLS/ldaps) and runs slapd in the foreground as a child of this process.
Its ldapadd/ldapmodify/ldapdelete/ldapsearch helpers bind as the rootdn;
search() parses the result with parse_ldif().

Environment:

* STANDIN_SLAPD_DEBUG: slapd's -d level (default "stats": one log line per
  operation in the server's slapd.log).
"""

import base64
import os

from harness_core import (LOOPBACK, NODES, CommandError, ForegroundServer, HarnessError, _new_password,
                          _require, _write_file, run, wait_until)

SLAPD = "/usr/sbin/slapd"
SLAPPASSWD = "/usr/sbin/slappasswd"
SLAPCAT = "/usr/sbin/slapcat"
LDAP_BINDIR = "/usr/bin"                 # ldapadd, ldapmodify, ldapsearch, ldapdelete
LDAP_SCHEMA_DIR = "/etc/ldap/schema"
LDAP_MODULE_DIR = "/usr/lib/ldap"


# ---------------------------------------------------------------------------
# LDIF


def parse_ldif(text):
    """Entries of LDIF text (as ldapsearch -LLL or slapcat print them) as a
    list of (dn, {attribute: [values]}).  Base64 values are decoded (str when
    UTF-8, else bytes); attribute names keep the case the server used."""
    entries = []
    lines = []
    for raw in text.splitlines():
        if raw.startswith(" ") and lines:
            lines[-1] += raw[1:]                 # continuation of a folded line
        elif not raw.startswith("#"):
            lines.append(raw)
    dn, attrs = None, {}
    for line in lines + [""]:
        if not line.strip():
            if dn is not None:
                entries.append((dn, attrs))
            dn, attrs = None, {}
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        if value.startswith(":"):
            data = base64.b64decode(value[1:].strip())
            try:
                value = data.decode()
            except UnicodeDecodeError:
                value = data
        else:
            value = value[1:] if value.startswith(" ") else value
        if name.lower() == "dn":
            dn = value
        else:
            attrs.setdefault(name, []).append(value)
    return entries


class SlapdServer(ForegroundServer):
    """An OpenLDAP slapd 2.5 instance with back_mdb and the syncprov overlay.

    Both roles get syncprov (so replication can be reversed by a switchover);
    the role only decides whether the base entries (the suffix and
    ou=people) are loaded at the first start: load_base=None means on the
    master only.  Attributes: uri, suffix, rootdn, password, password_file
    (the plain password, no newline, 0600; for ldap* -y), conf, dbdir,
    pidfile, server_id (serverID, 1 for node a, 2 for b: distinct CSN sids).

    TLS (optional): with tls_cert and tls_key (PEM files, e.g. from
    make_test_ca()) slapd offers StartTLS on uri and also listens on
    ldaps_uri (ldaps://host:ldaps_port/); tls_ca sets TLSCACertificateFile.
    Without them ldaps_uri and ldaps_port are None.  The harness's own
    ldap* commands always use the plain uri.

    slapd runs in the foreground (-d LEVEL, output to logfile) as a child
    of this process, in a session of its own; with netlab (a
    harness_netns.NetLab) in its node's namespaces, on the node's address
    (see Server).
    """

    kind = "ldap"

    def __init__(self, harness, node="a", role="master", *, suffix="dc=example,dc=com",
                 password=None, load_base=None, server_id=None, host=LOOPBACK, extra_conf="",
                 debug=None, tls_cert=None, tls_key=None, tls_ca=None, netlab=None):
        if role not in ("master", "standby"):
            raise HarnessError(f"role must be master or standby, not {role!r}")
        _require(SLAPD, SLAPPASSWD, os.path.join(LDAP_BINDIR, "ldapsearch"))
        super().__init__(harness, node, host, netlab=netlab)
        self.role = role
        self.suffix = suffix
        self.rootdn = f"cn=admin,{suffix}"
        self.password = password or _new_password()
        self.password_file = _write_file(os.path.join(self.dir, "rootpw"), self.password, 0o600)
        self.load_base = (role == "master") if load_base is None else load_base
        self.server_id = server_id if server_id is not None else (NODES.index(node) + 1 if node in NODES else 0)
        self.uri = f"ldap://{self.host}:{self.port}/"
        if (tls_cert is None) != (tls_key is None):
            raise HarnessError("tls_cert and tls_key go together")
        self.ldaps_port = self._free_port() if tls_cert else None
        self.ldaps_uri = f"ldaps://{self.host}:{self.ldaps_port}/" if tls_cert else None
        tls = ""
        if tls_cert:
            tls = f"TLSCertificateFile {tls_cert}\nTLSCertificateKeyFile {tls_key}\n"
            if tls_ca:
                tls += f"TLSCACertificateFile {tls_ca}\n"
        self.conf = os.path.join(self.dir, "slapd.conf")
        self.dbdir = harness.mkdir(node, self.kind, "db", mode=0o700)
        self.pidfile = os.path.join(self.dir, "slapd.pid")
        self.debug = debug or os.environ.get("STANDIN_SLAPD_DEBUG") or "stats"
        self._base_loaded = False
        hashed = run([SLAPPASSWD, "-s", self.password]).stdout.strip()
        schemas = "".join(f"include {LDAP_SCHEMA_DIR}/{s}.schema\n"
                          for s in ("core", "cosine", "inetorgperson", "nis"))
        _write_file(self.conf, f"""# slapd.conf written by standin_harness for {self.name} ({role})
{schemas}pidfile  {self.pidfile}
argsfile {self.dir}/slapd.args
modulepath {LDAP_MODULE_DIR}
moduleload back_mdb.la
moduleload syncprov.la
serverID {self.server_id}
sizelimit unlimited
{tls}
# cn=config, writable over LDAP (in memory: slapd.conf is not rewritten), for
# standin-failoverd's fencing (olcReadOnly) as cn=config with the same password.
database config
rootdn "cn=config"
rootpw {hashed}

database mdb
maxsize 1073741824
suffix "{suffix}"
rootdn "{self.rootdn}"
rootpw {hashed}
directory {self.dbdir}
index objectClass,entryCSN,entryUUID eq
limits dn.exact="{self.rootdn}" size=unlimited time=unlimited
overlay syncprov
syncprov-checkpoint 100 10
syncprov-sessionlog 10000
{extra_conf}""", 0o600)

    def start(self, timeout=30):
        """Start slapd, wait until it answers a root DSE search, and load the
        base entries if this server should have them and has not yet."""
        urls = self.uri + (" " + self.ldaps_uri if self.ldaps_uri else "")
        self._spawn([SLAPD, "-h", urls, "-f", self.conf, "-d", self.debug])

        def ready():
            self.check_alive()
            run([os.path.join(LDAP_BINDIR, "ldapsearch"), "-x", "-H", self.uri, "-s", "base",
                 "-b", "", "-LLL", "(objectClass=*)", "namingContexts"], timeout=10)
            return True
        wait_until(ready, timeout, f"{self.name} to answer on {self.uri}")
        if self.load_base and not self._base_loaded:
            if not self.search(self.suffix, scope="base", attrs=["1.1"]):
                self.ldapadd(self.base_ldif())
            self._base_loaded = True
        return self

    def base_ldif(self):
        """LDIF of the suffix entry (dcObject + organization) and ou=people."""
        dc = self.suffix.split(",")[0].split("=", 1)[1]
        return (f"dn: {self.suffix}\nobjectClass: dcObject\nobjectClass: organization\n"
                f"dc: {dc}\no: {dc}\n\n"
                f"dn: ou=people,{self.suffix}\nobjectClass: organizationalUnit\nou: people\n")

    def load_base_entries(self):
        """Add base_ldif() now (e.g. on a standby started without it)."""
        self.ldapadd(self.base_ldif())
        self._base_loaded = True

    def _ldap(self, tool, args, input=None, check=True):
        return run([os.path.join(LDAP_BINDIR, tool), "-x", "-H", self.uri, "-D", self.rootdn,
                    "-y", self.password_file, *args], input=input, check=check)

    def ldapadd(self, ldif):
        """ldapadd the LDIF as the rootdn; returns the tool's output."""
        return self._ldap("ldapadd", [], ldif).stdout

    def ldapmodify(self, ldif):
        """ldapmodify with the LDIF (changetype records) as the rootdn."""
        return self._ldap("ldapmodify", [], ldif).stdout

    def ldapdelete(self, *dns, recursive=False):
        """Delete entries (with recursive=True, their subtrees too)."""
        return self._ldap("ldapdelete", (["-r"] if recursive else []) + list(dns)).stdout

    def ldapsearch(self, base=None, filter="(objectClass=*)", attrs=(), scope="sub", check=True):
        """ldapsearch -LLL (no line wrapping) as the rootdn; returns the LDIF
        text.  base defaults to the suffix, attrs to all user attributes
        (pass ['*', '+'] for operational ones too)."""
        return self._ldap("ldapsearch", ["-LLL", "-o", "ldif_wrap=no", "-s", scope,
                                         "-b", base or self.suffix, filter, *attrs], check=check).stdout

    def search(self, base=None, filter="(objectClass=*)", attrs=(), scope="sub"):
        """ldapsearch() parsed with parse_ldif(): [(dn, {attr: [values]})].
        A base that does not exist gives []."""
        result = self._ldap("ldapsearch", ["-LLL", "-o", "ldif_wrap=no", "-s", scope,
                                           "-b", base or self.suffix, filter, *attrs], check=False)
        if result.returncode == 32:              # noSuchObject
            return []
        if result.returncode != 0:
            raise CommandError(result.args, result.returncode, result.stdout, result.stderr)
        return parse_ldif(result.stdout)

    def slapcat(self):
        """The whole database as LDIF (slapcat, safe while slapd runs)."""
        return run([SLAPCAT, "-f", self.conf, "-o", "ldif_wrap=no"]).stdout

    def describe(self):
        return dict(kind=self.kind, node=self.node, role=self.role, host=self.host, port=self.port,
                    uri=self.uri, suffix=self.suffix, rootdn=self.rootdn, password=self.password,
                    password_file=self.password_file, server_id=self.server_id, conf=self.conf,
                    dbdir=self.dbdir, pidfile=self.pidfile, logfile=self.logfile,
                    ldaps_uri=self.ldaps_uri)
