/*
 * conf.c: table-driven loader for the cluster configuration file.
 *
 * Pass one runs inih over the file through our own line reader, which counts
 * lines (so every key and section header has its line number), refuses NUL
 * bytes and over-long lines, and records section headers.  Pass two walks the
 * recorded entries against the option table below, parses each value with the
 * parser of its type, fills in defaults (parsed by the same parsers), and runs
 * the cross-checks.  All errors are collected; the load fails if there is any.
 */
#include "config.h"

#include "lib/conf.h"
#include "lib/log.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <ldap.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONF_MAX_SIZE (1024 * 1024)
#define CONF_MAX_ERRORS 50

enum opt_type {
	OT_STRING,	/* any printable text */
	OT_NAME,	/* [A-Za-z0-9_.-]{1,32} */
	OT_PATH,	/* absolute path */
	OT_SECRET,	/* absolute path to a 0600 file */
	OT_BOOL,
	OT_INT,
	OT_DURATION,	/* stored in milliseconds */
	OT_ENUM,
	OT_HOSTPORT,
	OT_URI,		/* scheme://host[:port] with a scheme from choices */
	OT_URIS,	/* OT_URI[, OT_URI...] */
	OT_LISTEN,	/* host:port[,host:port...] */
	OT_DN,		/* LDAP distinguished name */
	OT_FILTER,	/* LDAP search filter */
};

#define F_REQUIRED 0x1
#define F_PER_NODE 0x2	/* may be given as key.NODE; field is char *[ST_MAX_NODES] */

struct option {
	const char *section;
	const char *key;
	enum opt_type type;
	unsigned flags;
	size_t offset;		/* in struct st_conf, or struct st_node for [node] */
	const char *def;	/* default, as text; NULL for none */
	const char *const *choices;
	long min, max;
	const char *doc;
};

static const char *const log_levels[] = { "debug", "info", "notice", "warning", "error", NULL };
static const char *const log_dests[] = { "auto", "stderr", "syslog", NULL };
/* In enum st_tls_mode's order. */
static const char *const tls_modes[] = { "no", "try", "demand", "auto", NULL };
static const char *const sslmodes[] = { "disable", "allow", "prefer", "require",
					"verify-ca", "verify-full", "auto", NULL };
#define SSLMODE_PREFER 2
#define SSLMODE_VERIFY_FULL 5
#define SSLMODE_AUTO 6

const char *
st_conf_sslmode_name(int sslmode)
{
	return sslmodes[sslmode];
}
static const char *const ldap_schemes[] = { "ldap", "ldaps", NULL };
static const char *const etcd_schemes[] = { "http", "https", NULL };
static const char *const ldap_sync_modes[] = { "persist", "poll", NULL };
static const char *const imap_logins[] = { "master-user", "sasl-plain", NULL };
static const char *const imap_changes[] = { "idle", "dovecot", NULL };
static const char *const imap_schemes[] = { "imap", "imaps", NULL };
static const char *const dump_froms[] = { "standby", "master", NULL };
static const char *const pg_conflicts[] = { "stop", "master-wins", NULL };

const char *
st_conf_pg_conflicts_name(int conflicts)
{
	return pg_conflicts[conflicts];
}
static const char *const compressions[] = { "zstd", "none", NULL };

#define C(f) offsetof(struct st_conf, f)
#define N(f) offsetof(struct st_node, f)
#define DAY_MS (24L * 3600 * 1000)

