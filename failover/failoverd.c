/*
 * standin-failoverd: the one process that acts on its node for the cluster
 * (doc/architecture.md, section 4):
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
 *  - it carries out a switchover's orders for its node (orders/NODE in
 *    etcd, watched; failover/actions.c), answers in acks/NODE, and undoes
 *    what a switchover that vanished from etcd did here (heal);
 *  - it sets its node's servers for the node's role once per epoch (the
 *    role job: a standby's PostgreSQL read-only, the master writable);
 *  - by hand, on its socket: "fence EPOCH" and "unfence EPOCH" for the
 *    node's PostgreSQL.  An order with an epoch older than the node's is
 *    refused.
 *
 * etcd, the servers and the local daemons are spoken to in threads
 * (lib/bgjob), and the status socket answers meanwhile.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/bgjob.h"
#include "lib/cstore.h"
#include "lib/ctl.h"
#include "lib/daemon.h"
#include "lib/etcd.h"
#include "lib/log.h"
#include "lib/order.h"
#include "failover/actions.h"

#define TICK_S 1.0
#define MEMBER_TTL_S 5
#define DAEMON_QUERY_MS 500
#define ORDER_WAIT_MS 1000		/* one watch of the orders key, then read it again */

struct failoverd;
static void ojob_start(struct failoverd *f);

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
	/* a switchover's orders (etcd orders/NODE), one at a time, in a thread */
	struct st_bgjob *ojob;
	struct st_etcd *oetcd;		/* the order thread's */
	char done_id[ST_ORDER_ID_MAX];	/* the last order carried out (the thread's) */
	uint64_t done_seq;
	char open_id[ST_ORDER_ID_MAX];	/* a switchover not finished here (the thread's) */
	bool stopping;			/* no new order job */
	json_t *last_order;		/* for status (main thread) */
	long long orders_failed;
	pthread_mutex_t act_lock;	/* one thread acts on the local servers at a time */
	uint64_t role_epoch;		/* servers set for the role at this epoch (act_lock) */
	struct st_bgjob *role_job;
	uint64_t role_seen;		/* role_epoch, as the loop knows it */
	long long role_next_ms;		/* after a failure, not before this */
	long long orders_done;
	char *orders_error;
};

