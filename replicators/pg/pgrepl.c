/*
 * standin-pgrepl: keep the standby's PostgreSQL a live copy of the master's,
 * through logical decoding (pgoutput) applied with ordinary SQL.
 *
 * The daemon runs on every node.  The cluster state says, for the pg
 * service, which node replicates to which; the daemon of a target node pulls
 * from its source.  libpq is used blocking-with-poll on one engine thread
 * (the stream, the apply pipeline, the initial sync); the libev loop of the
 * main thread keeps the status socket, signals and reloads responsive.  The
 * two share a status snapshot under a mutex; the engine wakes the loop with
 * ev_async to publish errors.
 *
 * This file is the daemon: the shared status, the engine's loop over the
 * cluster state, the switchover's reverse, the admin commands; one session
 * from a source is pgstream.c.
 *
 * Exactly once: the apply commits the replication origin's progress in the
 * same transaction as the rows (pgapply.c); on start the stream resumes from
 * the origin's durable progress, and the feedback to the master reports as
 * flushed only what pg_replication_origin_progress(origin, true) says.
 */
#include "config.h"

#include "replicators/pg/pgrepl.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "lib/bgjob.h"
#include "lib/cstate.h"
#include "lib/daemon.h"
#include "lib/durable.h"
#include "lib/log.h"
#include "lib/pgconn.h"
#include "replicators/pg/pgapply.h"
#include "replicators/pg/pgoutput.h"
#include "replicators/pg/pgspool.h"
#include "replicators/pg/pgsync.h"

static struct pgrepl G;

/* ------------------------------------------------------------ status (shared) */

void
pgr_set_state(struct pgrepl *r, const char *state)
{
	pthread_mutex_lock(&r->lock);
	r->st.session_state = state;
	r->st.state = r->st.error_until != 0 ? "retrying" : state;
	pthread_mutex_unlock(&r->lock);
	ev_async_send(r->d->loop, &r->async);
}

void
pgr_set_error(struct pgrepl *r, const char *state, const char *error)
{
	pthread_mutex_lock(&r->lock);
	r->st.state = r->st.session_state = state;
	r->st.error_until = 0;
	free(r->st.error);
	r->st.error = error != NULL ? xstrdup(error) : NULL;
	r->st.error_seq++;
	pthread_mutex_unlock(&r->lock);
	ev_async_send(r->d->loop, &r->async);
}

void
pgr_fail(struct pgrepl *r, const char *error)
{
	pthread_mutex_lock(&r->lock);
	r->st.state = "error";
	r->st.session_state = NULL;
	/* Past everything received: the change that failed is in it. */
	pgo_lsn until = r->st.received > 0 ? r->st.received : 1;
	if (until > r->st.error_until)
		r->st.error_until = until;
	free(r->st.error);
	r->st.error = xstrdup(error);
	r->st.error_seq++;
	pthread_mutex_unlock(&r->lock);
	ev_async_send(r->d->loop, &r->async);
}

void
pgr_confirmed_locked(struct pgrepl *r, pgo_lsn confirmed)
{
	r->st.confirmed = confirmed;
	if (r->st.error_until == 0 || confirmed < r->st.error_until)
		return;
	st_notice("applied past the error at lsn=" PGO_LSN_FMT " (confirmed " PGO_LSN_FMT
		  "): %s cleared", PGO_LSN_ARGS(r->st.error_until), PGO_LSN_ARGS(confirmed),
		  st_q(r->st.error != NULL ? r->st.error : ""));
	r->st.error_until = 0;
	free(r->st.error);
	r->st.error = NULL;
	r->st.error_seq++;
	r->st.state = r->st.session_state != NULL ? r->st.session_state : "streaming";
	ev_async_send(r->d->loop, &r->async);
}

/* STATE_DIR/pgrepl.heartbeat: the master time of the newest heartbeat
 * applied, so the lag after a restart counts the time the daemon was down.
 * Written at most every 10 s: one a little old shows a lag a little high. */
#define HEARTBEAT_SAVE_MS 10000

void
pgr_heartbeat_load(struct pgrepl *r)
{
	char *path = xasprintf("%s/pgrepl.heartbeat", r->node->state_dir);

	r->st.heartbeat_ms = st_ms_file_load(path);
	free(path);
}

void
pgr_heartbeat_save(struct pgrepl *r, bool force)
{
	long long now = st_monotonic_ms();

	pthread_mutex_lock(&r->lock);
	int64_t ms = r->st.heartbeat_ms;
	bool due = ms > 0 && (force || now - r->st.heartbeat_saved_ms >= HEARTBEAT_SAVE_MS);
	if (due)
		r->st.heartbeat_saved_ms = now;
	pthread_mutex_unlock(&r->lock);
	if (!due)
		return;
	char *path = xasprintf("%s/pgrepl.heartbeat", r->node->state_dir);
	st_ms_file_save(path, ms);
	free(path);
}

/* Main thread: publish the engine's state and error through the runtime. */
static void
async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct pgrepl *r = w->data;
	char *error = NULL;
	bool changed = false;

	(void)loop;
	(void)revents;
	pthread_mutex_lock(&r->lock);
	r->d->state = r->st.state;
	if (r->st.error_seq != r->error_seen) {
		r->error_seen = r->st.error_seq;
		error = r->st.error != NULL ? xstrdup(r->st.error) : NULL;
		changed = true;
	}
	pthread_mutex_unlock(&r->lock);
	if (changed) {
		if (error != NULL)
			st_daemon_set_error(r->d, "%s", error);
		else
			st_daemon_set_error(r->d, NULL);
	}
	free(error);
}

bool
pgr_stopping(struct pgrepl *r)
{
	return atomic_load(&r->stop) != 0;
}

/* Read the wake-up counter, so the eventfd is quiet again. */
void
pgr_drain_wake(struct pgrepl *r)
{
	uint64_t n;

	while (read(r->wake_fd, &n, sizeof(n)) > 0)
		;
}

