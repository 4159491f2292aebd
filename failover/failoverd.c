/*
 * standin-failoverd: the one process that acts on its node for the cluster
 * (doc/architecture.md, section 4).  Built so far:
 *
 *  - it follows the cluster state in etcd: every second the state at
 *    /standin/CLUSTER/state is taken into this node's STATE_DIR/cluster.state
 *    when its epoch is higher (st_cstore_pull: never back), and the local
 *    daemons follow the file (st_cstate_follower);
 *  - it publishes this node's member record, /standin/CLUSTER/members/NODE:
 *    the node's epoch and each local daemon's state, lag and error, under a
 *    lease of MEMBER_TTL_S kept alive every second, so a node that dies or
 *    is cut off disappears from etcd by itself; a clean stop revokes it.
 *
 * It also takes the first of the switchover's orders on its node: "fence
 * EPOCH" and "unfence EPOCH" for the node's PostgreSQL (read-only by default
 * for every new transaction, the client sessions ended; standin's own
 * sessions override it).  An order with an epoch older than the node's is
 * refused.
 *
 * etcd and PostgreSQL calls block: they run in threads (lib/bgjob), and the
 * status socket answers meanwhile.  The other steps come next (issue 25).
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/bgjob.h"
#include "lib/cstore.h"
#include "lib/ctl.h"
#include "lib/daemon.h"
#include "lib/etcd.h"
#include "lib/log.h"
#include "lib/pgconn.h"

#define TICK_S 1.0
#define MEMBER_TTL_S 5
#define DAEMON_QUERY_MS 500

struct failoverd {
	struct st_daemon *d;
	ev_timer tick;
	struct st_bgjob *job;
	struct st_etcd *etcd;		/* used by the job's thread only, one job at a time */
	int64_t lease;			/* the member record's, 0 none (the thread's) */
	/* the last round, for status (main thread) */
	const char *state;
	char *etcd_error;
	struct st_cstate cs;
	bool cs_valid;
	long long last_ok_ms, rounds, taken;
	int64_t lease_seen;
	struct st_bgjob *order_job;	/* a fence or unfence in flight */
	const char *fenced;		/* "fenced", "unfenced" or NULL (not ordered yet) */
	uint64_t fence_epoch;
};

/* One round, in the thread. */
struct round {
	struct failoverd *f;
	int pull;			/* st_cstore_pull's result */
	struct st_cstate cs;
	char *err;			/* pull or etcd error */
	char *member_err;
};

static const char *const local_daemons[] = {
	ST_PROGRAM_PGREPL, ST_PROGRAM_LDAPREPL, ST_PROGRAM_IMAPREPL, ST_PROGRAM_PROXY,
};

/* This node's record: its epoch and each local daemon's status in short. */
static char *
member_record(struct failoverd *f, const struct st_cstate *cs, bool cs_valid)
{
	const struct st_daemon *d = f->d;
	json_t *o = json_object(), *daemons = json_object();

	json_object_set_new(o, "node", json_string(d->node->name));
	json_object_set_new(o, "epoch", cs_valid ? json_integer((json_int_t)cs->epoch) : json_null());
	json_object_set_new(o, "role", json_string(cs_valid ? st_cstate_role(cs, d->node->name)
								: "unknown"));
	json_object_set_new(o, "master", cs_valid ? json_string(cs->master) : json_null());
	json_object_set_new(o, "time_ms", json_integer(st_now_ms()));
	for (size_t i = 0; i < ST_ARRAY_SIZE(local_daemons); i++) {
		char *path = st_ctl_socket_path(d->node, local_daemons[i]), *reply = NULL, *err = NULL;
		json_t *s = json_object();
		if (st_ctl_query(path, "status", DAEMON_QUERY_MS, &reply, &err) < 0) {
			json_object_set_new(s, "state", json_string(strcmp(err, "no socket") == 0
								    ? "not running" : "unreachable"));
		} else {
			json_error_t jerr;
			json_t *st = json_loads(reply, 0, &jerr);
			static const char *const keep[] = { "state", "lag_seconds", "lag_bytes",
							    "last_error", "epoch", "master" };
			for (size_t k = 0; k < ST_ARRAY_SIZE(keep); k++) {
				json_t *v = json_object_get(st, keep[k]);
				if (v != NULL)
					json_object_set(s, keep[k], v);
			}
			json_decref(st);
		}
		json_object_set_new(daemons, local_daemons[i], s);
		free(reply);
		free(err);
		free(path);
	}
	json_object_set_new(o, "daemons", daemons);
	char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	return text;
}