/* One round, in the thread. */
struct round {
	struct failoverd *f;
	int pull;			/* st_cstore_pull's result */
	uint64_t pushed;		/* this node's epoch written to etcd (it was ahead) */
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
	if (cs_valid) {
		json_t *roles = json_object();	/* per service: one may have moved alone */
		for (int s = 0; s < ST_SVC_COUNT; s++) {
			if (d->conf->service_enabled[s])
				json_object_set_new(roles, st_service_name(s),
						    json_string(st_cstate_role_of(cs, s, d->node->name)));
		}
		json_object_set_new(o, "roles", roles);
	}
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
			/* The proxy: each service's backend and pause. */
			const char *key;
			json_t *v, *svcs = json_object_get(st, "services"), *out = json_object();
			json_object_foreach(svcs, key, v) {
				json_t *be = json_object_get(json_object_get(v, "backend"), "node");
				bool paused = json_is_true(json_object_get(v, "paused"));
				json_object_set_new(out, key, json_pack("{s:O,s:b}", "backend",
									be != NULL ? be : json_null(),
									"paused", paused));
			}
			if (json_object_size(out) > 0)
				json_object_set_new(s, "services", out);
			else
				json_decref(out);
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
	struct st_cstate local, in_etcd;
	bool have = st_cstate_load(path, &local, &lerr) == 0;
	free(lerr);
	int64_t rev = 0;
	/* Ahead of etcd (a failover --force made while etcd was away): etcd
	 * takes this node's higher epoch, in a txn on the revision read. */
	if (r->pull == ST_PULL_KEPT && have &&
	    st_cstore_get(f->etcd, conf, &in_etcd, &rev, &lerr) == 1 && local.epoch > in_etcd.epoch &&
	    st_cstore_put(f->etcd, conf, &local, rev, NULL, NULL, NULL, &lerr) == 1) {
		r->pushed = local.epoch;
		r->pull = ST_PULL_SAME;
		r->cs = local;
		free(r->err);
		r->err = NULL;
	}
	free(lerr);
	lerr = NULL;
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
	if (r->pushed)
		st_notice("etcd was behind this node: its epoch %" PRIu64 " written there", r->pushed);
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

/*
 * The node's servers as its role at the epoch wants them, once per epoch
 * (so again after a restart): a standby's PostgreSQL read-only for clients
 * (standin's own sessions are not; an old master that comes back after a
 * failover stays so); the master writable, when no switchover is in etcd
 * (a state moved by hand, or an agent restarted after a switchover's
 * standinctl died).  An order, or a fence or unfence by hand, settles the
 * epoch it carries instead.  In a job of its own (a server that does not
 * answer must not hold the member record back), under act_lock with the
 * state read again there, so it never undoes an order.
 */
struct role {
	struct failoverd *f;
	uint64_t done;			/* set at this epoch now */
	const char *as;			/* "standby" or "master" */
	uint64_t settled;		/* role_epoch after the job */
	bool waiting;			/* a switchover runs: not now */
	char *err;
};

/* Is a switchover (or a failover) in etcd now?  1 yes, 0 no, -1 error. */
static int
switchover_running(const struct st_conf *conf, char **error_r)
{
	struct st_etcd *e = st_etcd_open(conf, error_r);
	struct st_etcd_kv kv = { 0 };
	char *key = st_etcd_key(conf, "switchover");
	int rc = e != NULL ? st_etcd_get(e, key, &kv, NULL, error_r) : -1;

	st_etcd_kv_clear(&kv);
	st_etcd_close(&e);
	free(key);
	return rc;
}

static void
role_work(void *arg)
{
	struct role *j = arg;
	struct failoverd *f = j->f;
	const struct st_conf *conf = f->d->conf;
	const struct st_node *node = f->d->node;
	struct st_cstate local;
	char *path = st_cstate_path(node), *err = NULL;
	long long ended;

	pthread_mutex_lock(&f->act_lock);
	if (st_cstate_load(path, &local, &err) == 0 && f->role_epoch < local.epoch) {
		/* Per service: a switchover may move only one. */
		bool pg = conf->service_enabled[ST_SVC_PG];
		bool pg_master = pg && strcmp(st_cstate_master_of(&local, ST_SVC_PG), node->name) == 0;
		bool ldap_master = conf->service_enabled[ST_SVC_LDAP] &&
				   strcmp(st_cstate_master_of(&local, ST_SVC_LDAP), node->name) == 0;
		j->as = strcmp(st_cstate_role(&local, node->name), "master") == 0 ? "master"
										   : "standby";
		int rc = pg_master || ldap_master ? switchover_running(conf, &j->err) : 0;
		if (rc == 1) {
			j->waiting = true;
		} else if (rc == 0 &&
			   (!pg || (pg_master ? fo_pg_fence(conf, node, false, &ended, NULL, &j->err)
					      : fo_pg_readonly(conf, node, &j->err)) == 0) &&
			   (!ldap_master || fo_ldap_fence(conf, node, false, NULL, &j->err) >= 0)) {
			j->done = local.epoch;
		}
		if (j->done)
			f->role_epoch = j->done;
	}
	j->settled = f->role_epoch;
	pthread_mutex_unlock(&f->act_lock);
	free(err);
	free(path);
}

static void
role_done(void *arg)
{
	struct role *j = arg;
	struct failoverd *f = j->f;

	f->role_job = NULL;
	f->role_seen = j->settled;
	if (j->done && strcmp(j->as, "standby") == 0)
		st_notice("a standby at epoch %" PRIu64 ": PostgreSQL read-only for clients", j->done);
	else if (j->done)
		st_notice("the master at epoch %" PRIu64 ": its servers writable", j->done);
	if (j->err != NULL) {
		st_warn("cannot set this node's servers for its role, %s (again in 10 s): %s",
			j->as != NULL ? j->as : "?", j->err);
		f->role_next_ms = st_monotonic_ms() + 10000;
	} else if (j->waiting) {
		f->role_next_ms = st_monotonic_ms() + 1000;	/* after the switchover */
	}
	free(j->err);
	free(j);
}

static void
role_check(struct failoverd *f)
{
	char *err = NULL;

	if (f->role_job != NULL || f->stopping || !f->cs_valid || f->role_seen >= f->cs.epoch ||
	    st_monotonic_ms() < f->role_next_ms)
		return;
	struct role *j = xcalloc(1, sizeof(*j));
	j->f = f;
	f->role_job = st_bgjob_start(f->d->loop, role_work, role_done, j, &err);
	if (f->role_job == NULL) {
		st_warn("cannot start a job: %s", err);
		free(err);
		free(j);
	}
}

static void
tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct failoverd *f = w->data;
	char *err = NULL;

