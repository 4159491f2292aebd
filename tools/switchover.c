/*
 * switchover.c: standinctl switchover's checks and plan (see switchover.h).
 * Everything read here comes from etcd, so it works the same from any node:
 * the cluster state and each node's member record (standin-failoverd(8)).
 */
#include "config.h"

#include "tools/switchover.h"

#include <jansson.h>
#include <openssl/rand.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/cstore.h"
#include "lib/ctl.h"
#include "lib/etcd.h"
#include "lib/order.h"
#include "failover/actions.h"

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

/* ------------------------------------------------------------ the steps */

#define SW_LEASE_TTL_S 10	/* the switchover key and its orders go 10 s after standinctl */
#define SW_QUICK_MS 10000	/* pause, fence, finish: quick steps (or --timeout, if less) */

struct sw {
	const struct st_conf *conf;
	struct st_etcd *etcd;
	FILE *out;
	char id[40];
	int64_t lease, key_rev;		/* the switchover key's lease and create revision */
	int64_t key_mod;		/* and its last mod revision */
	long long keepalive_ms;
	char *key;
	const char *from, *to;
	int svc;			/* the one service that moves, or -1: all */
	uint64_t epoch;			/* the cluster's when it started */
	uint64_t seq;
	long timeout_ms;
	json_t *results[ST_MAX_NODES];	/* the last step's answers, by node index */
	char *error;			/* the step's failure, naming node and daemon */
};

/* Keep the switchover's lease alive (about every second). */
static int
sw_keepalive(struct sw *w)
{
	long ttl = 0;
	char *err = NULL;

	if (st_monotonic_ms() - w->keepalive_ms < 1000)
		return 0;
	if (st_etcd_lease_keepalive(w->etcd, w->lease, &ttl, &err) < 0 || ttl <= 0) {
		free(w->error);
		w->error = err != NULL ? xasprintf("etcd: %s", err)
				       : xstrdup("the switchover's lease in etcd ran out");
		free(err);
		return -1;
	}
	w->keepalive_ms = st_monotonic_ms();
	return 0;
}

static void
sw_fail(struct sw *w, char *msg)
{
	free(w->error);
	w->error = msg;
}

/*
 * Give order OP (ARGS: consumed) at EPOCH to each node in NODES (indexes,
 * N of them) and wait until every one has answered, up to TIMEOUT_MS.  0
 * when all did it; -1 with w->error naming the node and what failed.
 */
