/*
 * conf.h: the one cluster configuration file (doc/architecture.md, section 3).
 *
 * INI, read by every program on every node.  Parsing is driven by one table
 * of options (conf.c): type, default, whether it is required, whether it may
 * be given per node as "key.NODE", and a line of documentation.  Loading
 * validates everything and reports every error as "file:line: [section] key:
 * what is wrong".  Roles are not here: they live in the cluster state.
 *
 * Memory: a struct st_conf and everything it points to belong to the caller
 * of st_conf_load(), freed with st_conf_free().
 */
#ifndef STANDIN_CONF_H
#define STANDIN_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "lib/util.h"

#define ST_CONF_DEFAULT_PATH "/etc/standin/standin.conf"
#define ST_MAX_NODES 8
#define ST_NAME_MAX 32

enum st_service {
	ST_SVC_PG,
	ST_SVC_LDAP,
	ST_SVC_IMAP,
	ST_SVC_COUNT
};

const char *st_service_name(enum st_service svc);
int st_service_parse(const char *s, enum st_service *svc_r);

enum st_tls_mode {
	ST_TLS_NO,
	ST_TLS_TRY,
	ST_TLS_DEMAND,
	ST_TLS_AUTO,	/* the default: DEMAND, or NO to a loopback address (st_conf_starttls) */
};

enum st_log_dest {
	ST_LOGDEST_AUTO,	/* stderr in the foreground, syslog when detached */
	ST_LOGDEST_STDERR,
	ST_LOGDEST_SYSLOG,
};

enum st_pg_conflicts {
	ST_PG_CONFLICTS_STOP,		/* stop with an error naming the table and key */
	ST_PG_CONFLICTS_MASTER_WINS,	/* the master's row replaces the standby's, logged */
};

enum st_ldap_sync_mode {
	ST_LDAP_PERSIST,	/* refreshAndPersist */
	ST_LDAP_POLL,		/* refreshOnly every poll_interval */
};

enum st_imap_login {
	ST_IMAP_LOGIN_MASTER_USER,	/* LOGIN user<separator>admin */
	ST_IMAP_LOGIN_SASL_PLAIN,	/* AUTHENTICATE PLAIN, authzid user, authcid admin */
};

enum st_imap_changes {
	ST_IMAP_CHANGES_IDLE,		/* IDLE sessions for the idle_users last changed */
	ST_IMAP_CHANGES_DOVECOT,	/* Dovecot's replication plugin, relayed through etcd */
};

enum st_dump_from {
	ST_DUMP_FROM_STANDBY,
	ST_DUMP_FROM_MASTER,
};

enum st_compress {
	ST_COMPRESS_ZSTD,
	ST_COMPRESS_NONE,
};

struct st_node {
	char *name;
	char *address;
	char *hostname;		/* which machine is this node; default: name */
	char *state_dir;	/* cluster state file lives here */
	char *run_dir;		/* status and admin sockets, pidfiles */
	unsigned line;		/* line of its [node NAME] header */
};

struct st_conf_pg {
	char *endpoint[ST_MAX_NODES];	/* host:port */
	char *dbname;
	char *user;
	char *passfile;
	int sslmode;			/* index into st_conf_sslmode_name(); "auto": st_conf_pg_sslmode() */
	char *sslrootcert;
	long connect_timeout_ms;
	bool streaming;			/* large transactions streamed while in progress */
	int conflicts;			/* enum st_pg_conflicts */
	long slot_warn_mb;		/* standinctl status warns past this much WAL held */
};

struct st_conf_ldap {
	char *endpoint[ST_MAX_NODES];	/* ldap:// or ldaps:// URI */
	char *suffix;
	char *bind_dn;
	char *password_file;
	char *config_bind_dn;		/* cn=config identity for fencing (olcReadOnly), or NULL */
	char *config_password_file;
	int starttls;			/* enum st_tls_mode */
	char *ca_file;
	int sync_mode;			/* enum st_ldap_sync_mode */
	long poll_interval_ms;
	long timeout_ms;
};

struct st_conf_imap {
	char *endpoint[ST_MAX_NODES];	/* imap:// or imaps:// URI */
	char *admin_user;
	char *password_file;
	char *kick_command;		/* argv (words, %n the node) run to end sessions, or NULL */
	char *master_separator;
	int login;			/* enum st_imap_login */
	int starttls;			/* enum st_tls_mode */
	char *ca_file;
	char *users_file;
	char *users_ldap_filter;
	char *users_ldap_attribute;
	long workers;
	int changes;			/* enum st_imap_changes */
	long idle_users;
	char *dovecot_fifo[ST_MAX_NODES];
	char *dovecot_fifo_user;
	long full_pass_interval_ms;
	long timeout_ms;
	bool notify;
};

struct st_conf_proxy {
	char *listen[ST_SVC_COUNT][ST_MAX_NODES];	/* "host:port[,host:port]" */
	long connect_timeout_ms;
	long pause_timeout_ms;
	long drain_time_ms;
	long idle_timeout_ms;
	long first_byte_timeout_ms;
	long health_interval_ms;
	bool splice;
	long max_clients;
	bool proxy_protocol[ST_SVC_COUNT];
};

struct st_conf_dump {
	char *dir;
	int from;			/* enum st_dump_from */
	bool fallback_to_master;
	long max_lag_ms;
	long keep;
	long daily;
	long weekly;
	int compress;			/* enum st_compress */
	long zstd_level;
	long jobs;
	long timeout_ms;
	long max_age_ms;
	char *pg_databases;		/* NULL: every database */
	char *pg_bindir;
	char *slapcat_config[ST_MAX_NODES];
};