	(void)revents;
	ojob_start(f);
	role_check(f);
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

/* The admin socket's fence/unfence: PostgreSQL only (failover/actions.c). */
static void
order_work(void *arg)
{
	struct order *o = arg;

	pthread_mutex_lock(&o->f->act_lock);
	if (fo_pg_fence(o->f->d->conf, o->f->d->node, o->fence, &o->ended, NULL, &o->err) < 0)
		o->ended = 0;	/* o->err says why */
	else if (o->epoch > o->f->role_epoch)
		o->f->role_epoch = o->epoch;	/* by hand: settled for this epoch */
	pthread_mutex_unlock(&o->f->act_lock);
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

/* ------------------------------------------------------------ a switchover's orders */

/*
 * One turn of the order thread: read orders/NODE; an order not carried out
 * yet (and not acked: a restart does not run it twice) is carried out and
 * answered in acks/NODE; otherwise wait for the key to change (a watch from
 * the revision read, so nothing written meanwhile is missed).
 */
struct ojob {
	struct failoverd *f;
	json_t *ack;			/* the order carried out, or NULL */
	char *error;			/* etcd, or an order that cannot be read */
};

static void
ojob_sleep(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* An order that sets the node's servers (fence, unfence, finish, heal): the
 * role job leaves its epoch alone. */
static bool
settles(const struct st_order *o)
{
	return strcmp(o->op, "fence") == 0 || strcmp(o->op, "unfence") == 0 ||
	       strcmp(o->op, "finish") == 0 || strcmp(o->op, "heal") == 0;
}

/*
 * No order for this node, and the switchover that gave it its last one
 * did not finish here: once that switchover's key is gone from etcd (its
 * standinctl died or lost etcd; the key goes with its lease), undo what it
 * did here (failover/actions.c: heal).  1 when something was done (or
 * failed), 0 when the switchover still runs.
 */
static int
heal(struct ojob *j, struct st_order *o)
{
	struct failoverd *f = j->f;
	char *key = st_etcd_key(f->d->conf, "switchover"), *err = NULL;
	struct st_etcd_kv kv = { 0 };
	struct st_cstate cs;
	int rc = st_etcd_get(f->oetcd, key, &kv, NULL, &j->error);

	free(key);
	if (rc < 0)
		return 1;
	if (rc == 1 && strstr(kv.value, f->open_id) != NULL) {
		st_etcd_kv_clear(&kv);
		return 0;
	}
	st_etcd_kv_clear(&kv);
	char *path = st_cstate_path(f->d->node);
	rc = st_cstate_load(path, &cs, &err);
	free(path);
	free(err);
	st_order_clear(o);
	snprintf(o->id, sizeof(o->id), "%s", f->open_id);
	snprintf(o->op, sizeof(o->op), "heal");
	o->epoch = rc == 0 ? cs.epoch : 1;
	o->args = json_object();
	long long t0 = st_monotonic_ms();
	pthread_mutex_lock(&f->act_lock);
	json_t *result = fo_execute(f->d->conf, f->d->node, f->oetcd, o, &err);
	if (result != NULL && settles(o) && o->epoch > f->role_epoch)
		f->role_epoch = o->epoch;
	pthread_mutex_unlock(&f->act_lock);
	j->ack = json_pack("{s:s,s:I,s:I,s:s,s:s,s:b,s:s?,s:o?,s:I}", "id", o->id, "seq",
			   (json_int_t)0, "epoch", (json_int_t)o->epoch, "op", "heal", "node",
			   f->d->node->name, "ok", result != NULL, "error", err, "result", result,
			   "ms", (json_int_t)(st_monotonic_ms() - t0));
	free(err);
	if (result != NULL)
		f->open_id[0] = '\0';
	else
		ojob_sleep(ORDER_WAIT_MS);	/* not in a tight loop */
	return 1;
}

static void
ojob_work(void *arg)
{
	struct ojob *j = arg;
	struct failoverd *f = j->f;
	const struct st_conf *conf = f->d->conf;
	const struct st_node *node = f->d->node;
	struct st_etcd_kv kv = { 0 }, ack = { 0 };
	struct st_order o = { 0 };
	int64_t rev = 0;
	char *okey = NULL, *akey = NULL, *err = NULL;

	if (f->oetcd == NULL && (f->oetcd = st_etcd_open(conf, &j->error)) == NULL)
		goto pause;
	okey = xasprintf("/standin/%s/orders/%s", conf->cluster_name, node->name);
	akey = xasprintf("/standin/%s/acks/%s", conf->cluster_name, node->name);
	int rc = st_etcd_get(f->oetcd, okey, &kv, &rev, &j->error);
	if (rc < 0)
		goto pause;
	if (rc == 1) {
		if (st_order_parse(kv.value, kv.len, &o, &err) < 0) {
			j->error = xasprintf("etcd key %s: %s", okey, err);
			free(err);
		} else if (strcmp(o.id, f->done_id) != 0 || o.seq != f->done_seq) {
			rc = st_etcd_get(f->oetcd, akey, &ack, NULL, &j->error);
			if (rc < 0)
				goto pause;
			if (rc == 1 && st_order_acked(ack.value, ack.len, &o)) {
				memcpy(f->done_id, o.id, sizeof(f->done_id));
				f->done_seq = o.seq;
				goto out;
			}
			long long t0 = st_monotonic_ms();
			pthread_mutex_lock(&f->act_lock);
			json_t *result = fo_execute(conf, node, f->oetcd, &o, &err);
			if (result != NULL && settles(&o) && o.epoch > f->role_epoch)
				f->role_epoch = o.epoch;	/* the order settled it */
			pthread_mutex_unlock(&f->act_lock);
			/* Open until this node finished or rolled back; see heal below. */
			bool ends = result != NULL && (strcmp(o.op, "finish") == 0 ||
						       strcmp(o.op, "resume") == 0);
			snprintf(f->open_id, sizeof(f->open_id), "%s", ends ? "" : o.id);
			j->ack = json_pack("{s:s,s:I,s:I,s:s,s:s,s:b,s:s?,s:o?,s:I}", "id", o.id,
					   "seq", (json_int_t)o.seq, "epoch", (json_int_t)o.epoch,
					   "op", o.op, "node", node->name, "ok", result != NULL,
					   "error", err, "result", result,
					   "ms", (json_int_t)(st_monotonic_ms() - t0));
			free(err);
			char *text = json_dumps(j->ack, JSON_COMPACT | JSON_SORT_KEYS);
			if (st_etcd_put(f->oetcd, akey, text, strlen(text), 0, &j->error) == 0) {
				memcpy(f->done_id, o.id, sizeof(f->done_id));
				f->done_seq = o.seq;
			}
			free(text);
			goto out;
		}
	}
	if (rc == 0 && f->open_id[0] != '\0' && heal(j, &o) != 0)
		goto out;
	if (st_etcd_wait(f->oetcd, okey, false, rev, ORDER_WAIT_MS, &err) < 0) {
		free(j->error);
		j->error = err;
		goto pause;
	}
	goto out;
pause:
	ojob_sleep(ORDER_WAIT_MS);	/* etcd unreachable: try again in a while */
out:
	st_order_clear(&o);
	st_etcd_kv_clear(&kv);
	st_etcd_kv_clear(&ack);
	free(okey);
	free(akey);
}

static void
ojob_done(void *arg)
{
	struct ojob *j = arg;
	struct failoverd *f = j->f;

	f->ojob = NULL;
	if (j->ack != NULL) {
		const char *op = json_string_value(json_object_get(j->ack, "op"));
		const char *err = json_string_value(json_object_get(j->ack, "error"));
		long long epoch = json_integer_value(json_object_get(j->ack, "epoch"));
		long long ms = json_integer_value(json_object_get(j->ack, "ms"));
		if (err != NULL)
			f->orders_failed++;
		if (err != NULL)
			st_warn("order %s (switchover %s, epoch %lld) failed after %lld ms: %s", op,
				json_string_value(json_object_get(j->ack, "id")), epoch, ms, err);
		else
			st_notice("order %s (switchover %s, epoch %lld) done in %lld ms", op,
				  json_string_value(json_object_get(j->ack, "id")), epoch, ms);
		if (err == NULL && (strcmp(op, "fence") == 0 || strcmp(op, "unfence") == 0)) {
			f->fenced = strcmp(op, "fence") == 0 ? "fenced" : "unfenced";
			f->fence_epoch = (uint64_t)epoch;
		}
		json_decref(f->last_order);
		f->last_order = j->ack;
		f->orders_done++;
	}
	if (j->error == NULL || f->orders_error == NULL || strcmp(j->error, f->orders_error) != 0) {
		if (j->error != NULL)
			st_warn("orders: %s", j->error);
		free(f->orders_error);
		f->orders_error = j->error;
	} else {
		free(j->error);
	}
	free(j);
	ojob_start(f);
}

static void
ojob_start(struct failoverd *f)
{
	char *err = NULL;

	if (f->stopping || f->ojob != NULL)
		return;
	struct ojob *j = xcalloc(1, sizeof(*j));
	j->f = f;
	f->ojob = st_bgjob_start(f->d->loop, ojob_work, ojob_done, j, &err);
	if (f->ojob == NULL) {
		st_warn("cannot start the order thread: %s (again at the next round)", err);
		free(err);
		free(j);
	}
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
	f->stopping = false;
	ojob_start(f);
	return 0;
}

static void
fo_stop(struct st_daemon *d)
{
	struct failoverd *f = d->priv;
	char *err = NULL;

	ev_timer_stop(d->loop, &f->tick);
	f->stopping = true;
	st_bgjob_wait(&f->ojob);
	st_bgjob_wait(&f->job);
	st_bgjob_wait(&f->order_job);
	st_bgjob_wait(&f->role_job);
	st_etcd_close(&f->oetcd);
	json_decref(f->last_order);
	f->last_order = NULL;
	free(f->orders_error);
	f->orders_error = NULL;
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
	f->stopping = true;
	st_bgjob_wait(&f->ojob);
	st_bgjob_wait(&f->job);
	st_bgjob_wait(&f->order_job);
	st_bgjob_wait(&f->role_job);
	st_etcd_close(&f->etcd);
	st_etcd_close(&f->oetcd);
	f->stopping = false;	/* the next tick starts it again, with the new configuration */
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
	json_object_set_new(obj, "last_order", f->last_order ? json_incref(f->last_order)
							     : json_null());
	json_object_set_new(obj, "orders_done", json_integer(f->orders_done));
	json_object_set_new(obj, "orders_error", f->orders_error ? json_string(f->orders_error)
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
	st_metric(out, "standin_failoverd_orders_total", "counter",
		  "Switchover and failover orders carried out on this node.", labels,
		  (double)f->orders_done);
	st_metric(out, "standin_failoverd_order_failures_total", "counter",
		  "Orders that failed on this node.", labels, (double)f->orders_failed);
	st_metric(out, "standin_failoverd_last_order_seconds", "gauge",
		  "How long the last order took.", labels,
		  f->last_order ? (double)json_integer_value(json_object_get(f->last_order, "ms")) / 1000.0
				: 0);
	st_metric(out, "standin_failoverd_role_epoch", "gauge",
		  "Epoch for whose role this node's servers were last set.", labels,
		  (double)f->role_seen);
}

static const struct st_ctl_command fo_commands[] = {
	{ "fence", ST_CTL_CHANGES, cmd_fence, "fence EPOCH: this node's PostgreSQL read-only, client sessions ended" },
	{ "unfence", ST_CTL_CHANGES, cmd_unfence, "unfence EPOCH: this node's PostgreSQL writable again" },
	{ NULL, 0, NULL, NULL },
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
	static struct failoverd f = { .act_lock = PTHREAD_MUTEX_INITIALIZER };

	return st_daemon_main(argc, argv, &fo_ops, &f);
}