static int
sw_order(struct sw *w, const int *nodes, size_t n, const char *op, uint64_t epoch, json_t *args,
	 long timeout_ms)
{
	const struct st_conf *conf = w->conf;
	struct st_order o = { .seq = ++w->seq, .epoch = epoch, .args = args };
	char *err = NULL, *acks = st_etcd_key(conf, "acks/");
	bool have[ST_MAX_NODES] = { false };
	size_t got = 0;
	int ret = -1;

	snprintf(o.id, sizeof(o.id), "%s", w->id);
	snprintf(o.op, sizeof(o.op), "%s", op);
	if (w->svc >= 0)	/* one service moves: every order is for it alone */
		json_object_set_new(args, "services", json_pack("[s]", st_service_name(w->svc)));
	for (size_t i = 0; i < ST_ARRAY_SIZE(w->results); i++) {
		json_decref(w->results[i]);
		w->results[i] = NULL;
	}
	char *text = st_order_format(&o);
	for (size_t i = 0; i < n; i++) {
		char *key = xasprintf("/standin/%s/orders/%s", conf->cluster_name,
				      conf->nodes[nodes[i]].name);
		int rc = st_etcd_put(w->etcd, key, text, strlen(text), w->lease, &err);
		free(key);
		if (rc < 0) {
			sw_fail(w, xasprintf("etcd: %s", err));
			goto out;
		}
	}
	long long deadline = st_monotonic_ms() + timeout_ms;
	for (;;) {
		struct st_etcd_kv *kvs = NULL;
		size_t nk = 0;
		int64_t rev = 0;
		if (st_etcd_list(w->etcd, acks, &kvs, &nk, &rev, &err) < 0) {
			sw_fail(w, xasprintf("etcd: %s", err));
			goto out;
		}
		for (size_t k = 0; k < nk; k++) {
			const char *name = kvs[k].key + strlen(acks);
			int idx = st_conf_node_index(conf, name);
			bool wanted = false;
			for (size_t i = 0; i < n; i++)
				wanted |= nodes[i] == idx;
			if (!wanted || have[idx] || !st_order_acked(kvs[k].value, kvs[k].len, &o))
				continue;
			json_error_t jerr;
			json_t *a = json_loads(kvs[k].value, 0, &jerr);
			have[idx] = true;
			got++;
			w->results[idx] = json_incref(json_object_get(a, "result"));
			if (!json_is_true(json_object_get(a, "ok"))) {
				const char *e = json_string_value(json_object_get(a, "error"));
				sw_fail(w, xasprintf("node %s: %s", name, e != NULL ? e : "failed"));
				json_decref(a);
				st_etcd_kvs_free(kvs, nk);
				goto out;
			}
			json_decref(a);
		}
		st_etcd_kvs_free(kvs, nk);
		if (got == n) {
			ret = 0;
			goto out;
		}
		long long left = deadline - st_monotonic_ms();
		if (left <= 0) {
			struct st_buf b;
			st_buf_init(&b);
			for (size_t i = 0; i < n; i++) {
				if (!have[nodes[i]])
					st_buf_printf(&b, "%s%s", b.len > 0 ? ", " : "",
						      conf->nodes[nodes[i]].name);
			}
			sw_fail(w, xasprintf("node %s: no answer within %.1f s (is standin-failoverd "
					     "running there, and does it reach etcd?)", b.data,
					     timeout_ms / 1000.0));
			st_buf_free(&b);
			goto out;
		}
		if (sw_keepalive(w) < 0)
			goto out;
		if (st_etcd_wait(w->etcd, acks, true, rev, left < 1000 ? left : 1000, &err) < 0) {
			sw_fail(w, xasprintf("etcd: %s", err));
			goto out;
		}
	}
out:
	free(err);
	free(text);
	free(acks);
	json_decref(args);
	return ret;
}

/* Every node, or only one. */
static size_t
sw_all(const struct sw *w, int *nodes, const char *except)
{
	size_t n = 0;

	for (size_t i = 0; i < w->conf->n_nodes; i++) {
		if (except == NULL || strcmp(w->conf->nodes[i].name, except) != 0)
			nodes[n++] = (int)i;
	}
	return n;
}

/* The switchover key's value. */
static json_t *
sw_value(const struct sw *w, const char *phase)
{
	char host[256] = "?";

	gethostname(host, sizeof(host) - 1);
	return json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:I}", "id", w->id, "from", w->from, "to",
			 w->to, "epoch", (json_int_t)w->epoch, "phase", phase, "by", host,
			 "updated_ms", (json_int_t)st_now_ms());
}

static void
sw_phase(struct sw *w, const char *phase)
{
	char *err = NULL;
	json_t *v = sw_value(w, phase);
	char *text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);

	/* Best effort: the phase is for status; the key's existence is what counts. */
	int64_t rev = 0;
	if (st_etcd_put_if(w->etcd, w->key, text, strlen(text), w->key_mod, w->lease, &rev, NULL,
			   &err) == 1)
		w->key_mod = rev;
	free(err);
	free(text);
	json_decref(v);
}

static const char *const plan[] = {
	"pause every proxy and close its sessions (new clients wait)",
	"fence the old master: PostgreSQL read-only and its client sessions ended, slapd "
	"olcReadOnly, IMAP sessions kicked; its final positions read",
	"drain every replicator on the standbys to those positions",
	"copy the sequences",
	"prepare the reverse streams on the old master and re-point the other standbys "
	"(reverse NODE), the new master still read-only",
	"epoch + 1 in etcd: the point of no return",
	"the new master takes the state and is unfenced; its proxy resumes",
	"every other node takes the state; the replicators turn around; the proxies switch "
	"and resume",
};

