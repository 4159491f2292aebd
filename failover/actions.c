/*
 * actions.c: standin-failoverd's steps on its own node (see actions.h).
 */
#include "config.h"

#include "failover/actions.h"

#include <inttypes.h>
#include <pthread.h>
#include <ldap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/cstore.h"
#include "lib/ctl.h"
#include "lib/ldconn.h"
#include "lib/log.h"
#include "lib/pgconn.h"
#include "lib/proc.h"

#define LOCAL_TIMEOUT_MS 5000		/* a local daemon's answer to a quick command */
#define TERMINATE_WAIT_MS 5000		/* a client session ending after its signal */
#define KICK_TIMEOUT_MS 30000
#define PROXY_FOLLOW_MS 5000		/* the proxy taking the new state from the file */

static void
sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ local daemons */

/*
 * PROGRAM's JSON reply to COMMAND on this node (as an order at EPOCH, 0:
 * none), or NULL with *error_r;
 * *absent_r (may be NULL) is true when the daemon has no socket (not running).
 */
static json_t *
local(const struct st_node *node, uint64_t epoch, const char *program, const char *command,
      long timeout_ms, bool *absent_r, char **error_r)
{
	char *path = st_ctl_socket_path(node, program), *reply = NULL, *err = NULL;
	size_t verb = strcspn(command, " ");
	json_t *j = NULL;
	/* An order's commands carry its epoch: a daemon whose node is at a
	 * higher one refuses them (lib/ctl.c). */
	char *line = epoch > 0 ? xasprintf("@%" PRIu64 " %s", epoch, command) : xstrdup(command);

	if (absent_r != NULL)
		*absent_r = false;
	if (st_ctl_query(path, line, (int)timeout_ms, &reply, &err) < 0) {
		if (absent_r != NULL && strcmp(err, "no socket") == 0)
			*absent_r = true;
		st_set_error(error_r, "%s on node %s: %.*s: %s", program, node->name, (int)verb,
			     command, err);
		goto out;
	}
	if (reply[0] == '\0') {
		st_set_error(error_r, "%s on node %s: %.*s: the connection closed without an answer "
			     "(did it stop?)", program, node->name, (int)verb, command);
		goto out;
	}
	json_error_t jerr;
	j = json_loads(reply, 0, &jerr);
	const char *e = json_string_value(json_object_get(j, "error"));
	if (!json_is_object(j) || e != NULL || json_is_false(json_object_get(j, "ok"))) {
		st_set_error(error_r, "%s on node %s: %.*s: %s", program, node->name, (int)verb,
			     command, e != NULL ? e : json_is_object(j) ? "failed" : "not JSON");
		json_decref(j);
		j = NULL;
	}
out:
	free(line);
	free(reply);
	free(err);
	free(path);
	return j;
}

/* ------------------------------------------------------------ fencing */

static int
pg_fence(const struct st_conf *conf, const struct st_node *node, bool fence, bool end_sessions,
	 long long *ended_r, char **lsn_r, char **error_r)
{
	char *value = NULL, *err = NULL, *sql = NULL;
	PGconn *c = pgc_connect(conf, node->name, PGC_NORMAL, "standin-failoverd", &err);
	int ret = -1;

	*ended_r = 0;
	if (c == NULL)
		goto out;
	if (pgc_exec(c, fence ? "ALTER SYSTEM SET default_transaction_read_only = on"
			      : "ALTER SYSTEM RESET default_transaction_read_only", &err) < 0 ||
	    pgc_exec(c, "SELECT pg_catalog.pg_reload_conf()", &err) < 0)
		goto out;
	if (fence && end_sessions) {
		/* pg_terminate_backend(pid, timeout) waits until each is gone, so a
		 * commit under way is in the WAL before the position is read. */
		sql = xasprintf("SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid, %d)) "
				"FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend' "
				"AND pid <> pg_catalog.pg_backend_pid() "
				"AND coalesce(application_name, '') NOT LIKE 'standin%%'",
				TERMINATE_WAIT_MS);
		if (pgc_value(c, sql, &value, &err) < 0)
			goto out;
		*ended_r = value != NULL ? strtoll(value, NULL, 10) : 0;
		if (lsn_r != NULL &&
		    pgc_value(c, "SELECT pg_catalog.pg_current_wal_insert_lsn()", lsn_r, &err) < 0)
			goto out;
	}
	ret = 0;
out:
	if (ret < 0)
		st_set_error(error_r, "PostgreSQL on node %s: %s", node->name, err);
	free(err);
	free(value);
	free(sql);
	if (c != NULL)
		PQfinish(c);
	return ret;
}

