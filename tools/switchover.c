/*
 * switchover.c: standinctl switchover's checks and plan (see switchover.h).
 * Everything read here comes from etcd, so it works the same from any node:
 * the cluster state and each node's member record (standin-failoverd(8)).
 */
#include "config.h"

#include "tools/switchover.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "lib/cstore.h"
#include "lib/ctl.h"
#include "lib/etcd.h"

/* The member record of NODE among KVS (prefix .../members/), or NULL. */
static json_t *
member_of(const struct st_etcd_kv *kvs, size_t n, const char *prefix, const char *node)
{
	size_t plen = strlen(prefix);

	for (size_t i = 0; i < n; i++) {
		if (strncmp(kvs[i].key, prefix, plen) == 0 && strcmp(kvs[i].key + plen, node) == 0) {
			json_error_t jerr;
			json_t *o = json_loads(kvs[i].value, 0, &jerr);
			if (json_is_object(o))
				return o;
			json_decref(o);
			return NULL;
		}
	}
	return NULL;
}

static const char *const plan[] = {
	"pause every proxy (new clients wait)",
	"fence the old master (PostgreSQL read-only and its sessions ended, slapd olcReadOnly, "
	"IMAP sessions kicked)",
	"drain every replicator on the new master to the old master's final position",
	"copy the sequences",
	"prepare the reverse streams on the old master (reverse NODE), the new master still "
	"read-only",
	"epoch + 1 in etcd: the point of no return",
	"unfence the new master",
	"every node takes the new state; the replicators turn around",
	"the proxies switch to the new master and resume",
};

int
st_switchover(const struct st_conf *conf, const struct st_switchover_opts *opts, FILE *out)
{
	struct st_etcd *etcd = NULL;
	struct st_etcd_kv *kvs = NULL;
	struct st_cstate st;
	size_t n = 0;
	char *error = NULL, *prefix = NULL;
	const char *to = opts->to;
	int failed = 0, ret = 1;

	if (conf->etcd.urls == NULL) {
		fprintf(out, "standinctl: %s sets no [cluster] etcd: a switchover goes through it\n",
			conf->path);
		return 2;
	}
	etcd = st_etcd_open(conf, &error);
	int rc = etcd == NULL ? -1 : st_cstore_get(etcd, conf, &st, NULL, &error);
	if (rc <= 0) {
		fprintf(out, "standinctl: %s\n", rc == 0 ? "there is no cluster state in etcd" : error);
		goto out;
	}
	if (to == NULL) {
		/* The one standby, when there is exactly one. */
		for (size_t i = 0; i < conf->n_nodes; i++) {
			const char *name = conf->nodes[i].name;
			if (strcmp(st_cstate_role(&st, name), "standby") != 0)
				continue;
			if (to != NULL) {
				fprintf(out, "standinctl: several standbys: say which one with --to NODE\n");
				ret = 2;
				goto out;
			}
			to = name;
		}
		if (to == NULL) {
			fprintf(out, "standinctl: the cluster state names no standby\n");
			goto out;
		}
	}
	if (st_conf_node(conf, to) == NULL) {
		fprintf(out, "standinctl: --to %s: no such node in %s\n", to, conf->path);
		ret = 2;
		goto out;
	}
	fprintf(out, "switchover of cluster %s from %s to %s, at epoch %llu (etcd %s)\n",
		conf->cluster_name, st.master, to, (unsigned long long)st.epoch, st_etcd_url(etcd));
	if (strcmp(to, st.master) == 0) {
		fprintf(out, "check failed: %s is the master already\n", to);
		goto out;
	}
	if (strcmp(st_cstate_role(&st, to), "standby") != 0) {
		fprintf(out, "check failed: %s is not a standby in the cluster state\n", to);
		goto out;
	}
	prefix = st_etcd_key(conf, "members/");
	if (st_etcd_list(etcd, prefix, &kvs, &n, NULL, &error) < 0) {
		fprintf(out, "standinctl: %s\n", error);
		goto out;
	}
	/* Every agent alive and at the cluster's epoch. */
	for (size_t i = 0; i < conf->n_nodes; i++) {
		const char *name = conf->nodes[i].name;
		json_t *m = member_of(kvs, n, prefix, name);
		if (m == NULL) {
			fprintf(out, "check failed: node %s: no member record in etcd (standin-failoverd "
				"is not running there, or cannot reach etcd)\n", name);
			failed++;
			continue;
		}
		json_t *ep = json_object_get(m, "epoch");
		if (!json_is_integer(ep) || (unsigned long long)json_integer_value(ep) != st.epoch) {
			char have[32] = "none";
			if (json_is_integer(ep))
				snprintf(have, sizeof(have), "%lld", (long long)json_integer_value(ep));
			fprintf(out, "check failed: node %s is at epoch %s, the cluster at %llu\n", name,
				have, (unsigned long long)st.epoch);
			failed++;
		} else {
			fprintf(out, "check ok: node %s: agent alive, epoch %llu\n", name,
				(unsigned long long)st.epoch);
		}
		/* The new master's replicators: healthy and caught up. */
		for (int s = 0; strcmp(name, to) == 0 && s < ST_SVC_COUNT; s++) {
			if (!conf->service_enabled[s])
				continue;
			const char *prog = st_replicator_program(s);
			json_t *d = json_object_get(json_object_get(m, "daemons"), prog);
			const char *state = json_string_value(json_object_get(d, "state"));
			json_t *lag = json_object_get(d, "lag_seconds");
			const char *err = json_string_value(json_object_get(d, "last_error"));
			if (state == NULL || strcmp(state, "not running") == 0 ||
			    strcmp(state, "unreachable") == 0) {
				fprintf(out, "check failed: node %s: %s is %s\n", name, prog,
					state != NULL ? state : "unknown");
				failed++;
			} else if (err != NULL) {
				fprintf(out, "check failed: node %s: %s is %s: %s\n", name, prog, state, err);
				failed++;
			} else if (!json_is_number(lag)) {
				fprintf(out, "check failed: node %s: %s (%s) reports no lag\n", name, prog,
					state);
				failed++;
			} else if (json_number_value(lag) > opts->max_lag_s) {
				fprintf(out, "check failed: node %s: %s lags %.1f s, more than %.1f s\n",
					name, prog, json_number_value(lag), opts->max_lag_s);
				failed++;
			} else {
				fprintf(out, "check ok: node %s: %s %s, lag %.1f s\n", name, prog, state,
					json_number_value(lag));
			}
		}
		json_decref(m);
	}
	if (failed > 0) {
		fprintf(out, "%d check(s) failed: nothing was done\n", failed);
		goto out;
	}
	if (!opts->dry_run) {
		fprintf(out, "standinctl: the switchover's steps are not built yet: only --dry-run "
			"(the checks and the plan)\n");
		ret = 2;
		goto out;
	}
	fprintf(out, "plan (dry run: nothing done):\n");
	for (size_t i = 0; i < ST_ARRAY_SIZE(plan); i++)
		fprintf(out, "  %zu. %s\n", i + 1, plan[i]);
	ret = 0;
out:
	st_etcd_kvs_free(kvs, n);
	st_etcd_close(&etcd);
	free(prefix);
	free(error);
	return ret;
}