/* Sleep up to MS, or until stopped. */
void
pgr_pause_ms(struct pgrepl *r, long ms)
{
	struct pollfd pfd = { .fd = r->wake_fd, .events = POLLIN };

	if (!pgr_stopping(r) && poll(&pfd, 1, (int)ms) > 0)
		pgr_drain_wake(r);
}

/* ------------------------------------------------------------ names */

/* Slot and origin names: lower case letters, digits and '_' only. */
void
pgr_name_part(char *out, size_t size, const char *prefix, const char *node)
{
	size_t n = (size_t)snprintf(out, size, "%s", prefix);

	for (const char *p = node; *p != '\0' && n + 1 < size; p++) {
		char c = *p;
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
			c = '_';
		out[n++] = c;
	}
	out[n] = '\0';
}

/* ------------------------------------------------------------ DDL marked done */


/*
 * STATE_DIR/pgrepl-ddl-done holds "SOURCE LSN" lines: the DDL message at LSN
 * from SOURCE was applied on the standby by hand ("ddl-done"), and the
 * stream goes on past it.  Once the standby has applied past LSN a mark has
 * done its work and goes, with the statement's file (pgapply.c, ddl_file).
 * Several can wait at once: a DDL passed over in a transaction of nothing
 * else may be read again after a later one stops the stream.
 */

struct ddl_mark {
	char source[ST_NAME_MAX + 1];
	pgo_lsn lsn;
};

/* The engine reads the marks while an administrator adds one. */
static pthread_mutex_t ddl_marks_lock = PTHREAD_MUTEX_INITIALIZER;

static char *
ddl_done_path(const struct st_node *node)
{
	return xasprintf("%s/pgrepl-ddl-done", node->state_dir);
}

/* The marks in the file (none if it is missing), at most DDL_MARKS_MAX. */
static size_t
ddl_marks_read(const char *path, struct ddl_mark *marks)
{
	char *data = NULL, *err = NULL, *line, *next;
	size_t len, n = 0;

	if (access(path, F_OK) != 0)
		return 0;
	if (st_read_file(path, DDL_MARKS_MAX * (ST_NAME_MAX + 24), &data, &len, &err) < 0) {
		st_warn("cannot read the DDL marked done path=%s error=%s", st_q(path), st_q(err));
		free(err);
		return 0;
	}
	for (line = data; line != NULL && *line != '\0' && n < DDL_MARKS_MAX; line = next) {
		char *sp = strchr(line, ' ');

		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		if (sp == NULL || (size_t)(sp - line) > ST_NAME_MAX ||
		    pgo_lsn_parse(sp + 1, &marks[n].lsn) < 0) {
			st_warn("ignoring a malformed DDL mark path=%s line=%s", st_q(path), st_q(line));
			continue;
		}
		memcpy(marks[n].source, line, sp - line);
		marks[n].source[sp - line] = '\0';
		n++;
	}
	free(data);
	return n;
}

static int
ddl_marks_write(const char *path, const struct ddl_mark *marks, size_t n, char **error_r)
{
	struct st_buf b;
	int rc;

	if (n == 0) {
		if (unlink(path) < 0 && errno != ENOENT) {
			st_set_error(error_r, "cannot remove %s: %s", path, strerror(errno));
			return -1;
		}
		return 0;
	}
	st_buf_init(&b);
	for (size_t i = 0; i < n; i++)
		st_buf_printf(&b, "%s %X/%X\n", marks[i].source, PGO_LSN_ARGS(marks[i].lsn));
	rc = st_durable_write(path, b.data, b.len, 0600, error_r);
	st_buf_free(&b);
	return rc;
}

/*
 * The LSNs marked done for SOURCE that the standby has not applied past
 * (PROGRESS), in LSNS (at most DDL_MARKS_MAX); the others are removed.
 */
size_t
pgr_ddl_done_read(const struct st_node *node, const char *source, pgo_lsn progress, pgo_lsn *lsns)
{
	struct ddl_mark marks[DDL_MARKS_MAX];
	char *path = ddl_done_path(node), *err = NULL;
	size_t n, kept = 0, found = 0;

	pthread_mutex_lock(&ddl_marks_lock);
	n = ddl_marks_read(path, marks);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(marks[i].source, source) != 0) {
			marks[kept++] = marks[i];	/* another master's: not ours */
		} else if (marks[i].lsn < progress) {
			char *sql = xasprintf("%s/pgrepl-ddl-%X-%X.sql", node->state_dir,
					      PGO_LSN_ARGS(marks[i].lsn));
			st_info("the DDL marked done is behind the standby now lsn=%X/%X",
				PGO_LSN_ARGS(marks[i].lsn));
			unlink(sql);
			free(sql);
		} else {
			lsns[found++] = marks[i].lsn;
			marks[kept++] = marks[i];
		}
	}
	if (kept < n && ddl_marks_write(path, marks, kept, &err) < 0) {
		st_warn("cannot rewrite the DDL marked done path=%s error=%s", st_q(path), st_q(err));
		free(err);
	}
	pthread_mutex_unlock(&ddl_marks_lock);
	free(path);
	return found;
}


/*
 * The slots of this node's database that standin's standbys pull from: how
 * much WAL each holds back, whether a standby is on it.  A standby left
 * down makes its slot keep WAL until max_slot_wal_keep_size (then the slot
 * is lost: "lost" here, and that standby must be copied again).
 */