int
fo_pg_fence(const struct st_conf *conf, const struct st_node *node, bool fence,
	    long long *ended_r, char **lsn_r, char **error_r)
{
	return pg_fence(conf, node, fence, true, ended_r, lsn_r, error_r);
}

int
fo_pg_readonly(const struct st_conf *conf, const struct st_node *node, char **error_r)
{
	long long ended;

	return pg_fence(conf, node, true, false, &ended, NULL, error_r);
}

/* The newest value of the suffix entry's contextCSN on NODE's slapd. */
static int
ldap_context_csn(const struct st_conf *conf, const struct st_node *node, char **csn_r,
		 char **error_r)
{
	char *attrs[] = { "contextCSN", NULL }, *err = NULL;
	LDAPMessage *res = NULL;
	LDAP *ld = st_ldap_open(conf, node->name, &err);
	int ret = -1;

	*csn_r = NULL;
	if (ld == NULL)
		goto out;
	int rc = ldap_search_ext_s(ld, conf->ldap.suffix, LDAP_SCOPE_BASE, "(objectClass=*)", attrs,
				   0, NULL, NULL, NULL, 1, &res);
	if (rc != LDAP_SUCCESS) {
		err = xasprintf("reading the contextCSN of %s: %s", conf->ldap.suffix,
				ldap_err2string(rc));
		goto out;
	}
	LDAPMessage *e = ldap_first_entry(ld, res);
	struct berval **vals = e != NULL ? ldap_get_values_len(ld, e, "contextCSN") : NULL;
	for (int i = 0; vals != NULL && vals[i] != NULL; i++) {
		char *v = xstrndup(vals[i]->bv_val, vals[i]->bv_len);
		if (*csn_r == NULL || strcmp(v, *csn_r) > 0) {
			free(*csn_r);
			*csn_r = v;
		} else {
			free(v);
		}
	}
	ldap_value_free_len(vals);
	if (*csn_r == NULL) {
		err = xasprintf("%s has no contextCSN (is the syncprov overlay loaded?)",
				conf->ldap.suffix);
		goto out;
	}
	ret = 0;
out:
	if (ret < 0)
		st_set_error(error_r, "slapd on node %s: %s", node->name, err);
	free(err);
	ldap_msgfree(res);
	if (ld != NULL)
		ldap_unbind_ext_s(ld, NULL, NULL);
	return ret;
}