static const struct option options[] = {
	{ "cluster", "name", OT_NAME, F_REQUIRED, C(cluster_name), NULL, NULL, 0, 0,
	  "Name of the cluster, shown in status and used in metric labels." },
	{ "cluster", "log_level", OT_ENUM, 0, C(log_level), "info", log_levels, 0, 0,
	  "Lowest level logged: debug, info, notice, warning or error." },
	{ "cluster", "log_data", OT_BOOL, 0, C(log_data), "no", NULL, 0, 0,
	  "Show row keys and values in logs and status (yes), or only a hash of each (no; "
	  "log_level = debug shows them too)." },
	{ "cluster", "log", OT_ENUM, 0, C(log_dest), "auto", log_dests, 0, 0,
	  "Where daemons log: auto (stderr in the foreground, syslog when detached), stderr or syslog." },
	{ "cluster", "admin_group", OT_NAME, 0, C(admin_group), NULL, NULL, 0, 0,
	  "Group given access to the status and admin sockets (mode 0660); default: the daemon's group." },
	{ "cluster", "etcd", OT_URIS, 0, C(etcd.urls), NULL, etcd_schemes, 0, 0,
	  "The etcd cluster holding the cluster state, as its client URLs (http:// or https://, comma-separated): the v3 JSON gateway of Debian's etcd-server 3.4." },
	{ "cluster", "etcd_ca", OT_PATH, 0, C(etcd.ca_file), NULL, NULL, 0, 0,
	  "CA certificate file that signs etcd's server certificates (https://)." },
	{ "cluster", "etcd_cert", OT_PATH, 0, C(etcd.cert_file), NULL, NULL, 0, 0,
	  "Client certificate for etcd (with etcd_key), when etcd asks for one." },
	{ "cluster", "etcd_key", OT_SECRET, 0, C(etcd.key_file), NULL, NULL, 0, 0,
	  "Private key of etcd_cert (mode 0600)." },
	{ "cluster", "etcd_user", OT_STRING, 0, C(etcd.user), NULL, NULL, 0, 0,
	  "etcd user, when etcd has authentication enabled (with etcd_password_file)." },
	{ "cluster", "etcd_password_file", OT_SECRET, 0, C(etcd.password_file), NULL, NULL, 0, 0,
	  "File (mode 0600) holding etcd_user's password." },
	{ "cluster", "etcd_timeout", OT_DURATION, 0, C(etcd.timeout_ms), "5s", NULL, 100, 600000,
	  "Timeout of one request to etcd (each URL is tried in turn)." },

	{ "node", "address", OT_STRING, F_REQUIRED, N(address), NULL, NULL, 0, 0,
	  "Address of the node, used for display and by health checks." },
	{ "node", "hostname", OT_STRING, 0, N(hostname), NULL, NULL, 0, 0,
	  "Short host name of the machine that is this node; default: the node name." },
	{ "node", "state_dir", OT_PATH, 0, N(state_dir), "/var/lib/standin", NULL, 0, 0,
	  "Directory of the node's durable state (cluster.state, replicator positions)." },
	{ "node", "run_dir", OT_PATH, 0, N(run_dir), "/run/standin", NULL, 0, 0,
	  "Directory of the node's status and admin sockets and pidfiles." },

	{ "pg", "endpoint", OT_HOSTPORT, F_REQUIRED | F_PER_NODE, C(pg.endpoint), NULL, NULL, 0, 0,
	  "host:port of PostgreSQL on each node, as endpoint.NODE." },
	{ "pg", "dbname", OT_STRING, F_REQUIRED, C(pg.dbname), NULL, NULL, 0, 0,
	  "Database replicated." },
	{ "pg", "user", OT_STRING, F_REQUIRED, C(pg.user), NULL, NULL, 0, 0,
	  "Role used by standin (replication on the master, superuser on the standby)." },
	{ "pg", "passfile", OT_SECRET, 0, C(pg.passfile), NULL, NULL, 0, 0,
	  "libpq password file (mode 0600) holding that role's password." },
	{ "pg", "sslmode", OT_ENUM, 0, C(pg.sslmode), "auto", sslmodes, 0, 0,
	  "libpq sslmode: disable, allow, prefer, require, verify-ca, verify-full, or auto: "
	  "verify-full, except prefer to a loopback address." },
	{ "pg", "sslrootcert", OT_PATH, 0, C(pg.sslrootcert), NULL, NULL, 0, 0,
	  "CA certificate file for verify-ca and verify-full." },
	{ "pg", "connect_timeout", OT_DURATION, 0, C(pg.connect_timeout_ms), "10s", NULL, 1000, DAY_MS,
	  "Timeout for connecting to PostgreSQL." },
	{ "pg", "streaming", OT_BOOL, 0, C(pg.streaming), "yes", NULL, 0, 0,
	  "Take large transactions from the master while they are still in progress (protocol 2), spooled in the node's state_dir until they commit." },
	{ "pg", "conflicts", OT_ENUM, 0, C(pg.conflicts), "stop", pg_conflicts, 0, 0,
	  "What a conflict on the standby does: stop (with an error naming the table and key) or master-wins (the master's row replaces the standby's, each one logged and counted)." },
	{ "pg", "slot_warn_mb", OT_INT, 0, C(pg.slot_warn_mb), "1024", NULL, 1, 1048576,
	  "standinctl status warns when a standin replication slot holds more WAL than this many MB (see max_slot_wal_keep_size)." },

	{ "ldap", "endpoint", OT_URI, F_REQUIRED | F_PER_NODE, C(ldap.endpoint), NULL, ldap_schemes, 0, 0,
	  "ldap:// or ldaps:// URI of slapd on each node, as endpoint.NODE." },
	{ "ldap", "suffix", OT_DN, F_REQUIRED, C(ldap.suffix), NULL, NULL, 0, 0,
	  "Suffix (naming context) replicated." },
	{ "ldap", "bind_dn", OT_DN, F_REQUIRED, C(ldap.bind_dn), NULL, NULL, 0, 0,
	  "DN standin binds as: the rootdn, or an identity with manage rights on both nodes." },
	{ "ldap", "password_file", OT_SECRET, F_REQUIRED, C(ldap.password_file), NULL, NULL, 0, 0,
	  "File (mode 0600) holding the bind password." },
	{ "ldap", "config_bind_dn", OT_DN, 0, C(ldap.config_bind_dn), NULL, NULL, 0, 0,
	  "DN with write access to cn=config on every node (e.g. cn=config): a switchover fences "
	  "the old master's slapd with olcReadOnly. Unset: only the proxies keep clients away." },
	{ "ldap", "config_password_file", OT_SECRET, 0, C(ldap.config_password_file), NULL, NULL, 0, 0,
	  "File (mode 0600) holding config_bind_dn's password." },
	{ "ldap", "starttls", OT_ENUM, 0, C(ldap.starttls), "auto", tls_modes, 0, 0,
	  "StartTLS on ldap:// endpoints: no, try, demand, or auto: demand, except no to a "
	  "loopback address." },
	{ "ldap", "ca_file", OT_PATH, 0, C(ldap.ca_file), NULL, NULL, 0, 0,
	  "CA certificate file used to check the servers' certificates." },
	{ "ldap", "sync_mode", OT_ENUM, 0, C(ldap.sync_mode), "persist", ldap_sync_modes, 0, 0,
	  "persist: refreshAndPersist, changes pushed as they happen; poll: refreshOnly every poll_interval." },
	{ "ldap", "poll_interval", OT_DURATION, 0, C(ldap.poll_interval_ms), "60s", NULL, 1000, DAY_MS,
	  "Time between two refreshes when sync_mode = poll." },
	{ "ldap", "timeout", OT_DURATION, 0, C(ldap.timeout_ms), "30s", NULL, 1000, DAY_MS,
	  "Network and operation timeout for LDAP." },

	{ "imap", "endpoint", OT_URI, F_REQUIRED | F_PER_NODE, C(imap.endpoint), NULL, imap_schemes, 0, 0,
	  "imap:// or imaps:// URI of the IMAP server on each node, as endpoint.NODE." },
	{ "imap", "admin_user", OT_STRING, F_REQUIRED, C(imap.admin_user), NULL, NULL, 0, 0,
	  "Master (admin) user that may log in as every user." },
	{ "imap", "password_file", OT_SECRET, F_REQUIRED, C(imap.password_file), NULL, NULL, 0, 0,
	  "File (mode 0600) holding the admin user's password." },
	{ "imap", "kick_command", OT_STRING, 0, C(imap.kick_command), NULL, NULL, 0, 0,
	  "Command that ends every IMAP session on this node when a switchover fences it, run "
	  "without a shell: words split at spaces, %n replaced by the node's name "
	  "(e.g. /usr/bin/doveadm kick *)." },
	{ "imap", "master_separator", OT_STRING, 0, C(imap.master_separator), "*", NULL, 0, 0,
	  "Dovecot master user separator (user*admin)." },
	{ "imap", "login", OT_ENUM, 0, C(imap.login), "master-user", imap_logins, 0, 0,
	  "How the admin user acts as each user: master-user (LOGIN user*admin, Dovecot) or "
	  "sasl-plain (AUTHENTICATE PLAIN with the user as authorization identity)." },
	{ "imap", "starttls", OT_ENUM, 0, C(imap.starttls), "auto", tls_modes, 0, 0,
	  "STARTTLS on imap:// endpoints: no, try, demand, or auto: demand, except no to a "
	  "loopback address." },
	{ "imap", "ca_file", OT_PATH, 0, C(imap.ca_file), NULL, NULL, 0, 0,
	  "CA certificate file used to check the servers' certificates." },
	{ "imap", "users_file", OT_PATH, 0, C(imap.users_file), NULL, NULL, 0, 0,
	  "File listing the users to replicate, one per line (or use users_ldap_filter)." },
	{ "imap", "users_ldap_filter", OT_FILTER, 0, C(imap.users_ldap_filter), NULL, NULL, 0, 0,
	  "LDAP filter, under [ldap] suffix, selecting the users to replicate." },
	{ "imap", "users_ldap_attribute", OT_STRING, 0, C(imap.users_ldap_attribute), "uid", NULL, 0, 0,
	  "Attribute holding the IMAP login name of users found by users_ldap_filter." },
	{ "imap", "workers", OT_INT, 0, C(imap.workers), "8", NULL, 1, 64,
	  "Worker threads: the IMAP sessions to each server, whatever the number of users." },
	{ "imap", "changes", OT_ENUM, 0, C(imap.changes), "idle", imap_changes, 0, 0,
	  "How the standby learns which user changed: dovecot (the master's Dovecot replication "
	  "plugin names them on dovecot_fifo; relayed through etcd) or idle (IDLE sessions for the "
	  "idle_users users that changed last; the others at each full pass)." },
	{ "imap", "idle_users", OT_INT, 0, C(imap.idle_users), "16", NULL, 0, 128,
	  "With changes = idle: at most this many users watched with IDLE (one session each)." },
	{ "imap", "dovecot_fifo", OT_PATH, F_PER_NODE, C(imap.dovecot_fifo), "/run/dovecot/replication-notify-fifo",
	  NULL, 0, 0,
	  "With changes = dovecot: the FIFO Dovecot's replication plugin writes to (base_dir/"
	  "replication-notify-fifo), or dovecot_fifo.NODE; standin-imaprepl makes it and reads it." },
	{ "imap", "dovecot_fifo_user", OT_STRING, 0, C(imap.dovecot_fifo_user), NULL, NULL, 0, 0,
	  "With changes = dovecot: the user that owns dovecot_fifo (the mail processes' user, who "
	  "writes to it); unset: the daemon's user." },
	{ "imap", "full_pass_interval", OT_DURATION, 0, C(imap.full_pass_interval_ms), "5m", NULL, 1000, DAY_MS,
	  "Interval of the full pass that catches what push missed." },
	{ "imap", "timeout", OT_DURATION, 0, C(imap.timeout_ms), "60s", NULL, 1000, DAY_MS,
	  "Network timeout for IMAP." },
	{ "imap", "notify", OT_BOOL, 0, C(imap.notify), "yes", NULL, 0, 0,
	  "Ask the master for NOTIFY (RFC 5465) where it has it, so that a change in any folder is pushed; no: only INBOX is." },

	{ "proxy", "pg_listen", OT_LISTEN, F_PER_NODE, C(proxy.listen[ST_SVC_PG]), NULL, NULL, 0, 0,
	  "Addresses (host:port, comma separated) where the proxy takes PostgreSQL clients." },
	{ "proxy", "ldap_listen", OT_LISTEN, F_PER_NODE, C(proxy.listen[ST_SVC_LDAP]), NULL, NULL, 0, 0,
	  "Addresses where the proxy takes LDAP clients." },
	{ "proxy", "imap_listen", OT_LISTEN, F_PER_NODE, C(proxy.listen[ST_SVC_IMAP]), NULL, NULL, 0, 0,
	  "Addresses where the proxy takes IMAP clients." },
	{ "proxy", "connect_timeout", OT_DURATION, 0, C(proxy.connect_timeout_ms), "5s", NULL, 100, 600000,
	  "Timeout for connecting to a backend." },
	{ "proxy", "pause_timeout", OT_DURATION, 0, C(proxy.pause_timeout_ms), "30s", NULL, 100, 3600000,
	  "How long a client is held while its service is paused before it is closed." },
	{ "proxy", "drain_time", OT_DURATION, 0, C(proxy.drain_time_ms), "0s", NULL, 0, 3600000,
	  "Grace time for connections to an old master after a switch before they are closed." },
	{ "proxy", "idle_timeout", OT_DURATION, 0, C(proxy.idle_timeout_ms), "0s", NULL, 0, 30 * DAY_MS,
	  "Close client connections idle this long; 0 for never." },
	{ "proxy", "first_byte_timeout", OT_DURATION, 0, C(proxy.first_byte_timeout_ms), "60s", NULL, 0, DAY_MS,
	  "Close a client that has sent nothing this long after it was forwarded; 0 for never." },
	{ "proxy", "splice", OT_BOOL, 0, C(proxy.splice), "yes", NULL, 0, 0,
	  "Move bulk data with splice(2) through a pipe (no copy to user space); no: always copy." },
	{ "proxy", "health_interval", OT_DURATION, 0, C(proxy.health_interval_ms), "2s", NULL, 100, 600000,
	  "Interval of backend health checks." },
	{ "proxy", "max_clients", OT_INT, 0, C(proxy.max_clients), "10000", NULL, 1, 1000000,
	  "Most client connections per service; more are closed at once." },
	{ "proxy", "pg_proxy_protocol", OT_BOOL, 0, C(proxy.proxy_protocol[ST_SVC_PG]), "no", NULL, 0, 0,
	  "Send a PROXY protocol v2 header to PostgreSQL backends." },
	{ "proxy", "ldap_proxy_protocol", OT_BOOL, 0, C(proxy.proxy_protocol[ST_SVC_LDAP]), "no", NULL, 0, 0,
	  "Send a PROXY protocol v2 header to LDAP backends." },
	{ "proxy", "imap_proxy_protocol", OT_BOOL, 0, C(proxy.proxy_protocol[ST_SVC_IMAP]), "no", NULL, 0, 0,
	  "Send a PROXY protocol v2 header to IMAP backends (Dovecot haproxy_trusted_networks)." },

	{ "failover", "fence_command", OT_STRING, 0, C(fence_command), NULL, NULL, 0, 0,
	  "STONITH: the command standinctl failover runs to make sure the old master is down "
	  "(power it off, cut it off), without a shell: words split at spaces, %n replaced by "
	  "the node's name, the first an absolute path; exit 0 means fenced." },
	{ "failover", "fence_timeout", OT_DURATION, 0, C(fence_timeout_ms), "60s", NULL, 1000, 3600000,
	  "Time fence_command may take; it is killed after that and counts as failed." },

	{ "dump", "dir", OT_PATH, 0, C(dump.dir), "/var/backups/standin", NULL, 0, 0,
	  "Directory of the dumps, one subdirectory per service." },
	{ "dump", "from", OT_ENUM, 0, C(dump.from), "standby", dump_froms, 0, 0,
	  "Node dumps are taken from: standby or master." },
	{ "dump", "fallback_to_master", OT_BOOL, 0, C(dump.fallback_to_master), "no", NULL, 0, 0,
	  "Dump the master when the standby lags more than max_lag (instead of failing)." },
	{ "dump", "max_lag", OT_DURATION, 0, C(dump.max_lag_ms), "5m", NULL, 0, 30 * DAY_MS,
	  "Largest replication lag of the standby accepted for a dump." },
	{ "dump", "keep", OT_INT, 0, C(dump.keep), "7", NULL, 1, 100000,
	  "Most recent dumps kept per service." },
	{ "dump", "daily", OT_INT, 0, C(dump.daily), "7", NULL, 0, 100000,
	  "Days for which the newest dump of the day is kept as well." },
	{ "dump", "weekly", OT_INT, 0, C(dump.weekly), "4", NULL, 0, 100000,
	  "Weeks for which the newest dump of the week is kept as well." },
	{ "dump", "compress", OT_ENUM, 0, C(dump.compress), "zstd", compressions, 0, 0,
	  "Compression of dump files: zstd or none." },
	{ "dump", "zstd_level", OT_INT, 0, C(dump.zstd_level), "1", NULL, 1, 19,
	  "zstd compression level of dump files (1 fastest, 19 smallest)." },
	{ "dump", "jobs", OT_INT, 0, C(dump.jobs), "2", NULL, 1, 64,
	  "Parallel jobs of pg_dump -Fd." },
	{ "dump", "timeout", OT_DURATION, 0, C(dump.timeout_ms), "6h", NULL, 1000, 7 * DAY_MS,
	  "Time after which a dump command is killed and the dump fails." },
	{ "dump", "max_age", OT_DURATION, 0, C(dump.max_age_ms), "26h", NULL, 60000, 365 * DAY_MS,
	  "Age past which the last good dump shows as a warning in status." },
	{ "dump", "pg_databases", OT_STRING, 0, C(dump.pg_databases), NULL, NULL, 0, 0,
	  "Databases dumped, separated by spaces or commas; default: every database that accepts connections." },
	{ "dump", "pg_bindir", OT_PATH, 0, C(dump.pg_bindir), "/usr/lib/postgresql/15/bin", NULL, 0, 0,
	  "Directory of pg_dump, pg_dumpall and pg_restore (of the servers' major version or newer)." },
	{ "dump", "slapcat_config", OT_PATH, F_PER_NODE, C(dump.slapcat_config), NULL, NULL, 0, 0,
	  "slapd.conf file or cn=config directory of the local slapd on each node, as slapcat_config.NODE, for slapcat; a node without one is exported over LDAP." },
};

