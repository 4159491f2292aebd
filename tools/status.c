/*
 * status.c: collect and print the status of a cluster.
 *
 * Each node's role comes from its own cluster state file; each daemon's
 * state from its status socket in the node's run_dir.  A node whose
 * directories are not on this machine shows its daemons as unreachable.
 * Nothing here fails because a daemon is down: that is what status reports.
 */
#include "config.h"

#include "tools/status.h"

#include "dumpers/dump.h"
#include "lib/ctl.h"
#include "lib/etcd.h"
#include "lib/log.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STATUS_TIMEOUT_MS 2000

void
st_status_cstate_json(const struct st_cstate *st, struct st_buf *out)
{
	json_t *obj = json_object(), *dirs = json_object();
	char *s;

	json_object_set_new(obj, "cluster", json_string(st->cluster));
	json_object_set_new(obj, "epoch", json_integer((json_int_t)st->epoch));
	json_object_set_new(obj, "master", json_string(st->master));
	for (int svc = 0; svc < ST_SVC_COUNT; svc++) {
		json_t *arr = json_array();
		for (size_t i = 0; i < st->n_edges[svc]; i++) {
			json_t *e = json_object();
			json_object_set_new(e, "source", json_string(st->edges[svc][i].source));
			json_object_set_new(e, "target", json_string(st->edges[svc][i].target));
			json_array_append_new(arr, e);
		}
		json_object_set_new(dirs, st_service_name(svc), arr);
	}
	json_object_set_new(obj, "directions", dirs);
	json_object_set_new(obj, "updated", json_integer((json_int_t)st->updated));
	s = json_dumps(obj, JSON_COMPACT);
	st_buf_puts(out, s);
	free(s);
	json_decref(obj);
}

static char *
format_lag(json_t *obj)
{
	json_t *secs = json_object_get(obj, "lag_seconds");
	json_t *bytes = json_object_get(obj, "lag_bytes");

	json_t *behind = json_object_get(obj, "messages_behind");

	if (json_is_number(secs) && json_is_integer(behind) && json_integer_value(behind) > 0)
		return xasprintf("%.1fs/%lldmsg", json_number_value(secs), (long long)json_integer_value(behind));
	if (json_is_number(secs)) {
		double v = json_number_value(secs);
		if (json_is_integer(bytes))
			return xasprintf("%.1fs/%lldB", v, (long long)json_integer_value(bytes));
		return xasprintf("%.1fs", v);
	}
	if (json_is_integer(bytes))
		return xasprintf("%lldB", (long long)json_integer_value(bytes));
	return xstrdup("-");
}

/*
 * A proxy's routes in short, from its status or its member record
 * ("services": {SERVICE: {"backend": NODE or {"node": NODE}, "paused"}}):
 * "to a", or "pg to a, ldap to b", with "paused" when one is.  NULL when
 * there is none (not a proxy).
 */
static char *
proxy_route(json_t *services)
{
	const char *key, *first = NULL;
	json_t *v;
	bool same = true, paused = false;
	struct st_buf b;

	if (!json_is_object(services) || json_object_size(services) == 0)
		return NULL;
	json_object_foreach(services, key, v) {
		json_t *be = json_object_get(v, "backend");
		const char *node = json_is_string(be) ? json_string_value(be)
				   : json_string_value(json_object_get(be, "node"));
		node = node != NULL ? node : "none";
		paused |= json_is_true(json_object_get(v, "paused"));
		if (first == NULL)
			first = node;
		else if (strcmp(first, node) != 0)
			same = false;
	}
	st_buf_init(&b);
	if (same) {
		st_buf_printf(&b, "to %s", first != NULL ? first : "none");
	} else {
		json_object_foreach(services, key, v) {
			json_t *be = json_object_get(v, "backend");
			const char *node = json_is_string(be) ? json_string_value(be)
					   : json_string_value(json_object_get(be, "node"));
			st_buf_printf(&b, "%s%s to %s", b.len > 0 ? ", " : "", key,
				      node != NULL ? node : "none");
		}
	}
	char *out = xasprintf("%s%s", b.data != NULL ? b.data : "", paused ? " (paused)" : "");
	st_buf_free(&b);
	return out;
}