int
fo_ldap_fence(const struct st_conf *conf, const struct st_node *node, bool fence, char **csn_r,
	      char **error_r)
{
	char *attrs[] = { "1.1", NULL }, *err = NULL, *filter = NULL, *dn = NULL;
	LDAPMessage *res = NULL;
	LDAP *ld = NULL;
	struct berval esc = { 0, NULL }, suffix = { strlen(conf->ldap.suffix), conf->ldap.suffix };
	int ret = -1;

	if (csn_r != NULL)
		*csn_r = NULL;
	if (conf->ldap.config_bind_dn == NULL)
		return 1;
	ld = st_ldap_open_as(conf, node->name, conf->ldap.config_bind_dn,
			     conf->ldap.config_password_file, &err);
	if (ld == NULL)
		goto out;
	if (ldap_bv2escaped_filter_value(&suffix, &esc) != 0) {
		err = xstrdup("cannot escape the suffix for a filter");
		goto out;
	}
	filter = xasprintf("(olcSuffix=%s)", esc.bv_val);
	int rc = ldap_search_ext_s(ld, "cn=config", LDAP_SCOPE_ONELEVEL, filter, attrs, 0, NULL,
				   NULL, NULL, 2, &res);
	LDAPMessage *e = rc == LDAP_SUCCESS ? ldap_first_entry(ld, res) : NULL;
	if (e == NULL || ldap_count_entries(ld, res) != 1) {
		err = xasprintf("cn=config as %s: %s", conf->ldap.config_bind_dn,
				rc != LDAP_SUCCESS ? ldap_err2string(rc)
				: e == NULL ? "no database with olcSuffix = the [ldap] suffix"
				: "several databases with olcSuffix = the [ldap] suffix");
		goto out;
	}
	dn = ldap_get_dn(ld, e);
	char *vals[] = { fence ? "TRUE" : "FALSE", NULL };
	LDAPMod mod = { .mod_op = LDAP_MOD_REPLACE, .mod_type = "olcReadOnly", .mod_values = vals };
	LDAPMod *mods[] = { &mod, NULL };
	rc = ldap_modify_ext_s(ld, dn, mods, NULL, NULL);
	if (rc != LDAP_SUCCESS) {
		err = xasprintf("olcReadOnly %s on %s: %s", vals[0], dn, ldap_err2string(rc));
		goto out;
	}
	ret = 0;
out:
	if (ret < 0)
		st_set_error(error_r, "slapd on node %s: %s", node->name, err);
	free(err);
	free(filter);
	ldap_memfree(esc.bv_val);
	ldap_memfree(dn);
	ldap_msgfree(res);
	if (ld != NULL)
		ldap_unbind_ext_s(ld, NULL, NULL);
	if (ret == 0 && fence && csn_r != NULL)
		return ldap_context_csn(conf, node, csn_r, error_r);
	return ret;
}

int
fo_run_command(const char *cmdline, const char *node, const char *what, long timeout_ms,
	       char **error_r)
{
	char *argv[64], *copy, *save = NULL;
	size_t n = 0;
	int ret;

	copy = xstrdup(cmdline);
	for (char *w = strtok_r(copy, " \t", &save); w != NULL && n + 1 < ST_ARRAY_SIZE(argv);
	     w = strtok_r(NULL, " \t", &save))
		argv[n++] = strcmp(w, "%n") == 0 ? xstrdup(node) : xstrdup(w);
	argv[n] = NULL;
	free(copy);
	struct st_cmd c = { .argv = argv, .what = what };
	char *const envp[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL };
	if (n == 0 || argv[0][0] != '/') {
		st_set_error(error_r, "%s: not an absolute path: %s", what, cmdline);
		ret = -1;
	} else {
		ret = st_proc_run(&c, 1, -1, NULL, NULL, envp, timeout_ms, error_r);
	}
	for (size_t i = 0; i < n; i++)
		free(argv[i]);
	return ret;
}

int
fo_imap_kick(const struct st_conf *conf, const struct st_node *node, char **error_r)
{
	if (conf->imap.kick_command == NULL)
		return 1;
	char *what = xasprintf("[imap] kick_command on node %s", node->name);
	int ret = fo_run_command(conf->imap.kick_command, node->name, what, KICK_TIMEOUT_MS,
				 error_r);
	free(what);
	return ret;
}

/* ------------------------------------------------------------ orders */

static long
arg_ms(const struct st_order *o, long dflt)
{
	json_t *t = json_object_get(o->args, "timeout_ms");

	return json_is_integer(t) && json_integer_value(t) > 0 ? (long)json_integer_value(t) : dflt;
}

/* Whether the order is for service SVC: configured, and named in its
 * "services" (no list: every service, a switchover of the whole node). */
static bool
wants(const struct st_conf *conf, const struct st_order *o, int svc)
{
	json_t *list = json_object_get(o->args, "services"), *v;
	size_t i;

	if (!conf->service_enabled[svc])
		return false;
	if (!json_is_array(list))
		return true;
	json_array_foreach(list, i, v) {
		if (json_is_string(v) && strcmp(json_string_value(v), st_service_name(svc)) == 0)
			return true;
	}
	return false;
}