static void
step_line(struct sw *w, int n, const char *what, long long t0, int ok)
{
	fprintf(w->out, "step %d/%zu %-10s %s (%lld ms)%s%s\n", n, ST_ARRAY_SIZE(plan), what,
		ok ? "ok" : "FAILED", st_monotonic_ms() - t0, ok ? "" : ": ", ok ? "" : w->error);
	fflush(w->out);
}

/* Before the point of no return: the old master writable again, clients
 * resumed.  0 done, -1 a node could not be told (its agent heals it). */
static int
sw_rollback(struct sw *w, bool fenced)
{
	int nodes[ST_MAX_NODES], from = st_conf_node_index(w->conf, w->from);
	size_t n = sw_all(w, nodes, NULL);
	long long t0 = st_monotonic_ms();
	long quick = w->timeout_ms < SW_QUICK_MS ? w->timeout_ms : SW_QUICK_MS;
	char *saved = w->error;
	int ret = 0;

	w->error = NULL;
	if (fenced) {
		if (sw_order(w, &from, 1, "unfence", w->epoch, json_object(), quick) == 0)
			fprintf(w->out, "rollback: %s unfenced (%lld ms)\n", w->from,
				st_monotonic_ms() - t0);
		else {
			fprintf(w->out, "rollback: unfencing %s FAILED: %s; its standin-failoverd "
				"unfences it by itself once the switchover's key is gone from etcd "
				"(%d s after this command, once etcd answers)\n", w->from, w->error,
				SW_LEASE_TTL_S);
			ret = -1;
		}
	}
	t0 = st_monotonic_ms();
	if (sw_order(w, nodes, n, "resume", w->epoch, json_object(), quick) == 0)
		fprintf(w->out, "rollback: proxies resumed (%lld ms)\n", st_monotonic_ms() - t0);
	else {
		fprintf(w->out, "rollback: resuming the proxies FAILED: %s; each node's "
			"standin-failoverd resumes its proxy once the switchover's key is gone\n",
			w->error);
		ret = -1;
	}
	free(w->error);
	w->error = saved;
	return ret;
}