static void
query_daemon(const struct st_node *node, const char *daemon, struct st_status_row *r)
{
	char *path = st_ctl_socket_path(node, daemon);
	char *reply = NULL, *error = NULL;
	struct stat sb;
	json_error_t jerr;

	r->daemon = daemon;
	if (stat(node->run_dir, &sb) < 0) {
		r->state = xstrdup("unreachable");
		r->error = xasprintf("run_dir %s is not on this machine", node->run_dir);
		goto out;
	}
	if (st_ctl_query(path, "status", STATUS_TIMEOUT_MS, &reply, &error) < 0) {
		if (strcmp(error, "no socket") == 0)
			r->state = xstrdup("not running");
		else
			r->state = xasprintf("unreachable (%s)", error);
		goto out;
	}
	r->detail = json_loads(reply, 0, &jerr);
	if (!json_is_object(r->detail)) {
		r->state = xstrdup("bad reply");
		r->error = xasprintf("%s: not a JSON object: %s", path, jerr.text);
		json_decref(r->detail);
		r->detail = NULL;
		goto out;
	}
	json_t *state = json_object_get(r->detail, "state");
	json_t *err = json_object_get(r->detail, "last_error");
	json_t *resolved = json_object_get(r->detail, "conflicts_resolved");
	const char *st_text = json_is_string(state) ? json_string_value(state) : "?";
	char *route = proxy_route(json_object_get(r->detail, "services"));
	/* [pg] conflicts = master-wins: what the standby lost is in the log. */
	if (json_is_integer(resolved) && json_integer_value(resolved) > 0)
		r->state = xasprintf("%s, %lld conflicts resolved (see its log)", st_text,
				     (long long)json_integer_value(resolved));
	else if (route != NULL)
		r->state = xasprintf("%s, %s", st_text, route);
	else
		r->state = xstrdup(st_text);
	free(route);
	r->lag = format_lag(r->detail);
	if (json_is_string(err))
		r->error = xstrdup(json_string_value(err));
out:
	if (r->lag == NULL)
		r->lag = xstrdup("-");
	free(reply);
	free(error);
	free(path);
}

static void
print_table(const struct st_status_row *rows, size_t n, FILE *out)
{
	static const char *const head[] = { "NODE", "ROLE", "EPOCH", "SERVICE", "DAEMON",
					    "STATE", "LAG", "LAST ERROR" };
	size_t w[7];

	for (int c = 0; c < 7; c++)
		w[c] = strlen(head[c]);
	for (size_t i = 0; i < n; i++) {
		const char *cells[7] = { rows[i].node, rows[i].role, rows[i].epoch, rows[i].service,
					 rows[i].daemon, rows[i].state, rows[i].lag };
		for (int c = 0; c < 7; c++) {
			if (strlen(cells[c]) > w[c])
				w[c] = strlen(cells[c]);
		}
	}
	for (int c = 0; c < 7; c++)
		fprintf(out, "%-*s  ", (int)w[c], head[c]);
	fprintf(out, "%s\n", head[7]);
	for (size_t i = 0; i < n; i++) {
		const char *cells[7] = { rows[i].node, rows[i].role, rows[i].epoch, rows[i].service,
					 rows[i].daemon, rows[i].state, rows[i].lag };
		for (int c = 0; c < 7; c++)
			fprintf(out, "%-*s  ", (int)w[c], cells[c]);
		/* st_q keeps a daemon's error on one line, quoted if needed. */
		fprintf(out, "%s\n", rows[i].error ? st_q(rows[i].error) : "-");
	}
}

static void
format_age(long long secs, char *out, size_t len)
{
	if (secs < 0)
		secs = 0;
	if (secs >= 86400)
		snprintf(out, len, "%lldd%02lldh", secs / 86400, secs % 86400 / 3600);
	else if (secs >= 3600)
		snprintf(out, len, "%lldh%02lldm", secs / 3600, secs % 3600 / 60);
	else
		snprintf(out, len, "%lldm%02llds", secs / 60, secs % 60);
}

/* The newest dump of each dumped service: a line each (or JSON), and a
 * warning when it is older than [dump] max_age or missing. */