/* The proxy's word for the order's services: "all", or the one named. */
static const char *
proxy_target(const struct st_order *o)
{
	json_t *list = json_object_get(o->args, "services");

	return json_is_array(list) && json_array_size(list) == 1
		? json_string_value(json_array_get(list, 0)) : "all";
}

/* COMMAND to this node's proxy: its reply, {"proxy":"not running"} when it
 * does not run (nothing to hold there), or NULL with *error_r. */
static json_t *
proxy(const struct st_node *node, uint64_t epoch, const char *command, char **error_r)
{
	bool absent;
	json_t *r = local(node, epoch, ST_PROGRAM_PROXY, command, LOCAL_TIMEOUT_MS, &absent,
			  error_r);

	if (r == NULL && absent) {
		free(*error_r);
		*error_r = NULL;
		return json_pack("{s:s}", "proxy", "not running");
	}
	if (r == NULL && *error_r != NULL && strstr(*error_r, "is not proxied on this node") != NULL) {
		/* --service S on a node whose proxy does not carry S: nothing to hold. */
		free(*error_r);
		*error_r = NULL;
		return json_pack("{s:s}", "proxy", "does not proxy this service");
	}
	return r;
}

/* pause: new clients wait at this node's proxy, its sessions are closed. */
static json_t *
op_pause(const struct st_conf *conf, const struct st_node *node, const struct st_order *o,
	 char **error_r)
{
	char *pause = xasprintf("pause %s", proxy_target(o)), *drop = NULL;
	json_t *r = proxy(node, o->epoch, pause, error_r);

	(void)conf;
	free(pause);
	if (r == NULL || json_object_get(r, "proxy") != NULL)
		return r;
	json_decref(r);
	drop = xasprintf("drop %s", proxy_target(o));
	r = proxy(node, o->epoch, drop, error_r);
	free(drop);
	return r;
}

/* resume: the proxy forwards the clients it held (a rollback). */
static json_t *
op_resume(const struct st_conf *conf, const struct st_node *node, const struct st_order *o,
	  char **error_r)
{
	char *cmd = xasprintf("resume %s", proxy_target(o));
	json_t *r = proxy(node, o->epoch, cmd, error_r);

	(void)conf;
	free(cmd);
	return r;
}

/* fence: every local server refuses writes; the positions they stopped at. */
static json_t *
op_fence(const struct st_conf *conf, const struct st_node *node, const struct st_order *o,
	 char **error_r)
{
	json_t *r = json_object(), *pos = json_object(), *notes = json_array();
	char *lsn = NULL, *csn = NULL;
	long long ended = 0;

	json_object_set_new(r, "positions", pos);
	json_object_set_new(r, "notes", notes);
	if (wants(conf, o, ST_SVC_PG)) {
		if (fo_pg_fence(conf, node, true, &ended, &lsn, error_r) < 0)
			goto fail;
		json_object_set_new(pos, "pg", json_string(lsn));
		json_object_set_new(r, "sessions_ended", json_integer(ended));
	}
	if (wants(conf, o, ST_SVC_LDAP)) {
		int rc = fo_ldap_fence(conf, node, true, &csn, error_r);
		if (rc < 0)
			goto fail;
		if (rc > 0) {
			json_array_append_new(notes, json_string("slapd not fenced: no [ldap] "
								 "config_bind_dn (the proxies hold "
								 "its clients)"));
			if (ldap_context_csn(conf, node, &csn, error_r) < 0)
				goto fail;
		}
		json_object_set_new(pos, "ldap", json_string(csn));
	}
	if (wants(conf, o, ST_SVC_IMAP)) {
		int rc = fo_imap_kick(conf, node, error_r);
		if (rc < 0)
			goto fail;
		if (rc > 0)
			json_array_append_new(notes, json_string("IMAP sessions not kicked: no [imap] "
								 "kick_command (the proxies closed "
								 "theirs)"));
		char now[32];
		snprintf(now, sizeof(now), "%lld", st_now_ms());
		json_object_set_new(pos, "imap", json_string(now));
	}
	free(lsn);
	free(csn);
	return r;
fail:
	free(lsn);
	free(csn);
	json_decref(r);
	return NULL;
}