#undef C
#undef N

/* Section kinds, in the order they are printed. */
static const char *const section_kinds[] = { "cluster", "node", "pg", "ldap", "imap", "proxy", "dump",
					     "failover" };

/* ---------------------------------------------------------------------- */

struct raw_entry {
	char *section;		/* as written, e.g. "node a" */
	char *key;
	char *value;
	unsigned line;
	bool continuation;	/* the physical line started with whitespace */
};

struct raw_section {
	char *name;
	unsigned line;
};

struct loader {
	const char *path;
	const char *data;
	size_t len;
	size_t pos;
	unsigned line;		/* line most recently handed to inih */
	bool line_started_blank;
	char *current_section;

	struct raw_entry *entries;
	size_t n_entries, cap_entries;
	struct raw_section *sections;
	size_t n_sections, cap_sections;

	struct conf_msg *errors;	/* sorted by line before they are shown */
	unsigned n_errors;

	struct st_conf *conf;
};

/* One error, kept until the load ends: they are shown in line order (errors
 * of the whole file, line 0, last), whatever pass found them. */
struct conf_msg {
	unsigned line;
	unsigned seq;
	char *text;
};

static void ST_PRINTF(3, 4)
conf_error(struct loader *L, unsigned line, const char *fmt, ...)
{
	va_list ap;

	if (L->n_errors >= CONF_MAX_ERRORS) {
		L->n_errors++;
		return;
	}
	if (L->errors == NULL)
		L->errors = xcalloc(CONF_MAX_ERRORS, sizeof(*L->errors));
	struct conf_msg *m = &L->errors[L->n_errors];
	m->line = line;
	m->seq = L->n_errors++;
	va_start(ap, fmt);
	m->text = xvasprintf(fmt, ap);
	va_end(ap);
}

static int
conf_msg_cmp(const void *a, const void *b)
{
	const struct conf_msg *x = a, *y = b;
	unsigned xl = x->line == 0 ? UINT_MAX : x->line;
	unsigned yl = y->line == 0 ? UINT_MAX : y->line;

	if (xl != yl)
		return xl < yl ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* All errors as one text, a line each, "FILE:LINE: message". */
static char *
conf_errors_text(struct loader *L)
{
	struct st_buf out;
	unsigned shown = L->n_errors < CONF_MAX_ERRORS ? L->n_errors : CONF_MAX_ERRORS;

	st_buf_init(&out);
	qsort(L->errors, shown, sizeof(*L->errors), conf_msg_cmp);
	for (unsigned i = 0; i < shown; i++) {
		if (i > 0)
			st_buf_puts(&out, "\n");
		if (L->errors[i].line > 0)
			st_buf_printf(&out, "%s:%u: %s", L->path, L->errors[i].line,
				      L->errors[i].text);
		else
			st_buf_printf(&out, "%s: %s", L->path, L->errors[i].text);
	}
	if (L->n_errors > CONF_MAX_ERRORS)
		st_buf_printf(&out, "\n%s: too many errors (%u), only the first %u shown",
			      L->path, L->n_errors, CONF_MAX_ERRORS);
	char *text = st_buf_steal(&out);
	st_buf_free(&out);
	return text;
}

static char *
trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/*
 * inih line reader: one physical line per call, so L->line is the line of
 * whatever the handler is called for next.
 */
static char *
conf_reader(char *str, int num, void *stream)
{
	struct loader *L = stream;
	const char *start, *nl;
	size_t n;

	if (L->pos >= L->len)
		return NULL;
	start = L->data + L->pos;
	nl = memchr(start, '\n', L->len - L->pos);
	n = nl != NULL ? (size_t)(nl - start) : L->len - L->pos;
	L->pos += n + (nl != NULL ? 1 : 0);
	L->line++;

	if (n + 2 > (size_t)num) {
		/* Hand inih an empty line and remember the error. */
		conf_error(L, L->line, "line is longer than %d characters", num - 2);
		str[0] = '\n';
		str[1] = '\0';
		return str;
	}
	memcpy(str, start, n);
	str[n] = '\n';
	str[n + 1] = '\0';
	L->line_started_blank = n > 0 && (start[0] == ' ' || start[0] == '\t');

	/* Record section headers ourselves: inih does not report them. */
	char *p = str;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '[') {
		char *end = strchr(p, ']');
		if (end != NULL) {
			char *name = xstrndup(p + 1, (size_t)(end - p - 1));
			if (L->n_sections == L->cap_sections) {
				L->cap_sections = L->cap_sections ? L->cap_sections * 2 : 8;
				L->sections = xrealloc(L->sections,
						       L->cap_sections * sizeof(*L->sections));
			}
			char *t = trim(name);
			L->sections[L->n_sections].name = xstrdup(t);
			L->sections[L->n_sections].line = L->line;
			L->n_sections++;
			free(name);
		}
	}
	return str;
}