static int
sw_run(struct sw *w)
{
	const struct st_conf *conf = w->conf;
	int nodes[ST_MAX_NODES], from = st_conf_node_index(conf, w->from),
	    to = st_conf_node_index(conf, w->to);
	size_t n = sw_all(w, nodes, NULL);
	long wait_ms = w->timeout_ms, quick = wait_ms < SW_QUICK_MS ? wait_ms : SW_QUICK_MS;
	long long t0, start = st_monotonic_ms();
	json_t *positions = NULL;
	struct st_cstate st, next;
	int64_t state_rev = 0;
	bool fenced = false;
	int step = 0;
	const char *what = "pause";

	/* 1: pause */
	t0 = st_monotonic_ms();
	what = "pause";
	sw_phase(w, what);
	if (sw_order(w, nodes, n, "pause", w->epoch, json_object(), quick) < 0)
		goto rollback;
	step_line(w, ++step, "pause", t0, 1);
	/* 2: fence */
	t0 = st_monotonic_ms();
	what = "fence";
	sw_phase(w, what);
	fenced = true;
	if (sw_order(w, &from, 1, "fence", w->epoch, json_object(), quick + 10000) < 0)
		goto rollback;
	positions = json_incref(json_object_get(w->results[from], "positions"));
	json_t *notes = json_object_get(w->results[from], "notes");
	for (size_t i = 0; i < json_array_size(notes); i++)
		fprintf(w->out, "  note: %s: %s\n", w->from,
			json_string_value(json_array_get(notes, i)));
	step_line(w, ++step, "fence", t0, 1);
	/* 3: drain */
	t0 = st_monotonic_ms();
	what = "drain";
	sw_phase(w, what);
	/* Every standby drains: the new master, and with three nodes or more
	 * the others, which then follow it from there with no copy. */
	n = sw_all(w, nodes, w->from);
	if (sw_order(w, nodes, n, "drain", w->epoch,
		     json_pack("{s:O,s:I}", "positions", positions, "timeout_ms", (json_int_t)wait_ms),
		     wait_ms + 5000) < 0)
		goto rollback;
	step_line(w, ++step, "drain", t0, 1);
	/* 4: sequences */
	t0 = st_monotonic_ms();
	what = "sequences";
	sw_phase(w, what);
	if (sw_order(w, &to, 1, "sequences", w->epoch,
		     json_pack("{s:I}", "timeout_ms", (json_int_t)wait_ms), wait_ms + 5000) < 0)
		goto rollback;
	step_line(w, ++step, "sequences", t0, 1);
	/* 5: reverse */
	t0 = st_monotonic_ms();
	what = "reverse";
	sw_phase(w, what);
	n = sw_all(w, nodes, w->to);	/* the old master and the other standbys */
	if (sw_order(w, nodes, n, "reverse", w->epoch,
		     json_pack("{s:s,s:I}", "to", w->to, "timeout_ms", (json_int_t)wait_ms),
		     wait_ms + 5000) < 0)
		goto rollback;
	step_line(w, ++step, "reverse", t0, 1);
	/* 6: the point of no return, guarded by the switchover's key */
	t0 = st_monotonic_ms();
	what = "epoch";
	char *err = NULL;
	int rc = st_cstore_get(w->etcd, conf, &st, &state_rev, &err);
	if (rc <= 0 || st.epoch != w->epoch ||
	    strcmp(w->svc >= 0 ? st_cstate_master_of(&st, w->svc) : st.master, w->from) != 0) {
		sw_fail(w, rc < 0 ? xasprintf("etcd: %s", err)
			   : xstrdup("the cluster state in etcd changed during the switchover"));
		free(err);
		goto rollback;
	}
	if (w->svc >= 0) {
		/* Only this service's directions change. */
		next = st;
		st_cstate_set_master_of(&next, conf, w->svc, w->to);
		next.updated = time(NULL);
	} else {
		st_cstate_init(&next, conf, w->to);
	}
	next.epoch = w->epoch + 1;
	bool found = false;
	rc = st_cstore_put_guarded(w->etcd, conf, &next, state_rev, w->key, w->key_rev, NULL, NULL,
				   &found, &err);
	if (rc < 0) {
		/* No answer: the write may have gone through.  Ask again; undo
		 * only what is known not to be committed. */
		struct st_cstate now;
		char *err2 = NULL;
		int grc = st_cstore_get(w->etcd, conf, &now, NULL, &err2);
		if (grc == 1 && now.epoch == next.epoch && st_cstate_same(&now, &next)) {
			rc = 1;
		} else if (grc != 1 || now.epoch != w->epoch) {
			sw_fail(w, xasprintf("etcd: %s; cannot tell whether epoch %llu was written: "
					     "nothing is undone here, each node's standin-failoverd "
					     "finishes or undoes the switchover by the state in etcd "
					     "once it answers", err, (unsigned long long)next.epoch));
			free(err);
			free(err2);
			step_line(w, ++step, what, t0, 0);
			fprintf(w->out, "switchover unresolved at step %d: %s\n", step, w->error);
			json_decref(positions);
			return 1;
		}
		free(err2);
	}
	if (rc <= 0) {
		sw_fail(w, rc < 0 ? xasprintf("etcd: %s (the state was not changed)", err)
			   : xstrdup("the cluster state or the switchover's key changed in etcd "
				     "(the lease ran out?)"));
		free(err);
		goto rollback;
	}
	free(err);
	err = NULL;
	step_line(w, ++step, "epoch", t0, 1);
	fprintf(w->out, "  epoch %llu: %s%s master %s (the point of no return)\n",
		(unsigned long long)next.epoch, w->svc >= 0 ? st_service_name(w->svc) : "",
		w->svc >= 0 ? "'s" : "", w->to);
	sw_phase(w, "committed");
	/* 7: the new master first, then 8: everyone else */
	int ret = 0;
	t0 = st_monotonic_ms();
	if (sw_order(w, &to, 1, "finish", next.epoch, json_object(), quick) < 0) {
		step_line(w, ++step, "promote", t0, 0);
		ret = 1;
	} else {
		step_line(w, ++step, "promote", t0, 1);
	}
	t0 = st_monotonic_ms();
	n = sw_all(w, nodes, w->to);
	if (sw_order(w, nodes, n, "finish", next.epoch, json_object(), quick) < 0) {
		step_line(w, ++step, "follow", t0, 0);
		ret = 1;
	} else {
		step_line(w, ++step, "follow", t0, 1);
	}
	if (ret != 0)
		fprintf(w->out, "the switchover is done (epoch %llu, master %s) but a node did not "
			"finish: its standin-failoverd takes the state within a second once it "
			"can; see standinctl status\n", (unsigned long long)next.epoch, w->to);
	else
		fprintf(w->out, "switchover done: %s is %s%s master at epoch %llu (%lld ms)\n",
			w->to, w->svc >= 0 ? st_service_name(w->svc) : "the",
			w->svc >= 0 ? "'s" : "", (unsigned long long)next.epoch,
			st_monotonic_ms() - start);
	json_decref(positions);
	return ret;
rollback:
	step_line(w, ++step, what, t0, 0);
	fprintf(w->out, "switchover failed at step %d: %s\n", step, w->error);
	if (sw_rollback(w, fenced) == 0)
		fprintf(w->out, "rolled back: %s is still the master at epoch %llu\n", w->from,
			(unsigned long long)w->epoch);
	else
		fprintf(w->out, "not rolled back everywhere: %s stays the master at epoch %llu; "
			"the nodes not reached undo the switchover by themselves\n", w->from,
			(unsigned long long)w->epoch);
	json_decref(positions);
	return 1;
}