static void
dumps_status(const struct st_conf *conf, json_t *json, FILE *out)
{
	static const enum st_service svcs[] = { ST_SVC_PG, ST_SVC_LDAP };

	if (!conf->dump_present)
		return;
	for (size_t i = 0; i < ST_ARRAY_SIZE(svcs); i++) {
		enum st_service svc = svcs[i];
		struct dump_info info;
		char *err = NULL, age[32];
		int rc;

		if (!conf->service_enabled[svc])
			continue;
		rc = dump_newest(conf, svc, &info, &err);
		long long secs = rc == 0 ? (long long)(time(NULL) - info.created) : -1;
		bool old = rc != 0 || secs * 1000 > conf->dump.max_age_ms;
		if (json != NULL) {
			json_t *o = json_object();
			json_object_set_new(o, "service", json_string(st_service_name(svc)));
			json_object_set_new(o, "dump", rc == 0 ? json_string(info.name) : json_null());
			json_object_set_new(o, "node", rc == 0 ? json_string(info.node) : json_null());
			json_object_set_new(o, "age_seconds", rc == 0 ? json_integer(secs) : json_null());
			json_object_set_new(o, "size_bytes", rc == 0 ? json_integer((json_int_t)info.size)
							      : json_null());
			json_object_set_new(o, "warning", json_boolean(old));
			if (rc < 0)
				json_object_set_new(o, "error", json_string(err));
			json_array_append_new(json, o);
		} else if (rc < 0) {
			fprintf(out, "warning: dump %s: %s\n", st_service_name(svc), err);
		} else if (rc == 1) {
			fprintf(out, "warning: dump %s: no good dump in %s/%s\n", st_service_name(svc),
				conf->dump.dir, st_service_name(svc));
		} else {
			format_age(secs, age, sizeof(age));
			fprintf(out, "%sdump %s: %s, %s old, %.1f MB, from node %s%s\n",
				old ? "warning: " : "", st_service_name(svc), info.name, age,
				(double)info.size / 1e6, info.node,
				old ? " (older than [dump] max_age)" : "");
		}
		if (rc == 0)
			dump_info_free(&info);
		free(err);
	}
}

/*
 * What an administrator must hear about: a standin slot on a master that
 * no standby streams from, that holds more WAL than [pg] slot_warn_mb, or
 * that PostgreSQL no longer keeps the WAL of (max_slot_wal_keep_size).
 */
static void
slot_warnings(const struct st_conf *conf, const struct st_status *st, json_t *arr, FILE *out)
{
	for (size_t i = 0; i < st->n_rows; i++) {
		json_t *slots = st->rows[i].detail != NULL ? json_object_get(st->rows[i].detail, "slots")
							   : NULL;
		size_t k;
		json_t *sl;
		json_array_foreach(slots, k, sl) {
			const char *name = json_string_value(json_object_get(sl, "slot"));
			const char *ws = json_string_value(json_object_get(sl, "wal_status"));
			json_int_t held = json_integer_value(json_object_get(sl, "retained_bytes"));
			bool active = json_is_true(json_object_get(sl, "active"));
			double mb = (double)held / (1024.0 * 1024.0);
			char *w = NULL;
			if (name == NULL)
				continue;
			if (ws != NULL && strcmp(ws, "lost") == 0)
				w = xasprintf("node %s: replication slot %s is lost (max_slot_wal_keep_size): "
					      "its standby must be copied again (standin-pgrepl --resync)",
					      st->rows[i].node, name);
			else if (mb > (double)conf->pg.slot_warn_mb)
				w = xasprintf("node %s: replication slot %s holds %.0f MB of WAL, more than "
					      "[pg] slot_warn_mb %ld%s", st->rows[i].node, name, mb,
					      conf->pg.slot_warn_mb,
					      active ? "" : "; no standby streams from it");
			else if (!active)
				w = xasprintf("node %s: no standby streams from replication slot %s "
					      "(it holds %.0f MB of WAL and grows)", st->rows[i].node,
					      name, mb);
			else if (ws != NULL && strcmp(ws, "unreserved") == 0)
				w = xasprintf("node %s: replication slot %s is about to lose WAL its "
					      "standby needs (max_slot_wal_keep_size)", st->rows[i].node,
					      name);
			if (w == NULL)
				continue;
			if (arr != NULL)
				json_array_append_new(arr, json_string(w));
			if (out != NULL)
				fprintf(out, "warning: %s\n", w);
			free(w);
		}
	}
}