static int
conf_handler(void *user, const char *section, const char *name, const char *value)
{
	struct loader *L = user;
	struct raw_entry *e;

	if (L->n_entries == L->cap_entries) {
		L->cap_entries = L->cap_entries ? L->cap_entries * 2 : 32;
		L->entries = xrealloc(L->entries, L->cap_entries * sizeof(*L->entries));
	}
	e = &L->entries[L->n_entries++];
	e->section = xstrdup(section);
	e->key = xstrdup(name);
	e->value = xstrdup(value);
	e->line = L->line;
	e->continuation = L->line_started_blank;
	return 1;
}

/* ---------------------------------------------------------------------- */
/* Value parsers.  Each returns 0, or -1 with *why set to a static string or
 * an allocated message in *why_alloc. */

static bool
valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > ST_NAME_MAX)
		return false;
	for (const char *p = s; *p != '\0'; p++) {
		if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.')
			return false;
	}
	return true;
}

static bool
printable(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return false;
	}
	return true;
}

int
st_parse_duration_ms(const char *s, long *ms_r)
{
	static const struct { const char *unit; long ms; } units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
		{ "", 1000 },
	};
	char *end;
	long v;

	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0)
		return -1;
	for (size_t i = 0; i < ST_ARRAY_SIZE(units); i++) {
		if (strcmp(end, units[i].unit) == 0) {
			if (v > LONG_MAX / units[i].ms)
				return -1;
			*ms_r = v * units[i].ms;
			return 0;
		}
	}
	return -1;
}

int
st_parse_hostport(const char *s, char **host_r, int *port_r, char **error_r)
{
	const char *colon, *host_start, *host_end;
	char *end;
	long port;

	if (*s == '[') {
		host_start = s + 1;
		host_end = strchr(s, ']');
		if (host_end == NULL || host_end[1] != ':') {
			st_set_error(error_r, "expected [IPv6]:port");
			return -1;
		}
		colon = host_end + 1;
	} else {
		host_start = s;
		colon = strrchr(s, ':');
		if (colon == NULL) {
			st_set_error(error_r, "expected host:port");
			return -1;
		}
		host_end = colon;
		if (memchr(s, ':', (size_t)(colon - s)) != NULL) {
			st_set_error(error_r, "an IPv6 address must be written [address]:port");
			return -1;
		}
	}
	if (host_end == host_start) {
		st_set_error(error_r, "empty host");
		return -1;
	}
	for (const char *p = host_start; p < host_end; p++) {
		if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_' &&
		    *p != ':' && *p != '%') {
			st_set_error(error_r, "invalid character in host name");
			return -1;
		}
	}
	errno = 0;
	if (!isdigit((unsigned char)colon[1])) {
		st_set_error(error_r, "port must be a number from 1 to 65535");
		return -1;
	}
	port = strtol(colon + 1, &end, 10);
	if (errno != 0 || *end != '\0' || port < 1 || port > 65535) {
		st_set_error(error_r, "port must be a number from 1 to 65535");
		return -1;
	}
	if (host_r != NULL)
		*host_r = xstrndup(host_start, (size_t)(host_end - host_start));
	if (port_r != NULL)
		*port_r = (int)port;
	return 0;
}

static int
parse_uri(const char *s, const char *const *schemes, char **error_r)
{
	const char *sep = strstr(s, "://");
	char *hp;
	int ret;

	if (sep == NULL) {
		st_set_error(error_r, "expected a URI such as %s://host:port", schemes[0]);
		return -1;
	}
	bool ok = false;
	for (const char *const *c = schemes; *c != NULL; c++) {
		if (strlen(*c) == (size_t)(sep - s) && strncmp(s, *c, (size_t)(sep - s)) == 0)
			ok = true;
	}
	if (!ok) {
		struct st_buf b;
		st_buf_init(&b);
		for (const char *const *c = schemes; *c != NULL; c++)
			st_buf_printf(&b, "%s%s://", c == schemes ? "" : " or ", *c);
		st_set_error(error_r, "scheme must be %s", b.data);
		st_buf_free(&b);
		return -1;
	}
	const char *rest = sep + 3;
	size_t n = strcspn(rest, "/");
	if (rest[n] == '/' && rest[n + 1] != '\0') {
		st_set_error(error_r, "a path after host:port is not allowed");
		return -1;
	}
	hp = xstrndup(rest, n);
	if (strchr(hp, ':') == NULL || (hp[0] == '[' && strstr(hp, "]:") == NULL)) {
		/* Port left out: let the default port of the scheme apply. */
		char *with_port = xasprintf("%s:1", hp);
		ret = st_parse_hostport(with_port, NULL, NULL, error_r);
		free(with_port);
	} else {
		ret = st_parse_hostport(hp, NULL, NULL, error_r);
	}
	free(hp);
	return ret;
}

static int
parse_listen(const char *s, char **error_r)
{
	char *copy = xstrdup(s), *save = NULL;
	int ret = 0, n = 0;

	for (char *tok = strtok_r(copy, ", ", &save); tok != NULL; tok = strtok_r(NULL, ", ", &save)) {
		char *why = NULL;
		n++;
		if (st_parse_hostport(tok, NULL, NULL, &why) < 0) {
			st_set_error(error_r, "%s: %s", tok, why);
			free(why);
			ret = -1;
			break;
		}
	}
	if (ret == 0 && n == 0) {
		st_set_error(error_r, "expected host:port");
		ret = -1;
	}
	free(copy);
	return ret;
}

static int
parse_filter(const char *s, char **error_r)
{
	int depth = 0;

	if (s[0] != '(') {
		st_set_error(error_r, "an LDAP filter starts with '('");
		return -1;
	}
	for (const char *p = s; *p != '\0'; p++) {
		if (*p == '(')
			depth++;
		else if (*p == ')' && --depth < 0)
			break;
		if (depth == 0 && p[1] != '\0') {
			st_set_error(error_r, "text after the end of the filter");
			return -1;
		}
	}
	if (depth != 0) {
		st_set_error(error_r, "unbalanced parentheses");
		return -1;
	}
	return 0;
}

static void *
field_ptr(void *base, const struct option *o, int node)
{
	char *p = (char *)base + o->offset;

	if (o->flags & F_PER_NODE)
		return &((char **)p)[node];
	return p;
}