/* A service's endpoint on a node, parsed once when the file is loaded. */
struct st_endpoint {
	char *host;		/* without brackets; NULL: the node has no endpoint */
	int port;		/* the scheme's default port when the URI has none */
	bool tls;		/* ldaps:// or imaps:// */
};

struct st_conf_etcd {
	char *urls;			/* "http://h:2379, https://h2:2379"; NULL: no etcd */
	char *ca_file, *cert_file, *key_file;
	char *user, *password_file;
	long timeout_ms;
};

struct st_conf {
	char *path;

	/* [cluster] */
	char *cluster_name;
	int log_level;			/* enum st_log_level */
	bool log_data;			/* row keys and values in logs and status (st_log_set_data) */
	int log_dest;			/* enum st_log_dest */
	char *admin_group;
	struct st_conf_etcd etcd;

	size_t n_nodes;
	struct st_node nodes[ST_MAX_NODES];

	bool service_enabled[ST_SVC_COUNT];
	unsigned service_line[ST_SVC_COUNT];
	struct st_conf_pg pg;
	struct st_conf_ldap ldap;
	struct st_conf_imap imap;

	bool proxy_present;
	struct st_conf_proxy proxy;

	bool dump_present;
	struct st_conf_dump dump;

	/* [failover] */
	char *fence_command;		/* STONITH: argv words, %n the node to fence; NULL none */
	long fence_timeout_ms;

	/* Each [SERVICE] endpoint.NODE, parsed (st_conf_endpoint). */
	struct st_endpoint endpoints[ST_SVC_COUNT][ST_MAX_NODES];
};

/*
 * Parse a service's endpoint: host:port or [v6]:port for pg; ldap://,
 * ldaps://, imap://, imaps:// URIs (port optional) for ldap and imap.
 */
int st_endpoint_parse(enum st_service svc, const char *endpoint, struct st_endpoint *ep,
		      char **error_r) ST_WARN_UNUSED;

/* Node NODE_IDX's endpoint of SVC; ->host is NULL when it has none. */
const struct st_endpoint *st_conf_endpoint(const struct st_conf *conf, enum st_service svc,
					   int node_idx);

/*
 * Load and validate PATH.  On failure returns NULL and sets *errors_r to
 * every error found, one per line, each "path:line: ...".
 */
struct st_conf *st_conf_load(const char *path, char **errors_r) ST_WARN_UNUSED;

/* Same, from a buffer (NAME is used in messages).  Used by tests and fuzzing. */
struct st_conf *st_conf_parse(const char *name, const char *data, size_t len,
			      char **errors_r) ST_WARN_UNUSED;

void st_conf_free(struct st_conf **conf);

/* The name of conf->pg.sslmode as configured ("auto" included). */
const char *st_conf_sslmode_name(int sslmode);
/*
 * libpq's sslmode for node NODE_IDX's PostgreSQL: [pg] sslmode, or with
 * "auto" (the default) verify-full, prefer to a loopback address.
 */
const char *st_conf_pg_sslmode(const struct st_conf *conf, int node_idx);
/*
 * StartTLS for node NODE_IDX's SVC (ST_SVC_LDAP or ST_SVC_IMAP) endpoint:
 * ST_TLS_NO, TRY or DEMAND; "auto" (the default) is DEMAND, NO to a
 * loopback address.  ldaps:// and imaps:// endpoints are TLS whatever it is.
 */
int st_conf_starttls(const struct st_conf *conf, enum st_service svc, int node_idx);
/*
 * What leaves the host without a verified TLS connection (a server of
 * another host with TLS off, optional or unverified; plaintext etcd):
 * one line per such connection, for the services in SVCS (a bit per enum
 * st_service; etcd always), or NULL when there is none.  Daemons log it
 * at start, "-t" and "standinctl config check" print it.
 */
char *st_conf_tls_warnings(const struct st_conf *conf, unsigned svcs);
/* "stop" or "master-wins": conf->pg.conflicts. */
const char *st_conf_pg_conflicts_name(int conflicts);

/* The node with that name, or NULL. */
const struct st_node *st_conf_node(const struct st_conf *conf, const char *name);
int st_conf_node_index(const struct st_conf *conf, const char *name);

/*
 * Which node this machine is: NAME when given (-n option or $STANDIN_NODE),
 * otherwise the node whose hostname is this machine's short host name.
 */
const struct st_node *st_conf_local_node(const struct st_conf *conf, const char *name,
					 char **error_r);

/* Print the effective configuration, defaults included, as a valid file. */
void st_conf_dump(const struct st_conf *conf, FILE *out);

/* The option table, for documentation checks. */
struct st_conf_option_info {
	const char *section;	/* "cluster", "node", "pg", ... */
	const char *key;
	bool per_node;
	bool required;
	const char *default_value;
	const char *doc;
};
size_t st_conf_option_count(void);
void st_conf_option_get(size_t i, struct st_conf_option_info *info_r);

/* Split "host:port" or "[v6]:port".  Returns 0 or -1 with a message. */
int st_parse_hostport(const char *s, char **host_r, int *port_r, char **error_r);

/* Parse "1500ms", "5s", "2m", "1h", "1d" or a bare number of seconds. */
int st_parse_duration_ms(const char *s, long *ms_r);

#endif