static void
print_json(const struct st_conf *conf, const struct st_status *st, FILE *out)
{
	const struct st_status_row *rows = st->rows;
	size_t n = st->n_rows;
	json_t *root = json_object(), *nodes = json_array(), *arr = json_array();
	char *s;

	json_object_set_new(root, "cluster", json_string(conf->cluster_name));
	for (size_t i = 0; i < conf->n_nodes; i++) {
		json_t *o = json_object();
		json_object_set_new(o, "node", json_string(conf->nodes[i].name));
		if (st->state_rc[i] == 0) {
			json_object_set_new(o, "role", json_string(st->role[i]));
			json_object_set_new(o, "epoch", json_integer((json_int_t)st->states[i].epoch));
			json_object_set_new(o, "master", json_string(st->states[i].master));
		} else {
			json_object_set_new(o, "role", json_null());
		}
		if (conf->etcd.urls != NULL)
			json_object_set_new(o, "seen_from",
					    json_string(st->from_etcd[i] ? "etcd" : "local"));
		json_array_append_new(nodes, o);
	}
	json_object_set_new(root, "nodes", nodes);
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_object();
		json_object_set_new(o, "node", json_string(rows[i].node));
		json_object_set_new(o, "service", json_string(rows[i].service));
		json_object_set_new(o, "daemon", json_string(rows[i].daemon));
		json_object_set_new(o, "state", json_string(rows[i].state));
		json_object_set_new(o, "last_error",
				    rows[i].error ? json_string(rows[i].error) : json_null());
		if (rows[i].detail != NULL)
			json_object_set(o, "status", rows[i].detail);
		json_array_append_new(arr, o);
	}
	json_object_set_new(root, "daemons", arr);
	json_t *warnings = json_array();
	slot_warnings(conf, st, warnings, NULL);
	json_object_set_new(root, "warnings", warnings);
	json_t *dumps = json_array();
	dumps_status(conf, dumps, NULL);
	json_object_set_new(root, "dumps", dumps);
	s = json_dumps(root, JSON_INDENT(2));
	fprintf(out, "%s\n", s);
	free(s);
	json_decref(root);
}

/* A daemon's row from its node's member record M (NULL: none). */
static void
row_from_record(json_t *m, const char *program, bool agent, struct st_status_row *r)
{
	r->daemon = program;
	if (m == NULL) {
		r->state = xstrdup("no member record");
		return;
	}
	if (agent) {
		r->state = xstrdup("running (member record)");
		return;
	}
	json_t *d = json_object_get(json_object_get(m, "daemons"), program);
	const char *state = json_string_value(json_object_get(d, "state"));
	const char *err = json_string_value(json_object_get(d, "last_error"));
	char *route = proxy_route(json_object_get(d, "services"));
	if (route != NULL && state != NULL)
		r->state = xasprintf("%s, %s", state, route);
	else
		r->state = xstrdup(state != NULL ? state : "not in the member record");
	free(route);
	if (d != NULL) {
		r->lag = format_lag(d);
		r->detail = json_deep_copy(d);
	}
	if (err != NULL)
		r->error = xstrdup(err);
}

/* The member records under /standin/CLUSTER/members/, by node index. */
static void
read_members(const struct st_conf *conf, struct st_status *st, char **error_r)
{
	struct st_etcd *etcd = st_etcd_open(conf, error_r);
	struct st_etcd_kv *kvs = NULL;
	size_t n = 0;
	char *prefix = st_etcd_key(conf, "members/");

	if (etcd != NULL && st_etcd_list(etcd, prefix, &kvs, &n, NULL, error_r) == 0) {
		size_t plen = strlen(prefix);
		for (size_t k = 0; k < n; k++) {
			int i = strncmp(kvs[k].key, prefix, plen) == 0
				? st_conf_node_index(conf, kvs[k].key + plen) : -1;
			json_error_t jerr;
			json_t *o = i >= 0 ? json_loads(kvs[k].value, 0, &jerr) : NULL;
			if (json_is_object(o) && st->member[i] == NULL)
				st->member[i] = o;
			else
				json_decref(o);
		}
	}
	st_etcd_kvs_free(kvs, n);
	st_etcd_close(&etcd);
	free(prefix);
}