/* Parse VALUE for option O and store it.  Returns 0 or -1 with *why. */
static int
store_value(const struct option *o, void *base, int node, const char *value, char **why)
{
	void *field = field_ptr(base, o, node);
	char *end;
	long v;

	if (!printable(value)) {
		st_set_error(why, "control characters are not allowed");
		return -1;
	}
	switch (o->type) {
	case OT_STRING:
		if (*value == '\0') {
			st_set_error(why, "empty value");
			return -1;
		}
		break;
	case OT_NAME:
		if (!valid_name(value)) {
			st_set_error(why, "expected a name of 1 to %d letters, digits, '.', '_' or '-'",
				     ST_NAME_MAX);
			return -1;
		}
		break;
	case OT_PATH:
		if (value[0] != '/') {
			st_set_error(why, "expected an absolute path");
			return -1;
		}
		break;
	case OT_SECRET:
		if (value[0] != '/') {
			st_set_error(why, "expected an absolute path");
			return -1;
		}
		if (st_secret_check(value, why) < 0)
			return -1;
		break;
	case OT_BOOL: {
		static const char *const yes[] = { "yes", "true", "on", "1" };
		static const char *const no[] = { "no", "false", "off", "0" };
		for (size_t i = 0; i < ST_ARRAY_SIZE(yes); i++) {
			if (strcasecmp(value, yes[i]) == 0) {
				*(bool *)field = true;
				return 0;
			}
			if (strcasecmp(value, no[i]) == 0) {
				*(bool *)field = false;
				return 0;
			}
		}
		st_set_error(why, "expected yes or no");
		return -1;
	}
	case OT_INT:
		errno = 0;
		v = strtol(value, &end, 10);
		if (errno != 0 || end == value || *end != '\0' || v < o->min || v > o->max) {
			st_set_error(why, "expected a whole number from %ld to %ld", o->min, o->max);
			return -1;
		}
		*(long *)field = v;
		return 0;
	case OT_DURATION:
		if (st_parse_duration_ms(value, &v) < 0) {
			st_set_error(why, "expected a duration such as 500ms, 30s, 5m, 2h or 1d");
			return -1;
		}
		if (v < o->min || v > o->max) {
			st_set_error(why, "must be between %ldms and %lds", o->min, o->max / 1000);
			return -1;
		}
		*(long *)field = v;
		return 0;
	case OT_ENUM:
		for (int i = 0; o->choices[i] != NULL; i++) {
			if (strcmp(value, o->choices[i]) == 0) {
				*(int *)field = i;
				return 0;
			}
		}
		{
			struct st_buf b;
			st_buf_init(&b);
			for (int i = 0; o->choices[i] != NULL; i++)
				st_buf_printf(&b, "%s%s", i == 0 ? "" : ", ", o->choices[i]);
			st_set_error(why, "expected one of: %s", b.data);
			st_buf_free(&b);
		}
		return -1;
	case OT_HOSTPORT:
		if (st_parse_hostport(value, NULL, NULL, why) < 0)
			return -1;
		break;
	case OT_URI:
		if (parse_uri(value, o->choices, why) < 0)
			return -1;
		break;
	case OT_URIS: {
		char *copy = xstrdup(value), *save = NULL;
		int n = 0, rc = 0;
		for (char *u = strtok_r(copy, ",", &save); u != NULL && rc == 0;
		     u = strtok_r(NULL, ",", &save)) {
			while (*u == ' ' || *u == '\t')
				u++;
			size_t len = strlen(u);
			while (len > 0 && (u[len - 1] == ' ' || u[len - 1] == '\t'))
				u[--len] = '\0';
			rc = parse_uri(u, o->choices, why);
			n++;
		}
		free(copy);
		if (rc == 0 && n == 0) {
			st_set_error(why, "expected one or more URIs separated by commas");
			rc = -1;
		}
		if (rc < 0)
			return -1;
		break;
	}
	case OT_LISTEN:
		if (parse_listen(value, why) < 0)
			return -1;
		break;
	case OT_DN: {
		LDAPDN dn = NULL;
		if (ldap_str2dn(value, &dn, LDAP_DN_FORMAT_LDAPV3) != LDAP_SUCCESS || dn == NULL) {
			if (dn != NULL)
				ldap_dnfree(dn);
			st_set_error(why, "not a valid LDAP DN");
			return -1;
		}
		ldap_dnfree(dn);
		break;
	}
	case OT_FILTER:
		if (parse_filter(value, why) < 0)
			return -1;
		break;
	}
	/* String-valued types. */
	free(*(char **)field);
	*(char **)field = xstrdup(value);
	return 0;
}

/* ---------------------------------------------------------------------- */

static const struct option *
find_option(const char *kind, const char *key)
{
	for (size_t i = 0; i < ST_ARRAY_SIZE(options); i++) {
		if (strcmp(options[i].section, kind) == 0 && strcmp(options[i].key, key) == 0)
			return &options[i];
	}
	return NULL;
}

static int
section_kind(const char *name, const char **kind_r, const char **arg_r)
{
	for (size_t i = 0; i < ST_ARRAY_SIZE(section_kinds); i++) {
		size_t n = strlen(section_kinds[i]);

		if (strncmp(name, section_kinds[i], n) != 0)
			continue;
		if (name[n] == '\0') {
			*kind_r = section_kinds[i];
			*arg_r = NULL;
			return 0;
		}
		if (name[n] == ' ' || name[n] == '\t') {
			const char *a = name + n;
			while (*a == ' ' || *a == '\t')
				a++;
			*kind_r = section_kinds[i];
			*arg_r = a;
			return 0;
		}
	}
	return -1;
}

/* Where each option got its value, to find duplicates and required keys. */
struct seen {
	unsigned general;		/* line of "key", 0 if not given */
	unsigned node[ST_MAX_NODES];	/* line of "key.NODE" */
};

static void
apply_entry(struct loader *L, const struct raw_entry *e, const char *kind, void *base,
	    struct seen *seen_tab, const char *section_label)
{
	struct st_conf *conf = L->conf;
	const struct option *o;
	char *key = xstrdup(e->key), *dot;
	int node = -1;
	char *why = NULL;

	dot = strchr(key, '.');
	if (dot != NULL) {
		*dot = '\0';
		o = find_option(kind, key);
		if (o == NULL || !(o->flags & F_PER_NODE)) {
			if (o == NULL)
				conf_error(L, e->line, "[%s] unknown key \"%s\"", section_label, e->key);
			else
				conf_error(L, e->line, "[%s] %s cannot be set per node (%s)",
					   section_label, key, e->key);
			goto out;
		}
		node = st_conf_node_index(conf, dot + 1);
		if (node < 0) {
			struct st_buf b;
			st_buf_init(&b);
			for (size_t i = 0; i < conf->n_nodes; i++)
				st_buf_printf(&b, "%s%s", i ? ", " : "", conf->nodes[i].name);
			conf_error(L, e->line, "[%s] %s: unknown node \"%s\" (nodes: %s)",
				   section_label, e->key, dot + 1, b.len ? b.data : "none");
			st_buf_free(&b);
			goto out;
		}
	} else {
		o = find_option(kind, key);
		if (o == NULL) {
			conf_error(L, e->line, "[%s] unknown key \"%s\"", section_label, e->key);
			goto out;
		}
	}

	struct seen *s = &seen_tab[o - options];
	unsigned *where = node >= 0 ? &s->node[node] : &s->general;
	if (*where != 0) {
		if (e->continuation)
			conf_error(L, e->line, "[%s] %s: continuation lines are not supported "
				   "(remove the leading blank)", section_label, e->key);
		else
			conf_error(L, e->line, "[%s] %s: set twice (first on line %u)",
				   section_label, e->key, *where);
		goto out;
	}
	*where = e->line;

	if (node < 0 && (o->flags & F_PER_NODE)) {
		/* A plain key sets the value of every node without its own. */
		for (size_t i = 0; i < conf->n_nodes; i++) {
			if (s->node[i] != 0)
				continue;
			if (store_value(o, base, (int)i, e->value, &why) < 0) {
				conf_error(L, e->line, "[%s] %s: %s", section_label, e->key, why);
				break;
			}
		}
	} else if (store_value(o, base, node, e->value, &why) < 0) {
		conf_error(L, e->line, "[%s] %s: %s", section_label, e->key, why);
	}
out:
	free(why);
	free(key);
}

static void
apply_defaults(struct loader *L, const char *kind, void *base, const struct seen *seen_tab,
	       unsigned section_line, const char *section_label, size_t n_nodes,
	       const char *const *node_names)
{
	for (size_t i = 0; i < ST_ARRAY_SIZE(options); i++) {
		const struct option *o = &options[i];
		const struct seen *s = &seen_tab[i];
		char *why = NULL;

		if (strcmp(o->section, kind) != 0)
			continue;
		if (o->flags & F_PER_NODE) {
			for (size_t n = 0; n < n_nodes; n++) {
				if (s->general != 0 || s->node[n] != 0)
					continue;
				if (o->def != NULL) {
					if (store_value(o, base, (int)n, o->def, &why) < 0)
						st_fatal("bad default for %s: %s", o->key, why);
				} else if (o->flags & F_REQUIRED) {
					conf_error(L, section_line, "[%s] missing %s.%s",
						   section_label, o->key, node_names[n]);
				}
			}
		} else if (s->general == 0) {
			if (o->def != NULL) {
				if (store_value(o, base, 0, o->def, &why) < 0)
					st_fatal("bad default for %s: %s", o->key, why);
			} else if (o->flags & F_REQUIRED) {
				conf_error(L, section_line, "[%s] missing required key \"%s\"",
					   section_label, o->key);
			}
		}
		free(why);
	}
}