/* unfence: the local servers take writes again (a rollback, or the new master). */
static json_t *
op_unfence(const struct st_conf *conf, const struct st_node *node, const struct st_order *o,
	   char **error_r)
{
	long long ended;

	if (wants(conf, o, ST_SVC_PG) && fo_pg_fence(conf, node, false, &ended, NULL, error_r) < 0)
		return NULL;
	if (wants(conf, o, ST_SVC_LDAP) && fo_ldap_fence(conf, node, false, NULL, error_r) < 0)
		return NULL;
	return json_pack("{s:b}", "unfenced", 1);
}

/* drain: every local replicator has applied the old master's final position.
 * The services drain at the same time (a thread each): the step lasts as
 * long as the slowest, not their sum. */
struct drain_one {
	const struct st_node *node;
	uint64_t epoch;
	int svc;
	char *cmd;
	long wait_ms;
	json_t *reply;
	char *err;
	pthread_t thread;
	bool started;
};

static void *
drain_thread(void *arg)
{
	struct drain_one *d = arg;

	d->reply = local(d->node, d->epoch, st_replicator_program(d->svc), d->cmd, d->wait_ms, NULL,
			 &d->err);
	return NULL;
}

static json_t *
op_drain(const struct st_conf *conf, const struct st_node *node, const struct st_order *o,
	 char **error_r)
{
	json_t *pos = json_object_get(o->args, "positions"), *r = json_object();
	long timeout = arg_ms(o, 30000);
	struct drain_one one[ST_SVC_COUNT];
	bool failed = false;

	memset(one, 0, sizeof(one));
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		const char *p = json_string_value(json_object_get(pos, st_service_name(s)));
		if (!wants(conf, o, s))
			continue;
		if (p == NULL) {
			st_set_error(error_r, "no %s position in the order", st_service_name(s));
			failed = true;
			break;
		}
		one[s] = (struct drain_one){ .node = node, .epoch = o->epoch, .svc = s,
					     .wait_ms = timeout + 5000,
					     .cmd = xasprintf("drain %s %ld", p, timeout) };
		one[s].started = pthread_create(&one[s].thread, NULL, drain_thread, &one[s]) == 0;
		if (!one[s].started)
			drain_thread(&one[s]);		/* no thread: in turn */
	}
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (one[s].started)
			pthread_join(one[s].thread, NULL);
	}
	for (int s = 0; s < ST_SVC_COUNT && !failed; s++) {
		if (one[s].cmd == NULL)
			continue;
		json_t *d = one[s].reply;
		if (d == NULL) {
			*error_r = one[s].err;
			one[s].err = NULL;
			failed = true;
		} else if (!json_is_true(json_object_get(d, "drained"))) {
			const char *applied = json_string_value(json_object_get(d, "applied"));
			st_set_error(error_r, "%s on node %s has not applied the old master's %s in "
				     "time (applied %s)", st_replicator_program(s), node->name,
				     json_string_value(json_object_get(pos, st_service_name(s))),
				     applied != NULL ? applied : "nothing yet");
			failed = true;
		} else {
			json_object_set(r, st_service_name(s), json_object_get(d, "applied"));
		}
	}
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		json_decref(one[s].reply);
		free(one[s].err);
		free(one[s].cmd);
	}
	if (failed) {
		json_decref(r);
		return NULL;
	}
	return r;
}