static void
slots_check(struct pgrepl *r)
{
	static const char sql[] =
		"SELECT slot_name, active, coalesce(pg_catalog.pg_wal_lsn_diff("
		"pg_catalog.pg_current_wal_lsn(), restart_lsn), 0)::bigint, "
		"coalesce(wal_status, '') FROM pg_catalog.pg_replication_slots "
		"WHERE slot_name LIKE 'standin\\_%' ORDER BY slot_name";
	char *err = NULL;
	PGresult *res = NULL;
	PGconn *c = pgc_connect(r->conf, r->node->name, PGC_NORMAL, "standin-pgrepl slots", &err);

	if (c != NULL) {
		res = PQexec(c, sql);
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			err = pgc_result_error(res);
	}
	pthread_mutex_lock(&r->lock);
	r->st.slots_ms = st_now_ms();
	r->st.n_slots = 0;
	snprintf(r->st.slots_error, sizeof(r->st.slots_error), "%s", err != NULL ? err : "");
	for (int i = 0; err == NULL && i < PQntuples(res) && r->st.n_slots < SLOTS_MAX; i++) {
		struct pgr_slot *sl = &r->st.slots[r->st.n_slots++];
		snprintf(sl->name, sizeof(sl->name), "%s", PQgetvalue(res, i, 0));
		sl->active = strcmp(PQgetvalue(res, i, 1), "t") == 0;
		sl->retained = strtoll(PQgetvalue(res, i, 2), NULL, 10);
		snprintf(sl->wal_status, sizeof(sl->wal_status), "%s", PQgetvalue(res, i, 3));
	}
	pthread_mutex_unlock(&r->lock);
	if (err != NULL)
		st_warn("reading this node's replication slots: %s", err);
	free(err);
	PQclear(res);
	PQfinish(c);
}

static void *
engine_main(void *arg)
{
	struct pgrepl *r = arg;
	const struct st_conf *conf = r->conf;
	const char *me = r->node->name;
	struct st_cstate_follower *f = &r->follow;
	long retry_ms = RETRY_MIN_MS;
	long long next_slots_ms = 0;

	while (!pgr_stopping(r)) {
		char *err = NULL;
		st_cstate_follow(f);
		if (!f->valid) {
			pgr_set_error(r, "no cluster state", f->error);
			pgr_pause_ms(r, IDLE_CHECK_MS);
			continue;
		}
		const char *source = st_cstate_source(&f->cs, ST_SVC_PG, me);
		if (source == NULL) {
			bool master = strcmp(st_cstate_master_of(&f->cs, ST_SVC_PG), me) == 0;
			pgr_set_error(r, master ? "idle (master)" : "idle (no source)", NULL);
			if (master && st_monotonic_ms() >= next_slots_ms) {
				slots_check(r);
				next_slots_ms = st_monotonic_ms() + SLOTS_CHECK_MS;
			}
			pgr_pause_ms(r, IDLE_CHECK_MS);
			continue;
		}
		char src_name[ST_NAME_MAX + 1];
		snprintf(src_name, sizeof(src_name), "%s", source);
		long long began = st_monotonic_ms();
		int rrc = pgr_replicate(r, conf, src_name, me, f->cs.epoch, &err);
		if (rrc == 0 || pgr_stopping(r)) {
			free(err);
			continue;
		}
		if (rrc == 3) {
			st_notice("%s; applying again one statement per row up to lsn=" PGO_LSN_FMT
				  " to find the row%s", err, PGO_LSN_ARGS(r->rowwise_until),
				  conf->pg.conflicts == ST_PG_CONFLICTS_MASTER_WINS
					  ? " (conflicts = master-wins: and resolve it)" : "");
			free(err);
			continue;
		}
		/* The session ended because the cluster moved on (a switchover: the
		 * old master's replicator dropped the slot this one streamed
		 * from): not an error, follow the new state at once. */
		uint64_t epoch = f->cs.epoch;
		if (st_cstate_follow(f) && f->valid && f->cs.epoch > epoch) {
			st_notice("the session from %s ended (%s) as the cluster state moved to "
				  "epoch %llu (master %s)", src_name, err,
				  (unsigned long long)f->cs.epoch, f->cs.master);
			free(err);
			retry_ms = RETRY_MIN_MS;
			continue;
		}
		pgr_fail(r, err);
		free(err);
		/* Back off, but start over quickly after a long healthy run. */
		if (st_monotonic_ms() - began > 60000)
			retry_ms = RETRY_MIN_MS;
		pgr_pause_ms(r, retry_ms);
		retry_ms = retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : retry_ms * 2;
	}
	pgr_heartbeat_save(r, true);
	return NULL;
}

/* ------------------------------------------------------------ daemon ops */

static int
pgrepl_start(struct st_daemon *d, char **error_r)
{
	struct pgrepl *r = d->priv;

	if (!d->conf->service_enabled[ST_SVC_PG]) {
		st_set_error(error_r, "%s has no [pg] section: nothing to replicate", d->config_path);
		return -1;
	}
	r->d = d;
	char *errors = NULL;
	r->conf = st_conf_load(d->config_path, &errors);
	if (r->conf == NULL) {
		st_set_error(error_r, "%s", errors);
		free(errors);
		return -1;
	}
	r->node = st_conf_node(r->conf, d->node->name);
	if (r->node == NULL) {
		st_set_error(error_r, "node %s is no longer in %s", d->node->name, d->config_path);
		return -1;
	}
	r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->wake_fd < 0) {
		st_set_error(error_r, "eventfd: %s", strerror(errno));
		return -1;
	}
	ev_async_init(&r->async, async_cb);
	r->async.data = r;
	ev_async_start(d->loop, &r->async);
	d->state = "starting";
	st_cstate_follower_init(&r->follow, r->node);
	pgr_heartbeat_load(r);
	if (pthread_create(&r->thread, NULL, engine_main, r) != 0) {
		st_set_error(error_r, "cannot start the engine thread: %s", strerror(errno));
		return -1;
	}
	r->thread_started = true;
	return 0;
}

static void
engine_stop(struct pgrepl *r)
{
	uint64_t one = 1;

	if (!r->thread_started)
		return;
	atomic_store(&r->stop, 1);
	r->stop_int = 1;
	if (write(r->wake_fd, &one, sizeof(one)) < 0)
		st_warn("cannot wake the engine error=%s", st_q(strerror(errno)));
	pthread_join(r->thread, NULL);
	r->thread_started = false;
	st_cstate_follower_free(&r->follow);
	st_info("engine stopped");
}