static size_t
count_options(void)
{
	return ST_ARRAY_SIZE(options);
}

static void
check_distinct_endpoints(struct loader *L, char **endpoint, const char *svc, unsigned line)
{
	struct st_conf *conf = L->conf;

	for (size_t i = 0; i < conf->n_nodes; i++) {
		for (size_t j = i + 1; j < conf->n_nodes; j++) {
			if (endpoint[i] != NULL && endpoint[j] != NULL &&
			    strcmp(endpoint[i], endpoint[j]) == 0)
				conf_error(L, line, "[%s] endpoint.%s and endpoint.%s are the same (%s)",
					   svc, conf->nodes[i].name, conf->nodes[j].name, endpoint[i]);
		}
	}
}

static void
load_semantics(struct loader *L)
{
	struct st_conf *conf = L->conf;
	size_t nopt = count_options();
	/* One seen table per section kind except node, plus one per node. */
	struct seen *seen_kind = xcalloc(ST_ARRAY_SIZE(section_kinds) * nopt, sizeof(struct seen));
	struct seen *seen_node = xcalloc(ST_MAX_NODES * nopt, sizeof(struct seen));
	unsigned kind_line[ST_ARRAY_SIZE(section_kinds)] = { 0 };
	const char *node_names[ST_MAX_NODES];

	/* Sections first: they define the nodes that keys refer to. */
	for (size_t i = 0; i < L->n_sections; i++) {
		const struct raw_section *sec = &L->sections[i];
		const char *kind, *arg;
		size_t k;

		if (section_kind(sec->name, &kind, &arg) < 0) {
			conf_error(L, sec->line, "unknown section [%s] (expected [cluster], "
				   "[node NAME], [pg], [ldap], [imap], [proxy] or [dump])", sec->name);
			continue;
		}
		for (k = 0; strcmp(section_kinds[k], kind) != 0; k++)
			;
		if (strcmp(kind, "node") == 0) {
			if (arg == NULL || !valid_name(arg)) {
				conf_error(L, sec->line, "[%s]: expected [node NAME] with a name of 1 to %d "
					   "letters, digits, '.', '_' or '-'", sec->name, ST_NAME_MAX);
				continue;
			}
			int dup = st_conf_node_index(conf, arg);
			if (dup >= 0) {
				conf_error(L, sec->line, "duplicate node \"%s\" (first defined on line %u)",
					   arg, conf->nodes[dup].line);
				continue;
			}
			if (conf->n_nodes == ST_MAX_NODES) {
				conf_error(L, sec->line, "too many nodes (at most %d)", ST_MAX_NODES);
				continue;
			}
			struct st_node *n = &conf->nodes[conf->n_nodes++];
			n->name = xstrdup(arg);
			n->line = sec->line;
			continue;
		}
		if (arg != NULL) {
			conf_error(L, sec->line, "[%s]: section [%s] takes no name", sec->name, kind);
			continue;
		}
		if (kind_line[k] != 0) {
			conf_error(L, sec->line, "section [%s] appears twice (first on line %u)",
				   kind, kind_line[k]);
			continue;
		}
		kind_line[k] = sec->line;
	}
	for (size_t i = 0; i < conf->n_nodes; i++)
		node_names[i] = conf->nodes[i].name;

	/* Then every key of every section. */
	for (size_t i = 0; i < L->n_entries; i++) {
		const struct raw_entry *e = &L->entries[i];
		const char *kind, *arg;
		size_t k;

		if (e->section[0] == '\0') {
			conf_error(L, e->line, "key \"%s\" outside of any section", e->key);
			continue;
		}
		if (section_kind(e->section, &kind, &arg) < 0)
			continue;	/* reported with the section */
		for (k = 0; strcmp(section_kinds[k], kind) != 0; k++)
			;
		if (strcmp(kind, "node") == 0) {
			int idx = arg != NULL ? st_conf_node_index(conf, arg) : -1;
			if (idx < 0)
				continue;	/* reported with the section */
			apply_entry(L, e, kind, &conf->nodes[idx], &seen_node[(size_t)idx * nopt],
				    e->section);
		} else {
			if (arg != NULL)
				continue;
			apply_entry(L, e, kind, conf, &seen_kind[k * nopt], kind);
		}
	}

	/* Defaults and required keys. */
	if (kind_line[0] == 0)
		conf_error(L, 0, "missing section [cluster]");
	else
		apply_defaults(L, "cluster", conf, &seen_kind[0], kind_line[0], "cluster", 0, NULL);
	for (size_t i = 0; i < conf->n_nodes; i++) {
		char label[ST_NAME_MAX + 8];
		snprintf(label, sizeof(label), "node %s", conf->nodes[i].name);
		apply_defaults(L, "node", &conf->nodes[i], &seen_node[i * nopt], conf->nodes[i].line,
			       label, 0, NULL);
		if (conf->nodes[i].hostname == NULL)
			conf->nodes[i].hostname = xstrdup(conf->nodes[i].name);
	}
	if (conf->n_nodes < 2)
		conf_error(L, 0, "a cluster needs at least two [node NAME] sections (found %zu)",
			   conf->n_nodes);
	for (size_t k = 2; k < ST_ARRAY_SIZE(section_kinds); k++) {
		const char *kind = section_kinds[k];

		if (kind_line[k] == 0)
			continue;
		apply_defaults(L, kind, conf, &seen_kind[k * nopt], kind_line[k], kind,
			       conf->n_nodes, node_names);
		if (k - 2 < ST_SVC_COUNT) {
			conf->service_enabled[k - 2] = true;
			conf->service_line[k - 2] = kind_line[k];
		} else if (strcmp(kind, "proxy") == 0) {
			conf->proxy_present = true;
		} else if (strcmp(kind, "dump") == 0) {
			conf->dump_present = true;
		}
	}

	/* Endpoints, parsed once for every program (each was checked above). */
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		char **eps = s == ST_SVC_PG ? conf->pg.endpoint : s == ST_SVC_LDAP ? conf->ldap.endpoint
										   : conf->imap.endpoint;
		for (size_t n = 0; n < conf->n_nodes && conf->service_enabled[s]; n++) {
			char *why = NULL;
			if (eps[n] != NULL &&
			    st_endpoint_parse(s, eps[n], &conf->endpoints[s][n], &why) < 0) {
				conf_error(L, kind_line[2 + s], "[%s] endpoint.%s: %s", st_service_name(s),
					   conf->nodes[n].name, why);
				free(why);
			}
		}
	}

	/* Cross-checks. */
	if (conf->service_enabled[ST_SVC_PG])
		check_distinct_endpoints(L, conf->pg.endpoint, "pg", kind_line[2]);
	if (conf->service_enabled[ST_SVC_LDAP]) {
		check_distinct_endpoints(L, conf->ldap.endpoint, "ldap", kind_line[3]);
		if ((conf->ldap.config_bind_dn == NULL) != (conf->ldap.config_password_file == NULL))
			conf_error(L, kind_line[3], "[ldap] config_bind_dn and config_password_file "
				   "go together");
	}
	if (conf->service_enabled[ST_SVC_IMAP]) {
		check_distinct_endpoints(L, conf->imap.endpoint, "imap", kind_line[4]);
		if ((conf->imap.users_file == NULL) == (conf->imap.users_ldap_filter == NULL))
			conf_error(L, kind_line[4], "[imap] set exactly one of users_file and "
				   "users_ldap_filter");
		if (conf->imap.users_ldap_filter != NULL && !conf->service_enabled[ST_SVC_LDAP])
			conf_error(L, kind_line[4], "[imap] users_ldap_filter needs an [ldap] section");
		if (conf->imap.changes == ST_IMAP_CHANGES_DOVECOT && conf->etcd.urls == NULL)
			conf_error(L, kind_line[4], "[imap] changes = dovecot needs [cluster] etcd: the "
				   "master's node tells the standby's through it which users changed");
		if (conf->imap.kick_command != NULL &&
		    conf->imap.kick_command[strspn(conf->imap.kick_command, " \t")] != '/')
			conf_error(L, kind_line[4], "[imap] kick_command must start with an absolute "
				   "path (it runs without a shell)");
	}
	if (conf->fence_command != NULL &&
	    conf->fence_command[strspn(conf->fence_command, " \t")] != '/')
		conf_error(L, kind_line[7], "[failover] fence_command must start with an absolute "
			   "path (it runs without a shell)");
	if (conf->proxy_present) {
		bool any = false;
		for (int s = 0; s < ST_SVC_COUNT; s++) {
			for (size_t n = 0; n < conf->n_nodes; n++) {
				if (conf->proxy.listen[s][n] == NULL)
					continue;
				any = true;
				if (!conf->service_enabled[s])
					conf_error(L, kind_line[5], "[proxy] %s_listen is set but there is "
						   "no [%s] section", st_service_name(s), st_service_name(s));
			}
		}
		if (!any)
			conf_error(L, kind_line[5], "[proxy] no pg_listen, ldap_listen or imap_listen");
	}

	free(seen_kind);
	free(seen_node);
}