/* The member record under a live lease: a new lease when the old one is gone. */
static int
publish_member(struct failoverd *f, const char *record, char **error_r)
{
	const struct st_conf *conf = f->d->conf;
	long ttl = 0;

	if (f->lease != 0 && st_etcd_lease_keepalive(f->etcd, f->lease, &ttl, error_r) < 0)
		return -1;
	if (f->lease == 0 || ttl <= 0) {
		if (f->lease != 0)
			st_warn("the member record's lease %" PRId64 " ran out: a new one", f->lease);
		if (st_etcd_lease_grant(f->etcd, MEMBER_TTL_S, &f->lease, error_r) < 0) {
			f->lease = 0;
			return -1;
		}
	}
	char *key = xasprintf("/standin/%s/members/%s", conf->cluster_name, f->d->node->name);
	int rc = st_etcd_put(f->etcd, key, record, strlen(record), f->lease, error_r);
	free(key);
	return rc;
}

static void
round_work(void *arg)
{
	struct round *r = arg;
	struct failoverd *f = r->f;
	const struct st_conf *conf = f->d->conf;

	if (f->etcd == NULL && (f->etcd = st_etcd_open(conf, &r->err)) == NULL)
		return;
	r->pull = st_cstore_pull(f->etcd, conf, f->d->node, &r->cs, &r->err);
	/* The record says what this node holds now, taken or not. */
	char *path = st_cstate_path(f->d->node), *lerr = NULL;
	struct st_cstate local;
	bool have = st_cstate_load(path, &local, &lerr) == 0;
	free(lerr);
	free(path);
	char *record = member_record(f, &local, have);
	if (publish_member(f, record, &r->member_err) < 0)
		f->lease = 0;
	free(record);
}

static void
round_done(void *arg)
{
	struct round *r = arg;
	struct failoverd *f = r->f;
	const char *state;

	f->job = NULL;
	f->rounds++;
	f->lease_seen = f->lease;
	switch (r->pull) {
	case ST_PULL_TAKEN:
		st_notice("cluster state taken from etcd: epoch %" PRIu64 " master %s", r->cs.epoch,
			  r->cs.master);
		f->taken++;
		/* fallthrough */
	case ST_PULL_SAME:
		state = "following";
		f->cs = r->cs;
		f->cs_valid = true;
		break;
	case ST_PULL_NONE:
		state = "no cluster state in etcd";
		break;
	case ST_PULL_KEPT:
		state = "ahead of etcd";
		break;
	default:
		state = "etcd unreachable";
		break;
	}
	const char *why = r->err != NULL ? r->err : r->member_err;
	if (why != NULL) {
		if (f->etcd_error == NULL || strcmp(f->etcd_error, why) != 0)
			st_warn("%s", why);
		free(f->etcd_error);
		f->etcd_error = xstrdup(why);
		st_daemon_set_error(f->d, "%s", why);
	} else {
		if (f->etcd_error != NULL) {
			st_notice("etcd answers again (%s)", f->etcd != NULL ? st_etcd_url(f->etcd) : "?");
			free(f->etcd_error);
			f->etcd_error = NULL;
			st_daemon_set_error(f->d, NULL);
		}
		f->last_ok_ms = st_now_ms();
	}
	f->state = state;
	f->d->state = state;
	free(r->err);
	free(r->member_err);
	free(r);
}

static void
tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct failoverd *f = w->data;
	char *err = NULL;

	(void)revents;
	if (f->job != NULL)
		return;		/* the last round still runs (etcd slow): skip this one */
	struct round *r = xcalloc(1, sizeof(*r));
	r->f = f;
	f->job = st_bgjob_start(loop, round_work, round_done, r, &err);
	if (f->job == NULL) {
		st_warn("cannot start a round: %s", err);
		free(err);
		free(r);
	}
}

/* ------------------------------------------------------------ orders */

/* "fence EPOCH" / "unfence EPOCH" in flight, in a thread. */
struct order {
	struct failoverd *f;
	bool fence;
	uint64_t epoch;
	struct st_ctl_held *held;
	long long ended;		/* sessions ended */
	char *err;
};

/*
 * PostgreSQL: default_transaction_read_only for the whole server (ALTER
 * SYSTEM and a reload: every transaction that starts from now on is
 * read-only), then the client sessions that are not standin's are ended,
 * so none goes on writing in a transaction begun before.  standin's own
 * sessions set default_transaction_read_only=off (lib/pgconn.c).
 */