static void
pgrepl_stop(struct st_daemon *d)
{
	struct pgrepl *r = d->priv;

	st_bgjob_wait(&r->reverse_job);
	engine_stop(r);
}

static bool
same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Does NEW change anything the engine uses ([pg], the nodes' directories)? */
static bool
engine_settings_changed(const struct st_conf *old, const struct st_conf *new)
{
	if (old->n_nodes != new->n_nodes ||
	    old->service_enabled[ST_SVC_PG] != new->service_enabled[ST_SVC_PG] ||
	    !same_str(old->pg.dbname, new->pg.dbname) || !same_str(old->pg.user, new->pg.user) ||
	    !same_str(old->pg.passfile, new->pg.passfile) || old->pg.sslmode != new->pg.sslmode ||
	    !same_str(old->pg.sslrootcert, new->pg.sslrootcert) ||
	    old->pg.connect_timeout_ms != new->pg.connect_timeout_ms ||
	    old->pg.streaming != new->pg.streaming || old->pg.conflicts != new->pg.conflicts)
		return true;
	for (size_t i = 0; i < old->n_nodes; i++) {
		if (!same_str(old->nodes[i].name, new->nodes[i].name) ||
		    !same_str(old->nodes[i].state_dir, new->nodes[i].state_dir) ||
		    !same_str(old->pg.endpoint[i], new->pg.endpoint[i]))
			return true;
	}
	return false;
}

/*
 * SIGHUP: the runtime takes the new file (log level, admin group...); what
 * the engine uses ([pg], the nodes) takes effect at the next restart, and
 * status says so (restart_pending) instead of applying half of it.
 */
static int
pgrepl_reload(struct st_daemon *d, struct st_conf *conf, char **error_r)
{
	struct pgrepl *r = d->priv;

	(void)error_r;
	if (r->conf != NULL && engine_settings_changed(r->conf, conf)) {
		r->restart_pending = true;
		st_warn("the [pg] settings or the nodes changed: they take effect when "
			"standin-pgrepl restarts (systemctl restart standin-pgrepl)");
	}
	return 0;
}

char *
pgr_lsn_text(pgo_lsn l)
{
	return xasprintf(PGO_LSN_FMT, PGO_LSN_ARGS(l));
}

static void
set_lsn(json_t *obj, const char *key, pgo_lsn l)
{
	char *s = pgr_lsn_text(l);
	json_object_set_new(obj, key, json_string(s));
	free(s);
}

/*
 * The lag, in every state of a standby: seconds since the master's newest
 * heartbeat applied here (known once one was, kept across restarts), bytes
 * from the master's end to what this node confirmed (known once the master
 * was reached).  False when unknown, or on the master's own daemon.
 */
static bool
status_lag(const struct status *st, double *secs_r, int64_t *bytes_r)
{
	bool standby = st->source[0] != '\0' && st->state != NULL &&
		       strncmp(st->state, "idle", 4) != 0 && strcmp(st->state, "no cluster state") != 0;

	if (!standby)
		return false;
	if (secs_r != NULL) {
		if (st->heartbeat_ms <= 0)
			return false;
		double lag = (double)(st_now_ms() - st->heartbeat_ms) / 1000.0;
		*secs_r = lag < 0 ? 0 : lag;
	}
	if (bytes_r != NULL) {
		if (st->server_end == 0)
			return false;
		pgo_lsn done = st->confirmed > st->applied ? st->confirmed : st->applied;
		*bytes_r = st->server_end > done ? (int64_t)(st->server_end - done) : 0;
	}
	return true;
}

static void
pgrepl_status(struct st_daemon *d, json_t *obj)
{
	struct pgrepl *r = d->priv;
	struct status st;

	pthread_mutex_lock(&r->lock);
	st = r->st;
	/* The engine's error with its state, read together: the runtime's copy
	 * (async_cb) may lag behind a state that already says "error". */
	st.error = r->st.error != NULL ? xstrdup(r->st.error) : NULL;
	pthread_mutex_unlock(&r->lock);

	if (st.error != NULL)
		json_object_set_new(obj, "last_error", json_string(st.error));
	free(st.error);
	st.error = NULL;
	json_object_set_new(obj, "state", json_string(st.state ? st.state : "starting"));
	json_object_set_new(obj, "source", st.source[0] ? json_string(st.source) : json_null());
	json_object_set_new(obj, "target", st.target[0] ? json_string(st.target) : json_null());
	json_object_set_new(obj, "slot", st.slot[0] ? json_string(st.slot) : json_null());
	json_object_set_new(obj, "origin", st.origin[0] ? json_string(st.origin) : json_null());
	set_lsn(obj, "received_lsn", st.received);
	set_lsn(obj, "applied_lsn", st.applied);
	set_lsn(obj, "flushed_lsn", st.flushed);
	set_lsn(obj, "server_lsn", st.server_end);
	double lag_s;
	int64_t lag_b;
	if (status_lag(&st, &lag_s, NULL))
		json_object_set_new(obj, "lag_seconds", json_real(lag_s));
	else
		json_object_set_new(obj, "lag_seconds", json_null());
	if (status_lag(&st, NULL, &lag_b))
		json_object_set_new(obj, "lag_bytes", json_integer((json_int_t)lag_b));
	else
		json_object_set_new(obj, "lag_bytes", json_null());
	json_object_set_new(obj, "heartbeat_ms", st.heartbeat_ms > 0 ? json_integer(st.heartbeat_ms)
								 : json_null());
	set_lsn(obj, "confirmed_lsn", st.confirmed);
	json_t *slots = json_array();
	for (size_t i = 0; i < st.n_slots; i++)
		json_array_append_new(slots, json_pack("{s:s,s:b,s:I,s:s}", "slot", st.slots[i].name,
						       "active", st.slots[i].active, "retained_bytes",
						       (json_int_t)st.slots[i].retained, "wal_status",
						       st.slots[i].wal_status));
	json_object_set_new(obj, "slots", slots);
	json_object_set_new(obj, "slots_ms", st.slots_ms > 0 ? json_integer(st.slots_ms) : json_null());
	if (st.slots_error[0] != '\0')
		json_object_set_new(obj, "slots_error", json_string(st.slots_error));
	json_object_set_new(obj, "transactions", json_integer((json_int_t)st.txns));
	json_object_set_new(obj, "rows", json_integer((json_int_t)st.rows));
	json_object_set_new(obj, "groups", json_integer((json_int_t)st.groups));
	json_object_set_new(obj, "transactions_per_second", json_real(st.txns_per_s));
	json_object_set_new(obj, "rows_per_second", json_real(st.rows_per_s));
	json_object_set_new(obj, "ddl", json_integer((json_int_t)st.ddl));
	json_object_set_new(obj, "ddl_rejected", json_integer((json_int_t)st.ddl_rejected));
	json_object_set_new(obj, "ddl_skipped", json_integer((json_int_t)st.ddl_skipped));
	json_object_set_new(obj, "batches", json_integer((json_int_t)st.batches));
	json_object_set_new(obj, "batched_rows", json_integer((json_int_t)st.batched_rows));
	json_object_set_new(obj, "conflicts",
			    r->conf != NULL
				    ? json_string(st_conf_pg_conflicts_name(r->conf->pg.conflicts))
				    : json_null());
	json_object_set_new(obj, "conflicts_resolved",
			    json_integer((json_int_t)st.conflicts_resolved));
	json_object_set_new(obj, "streamed_transactions", json_integer((json_int_t)st.streamed_txns));
	json_object_set_new(obj, "spooled_transactions", json_integer(st.spooled_txns));
	json_object_set_new(obj, "spooled_bytes", json_integer((json_int_t)st.spooled_bytes));
	if (st.applied_commit_time != 0)
		json_object_set_new(obj, "applied_commit_ms",
				    json_integer(pgo_ts_to_unix_ms(st.applied_commit_time)));
	json_object_set_new(obj, "restart_pending", json_boolean(r->restart_pending));
	json_t *rev = json_object();
	json_object_set_new(rev, "state", st.reverse_state ? json_string(st.reverse_state) : json_null());
	if (st.reverse_state != NULL && strcmp(st.reverse_state, "done") == 0) {
		char *l = pgr_lsn_text(st.reverse_lsn);
		json_object_set_new(rev, "lsn", json_string(l));
		free(l);
	}
	if (st.reverse_error[0] != '\0')
		json_object_set_new(rev, "error", json_string(st.reverse_error));
	json_object_set_new(obj, "reverse", rev);
	json_object_set_new(obj, "sequences_synced_ms",
			    st.sequences_synced_ms ? json_integer(st.sequences_synced_ms) : json_null());
	json_t *sync = json_object();
	json_object_set_new(sync, "tables_total", json_integer(st.sync.tables_total));
	json_object_set_new(sync, "tables_done", json_integer(st.sync.tables_done));
	json_object_set_new(sync, "rows_copied", json_integer((json_int_t)st.sync.rows_copied));
	json_object_set_new(obj, "initial_sync", sync);
}

static void
pgrepl_metrics(struct st_daemon *d, struct st_buf *out)
{
	struct pgrepl *r = d->priv;
	char labels[128];
	struct status st;

	pthread_mutex_lock(&r->lock);
	st = r->st;
	pthread_mutex_unlock(&r->lock);
	snprintf(labels, sizeof(labels), "node=\"%s\",source=\"%s\"", d->node->name, st.source);
	st_metric(out, "standin_pg_applied_lsn", "gauge", "End LSN of the last applied transaction.",
		  labels, (double)st.applied);
	st_metric(out, "standin_pg_flushed_lsn", "gauge", "LSN durable on the standby.", labels,
		  (double)st.flushed);
	double lag_s;
	int64_t lag_b;
	if (status_lag(&st, NULL, &lag_b))
		st_metric(out, "standin_pg_lag_bytes", "gauge",
			  "WAL bytes between the master's end and what the standby confirmed.", labels,
			  (double)lag_b);
	if (status_lag(&st, &lag_s, NULL))
		st_metric(out, "standin_pg_lag_seconds", "gauge",
			  "Seconds since the master's newest heartbeat applied on the standby.", labels,
			  lag_s);
	static const struct { const char *name, *help; } slot_metrics[] = {
		{ "standin_pg_slot_retained_bytes", "WAL held back by a standin slot on this node." },
		{ "standin_pg_slot_active", "1 when a standby streams from the slot." },
	};
	for (size_t m = 0; st.n_slots > 0 && m < ST_ARRAY_SIZE(slot_metrics); m++) {
		st_metric_head(out, slot_metrics[m].name, "gauge", slot_metrics[m].help);
		for (size_t i = 0; i < st.n_slots; i++) {
			char sl[192];
			snprintf(sl, sizeof(sl), "node=\"%s\",slot=\"%s\"", d->node->name,
				 st.slots[i].name);
			st_metric_sample(out, slot_metrics[m].name, sl,
					 m == 0 ? (double)st.slots[i].retained
						: (st.slots[i].active ? 1 : 0));
		}
	}
	st_metric(out, "standin_pg_transactions_total", "counter", "Source transactions applied.",
		  labels, (double)st.txns);
	st_metric(out, "standin_pg_rows_total", "counter", "Rows applied.", labels, (double)st.rows);
}

/*
 * "drain LSN [TIMEOUT_MS]" (st_ctl_drain): is everything the master wrote up to LSN (its
 * pg_current_wal_insert_lsn() once fenced) applied and durable here?  Either a
 * commit at or past LSN is applied, or the stream has reached LSN and all it
 * carried is applied and durable (WAL with nothing to replicate, such as the
 * fencing itself, never shows up as an applied commit).
 */
static int
drain_check(void *ctx, const char *pos, json_t *out)
{
	struct st_daemon *d = ctx;
	struct pgrepl *r = d->priv;
	pgo_lsn want, applied, flushed, received;
	bool caught_up, streaming;

	if (pgo_lsn_parse(pos, &want) < 0) {
		json_object_set_new(out, "error", json_string("usage: drain LSN [TIMEOUT_MS] "
							      "(e.g. drain 0/16B3748 5000)"));
		return -1;
	}
	pthread_mutex_lock(&r->lock);
	applied = r->st.applied;
	flushed = r->st.flushed;
	received = r->st.received;
	caught_up = r->st.caught_up;
	streaming = r->st.state != NULL && strcmp(r->st.state, "streaming") == 0;
	pthread_mutex_unlock(&r->lock);
	/* A drain (a switchover, the master fenced): feedback rounds every
	 * FAST_FEEDBACK_MS for a while, not every FEEDBACK_MS, so that the
	 * master's keepalives and the slot's confirmed position (the reverse on
	 * the old master waits on it) follow at once. */
	uint64_t one = 1;
	atomic_store(&r->fast_feedback_until, st_monotonic_ms() + FAST_FEEDBACK_FOR_MS);
	if (write(r->wake_fd, &one, sizeof(one)) < 0)
		st_warn("cannot wake the engine error=%s", st_q(strerror(errno)));
	set_lsn(out, "applied", flushed);
	set_lsn(out, "applied_lsn", applied);
	set_lsn(out, "flushed_lsn", flushed);
	set_lsn(out, "received_lsn", received);
	return streaming && (flushed >= want || (caught_up && received >= want));
}

static void
cmd_drain(void *ctx, const char *args, struct st_buf *reply)
{
	st_ctl_drain(ctx, args, reply, drain_check);
}

/* "position": the master's LSN up to which this standby has applied and
 * made durable everything (null when it is not streaming). */
static void
cmd_position(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct pgrepl *r = d->priv;
	json_t *o = json_object();

	(void)args;
	pthread_mutex_lock(&r->lock);
	pgo_lsn flushed = r->st.flushed;
	bool streaming = r->st.state != NULL && strcmp(r->st.state, "streaming") == 0;
	pthread_mutex_unlock(&r->lock);
	json_object_set_new(o, "service", json_string("pg"));
	if (streaming)
		set_lsn(o, "position", flushed);
	else
		json_object_set_new(o, "position", json_null());
	st_ctl_reply_json(reply, o);
}

/*
 * "ddl-done LSN": the DDL at LSN, which stopped the stream, was applied on the
 * standby by hand (or must not be): the stream goes on past it, at once.
 */
static void
cmd_ddl_done(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct pgrepl *r = d->priv;
	struct ddl_mark marks[DDL_MARKS_MAX];
	char source[ST_NAME_MAX + 1], *err = NULL;
	pgo_lsn lsn;
	uint64_t one = 1;
	size_t n, i;

	if (pgo_lsn_parse(args, &lsn) < 0 || lsn == 0) {
		st_ctl_reply_error(reply, "usage: ddl-done LSN (the LSN the error names, "
				   "e.g. ddl-done 0/16B3748)");
		return;
	}
	pthread_mutex_lock(&r->lock);
	snprintf(source, sizeof(source), "%s", r->st.source);
	pthread_mutex_unlock(&r->lock);
	if (source[0] == '\0') {
		st_ctl_reply_error(reply, "no master to stream from yet");
		return;
	}
	char *path = ddl_done_path(r->node), *lsn_s = pgr_lsn_text(lsn);
	pthread_mutex_lock(&ddl_marks_lock);
	n = ddl_marks_read(path, marks);
	for (i = 0; i < n && !(strcmp(marks[i].source, source) == 0 && marks[i].lsn == lsn); i++)
		;
	if (i == n && n == DDL_MARKS_MAX) {
		err = xasprintf("%d DDL statements are marked done already and not passed yet",
				DDL_MARKS_MAX);
	} else if (i == n) {
		snprintf(marks[n].source, sizeof(marks[n].source), "%s", source);
		marks[n++].lsn = lsn;
		if (ddl_marks_write(path, marks, n, &err) < 0)
			n--;
	}
	pthread_mutex_unlock(&ddl_marks_lock);
	if (err != NULL) {
		st_ctl_reply_error(reply, "%s", err);
		free(err);
	} else {
		st_notice("DDL marked done by the administrator source=%s lsn=%s", source, lsn_s);
		if (write(r->wake_fd, &one, sizeof(one)) < 0)
			st_warn("cannot wake the engine error=%s", st_q(strerror(errno)));
		st_buf_printf(reply, "{\"marked\":\"%s\",\"source\":\"%s\"}\n", lsn_s, source);
	}
	free(lsn_s);
	free(path);
}

/* "sequences": copy the sequences now (switchover); see sequences_synced_ms. */
static void
cmd_sequences(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct pgrepl *r = d->priv;
	uint64_t one = 1;

	(void)args;
	atomic_store(&r->sequences_requested, 1);
	if (write(r->wake_fd, &one, sizeof(one)) < 0)
		st_warn("cannot wake the engine error=%s", st_q(strerror(errno)));
	st_buf_puts(reply, "{\"requested\":true}\n");
}

/* "reverse NODE [TIMEOUT_MS]" in flight, in a thread (libpq blocks). */
struct reverse {
	struct pgrepl *r;
	char node[65];		/* as given; checked against the nodes */
	char source[ST_NAME_MAX + 1];	/* a standby's current source (the old master), or "" */
	long timeout_ms;
	struct st_ctl_held *held;
	pgo_lsn final, start;
	char *err;
};

#define REVERSE_TIMEOUT_MS 30000

/*
 * This node (the old master, fenced) waits until NODE has confirmed its
 * final position on slot standin_NODE here: everything it wrote is on NODE.
 * The insert position, not pg_current_wal_lsn(): with asynchronous commit a
 * committed transaction may not be written yet.
 */
static int
reverse_wait_drained(struct reverse *rv, PGconn *me, const char *slot, char **error_r)
{
	char *lit = pgc_literal(slot), *value = NULL, *sql = NULL;
	long long deadline = st_monotonic_ms() + rv->timeout_ms;
	pgo_lsn confirmed = 0;
	int rc = -1;

	if (pgc_value(me, "SELECT pg_catalog.pg_current_wal_insert_lsn()", &value, error_r) < 0)
		goto out;
	if (value == NULL || pgo_lsn_parse(value, &rv->final) < 0) {
		st_set_error(error_r, "pg_current_wal_insert_lsn() gave %s", st_q(value ? value : "NULL"));
		goto out;
	}
	sql = xasprintf("SELECT coalesce(confirmed_flush_lsn::text, '') FROM "
			"pg_catalog.pg_replication_slots WHERE slot_name = %s", lit);
	for (;;) {
		free(value);
		value = NULL;
		if (pgc_value(me, sql, &value, error_r) < 0)
			goto out;
		if (value == NULL) {
			st_set_error(error_r, "no replication slot %s here: %s does not replicate from "
				     "this node", slot, rv->node);
			goto out;
		}
		if (value[0] != '\0' && pgo_lsn_parse(value, &confirmed) < 0) {
			st_set_error(error_r, "slot %s: bad confirmed_flush_lsn %s", slot, st_q(value));
			goto out;
		}
		if (confirmed >= rv->final)
			break;
		if (pgr_stopping(rv->r) || st_monotonic_ms() >= deadline) {
			st_set_error(error_r, "%s has not confirmed this node's final position " PGO_LSN_FMT
				     " within %ld ms (slot %s at " PGO_LSN_FMT "): is this node fenced, "
				     "and %s streaming?", rv->node, PGO_LSN_ARGS(rv->final), rv->timeout_ms,
				     slot, PGO_LSN_ARGS(confirmed), rv->node);
			goto out;
		}
		usleep(20 * 1000);
	}
	rc = 0;
out:
	free(value);
	free(sql);
	free(lit);
	return rc;
}

/*
 * Another standby (three nodes and more): this node has applied everything
 * its source, the old master (fenced), holds: its insert position, as a
 * drain sees it.
 */
static int
reverse_wait_applied(struct reverse *rv, char **error_r)
{
	struct pgrepl *r = rv->r;
	long long deadline = st_monotonic_ms() + rv->timeout_ms;
	char *value = NULL;
	PGconn *src = pgc_connect(r->conf, rv->source, PGC_NORMAL, "standin-pgrepl reverse",
				  error_r);
	int rc = -1;

	if (src == NULL)
		return -1;
	if (pgc_value(src, "SELECT pg_catalog.pg_current_wal_insert_lsn()", &value, error_r) < 0)
		goto out;
	if (value == NULL || pgo_lsn_parse(value, &rv->final) < 0) {
		st_set_error(error_r, "pg_current_wal_insert_lsn() on %s gave %s", rv->source,
			     st_q(value ? value : "NULL"));
		goto out;
	}
	for (;;) {
		atomic_store(&r->fast_feedback_until, st_monotonic_ms() + FAST_FEEDBACK_FOR_MS);
		pthread_mutex_lock(&r->lock);
		bool done = r->st.state != NULL && strcmp(r->st.state, "streaming") == 0 &&
			    (r->st.flushed >= rv->final || (r->st.caught_up && r->st.received >= rv->final));
		pgo_lsn flushed = r->st.flushed;
		pthread_mutex_unlock(&r->lock);
		if (done)
			break;
		if (pgr_stopping(r) || st_monotonic_ms() >= deadline) {
			st_set_error(error_r, "this node has not applied %s's final position " PGO_LSN_FMT
				     " within %ld ms (at " PGO_LSN_FMT "): is %s fenced, and this node "
				     "streaming?", rv->source, PGO_LSN_ARGS(rv->final), rv->timeout_ms,
				     PGO_LSN_ARGS(flushed), rv->source);
			goto out;
		}
		usleep(20 * 1000);
	}
	rc = 0;
out:
	free(value);
	PQfinish(src);
	return rc;
}

static void
reverse_work(void *arg)
{
	struct reverse *rv = arg;
	struct pgrepl *r = rv->r;
	const char *me = r->node->name;
	char drained_slot[64], new_slot[64], new_origin[96];

	pgr_name_part(drained_slot, sizeof(drained_slot), "standin_", rv->node);
	pgr_name_part(new_slot, sizeof(new_slot), "standin_", me);
	pgr_name_part(new_origin, sizeof(new_origin), "standin_from_", rv->node);
	if (rv->source[0] != '\0') {
		if (reverse_wait_applied(rv, &rv->err) < 0)
			return;
	} else {
		PGconn *c = pgc_connect(r->conf, me, PGC_NORMAL, "standin-pgrepl reverse", &rv->err);
		if (c == NULL)
			return;
		int rc = reverse_wait_drained(rv, c, drained_slot, &rv->err);
		PQfinish(c);
		if (rc < 0)
			return;
	}
	/* The slot NODE pulled with stays until NODE's session ends; this
	 * node's first session from NODE drops it (pgr_replicate). */
	if (pgs_prepare_reverse(r->conf, rv->node, me, PUBLICATION, new_slot, new_origin, NULL,
				&rv->start, &rv->err) == 0)
		st_notice("reverse: %s will feed this node from lsn=" PGO_LSN_FMT " (this node's "
			  "final lsn=" PGO_LSN_FMT ")", rv->node, PGO_LSN_ARGS(rv->start),
			  PGO_LSN_ARGS(rv->final));
}

static void
reverse_done(void *arg)
{
	struct reverse *rv = arg;
	struct pgrepl *r = rv->r;
	json_t *o = json_object();

	r->reverse_job = NULL;
	pgr_set_reverse(r, rv->err != NULL ? "failed" : "done", rv->start, rv->err);
	if (rv->err != NULL) {
		st_warn("reverse from %s failed: %s", rv->node, rv->err);
		json_object_set_new(o, "ok", json_false());
		json_object_set_new(o, "error", json_string(rv->err));
	} else {
		json_object_set_new(o, "done", json_true());
		char *f = pgr_lsn_text(rv->final), *l = pgr_lsn_text(rv->start);
		json_object_set_new(o, "final", json_string(f));
		json_object_set_new(o, "start", json_string(l));
		free(f);
		free(l);
	}
	char *text = json_dumps(o, JSON_COMPACT);
	char *line = xasprintf("%s\n", text);
	st_ctl_reply_later(rv->held, line);
	free(line);
	free(text);
	json_decref(o);
	free(rv->err);
	free(rv);
}

/*
 * "reverse NODE [TIMEOUT_MS]", the switchover's step on the master's daemon
 * (the node that becomes a standby), once this node is fenced: wait until
 * NODE has confirmed everything this node wrote, then make NODE feed this
 * node with no copy (a slot on NODE, this node's origin at its start).
 * On another standby (three nodes or more) the same re-points it: once it
 * has applied everything its source (the old master) holds, NODE will feed
 * it from where both are.  The
 * same side and arguments as in standin-ldaprepl and standin-imaprepl
 * (doc/architecture.md, section 6.3).  The reply comes when it is done.
 */
static void
cmd_reverse(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct pgrepl *r = d->priv;
	struct reverse *rv = xcalloc(1, sizeof(*rv));
	char *err = NULL, node[65], extra[2];
	long timeout = REVERSE_TIMEOUT_MS;

	rv->r = r;
	int n = sscanf(args, "%64s %ld %1s", node, &timeout, extra);
	snprintf(rv->node, sizeof(rv->node), "%s", n >= 1 ? node : "");
	pthread_mutex_lock(&r->lock);
	bool master = r->st.state != NULL && strcmp(r->st.state, "idle (master)") == 0;
	bool streaming = r->st.state != NULL && strcmp(r->st.state, "streaming") == 0;
	char source[ST_NAME_MAX + 1];
	snprintf(source, sizeof(source), "%s", r->st.source);
	pthread_mutex_unlock(&r->lock);
	if (n < 1 || n > 2 || timeout <= 0 || st_conf_node(r->conf, node) == NULL ||
	    strcmp(node, r->node->name) == 0)
		err = xstrdup("usage: reverse NODE [TIMEOUT_MS] (NODE: the standby that becomes the "
			      "master; not this node)");
	else if (!master && (source[0] == '\0' || !streaming))
		err = xasprintf("this daemon is neither idle as the master nor streaming (%s): "
				"reverse needs one or the other", source[0] != '\0' ? source
									  : "no state yet");
	else if (!master && strcmp(source, node) == 0)
		err = xasprintf("this node replicates from %s already: reverse is for the old "
				"master's daemon and the other standbys'", source);
	else if (r->reverse_job != NULL)
		err = xstrdup("a reverse is running already");
	else {
		rv->timeout_ms = timeout;
		if (!master)	/* another standby: it will follow NODE instead of SOURCE */
			snprintf(rv->source, sizeof(rv->source), "%s", source);
		pgr_set_reverse(r, "running", 0, NULL);
		r->reverse_job = st_bgjob_start(d->loop, reverse_work, reverse_done, rv, &err);
	}
	if (err != NULL) {
		st_ctl_reply_error(reply, "%s", err);
		free(err);
		free(rv);
		return;
	}
	/* The wait, then connections to both nodes. */
	rv->held = st_ctl_hold(reply, timeout + 4 * r->conf->pg.connect_timeout_ms + 10000);
}

static const struct st_ctl_command pgrepl_commands[] = {
	{ "reverse", ST_CTL_CHANGES, cmd_reverse, "reverse NODE [TIMEOUT_MS]: on the master, once fenced and drained, make NODE feed this node" },
	{ "drain", ST_CTL_CHANGES, cmd_drain, "drain LSN [TIMEOUT_MS]: tell (or wait until) the standby has applied up to LSN" },
	{ "position", ST_CTL_READ_ONLY, cmd_position, "position: the master's LSN applied and durable here" },
	{ "sequences", ST_CTL_CHANGES, cmd_sequences, "copy the master's sequences to the standby now" },
	{ "ddl-done", ST_CTL_CHANGES, cmd_ddl_done, "ddl-done LSN: go on past the DDL at LSN, applied by hand" },
	{ NULL, 0, NULL, NULL },
};

static const struct st_daemon_ops pgrepl_ops = {
	.program = ST_PROGRAM_PGREPL,
	.summary = "replicate PostgreSQL from the master to this standby (logical decoding)",
	.start = pgrepl_start,
	.stop = pgrepl_stop,
	.reload = pgrepl_reload,
	.status = pgrepl_status,
	.metrics = pgrepl_metrics,
	.commands = pgrepl_commands,
};

int
main(int argc, char **argv)
{
	/* --resync is ours; the rest goes to the shared runtime. */
	int n = 0;
	for (int i = 0; i < argc; i++) {
		if (i > 0 && strcmp(argv[i], "--resync") == 0)
			G.resync = true;
		else
			argv[n++] = argv[i];
	}
	argv[n] = NULL;
	pthread_mutex_init(&G.lock, NULL);
	G.wake_fd = -1;
	int rc = st_daemon_main(n, argv, &pgrepl_ops, &G);
	engine_stop(&G);
	st_conf_free(&G.conf);
	free(G.st.error);
	if (G.wake_fd >= 0)
		close(G.wake_fd);
	return rc;
}