static void
loader_free(struct loader *L)
{
	for (size_t i = 0; i < L->n_entries; i++) {
		free(L->entries[i].section);
		free(L->entries[i].key);
		free(L->entries[i].value);
	}
	free(L->entries);
	for (size_t i = 0; i < L->n_sections; i++)
		free(L->sections[i].name);
	free(L->sections);
	for (unsigned i = 0; i < L->n_errors && i < CONF_MAX_ERRORS; i++)
		free(L->errors[i].text);
	free(L->errors);
}

struct st_conf *
st_conf_parse(const char *name, const char *data, size_t len, char **errors_r)
{
	struct loader L = { 0 };
	const char *nul;
	int rc;

	*errors_r = NULL;
	L.path = name;
	L.data = data;
	L.len = len;
	L.conf = xcalloc(1, sizeof(*L.conf));
	L.conf->path = xstrdup(name);

	nul = memchr(data, '\0', len);
	if (nul != NULL) {
		unsigned line = 1;
		for (const char *p = data; p < nul; p++)
			line += *p == '\n';
		conf_error(&L, line, "NUL byte in the file");
		goto done;
	}
	rc = ini_parse_stream(conf_reader, &L, conf_handler, &L);
	if (rc > 0)
		conf_error(&L, (unsigned)rc, "syntax error: expected [section], key = value, "
			   "or a comment starting with # or ;");
	else if (rc < 0)
		conf_error(&L, 0, "cannot parse (out of memory)");
	if (L.n_errors == 0)
		load_semantics(&L);
done:
	if (L.n_errors > 0) {
		*errors_r = conf_errors_text(&L);
		st_conf_free(&L.conf);
	}
	struct st_conf *conf = L.conf;
	loader_free(&L);
	return conf;
}