static void
order_work(void *arg)
{
	struct order *o = arg;
	const struct st_conf *conf = o->f->d->conf;
	const char *me = o->f->d->node->name;
	char *value = NULL;
	PGconn *c = pgc_connect(conf, me, PGC_NORMAL, "standin-failoverd", &o->err);

	if (c == NULL)
		return;
	if (pgc_exec(c, o->fence ? "ALTER SYSTEM SET default_transaction_read_only = on"
				 : "ALTER SYSTEM RESET default_transaction_read_only", &o->err) < 0 ||
	    pgc_exec(c, "SELECT pg_catalog.pg_reload_conf()", &o->err) < 0)
		goto out;
	if (o->fence &&
	    pgc_value(c, "SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM "
			 "pg_catalog.pg_stat_activity WHERE backend_type = 'client backend' "
			 "AND pid <> pg_catalog.pg_backend_pid() "
			 "AND coalesce(application_name, '') NOT LIKE 'standin%'", &value, &o->err) < 0)
		goto out;
	o->ended = value != NULL ? strtoll(value, NULL, 10) : 0;
out:
	free(value);
	PQfinish(c);
}

static void
order_done(void *arg)
{
	struct order *o = arg;
	struct failoverd *f = o->f;
	json_t *r = json_object();

	f->order_job = NULL;
	if (o->err != NULL) {
		st_warn("%s at epoch %" PRIu64 " failed: %s", o->fence ? "fence" : "unfence", o->epoch,
			o->err);
		json_object_set_new(r, "ok", json_false());
		json_object_set_new(r, "error", json_string(o->err));
	} else {
		f->fenced = o->fence ? "fenced" : "unfenced";
		f->fence_epoch = o->epoch;
		if (o->fence)
			st_notice("fenced at epoch %" PRIu64 ": PostgreSQL read-only, %lld client "
				  "session(s) ended", o->epoch, o->ended);
		else
			st_notice("unfenced at epoch %" PRIu64 ": PostgreSQL writable again", o->epoch);
		json_object_set_new(r, "ok", json_true());
		json_object_set_new(r, o->fence ? "fenced" : "unfenced", json_true());
		json_object_set_new(r, "epoch", json_integer((json_int_t)o->epoch));
		if (o->fence)
			json_object_set_new(r, "sessions_ended", json_integer(o->ended));
	}
	char *text = json_dumps(r, JSON_COMPACT);
	char *line = xasprintf("%s\n", text);
	st_ctl_reply_later(o->held, line);
	free(line);
	free(text);
	json_decref(r);
	free(o->err);
	free(o);
}

static void
order(struct st_daemon *d, bool fence, const char *args, struct st_buf *reply)
{
	struct failoverd *f = d->priv;
	char *end, *err = NULL, *path = NULL;
	struct st_cstate cs;
	unsigned long long epoch = strtoull(args, &end, 10);

	if (*args < '0' || *args > '9' || *end != '\0') {
		st_ctl_reply_error(reply, "usage: %s EPOCH", fence ? "fence" : "unfence");
		return;
	}
	if (!d->conf->service_enabled[ST_SVC_PG]) {
		st_ctl_reply_error(reply, "%s has no [pg] section: nothing to %s", d->config_path,
				   fence ? "fence" : "unfence");
		return;
	}
	/* Every order carries its epoch; an older one than this node's is refused. */
	path = st_cstate_path(d->node);
	int rc = st_cstate_load(path, &cs, &err);
	free(path);
	if (rc != 0 && !fence) {
		/* Fencing is always safe; making a node writable needs its epoch. */
		st_ctl_reply_error(reply, "refused: this node's cluster state cannot be read (%s)",
				   rc > 0 ? "there is none" : err);
		free(err);
		return;
	}
	free(err);
	err = NULL;
	if (rc == 0 && epoch < cs.epoch) {
		st_ctl_reply_error(reply, "refused: the order is for epoch %llu, this node is at %llu",
				   epoch, (unsigned long long)cs.epoch);
		return;
	}
	if (f->order_job != NULL) {
		st_ctl_reply_error(reply, "a fence or unfence is running already");
		return;
	}
	struct order *o = xcalloc(1, sizeof(*o));
	o->f = f;
	o->fence = fence;
	o->epoch = epoch;
	f->order_job = st_bgjob_start(d->loop, order_work, order_done, o, &err);
	if (f->order_job == NULL) {
		st_ctl_reply_error(reply, "%s", err);
		free(err);
		free(o);
		return;
	}
	o->held = st_ctl_hold(reply, 3 * d->conf->pg.connect_timeout_ms + 10000);
}

static void
cmd_fence(void *ctx, const char *args, struct st_buf *reply)
{
	order(ctx, true, args, reply);
}

static void
cmd_unfence(void *ctx, const char *args, struct st_buf *reply)
{
	order(ctx, false, args, reply);
}