/* sequences: the master's sequences copied to this standby. */
static json_t *
op_sequences(const struct st_conf *conf, const struct st_node *node, const struct st_order *o,
	     char **error_r)
{
	long long deadline = st_monotonic_ms() + arg_ms(o, 30000), t0 = st_now_ms();

	if (!wants(conf, o, ST_SVC_PG))
		return json_pack("{s:b}", "requested", 0);
	json_t *r = local(node, o->epoch, ST_PROGRAM_PGREPL, "sequences", LOCAL_TIMEOUT_MS, NULL,
			  error_r);
	if (r == NULL)
		return NULL;
	json_decref(r);
	for (;;) {
		r = local(node, 0, ST_PROGRAM_PGREPL, "status", LOCAL_TIMEOUT_MS, NULL, error_r);
		if (r == NULL)
			return NULL;
		json_t *synced = json_object_get(r, "sequences_synced_ms");
		if (json_is_integer(synced) && json_integer_value(synced) >= t0) {
			json_t *out = json_pack("{s:O}", "sequences_synced_ms", synced);
			json_decref(r);
			return out;
		}
		json_decref(r);
		if (st_monotonic_ms() >= deadline) {
			st_set_error(error_r, "%s on node %s has not copied the sequences in time",
				     ST_PROGRAM_PGREPL, node->name);
			return NULL;
		}
		sleep_ms(20);
	}
}

/* reverse: this node (the old master) gets ready to replicate from "to". */
static json_t *
op_reverse(const struct st_conf *conf, const struct st_node *node, const struct st_order *o,
	   char **error_r)
{
	const char *to = json_string_value(json_object_get(o->args, "to"));
	long long deadline = st_monotonic_ms() + arg_ms(o, 30000);
	json_t *r = json_object();

	if (to == NULL || st_conf_node(conf, to) == NULL) {
		st_set_error(error_r, "reverse: the order names no node of this cluster");
		goto fail;
	}
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (!wants(conf, o, s))
			continue;
		long long left = deadline - st_monotonic_ms();
		char *cmd = xasprintf("reverse %s %lld", to, left > 1 ? left : 1);
		json_t *d = local(node, o->epoch, st_replicator_program(s), cmd,
				  (left > 0 ? left : 0) + 5000,
				  NULL, error_r);
		free(cmd);
		if (d == NULL)
			goto fail;
		json_object_set_new(r, st_service_name(s), d);
	}
	return r;
fail:
	json_decref(r);
	return NULL;
}

/*
 * finish (at the new epoch): take the new state from etcd into the local
 * file (the local daemons follow it), make the local servers what the new
 * role needs (the new master writable; slapd writable everywhere, as the
 * replicator writes there; a standby's PostgreSQL stays read-only for
 * clients), and resume the proxy once it routes by the new state.
 */
static json_t *
op_finish(const struct st_conf *conf, const struct st_node *node, struct st_etcd *etcd,
	  const struct st_order *o, char **error_r)
{
	struct st_cstate cs;
	long long ended;
	bool absent;

	int rc = st_cstore_pull(etcd, conf, node, &cs, error_r);
	if (rc != ST_PULL_TAKEN && rc != ST_PULL_SAME) {
		if (rc == ST_PULL_NONE)
			st_set_error(error_r, "there is no cluster state in etcd");
		return NULL;
	}
	if (cs.epoch < o->epoch) {
		st_set_error(error_r, "etcd holds epoch %" PRIu64 ", the order is for %" PRIu64,
			     cs.epoch, o->epoch);
		return NULL;
	}
	bool master = strcmp(cs.master, node->name) == 0;
	if (wants(conf, o, ST_SVC_PG) &&
	    strcmp(st_cstate_master_of(&cs, ST_SVC_PG), node->name) == 0 &&
	    fo_pg_fence(conf, node, false, &ended, NULL, error_r) < 0)
		return NULL;
	if (wants(conf, o, ST_SVC_LDAP) && fo_ldap_fence(conf, node, false, NULL, error_r) < 0)
		return NULL;
	long long deadline = st_monotonic_ms() + PROXY_FOLLOW_MS;
	for (;;) {
		json_t *s = local(node, 0, ST_PROGRAM_PROXY, "status", LOCAL_TIMEOUT_MS, &absent,
				  error_r);
		if (s == NULL && absent) {
			free(*error_r);
			*error_r = NULL;
			return json_pack("{s:s,s:I,s:s}", "role", master ? "master" : "standby",
					 "epoch", (json_int_t)cs.epoch, "proxy", "not running");
		}
		if (s == NULL)
			return NULL;
		json_t *ep = json_object_get(s, "epoch");
		bool follows = json_is_integer(ep) && (uint64_t)json_integer_value(ep) >= cs.epoch;
		json_decref(s);
		if (follows)
			break;
		if (st_monotonic_ms() >= deadline) {
			st_set_error(error_r, "%s on node %s has not taken epoch %" PRIu64 " from %s",
				     ST_PROGRAM_PROXY, node->name, cs.epoch, "the state file");
			return NULL;
		}
		sleep_ms(10);
	}
	char *resume = xasprintf("resume %s", proxy_target(o));
	json_t *r = proxy(node, o->epoch, resume, error_r);
	free(resume);
	if (r == NULL)
		return NULL;
	json_decref(r);
	return json_pack("{s:s,s:I}", "role", master ? "master" : "standby", "epoch",
			 (json_int_t)cs.epoch);
}