struct st_conf *
st_conf_load(const char *path, char **errors_r)
{
	struct st_conf *conf;
	struct stat sb;
	char *data;
	size_t len = 0;
	FILE *f;

	*errors_r = NULL;
	f = fopen(path, "re");
	if (f == NULL) {
		*errors_r = xasprintf("%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &sb) < 0 || !S_ISREG(sb.st_mode)) {
		*errors_r = xasprintf("%s: not a regular file", path);
		fclose(f);
		return NULL;
	}
	if (sb.st_size > CONF_MAX_SIZE) {
		*errors_r = xasprintf("%s: larger than %d bytes", path, CONF_MAX_SIZE);
		fclose(f);
		return NULL;
	}
	data = xmalloc((size_t)sb.st_size + 1);
	len = fread(data, 1, (size_t)sb.st_size, f);
	if (ferror(f)) {
		*errors_r = xasprintf("%s: read error: %s", path, strerror(errno));
		fclose(f);
		free(data);
		return NULL;
	}
	fclose(f);
	conf = st_conf_parse(path, data, len, errors_r);
	free(data);
	return conf;
}

static void
free_option_value(const struct option *o, void *base)
{
	switch (o->type) {
	case OT_BOOL:
	case OT_INT:
	case OT_DURATION:
		return;
	case OT_ENUM:
		return;
	default:
		break;
	}
	if (o->flags & F_PER_NODE) {
		for (int n = 0; n < ST_MAX_NODES; n++)
			free(*(char **)field_ptr(base, o, n));
	} else {
		free(*(char **)field_ptr(base, o, 0));
	}
}

void
st_conf_free(struct st_conf **confp)
{
	struct st_conf *conf = *confp;

	if (conf == NULL)
		return;
	for (size_t i = 0; i < ST_ARRAY_SIZE(options); i++) {
		const struct option *o = &options[i];

		if (strcmp(o->section, "node") == 0) {
			for (size_t n = 0; n < conf->n_nodes; n++)
				free_option_value(o, &conf->nodes[n]);
		} else {
			free_option_value(o, conf);
		}
	}
	for (size_t n = 0; n < conf->n_nodes; n++)
		free(conf->nodes[n].name);
	for (int s = 0; s < ST_SVC_COUNT; s++)
		for (size_t n = 0; n < ST_MAX_NODES; n++)
			free(conf->endpoints[s][n].host);
	free(conf->path);
	free(conf);
	*confp = NULL;
}

/* ---------------------------------------------------------------------- */

int
st_endpoint_parse(enum st_service svc, const char *endpoint, struct st_endpoint *ep,
		  char **error_r)
{
	static const struct {
		enum st_service svc;
		const char *scheme;
		int port;
		bool tls;
	} schemes[] = {
		{ ST_SVC_LDAP, "ldap://", 389, false },
		{ ST_SVC_LDAP, "ldaps://", 636, true },
		{ ST_SVC_IMAP, "imap://", 143, false },
		{ ST_SVC_IMAP, "imaps://", 993, true },
	};
	char *hp = NULL, *why = NULL;
	int ret = -1;

	memset(ep, 0, sizeof(*ep));
	if (svc == ST_SVC_PG) {
		if (st_parse_hostport(endpoint, &ep->host, &ep->port, &why) < 0) {
			st_set_error(error_r, "pg endpoint %s: %s", endpoint, why);
			free(why);
			return -1;
		}
		return 0;
	}
	size_t i;
	for (i = 0; i < ST_ARRAY_SIZE(schemes); i++) {
		if (schemes[i].svc == svc && st_str_has_prefix(endpoint, schemes[i].scheme))
			break;
	}
	if (i == ST_ARRAY_SIZE(schemes)) {
		st_set_error(error_r, "%s endpoint %s: scheme must be %s", st_service_name(svc),
			     endpoint, svc == ST_SVC_LDAP ? "ldap:// or ldaps://" : "imap:// or imaps://");
		return -1;
	}
	const char *rest = endpoint + strlen(schemes[i].scheme);
	size_t n = strcspn(rest, "/?#");
	if (rest[n] != '\0' && strcmp(rest + n, "/") != 0) {
		st_set_error(error_r, "%s endpoint %s: nothing may follow host:port", st_service_name(svc),
			     endpoint);
		return -1;
	}
	hp = xstrndup(rest, n);
	/* The port is optional: host, [v6] or a bare v6 in brackets. */
	const char *close = hp[0] == '[' ? strchr(hp, ']') : NULL;
	bool has_port = hp[0] == '[' ? (close != NULL && close[1] == ':') : strchr(hp, ':') != NULL;
	if (!has_port) {
		char *with = xasprintf("%s:%d", hp, schemes[i].port);
		free(hp);
		hp = with;
	}
	if (st_parse_hostport(hp, &ep->host, &ep->port, &why) < 0) {
		st_set_error(error_r, "%s endpoint %s: %s", st_service_name(svc), endpoint, why);
		goto out;
	}
	ep->tls = schemes[i].tls;
	ret = 0;
out:
	free(hp);
	free(why);
	return ret;
}

const struct st_endpoint *
st_conf_endpoint(const struct st_conf *conf, enum st_service svc, int node_idx)
{
	static const struct st_endpoint none = { 0 };

	if (node_idx < 0 || (size_t)node_idx >= conf->n_nodes)
		return &none;
	return &conf->endpoints[svc][node_idx];
}

const char *
st_conf_pg_sslmode(const struct st_conf *conf, int node_idx)
{
	if (conf->pg.sslmode != SSLMODE_AUTO)
		return sslmodes[conf->pg.sslmode];
	return sslmodes[st_host_is_loopback(st_conf_endpoint(conf, ST_SVC_PG, node_idx)->host)
			? SSLMODE_PREFER : SSLMODE_VERIFY_FULL];
}

int
st_conf_starttls(const struct st_conf *conf, enum st_service svc, int node_idx)
{
	int mode = svc == ST_SVC_LDAP ? conf->ldap.starttls : conf->imap.starttls;

	if (mode != ST_TLS_AUTO)
		return mode;
	return st_host_is_loopback(st_conf_endpoint(conf, svc, node_idx)->host) ? ST_TLS_NO : ST_TLS_DEMAND;
}

/* The host of an etcd URL ("http://h:2379", "https://[v6]:2379/"), or NULL. */
static char *
url_host(const char *url)
{
	const char *p = strstr(url, "://");

	if (p == NULL)
		return NULL;
	p += 3;
	if (*p == '[') {
		const char *e = strchr(p, ']');
		return e ? xstrndup(p, (size_t)(e - p + 1)) : NULL;
	}
	return xstrndup(p, strcspn(p, ":/"));
}

char *
st_conf_tls_warnings(const struct st_conf *conf, unsigned svcs)
{
	struct st_buf b;

	st_buf_init(&b);
	for (size_t i = 0; i < conf->n_nodes; i++) {
		const char *node = conf->nodes[i].name;
		const struct st_endpoint *ep;

		ep = st_conf_endpoint(conf, ST_SVC_PG, (int)i);
		if ((svcs & (1u << ST_SVC_PG)) && ep->host != NULL && !st_host_is_loopback(ep->host)) {
			const char *m = st_conf_pg_sslmode(conf, (int)i);
			if (strcmp(m, "verify-full") != 0)
				st_buf_printf(&b, "[pg] sslmode = %s: node %s's PostgreSQL (%s) is %s\n", m, node,
					      ep->host, strcmp(m, "verify-ca") == 0 ? "not checked against its host name"
					      : strcmp(m, "require") == 0 ? "encrypted but its certificate is not checked"
					      : strcmp(m, "disable") == 0 ? "reached in plaintext"
					      : "reached in plaintext if it offers no TLS, and its certificate is not checked");
		}
		for (enum st_service svc = ST_SVC_LDAP; svc <= ST_SVC_IMAP; svc++) {
			ep = st_conf_endpoint(conf, svc, (int)i);
			if (!(svcs & (1u << svc)) || ep->host == NULL || ep->tls || st_host_is_loopback(ep->host))
				continue;
			int m = st_conf_starttls(conf, svc, (int)i);
			if (m != ST_TLS_DEMAND)
				st_buf_printf(&b, "[%s] starttls = %s: node %s's %s server (%s) is reached in "
					      "plaintext%s\n", st_service_name(svc), tls_modes[m], node,
					      svc == ST_SVC_LDAP ? "LDAP" : "IMAP", ep->host,
					      m == ST_TLS_TRY ? " if StartTLS fails" : "");
		}
	}
	if (conf->etcd.urls != NULL) {
		char *copy = xstrdup(conf->etcd.urls), *save = NULL;
		for (char *u = strtok_r(copy, ", \t", &save); u; u = strtok_r(NULL, ", \t", &save)) {
			char *host = url_host(u);
			if (st_str_has_prefix(u, "http://") && host != NULL && !st_host_is_loopback(host))
				st_buf_printf(&b, "[cluster] etcd %s is plaintext to another host: use https:// "
					      "and etcd_ca\n", u);
			free(host);
		}
		free(copy);
	}
	if (b.len == 0) {
		st_buf_free(&b);
		return NULL;
	}
	char *text = st_buf_steal(&b);
	st_buf_free(&b);
	return text;
}

const char *
st_service_name(enum st_service svc)
{
	static const char *const names[] = { "pg", "ldap", "imap" };

	return names[svc];
}

int
st_service_parse(const char *s, enum st_service *svc_r)
{
	for (int i = 0; i < ST_SVC_COUNT; i++) {
		if (strcmp(s, st_service_name(i)) == 0) {
			*svc_r = (enum st_service)i;
			return 0;
		}
	}
	return -1;
}

int
st_conf_node_index(const struct st_conf *conf, const char *name)
{
	for (size_t i = 0; i < conf->n_nodes; i++) {
		if (strcmp(conf->nodes[i].name, name) == 0)
			return (int)i;
	}
	return -1;
}

const struct st_node *
st_conf_node(const struct st_conf *conf, const char *name)
{
	int i = st_conf_node_index(conf, name);

	return i < 0 ? NULL : &conf->nodes[i];
}

const struct st_node *
st_conf_local_node(const struct st_conf *conf, const char *name, char **error_r)
{
	char host[256];
	const struct st_node *match = NULL;

	if (name == NULL)
		name = getenv("STANDIN_NODE");
	if (!st_str_empty(name)) {
		const struct st_node *n = st_conf_node(conf, name);
		if (n == NULL)
			st_set_error(error_r, "%s: no [node %s] section", conf->path, name);
		return n;
	}
	if (gethostname(host, sizeof(host)) < 0) {
		st_set_error(error_r, "gethostname: %s", strerror(errno));
		return NULL;
	}
	host[sizeof(host) - 1] = '\0';
	host[strcspn(host, ".")] = '\0';
	for (size_t i = 0; i < conf->n_nodes; i++) {
		if (strcmp(conf->nodes[i].hostname, host) == 0) {
			match = &conf->nodes[i];
			break;
		}
	}
	if (match == NULL)
		st_set_error(error_r, "%s: no node has hostname \"%s\"; set hostname in the "
			     "[node NAME] section of this machine, or use -n NODE", conf->path, host);
	return match;
}

/* ---------------------------------------------------------------------- */

static void
format_value(const struct option *o, void *base, int node, struct st_buf *out)
{
	void *field = field_ptr(base, o, node);

	switch (o->type) {
	case OT_BOOL:
		st_buf_puts(out, *(bool *)field ? "yes" : "no");
		return;
	case OT_INT:
		st_buf_printf(out, "%ld", *(long *)field);
		return;
	case OT_DURATION: {
		long ms = *(long *)field;
		if (ms == 0)
			st_buf_puts(out, "0s");
		else if (ms % 86400000 == 0)
			st_buf_printf(out, "%ldd", ms / 86400000);
		else if (ms % 3600000 == 0)
			st_buf_printf(out, "%ldh", ms / 3600000);
		else if (ms % 60000 == 0)
			st_buf_printf(out, "%ldm", ms / 60000);
		else if (ms % 1000 == 0)
			st_buf_printf(out, "%lds", ms / 1000);
		else
			st_buf_printf(out, "%ldms", ms);
		return;
	}
	case OT_ENUM:
		st_buf_puts(out, o->choices[*(int *)field]);
		return;
	default:
		break;
	}
	const char *s = *(char **)field;
	if (s != NULL)
		st_buf_puts(out, s);
}

static void
dump_section(const struct st_conf *conf, const char *kind, void *base, FILE *out)
{
	struct st_buf b;

	st_buf_init(&b);
	for (size_t i = 0; i < ST_ARRAY_SIZE(options); i++) {
		const struct option *o = &options[i];

		if (strcmp(o->section, kind) != 0)
			continue;
		if (o->flags & F_PER_NODE) {
			for (size_t n = 0; n < conf->n_nodes; n++) {
				st_buf_reset(&b);
				format_value(o, base, (int)n, &b);
				if (b.len > 0)
					fprintf(out, "%s.%s = %s\n", o->key, conf->nodes[n].name, b.data);
			}
			continue;
		}
		st_buf_reset(&b);
		format_value(o, base, 0, &b);
		if (b.len > 0)
			fprintf(out, "%s = %s\n", o->key, b.data);
		else
			fprintf(out, "# %s is not set\n", o->key);
	}
	st_buf_free(&b);
}

void
st_conf_dump(const struct st_conf *conf, FILE *out)
{
	fprintf(out, "# effective configuration of %s\n[cluster]\n", conf->path);
	dump_section(conf, "cluster", (void *)conf, out);
	for (size_t n = 0; n < conf->n_nodes; n++) {
		fprintf(out, "\n[node %s]\n", conf->nodes[n].name);
		dump_section(conf, "node", (void *)&conf->nodes[n], out);
	}
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (!conf->service_enabled[s])
			continue;
		fprintf(out, "\n[%s]\n", st_service_name(s));
		dump_section(conf, st_service_name(s), (void *)conf, out);
	}
	if (conf->proxy_present) {
		fprintf(out, "\n[proxy]\n");
		dump_section(conf, "proxy", (void *)conf, out);
	}
	if (conf->dump_present) {
		fprintf(out, "\n[dump]\n");
		dump_section(conf, "dump", (void *)conf, out);
	}
	if (conf->fence_command != NULL) {
		fprintf(out, "\n[failover]\n");
		dump_section(conf, "failover", (void *)conf, out);
	}
}

size_t
st_conf_option_count(void)
{
	return ST_ARRAY_SIZE(options);
}

void
st_conf_option_get(size_t i, struct st_conf_option_info *info_r)
{
	const struct option *o = &options[i];

	info_r->section = o->section;
	info_r->key = o->key;
	info_r->per_node = (o->flags & F_PER_NODE) != 0;
	info_r->required = (o->flags & F_REQUIRED) != 0;
	info_r->default_value = o->def;
	info_r->doc = o->doc;
}