void
st_status_collect(const struct st_conf *conf, const char *local, struct st_status *st)
{
	size_t max_rows = conf->n_nodes * (ST_SVC_COUNT + 2);
	char *etcd_error = NULL;

	memset(st, 0, sizeof(*st));
	st->rows = xcalloc(max_rows, sizeof(*st->rows));
	if (conf->etcd.urls != NULL)
		read_members(conf, st, &etcd_error);
	for (size_t i = 0; i < conf->n_nodes; i++) {
		const struct st_node *node = &conf->nodes[i];

		st->from_etcd[i] = conf->etcd.urls != NULL &&
				   (local == NULL || strcmp(local, node->name) != 0);
		if (st->from_etcd[i]) {
			json_t *m = st->member[i];
			json_t *ep = json_object_get(m, "epoch");
			const char *role = json_string_value(json_object_get(m, "role"));
			const char *master = json_string_value(json_object_get(m, "master"));
			if (m != NULL && json_is_integer(ep)) {
				st->state_rc[i] = 0;
				st->states[i].epoch = (uint64_t)json_integer_value(ep);
				snprintf(st->states[i].master, sizeof(st->states[i].master), "%s",
					 master != NULL ? master : "");
				snprintf(st->role[i], sizeof(st->role[i]), "%s", role ? role : "unknown");
			} else {
				st->state_rc[i] = -1;
				st->state_err[i] = etcd_error != NULL
					? xasprintf("etcd: %s", etcd_error)
					: m == NULL ? xstrdup("no member record in etcd (standin-failoverd is "
							      "not running there, or cannot reach etcd)")
						    : xstrdup("its member record in etcd has no epoch");
				snprintf(st->role[i], sizeof(st->role[i]), "unknown");
			}
		} else {
			char *path = st_cstate_path(node);
			st->state_rc[i] = st_cstate_load(path, &st->states[i], &st->state_err[i]);
			if (st->state_rc[i] == 1)
				st->state_err[i] = xasprintf("%s does not exist (standinctl state init)",
							     path);
			snprintf(st->role[i], sizeof(st->role[i]), "%s",
				 st->state_rc[i] == 0 ? st_cstate_role(&st->states[i], node->name)
						      : "unknown");
			free(path);
		}
		if (st->state_rc[i] == 0 && st->states[i].epoch > st->max_epoch)
			st->max_epoch = st->states[i].epoch;
	}
	free(etcd_error);

	for (size_t i = 0; i < conf->n_nodes; i++) {
		const struct st_node *node = &conf->nodes[i];
		char epoch[24];

		if (st->state_rc[i] == 0)
			snprintf(epoch, sizeof(epoch), "%llu", (unsigned long long)st->states[i].epoch);
		else
			snprintf(epoch, sizeof(epoch), "-");
		/* The services' replicators, the proxy, the agent (with etcd). */
		for (int s = 0; s <= ST_SVC_COUNT + 1; s++) {
			struct st_status_row *r;

			if (s < ST_SVC_COUNT && !conf->service_enabled[s])
				continue;
			if (s == ST_SVC_COUNT && !conf->proxy_present)
				continue;
			if (s == ST_SVC_COUNT + 1 && conf->etcd.urls == NULL)
				continue;
			r = &st->rows[st->n_rows++];
			r->node = node->name;
			snprintf(r->role, sizeof(r->role), "%s", st->role[i]);
			/* A service's row: the node's role for that service (a
			 * switchover may move one service only). */
			if (s < ST_SVC_COUNT && st->state_rc[i] == 0) {
				const char *rs = NULL;
				if (st->from_etcd[i])
					rs = json_string_value(json_object_get(json_object_get(
						st->member[i], "roles"), st_service_name(s)));
				else
					rs = st_cstate_role_of(&st->states[i], s, node->name);
				if (rs != NULL)
					snprintf(r->role, sizeof(r->role), "%s", rs);
			}
			memcpy(r->epoch, epoch, sizeof(epoch));
			r->service = s < ST_SVC_COUNT ? st_service_name(s) : "all";
			const char *prog = s < ST_SVC_COUNT ? st_replicator_program(s)
				: s == ST_SVC_COUNT ? ST_PROGRAM_PROXY : ST_PROGRAM_FAILOVERD;
			if (st->from_etcd[i])
				row_from_record(st->member[i], prog, s == ST_SVC_COUNT + 1, r);
			else
				query_daemon(node, prog, r);
			if (r->lag == NULL)
				r->lag = xstrdup("-");
		}
	}
}

void
st_status_free(struct st_status *st)
{
	for (size_t i = 0; i < st->n_rows; i++) {
		free(st->rows[i].state);
		free(st->rows[i].lag);
		free(st->rows[i].error);
		json_decref(st->rows[i].detail);
	}
	for (size_t i = 0; i < ST_MAX_NODES; i++) {
		free(st->state_err[i]);
		json_decref(st->member[i]);
	}
	free(st->rows);
	memset(st, 0, sizeof(*st));
}

void
st_status_print(const struct st_conf *conf, const struct st_status *st, bool json, FILE *out)
{
	if (json) {
		print_json(conf, st, out);
		return;
	}
	fprintf(out, "cluster %s\n", conf->cluster_name);
	print_table(st->rows, st->n_rows, out);
	for (size_t i = 0; i < conf->n_nodes; i++) {
		if (st->state_rc[i] != 0)
			fprintf(out, "warning: node %s: %s\n", conf->nodes[i].name, st->state_err[i]);
		else if (st->states[i].epoch < st->max_epoch)
			fprintf(out, "warning: node %s is at epoch %llu, behind epoch %llu: it "
				"stays read-only until it catches up\n", conf->nodes[i].name,
				(unsigned long long)st->states[i].epoch,
				(unsigned long long)st->max_epoch);
	}
	slot_warnings(conf, st, NULL, out);
	dumps_status(conf, NULL, out);
}