/* Take the switchover's key (one at a time), run the steps, let the key go. */
static int
sw_start(const struct st_conf *conf, struct st_etcd *etcd, const struct st_cstate *st,
	 const char *from, const char *to, const struct st_switchover_opts *opts, FILE *out)
{
	struct sw w = { .conf = conf, .etcd = etcd, .out = out, .from = from, .to = to,
			.epoch = st->epoch, .timeout_ms = (long)(opts->timeout_s * 1000),
			.svc = opts->service };
	struct st_etcd_kv cur = { 0 };
	unsigned char rnd[8];
	char *err = NULL;
	int ret = 1;

	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		fprintf(out, "standinctl: no random bytes for the switchover's id\n");
		return 1;
	}
	snprintf(w.id, sizeof(w.id), "%lld-%02x%02x%02x%02x%02x%02x%02x%02x", st_now_ms(), rnd[0],
		 rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
	w.key = st_etcd_key(conf, "switchover");
	if (st_etcd_lease_grant(etcd, SW_LEASE_TTL_S, &w.lease, &err) < 0) {
		fprintf(out, "standinctl: %s\n", err);
		goto out;
	}
	w.keepalive_ms = st_monotonic_ms();
	json_t *v = sw_value(&w, "starting");
	char *text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(v);
	int rc = st_etcd_put_if(etcd, w.key, text, strlen(text), 0, w.lease, &w.key_rev, &cur, &err);
	free(text);
	if (rc < 0) {
		fprintf(out, "standinctl: %s\n", err);
		goto out;
	}
	if (rc == 0) {
		json_error_t jerr;
		json_t *o = json_loadb(cur.value != NULL ? cur.value : "", cur.len, 0, &jerr);
		fprintf(out, "standinctl: another switchover is running (id %s, %s -> %s, phase %s, "
			"run from %s): refused\n",
			json_string_value(json_object_get(o, "id")) ?: "?",
			json_string_value(json_object_get(o, "from")) ?: "?",
			json_string_value(json_object_get(o, "to")) ?: "?",
			json_string_value(json_object_get(o, "phase")) ?: "?",
			json_string_value(json_object_get(o, "by")) ?: "?");
		json_decref(o);
		goto out;
	}
	w.key_mod = w.key_rev;
	fprintf(out, "switchover %s started\n", w.id);
	ret = sw_run(&w);
	/* The key and the orders go with the lease; the acks stay for status. */
	if (st_etcd_lease_revoke(etcd, w.lease, &err) < 0)
		fprintf(out, "standinctl: %s (the switchover's key goes in %d s by itself)\n", err,
			SW_LEASE_TTL_S);
out:
	for (size_t i = 0; i < ST_ARRAY_SIZE(w.results); i++)
		json_decref(w.results[i]);
	st_etcd_kv_clear(&cur);
	free(w.error);
	free(w.key);
	free(err);
	return ret;
}

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
	/* The master of what moves: one service's, or the node every service
	 * has as its master. */
	int svc = opts->service;
	const char *from = svc >= 0 ? st_cstate_master_of(&st, svc) : st.master;
	if (svc >= 0 && !conf->service_enabled[svc]) {
		fprintf(out, "standinctl: --service %s: %s has no [%s] section\n", st_service_name(svc),
			conf->path, st_service_name(svc));
		ret = 2;
		goto out;
	}
	for (int s = 0; svc < 0 && s < ST_SVC_COUNT; s++) {
		if (conf->service_enabled[s] && strcmp(st_cstate_master_of(&st, s), from) != 0) {
			fprintf(out, "standinctl: %s's master is %s, not %s: switch the services one "
				"by one with --service\n", st_service_name(s),
				st_cstate_master_of(&st, s), from);
			goto out;
		}
	}
	if (to == NULL) {
		/* The one standby, when there is exactly one. */
		for (size_t i = 0; i < conf->n_nodes; i++) {
			const char *name = conf->nodes[i].name;
			if (strcmp(svc >= 0 ? st_cstate_role_of(&st, svc, name)
					    : st_cstate_role(&st, name), "standby") != 0)
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
	fprintf(out, "switchover of cluster %s%s%s from %s to %s, at epoch %llu (etcd %s)\n",
		conf->cluster_name, svc >= 0 ? ", service " : "", svc >= 0 ? st_service_name(svc) : "",
		from, to, (unsigned long long)st.epoch, st_etcd_url(etcd));
	if (strcmp(to, from) == 0) {
		fprintf(out, "check failed: %s is the master already\n", to);
		goto out;
	}
	if (strcmp(svc >= 0 ? st_cstate_role_of(&st, svc, to) : st_cstate_role(&st, to),
		   "standby") != 0) {
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
			if (!conf->service_enabled[s] || (svc >= 0 && s != svc))
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
	if (opts->dry_run) {
		fprintf(out, "plan (dry run: nothing done):\n");
		for (size_t i = 0; i < ST_ARRAY_SIZE(plan); i++)
			fprintf(out, "  %zu. %s\n", i + 1, plan[i]);
		ret = 0;
		goto out;
	}
	ret = sw_start(conf, etcd, &st, from, to, opts, out);
out:
	st_etcd_kvs_free(kvs, n);
	st_etcd_close(&etcd);
	free(prefix);
	free(error);
	return ret;
}

/* ------------------------------------------------------------ failover */

/*
 * After a failover's new epoch: the new master's agent takes the state and
 * unfences it, then every other node's but the old master's (fenced).  An
 * agent that does not answer is reported; it takes the state by itself
 * within a second once it can.
 */
static int
sw_after_failover(const struct st_conf *conf, struct st_etcd *etcd, const struct st_cstate *next,
		  const char *old, const struct st_switchover_opts *opts, FILE *out)
{
	struct sw w = { .conf = conf, .etcd = etcd, .out = out, .from = old, .to = opts->to,
			.epoch = next->epoch, .timeout_ms = (long)(opts->timeout_s * 1000) };
	int nodes[ST_MAX_NODES], to = st_conf_node_index(conf, opts->to), ret = 0;
	long quick = w.timeout_ms < SW_QUICK_MS ? w.timeout_ms : SW_QUICK_MS;
	char *err = NULL;
	size_t n = 0;

	snprintf(w.id, sizeof(w.id), "failover-%lld", st_now_ms());
	if (st_etcd_lease_grant(etcd, SW_LEASE_TTL_S, &w.lease, &err) < 0) {
		fprintf(out, "standinctl: %s; the nodes take the state by themselves within a second\n",
			err);
		free(err);
		return 1;
	}
	w.keepalive_ms = st_monotonic_ms();
	long long t0 = st_monotonic_ms();
	if (sw_order(&w, &to, 1, "finish", next->epoch, json_object(), quick) < 0) {
		fprintf(out, "promote %s FAILED (%lld ms): %s\n", opts->to, st_monotonic_ms() - t0,
			w.error);
		ret = 1;
	} else {
		fprintf(out, "promote %s ok (%lld ms)\n", opts->to, st_monotonic_ms() - t0);
	}
	for (size_t i = 0; i < conf->n_nodes; i++) {
		if (strcmp(conf->nodes[i].name, old) != 0 && (int)i != to)
			nodes[n++] = (int)i;
	}
	t0 = st_monotonic_ms();
	if (n > 0 && sw_order(&w, nodes, n, "finish", next->epoch, json_object(), quick) < 0) {
		fprintf(out, "follow FAILED (%lld ms): %s (it takes the state by itself once its "
			"agent reaches etcd)\n", st_monotonic_ms() - t0, w.error);
		ret = 1;
	} else if (n > 0) {
		fprintf(out, "follow ok (%lld ms)\n", st_monotonic_ms() - t0);
	}
	if (st_etcd_lease_revoke(etcd, w.lease, &err) < 0)
		free(err);
	for (size_t i = 0; i < ST_ARRAY_SIZE(w.results); i++)
		json_decref(w.results[i]);
	free(w.error);
	if (ret == 0)
		fprintf(out, "failover done: %s is the master at epoch %llu; %s stays fenced and "
			"follows %s when it comes back\n", opts->to, (unsigned long long)next->epoch,
			old, opts->to);
	return ret;
}

/* The old master's fencing: [failover] fence_command with its name. */
static int
fo_fence_old(const struct st_conf *conf, const char *old, bool force, FILE *out)
{
	char *err = NULL;
	long timeout = conf->fence_timeout_ms > 0 ? conf->fence_timeout_ms : 60000;

	if (conf->fence_command == NULL) {
		if (!force) {
			fprintf(out, "standinctl: %s sets no [failover] fence_command: nothing can make "
				"sure %s is down; nothing done (--force fails over anyway, if you "
				"know it is)\n", conf->path, old);
			return -1;
		}
		fprintf(out, "WARNING: no [failover] fence_command: %s is NOT fenced. If it still "
			"runs and a client reaches it, what it takes is not on the new master.\n", old);
		return 0;
	}
	long long t0 = st_monotonic_ms();
	char *what = xasprintf("[failover] fence_command for node %s", old);
	int rc = fo_run_command(conf->fence_command, old, what, timeout, &err);
	free(what);
	if (rc == 0) {
		fprintf(out, "fence: %s fenced by [failover] fence_command (%lld ms)\n", old,
			st_monotonic_ms() - t0);
		return 0;
	}
	if (!force) {
		fprintf(out, "standinctl: %s\nstandinctl: %s is not known to be down: nothing done "
			"(--force fails over anyway)\n", err, old);
		free(err);
		return -1;
	}
	fprintf(out, "WARNING: %s\nWARNING: %s is NOT known to be fenced; failing over anyway "
		"(--force). If it still runs and a client reaches it, what it takes is not on the "
		"new master.\n", err, old);
	free(err);
	return 0;
}

int
st_failover(const struct st_conf *conf, const struct st_node *here,
	    const struct st_failover_opts *opts, FILE *out)
{
	struct st_etcd *etcd = NULL;
	struct st_cstate st, local, next;
	char *error = NULL, *path = st_cstate_path(here), *key = NULL;
	int64_t rev = 0;
	int ret = 1, lock = -1;
	const char *to = opts->to;

	if (st_conf_node(conf, to) == NULL) {
		fprintf(out, "standinctl: --to %s: no such node in %s\n", to, conf->path);
		ret = 2;
		goto out;
	}
	int lrc = st_cstate_load(path, &local, &error);
	free(error);
	error = NULL;
	int erc = -1;
	if (conf->etcd.urls != NULL && (etcd = st_etcd_open(conf, &error)) != NULL)
		erc = st_cstore_get(etcd, conf, &st, &rev, &error);
	if (erc == 0) {
		fprintf(out, "standinctl: there is no cluster state in etcd\n");
		goto out;
	}
	if (erc < 0) {
		if (conf->etcd.urls != NULL && !opts->force) {
			fprintf(out, "standinctl: %s\nstandinctl: without etcd, failover --force works "
				"from this node's state file (run it on %s)\n", error, to);
			goto out;
		}
		if (strcmp(here->name, to) != 0) {
			fprintf(out, "standinctl: without etcd, run the failover on %s itself (this is "
				"node %s)\n", to, here->name);
			ret = 2;
			goto out;
		}
		if (lrc != 0) {
			fprintf(out, "standinctl: %s: no readable cluster state on this node\n", path);
			goto out;
		}
		if (conf->etcd.urls != NULL)
			fprintf(out, "WARNING: etcd does not answer (%s): failing over from this node's "
				"state file (--force)\n", error);
		st = local;
	}
	const char *old = st.master;
	fprintf(out, "failover of cluster %s from %s to %s, at epoch %llu\n", conf->cluster_name,
		old, to, (unsigned long long)st.epoch);
	if (strcmp(to, old) == 0 || strcmp(st_cstate_role(&st, to), "standby") != 0) {
		fprintf(out, "standinctl: %s is %s: a failover makes a standby the master\n", to,
			strcmp(to, old) == 0 ? "the master already" : "not a standby");
		goto out;
	}
	if (erc == 1) {
		struct st_etcd_kv kv = { 0 };
		char *mkey = xasprintf("/standin/%s/members/%s", conf->cluster_name, old);
		int mrc = st_etcd_get(etcd, mkey, &kv, NULL, &error);
		free(mkey);
		st_etcd_kv_clear(&kv);
		if (mrc == 1 && !opts->force) {
			fprintf(out, "standinctl: %s's standin-failoverd is alive (its member record is in "
				"etcd): use standinctl switchover, which loses nothing; --force fails "
				"over anyway\n", old);
			goto out;
		}
		key = st_etcd_key(conf, "switchover");
		mrc = st_etcd_get(etcd, key, &kv, NULL, &error);
		st_etcd_kv_clear(&kv);
		if (mrc == 1 && !opts->force) {
			fprintf(out, "standinctl: a switchover is running (%s): wait for it, or --force\n",
				key);
			goto out;
		}
	}
	if (fo_fence_old(conf, old, opts->force, out) < 0)
		goto out;
	st_cstate_init(&next, conf, to);
	next.epoch = (lrc == 0 && local.epoch > st.epoch ? local.epoch : st.epoch) + 1;
	if (erc == 1) {
		bool found = false;
		struct st_cstate now;
		int prc = st_cstore_put(etcd, conf, &next, rev, NULL, &now, &found, &error);
		if (prc <= 0) {
			fprintf(out, "standinctl: %s\n", prc < 0 ? error
				: "the cluster state in etcd changed meanwhile: nothing written");
			goto out;
		}
		fprintf(out, "epoch %llu: master %s (etcd %s)\n", (unsigned long long)next.epoch, to,
			st_etcd_url(etcd));
		/* The new master first, then the others, through their agents. */
		struct st_switchover_opts so = { .to = to, .timeout_s = opts->timeout_s };
		ret = sw_after_failover(conf, etcd, &next, old, &so, out);
		goto out;
	}
	/* No etcd: this node's file, and this node's servers. */
	lock = st_cstate_lock(path, true, &error);
	if (lock < 0 || st_cstate_save(path, &next, &error) < 0) {
		fprintf(out, "standinctl: %s\n", error);
		goto out;
	}
	fprintf(out, "%s: epoch %llu, master %s\n", path, (unsigned long long)next.epoch, to);
	long long ended;
	if (conf->service_enabled[ST_SVC_PG] && fo_pg_fence(conf, here, false, &ended, NULL,
							      &error) < 0) {
		fprintf(out, "standinctl: unfencing: %s\n", error);
		goto out;
	}
	if (conf->service_enabled[ST_SVC_LDAP] && fo_ldap_fence(conf, here, false, NULL, &error) < 0) {
		fprintf(out, "standinctl: unfencing: %s\n", error);
		goto out;
	}
	fprintf(out, "%s writable; its daemons follow the file. etcd and the other nodes take "
		"epoch %llu from this node's standin-failoverd once etcd answers.\n", to,
		(unsigned long long)next.epoch);
	ret = 0;
out:
	if (lock >= 0)
		close(lock);
	st_etcd_close(&etcd);
	free(key);
	free(path);
	free(error);
	return ret;
}