static int
fo_start(struct st_daemon *d, char **error_r)
{
	struct failoverd *f = d->priv;

	if (d->conf->etcd.urls == NULL) {
		st_set_error(error_r, "%s sets no [cluster] etcd: standin-failoverd follows the "
			     "cluster state there", d->config_path);
		return -1;
	}
	f->d = d;
	f->state = "starting";
	d->state = f->state;
	ev_timer_init(&f->tick, tick_cb, 0., TICK_S);
	f->tick.data = f;
	ev_timer_start(d->loop, &f->tick);
	return 0;
}

static void
fo_stop(struct st_daemon *d)
{
	struct failoverd *f = d->priv;
	char *err = NULL;

	ev_timer_stop(d->loop, &f->tick);
	st_bgjob_wait(&f->job);
	st_bgjob_wait(&f->order_job);
	/* A clean stop takes this node's record away at once. */
	if (f->etcd != NULL && f->lease != 0 && st_etcd_lease_revoke(f->etcd, f->lease, &err) < 0) {
		st_warn("cannot revoke the member record's lease: %s", err);
		free(err);
	}
	f->lease = 0;
	st_etcd_close(&f->etcd);
	free(f->etcd_error);
	f->etcd_error = NULL;
}

/* A reload frees the configuration the thread reads: let it finish, and
 * open etcd again with the new settings. */
static int
fo_reload(struct st_daemon *d, struct st_conf *conf, char **error_r)
{
	struct failoverd *f = d->priv;

	if (conf->etcd.urls == NULL) {
		st_set_error(error_r, "the new configuration sets no [cluster] etcd; keeping the old one");
		return -1;
	}
	st_bgjob_wait(&f->job);
	st_bgjob_wait(&f->order_job);
	st_etcd_close(&f->etcd);
	return 0;
}

static void
fo_status(struct st_daemon *d, json_t *obj)
{
	struct failoverd *f = d->priv;

	json_object_set_new(obj, "epoch", f->cs_valid ? json_integer((json_int_t)f->cs.epoch)
						     : json_null());
	json_object_set_new(obj, "master", f->cs_valid ? json_string(f->cs.master) : json_null());
	json_object_set_new(obj, "etcd", json_string(d->conf->etcd.urls));
	json_object_set_new(obj, "etcd_error", f->etcd_error ? json_string(f->etcd_error)
							      : json_null());
	json_object_set_new(obj, "last_ok_ms", f->last_ok_ms ? json_integer(f->last_ok_ms)
							     : json_null());
	json_object_set_new(obj, "rounds", json_integer(f->rounds));
	json_object_set_new(obj, "states_taken", json_integer(f->taken));
	char lease[32];
	snprintf(lease, sizeof(lease), "%" PRId64, f->lease_seen);
	json_object_set_new(obj, "member_lease", f->lease_seen ? json_string(lease) : json_null());
	json_object_set_new(obj, "pg_fence", f->fenced ? json_string(f->fenced) : json_null());
	json_object_set_new(obj, "pg_fence_epoch", f->fenced ? json_integer((json_int_t)f->fence_epoch)
							     : json_null());
}

static void
fo_metrics(struct st_daemon *d, struct st_buf *out)
{
	struct failoverd *f = d->priv;
	char labels[96];

	snprintf(labels, sizeof(labels), "node=\"%s\"", d->node->name);
	st_metric(out, "standin_failoverd_epoch", "gauge", "Epoch of the cluster state followed.",
		  labels, f->cs_valid ? (double)f->cs.epoch : 0);
	st_metric(out, "standin_failoverd_etcd_ok", "gauge", "1 when the last round reached etcd.",
		  labels, f->etcd_error == NULL && f->last_ok_ms > 0 ? 1 : 0);
	st_metric(out, "standin_failoverd_states_taken_total", "counter",
		  "Cluster states taken from etcd.", labels, (double)f->taken);
}

static const struct st_ctl_command fo_commands[] = {
	{ "fence", cmd_fence, "fence EPOCH: this node's PostgreSQL read-only, client sessions ended" },
	{ "unfence", cmd_unfence, "unfence EPOCH: this node's PostgreSQL writable again" },
	{ NULL, NULL, NULL },
};

static const struct st_daemon_ops fo_ops = {
	.program = ST_PROGRAM_FAILOVERD,
	.summary = "follow the cluster state in etcd and publish this node's status there",
	.start = fo_start,
	.stop = fo_stop,
	.reload = fo_reload,
	.status = fo_status,
	.metrics = fo_metrics,
	.commands = fo_commands,
};

int
main(int argc, char **argv)
{
	static struct failoverd f;

	return st_daemon_main(argc, argv, &fo_ops, &f);
}