/*
 * heal: the switchover that gave this node its last orders is gone from
 * etcd (its standinctl died, or lost etcd, before the end): undo what it did
 * here, by the state in etcd: what "finish" does for it (still the master
 * there: writable again and the proxy resumed).
 */
static json_t *
op_heal(const struct st_conf *conf, const struct st_node *node, struct st_etcd *etcd,
	const struct st_order *o, char **error_r)
{
	struct st_cstate cs;
	int rc = st_cstore_pull(etcd, conf, node, &cs, error_r);

	if (rc != ST_PULL_TAKEN && rc != ST_PULL_SAME) {
		if (rc == ST_PULL_NONE)
			st_set_error(error_r, "there is no cluster state in etcd");
		return NULL;
	}
	/* What "finish" does for the state in etcd: each service this node
	 * masters writable, the proxy resumed. */
	struct st_order at = *o;
	at.epoch = cs.epoch;
	return op_finish(conf, node, etcd, &at, error_r);
}

json_t *
fo_execute(const struct st_conf *conf, const struct st_node *node, struct st_etcd *etcd,
	   const struct st_order *o, char **error_r)
{
	struct st_cstate cs;
	char *path = st_cstate_path(node), *err = NULL;
	int rc = st_cstate_load(path, &cs, &err);

	free(path);
	/* Every order carries its epoch; one older than this node's is refused. */
	if (rc == 0 && o->epoch < cs.epoch) {
		st_set_error(error_r, "refused: the order is for epoch %" PRIu64 ", this node is at "
			     "%" PRIu64, o->epoch, cs.epoch);
		free(err);
		return NULL;
	}
	if (rc != 0 && strcmp(o->op, "fence") != 0 && strcmp(o->op, "pause") != 0) {
		/* Fencing and holding clients are always safe; the rest needs the epoch. */
		st_set_error(error_r, "refused: this node's cluster state cannot be read (%s)",
			     rc > 0 ? "there is none" : err);
		free(err);
		return NULL;
	}
	free(err);
	if (strcmp(o->op, "pause") == 0)
		return op_pause(conf, node, o, error_r);
	if (strcmp(o->op, "resume") == 0)
		return op_resume(conf, node, o, error_r);
	if (strcmp(o->op, "fence") == 0)
		return op_fence(conf, node, o, error_r);
	if (strcmp(o->op, "unfence") == 0)
		return op_unfence(conf, node, o, error_r);
	if (strcmp(o->op, "drain") == 0)
		return op_drain(conf, node, o, error_r);
	if (strcmp(o->op, "sequences") == 0)
		return op_sequences(conf, node, o, error_r);
	if (strcmp(o->op, "reverse") == 0)
		return op_reverse(conf, node, o, error_r);
	if (strcmp(o->op, "finish") == 0)
		return op_finish(conf, node, etcd, o, error_r);
	if (strcmp(o->op, "heal") == 0)
		return op_heal(conf, node, etcd, o, error_r);
	st_set_error(error_r, "unknown order %s", o->op);
	return NULL;
}
