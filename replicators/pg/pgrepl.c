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
 * Exactly once: the apply commits the replication origin's progress in the
 * same transaction as the rows (pgapply.c); on start the stream resumes from
 * the origin's durable progress, and the feedback to the master reports as
 * flushed only what pg_replication_origin_progress(origin, true) says.
 */
#include "config.h"

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

#include "lib/cstate.h"
#include "lib/daemon.h"
#include "lib/durable.h"
#include "lib/log.h"
#include "replicators/pg/pgapply.h"
#include "lib/pgconn.h"
#include "replicators/pg/pgoutput.h"
#include "replicators/pg/pgspool.h"
#include "replicators/pg/pgsync.h"

#define PUBLICATION "standin"
#define DDL_PREFIX "standin.ddl"
#define FEEDBACK_MS 1000
#define GROUP_MAX_TXNS 1000
#define GROUP_MAX_MS 200
#define COPY_JOBS 4
#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 30000
#define IDLE_CHECK_MS 2000
#define SEQUENCE_SYNC_MS 10000

struct status {
	const char *state;		/* static string */
	char source[ST_NAME_MAX + 1], target[ST_NAME_MAX + 1];
	char slot[64], origin[96];
	pgo_lsn received, applied, flushed, server_end;
	int64_t applied_commit_time;
	long long oldest_pending_ms;	/* unix ms of the oldest commit not applied, 0 none */
	bool caught_up;			/* everything received is applied and durable */
	const char *reverse_state;	/* "requested", "done", "failed" or NULL */
	pgo_lsn reverse_lsn;
	char reverse_error[512];
	uint64_t txns, rows, groups, ddl, ddl_rejected, ddl_skipped, batches, batched_rows;
	uint64_t conflicts_resolved;	/* [pg] conflicts = master-wins, since the start */
	unsigned spooled_txns;		/* streamed in progress, waiting for their end */
	uint64_t spooled_bytes, streamed_txns;
	double txns_per_s, rows_per_s;	/* over the last feedback interval */
	long long last_message_ms;
	struct pgs_progress sync;
	long long sequences_synced_ms;	/* unix ms of the last sequence copy */
	char *error;			/* the engine's last error, or NULL */
	uint64_t error_seq;
};

struct pgrepl {
	struct st_daemon *d;
	/* The engine's own copy of the configuration: a reload replaces the
	 * runtime's (log level...), never this one under the engine's feet. */
	struct st_conf *conf;
	const struct st_node *node;
	bool restart_pending;		/* a reload changed what only a restart applies */
	pthread_t thread;
	bool thread_started;
	atomic_int stop;
	volatile int stop_int;		/* the same, for pgsync */
	int wake_fd;			/* eventfd: wakes the engine's poll() */
	bool resync;			/* --resync: copy the database again */
	/* After a statement of many rows failed: one statement per row from
	 * this source until past this LSN, so that the error names the row. */
	pgo_lsn rowwise_until;
	char rowwise_source[ST_NAME_MAX + 1];
	ev_async async;
	uint64_t error_seen;
	atomic_int sequences_requested;	/* admin "sequences": copy them now */
	uint64_t resolved_before;	/* conflicts resolved by the sessions that ended */
	atomic_int reverse_requested;	/* admin "reverse": switchover, see replicate() */

	pthread_mutex_t lock;
	struct status st;
};

static struct pgrepl G;

/* ------------------------------------------------------------ status (shared) */

static void
set_state(struct pgrepl *r, const char *state)
{
	pthread_mutex_lock(&r->lock);
	r->st.state = state;
	pthread_mutex_unlock(&r->lock);
	ev_async_send(r->d->loop, &r->async);
}

static void
set_error(struct pgrepl *r, const char *state, const char *error)
{
	pthread_mutex_lock(&r->lock);
	r->st.state = state;
	free(r->st.error);
	r->st.error = error != NULL ? xstrdup(error) : NULL;
	r->st.error_seq++;
	pthread_mutex_unlock(&r->lock);
	ev_async_send(r->d->loop, &r->async);
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

static bool
stopping(struct pgrepl *r)
{
	return atomic_load(&r->stop) != 0;
}

/* Read the wake-up counter, so the eventfd is quiet again. */
static void
drain_wake(struct pgrepl *r)
{
	uint64_t n;

	while (read(r->wake_fd, &n, sizeof(n)) > 0)
		;
}

/* Sleep up to MS, or until stopped. */
static void
pause_ms(struct pgrepl *r, long ms)
{
	struct pollfd pfd = { .fd = r->wake_fd, .events = POLLIN };

	if (!stopping(r) && poll(&pfd, 1, (int)ms) > 0)
		drain_wake(r);
}

/* ------------------------------------------------------------ names */

/* Slot and origin names: lower case letters, digits and '_' only. */
static void
name_part(char *out, size_t size, const char *prefix, const char *node)
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

/* ------------------------------------------------------------ side queries */

/*
 * A side connection, to the master or to the standby, runs one query at a
 * time while the stream goes on: the durable position, which makes the
 * standby flush its WAL (an fsync the apply session must not wait for), and
 * the sequence copy.  Both are a round trip the apply path used to stop
 * for.  The stream's poll() watches the side that has a query out.
 */
enum side_job {
	SIDE_IDLE,
	SIDE_DURABLE,			/* standby: the origin's durable progress */
	SIDE_SEQ_READ,			/* master: PGS_SEQUENCES_READ */
	SIDE_SEQ_SET,			/* standby: PGS_SEQUENCES_SET */
};

struct side {
	const char *node;
	PGconn *conn;			/* opened when first needed */
	enum side_job job;
	PGresult *res;			/* the job's first result */
	long long sent_ms;		/* unix ms the job went out */
};

static const char *
side_job_name(enum side_job job)
{
	switch (job) {
	case SIDE_DURABLE:
		return "reading the replication origin's durable position";
	case SIDE_SEQ_READ:
		return "reading sequences on the master";
	case SIDE_SEQ_SET:
		return "setting sequences on the standby";
	case SIDE_IDLE:
		break;
	}
	return "side query";
}

static int
side_connect(const struct st_conf *conf, struct side *sd, char **error_r)
{
	if (sd->conn != NULL)
		return 0;
	sd->conn = pgc_connect(conf, sd->node, PGC_NORMAL, "standin-pgrepl side", error_r);
	if (sd->conn == NULL)
		return -1;
	if (PQsetnonblocking(sd->conn, 1) != 0) {
		st_set_error(error_r, "cannot make the side connection non-blocking: %s",
			     pgc_errmsg(sd->conn));
		return -1;
	}
	return 0;
}

static int
side_send(const struct st_conf *conf, struct side *sd, enum side_job job, const char *sql,
	  int n_params, const char *const *params, char **error_r)
{
	if (side_connect(conf, sd, error_r) < 0)
		return -1;
	/* libpq copies the parameters into its output buffer here. */
	if (!PQsendQueryParams(sd->conn, sql, n_params, NULL, params, NULL, NULL, 0)) {
		char *who = pgc_describe(conf, sd->node);
		st_set_error(error_r, "%s (%s): %s", side_job_name(job), who, pgc_errmsg(sd->conn));
		free(who);
		return -1;
	}
	sd->job = job;
	sd->sent_ms = st_now_ms();
	return 0;
}

static void
side_pollfd(struct side *sd, struct pollfd *pfd)
{
	pfd->fd = -1;
	pfd->events = 0;
	pfd->revents = 0;
	if (sd->job != SIDE_IDLE) {
		pfd->fd = PQsocket(sd->conn);
		pfd->events = POLLIN | (PQflush(sd->conn) == 1 ? POLLOUT : 0);
	}
}

/*
 * Take what the side's server sent.  When its job is done, *done_r is that
 * job and *res_r its result (the caller clears it); else SIDE_IDLE.
 */
static int
side_service(const struct st_conf *conf, struct side *sd, enum side_job *done_r,
	     PGresult **res_r, char **error_r)
{
	*done_r = SIDE_IDLE;
	*res_r = NULL;
	if (sd->job == SIDE_IDLE)
		return 0;
	if (PQflush(sd->conn) < 0 || !PQconsumeInput(sd->conn)) {
		char *who = pgc_describe(conf, sd->node);
		st_set_error(error_r, "%s (%s): %s", side_job_name(sd->job), who,
			     pgc_errmsg(sd->conn));
		free(who);
		return -1;
	}
	while (!PQisBusy(sd->conn)) {
		PGresult *res = PQgetResult(sd->conn);
		if (res == NULL) {
			*done_r = sd->job;
			*res_r = sd->res;
			sd->res = NULL;
			sd->job = SIDE_IDLE;
			return 0;
		}
		if (sd->res == NULL)
			sd->res = res;
		else
			PQclear(res);
	}
	return 0;
}

/* A side job's result that is not one row: the error, naming the server. */
static int
side_check(const struct st_conf *conf, const struct side *sd, enum side_job job,
	   const PGresult *res, char **error_r)
{
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) >= 1)
		return 0;
	char *who = pgc_describe(conf, sd->node);
	char *why = PQresultStatus(res) == PGRES_TUPLES_OK ? xstrdup("not one row")
							     : pgc_result_error(res);
	st_set_error(error_r, "%s (%s): %s", side_job_name(job), who, why);
	free(why);
	free(who);
	return -1;
}

static void
side_close(struct side *sd)
{
	PQclear(sd->res);
	sd->res = NULL;
	PQfinish(sd->conn);
	sd->conn = NULL;
	sd->job = SIDE_IDLE;
}

/* ------------------------------------------------------------ stream */

static const char *find_source(const struct st_cstate *cs, const char *target);

struct stream {
	struct pgrepl *r;
	const struct st_conf *conf;
	const char *source, *target, *origin;
	uint64_t epoch;			/* of the cluster state this session follows */
	char *cstate_path;
	long long next_cstate_ms, next_sequences_ms;
	struct side src_side, tgt_side;
	char *seq_names, *seq_values;	/* read on the master, to set on the standby */
	long long seq_read_ms;		/* unix ms their read went out */
	PGconn *repl;
	struct pga *apply;
	struct pgo_msg msg;
	struct pgsp *spool;		/* [pg] streaming: transactions in progress */
	struct pgo_msg replay_msg;	/* a spooled message, read back at its commit */
	pgo_lsn received;		/* last WAL position seen */
	pgo_lsn server_end;
	pgo_lsn durable;		/* origin progress durable on the standby */
	pgo_lsn last_commit_end;	/* end LSN of the last Commit received */
	long long next_feedback_ms;
	long long oldest_pending_ms;
	long long reverse_deadline_ms;	/* a reverse request waits this long for the drain */
	pgo_lsn reverse_want;		/* the fenced master's position */
	long long rate_ms;		/* when rate_txns/rate_rows were taken */
	uint64_t rate_txns, rate_rows;
};

/* Copy the stream's figures into the shared status. */
static void
publish(struct stream *s)
{
	const struct pga_stats *ps = pga_stats(s->apply);
	struct pgrepl *r = s->r;

	pthread_mutex_lock(&r->lock);
	r->st.received = s->received;
	r->st.server_end = s->server_end;
	r->st.flushed = s->durable;
	r->st.applied = ps->applied_lsn;
	r->st.applied_commit_time = ps->applied_commit_time;
	r->st.txns = ps->txns;
	r->st.rows = ps->rows;
	r->st.groups = ps->groups;
	r->st.ddl = ps->ddl;
	r->st.ddl_rejected = ps->ddl_rejected;
	r->st.ddl_skipped = ps->ddl_skipped;
	r->st.batches = ps->batches;
	r->st.batched_rows = ps->batched_rows;
	r->st.conflicts_resolved = r->resolved_before + ps->conflicts_resolved;
	r->st.spooled_txns = s->spool != NULL ? pgsp_open_txns(s->spool) : 0;
	r->st.spooled_bytes = s->spool != NULL ? pgsp_open_bytes(s->spool) : 0;
	r->st.streamed_txns = s->spool != NULL ? pgsp_replayed(s->spool) : 0;
	r->st.oldest_pending_ms = ps->applied_lsn >= s->last_commit_end ? 0 : s->oldest_pending_ms;
	r->st.caught_up = !pga_group_open(s->apply) && !pga_in_source_txn(s->apply) &&
			  s->durable >= s->last_commit_end;
	pthread_mutex_unlock(&r->lock);
}

/*
 * A standby status update: as flushed, what is durable on the standby, as
 * the last side query of it said.
 */
static int
send_status(struct stream *s, char **error_r)
{
	uint8_t buf[PGO_STATUS_UPDATE_LEN];
	pgo_lsn flushed = s->durable;

	/* Everything received is applied and durable: nothing of the slot's WAL
	 * up to here is needed again.  (The durable position is older than
	 * this moment, so this errs on the safe side.) */
	if (!pga_group_open(s->apply) && !pga_in_source_txn(s->apply) &&
	    s->durable >= s->last_commit_end &&
	    (s->spool == NULL || pgsp_open_txns(s->spool) == 0) && s->received > flushed)
		flushed = s->received;
	pgo_build_status_update(buf, s->received, flushed, flushed,
				pgo_unix_ms_to_ts(st_now_ms()), false);
	if (PQputCopyData(s->repl, (const char *)buf, sizeof(buf)) != 1 || PQflush(s->repl) < 0) {
		st_set_error(error_r, "cannot send feedback to the master: %s", pgc_errmsg(s->repl));
		return -1;
	}
	return 0;
}

/*
 * Every FEEDBACK_MS: the rates, and the durable position asked of the
 * standby on the side; the status update goes to the master when it
 * answers (durable_answered), or now, with what is known, if the side is
 * still busy.
 */
static int
feedback_due(struct stream *s, char **error_r)
{
	long long now = st_monotonic_ms();
	const struct pga_stats *ps = pga_stats(s->apply);

	s->next_feedback_ms = now + FEEDBACK_MS;
	if (s->rate_ms != 0 && now > s->rate_ms) {
		double secs = (double)(now - s->rate_ms) / 1000.0;
		pthread_mutex_lock(&s->r->lock);
		s->r->st.txns_per_s = (double)(ps->txns - s->rate_txns) / secs;
		s->r->st.rows_per_s = (double)(ps->rows - s->rate_rows) / secs;
		pthread_mutex_unlock(&s->r->lock);
	}
	s->rate_ms = now;
	s->rate_txns = ps->txns;
	s->rate_rows = ps->rows;
	publish(s);
	if (pga_sync(s->apply, error_r) < 0)
		return -1;
	if (s->tgt_side.job == SIDE_IDLE) {
		const char *pv[] = { s->origin };
		return side_send(s->conf, &s->tgt_side, SIDE_DURABLE,
				 "SELECT pg_catalog.pg_replication_origin_progress($1, true)", 1, pv,
				 error_r);
	}
	return send_status(s, error_r);
}

/* pg_replication_origin_progress(origin, true): flushed on the standby. */
static int
durable_answered(struct stream *s, const PGresult *res, char **error_r)
{
	pgo_lsn lsn = 0;

	if (side_check(s->conf, &s->tgt_side, SIDE_DURABLE, res, error_r) < 0)
		return -1;
	if (!PQgetisnull(res, 0, 0) && pgo_lsn_parse(PQgetvalue(res, 0, 0), &lsn) < 0) {
		st_set_error(error_r, "replication origin %s on the standby: bad progress %s",
			     s->origin, PQgetvalue(res, 0, 0));
		return -1;
	}
	if (lsn > s->durable)
		s->durable = lsn;
	publish(s);
	return send_status(s, error_r);
}

/* A source transaction's Commit: the lag clock and the drain's mark. */
static void
commit_seen(struct stream *s, const struct pgo_msg *commit)
{
	if (s->oldest_pending_ms == 0 || pga_stats(s->apply)->applied_lsn >= s->last_commit_end)
		s->oldest_pending_ms = pgo_ts_to_unix_ms(commit->u.commit.commit_time);
	s->last_commit_end = commit->u.commit.end_lsn;
}

static int
replay_one(void *ctx, const uint8_t *buf, size_t len, char **error_r)
{
	struct stream *s = ctx;

	if (stopping(s->r)) {
		/* Nothing of it is committed: the next start gets it again. */
		st_set_error(error_r, "stopped while applying a streamed transaction");
		return -1;
	}
	if (pgo_parse(buf, len, true, &s->replay_msg, error_r) < 0 ||
	    pga_message(s->apply, &s->replay_msg, error_r) < 0)
		return -1;
	/* A transaction of millions of rows takes a while: the master hears
	 * from us meanwhile (wal_sender_timeout), with the old positions. */
	if (st_monotonic_ms() >= s->next_feedback_ms && feedback_due(s, error_r) < 0)
		return -1;
	return 0;
}

/*
 * Stream Commit (in s->msg): the spooled transaction is applied now, in
 * commit order, as one that came whole: Begin, its messages, Commit.
 */
static int
replay_streamed(struct stream *s, char **error_r)
{
	struct pgo_msg begin = { .kind = PGO_BEGIN, .xid = s->msg.xid };
	struct pgo_msg commit = { .kind = PGO_COMMIT, .xid = s->msg.xid };

	begin.u.begin.final_lsn = s->msg.u.commit.commit_lsn;
	begin.u.begin.commit_time = s->msg.u.commit.commit_time;
	commit.u.commit = s->msg.u.commit;
	if (pga_message(s->apply, &begin, error_r) < 0 ||
	    pgsp_replay(s->spool, s->msg.xid, replay_one, s, error_r) < 0)
		return -1;
	commit_seen(s, &commit);
	return pga_message(s->apply, &commit, error_r);
}

static int
handle_copydata(struct stream *s, const uint8_t *buf, size_t len, char **error_r)
{
	struct pgo_copydata cd;

	if (pgo_parse_copydata(buf, len, &cd, error_r) < 0)
		return -1;
	if (cd.wal_end > s->server_end)
		s->server_end = cd.wal_end;
	if (cd.kind == PGO_COPY_KEEPALIVE) {
		if (cd.wal_end > s->received)
			s->received = cd.wal_end;
		return cd.reply_requested ? send_status(s, error_r) : 0;
	}
	if (cd.wal_start > s->received)
		s->received = cd.wal_start;
	bool in_block = s->spool != NULL && pgsp_in_block(s->spool);
	if (pgo_parse(cd.data, cd.len, in_block, &s->msg, error_r) < 0)
		return -1;
	if (s->spool != NULL) {
		switch (s->msg.kind) {
		case PGO_STREAM_START:
			return pgsp_block_start(s->spool, s->msg.xid,
						s->msg.u.stream_start.first_segment, error_r);
		case PGO_STREAM_STOP:
			return pgsp_block_stop(s->spool, error_r);
		case PGO_STREAM_ABORT:
			return pgsp_abort(s->spool, s->msg.xid, s->msg.u.stream_abort.subxid, error_r);
		case PGO_STREAM_COMMIT:
			return replay_streamed(s, error_r);
		default:
			if (in_block)
				return pgsp_write(s->spool, s->msg.xid, cd.data, cd.len, error_r);
			break;
		}
	}
	if (s->msg.kind == PGO_COMMIT)
		commit_seen(s, &s->msg);
	return pga_message(s->apply, &s->msg, error_r);
}

static void
set_reverse(struct pgrepl *r, const char *state, pgo_lsn lsn, const char *error)
{
	pthread_mutex_lock(&r->lock);
	r->st.reverse_state = state;
	r->st.reverse_lsn = lsn;
	snprintf(r->st.reverse_error, sizeof(r->st.reverse_error), "%s", error ? error : "");
	pthread_mutex_unlock(&r->lock);
}

/*
 * A reverse request (switchover): once the fenced master's position is
 * drained here, end the session with 2 so the engine can turn the direction
 * around; give up (failed) if the drain does not come within 30 s.
 */
static int
reverse_check(struct stream *s, char **error_r)
{
	struct pgrepl *r = s->r;
	char *value = NULL;

	if (s->reverse_deadline_ms == 0) {
		/* The master's side connection, once its query is answered. */
		if (s->src_side.job != SIDE_IDLE)
			return 0;
		if (side_connect(s->conf, &s->src_side, error_r) < 0)
			return -1;
		/* The insert position, not pg_current_wal_lsn(): with asynchronous
		 * commit a committed transaction may not be written yet. */
		if (pgc_value(s->src_side.conn, "SELECT pg_catalog.pg_current_wal_insert_lsn()", &value,
			      error_r) < 0 || value == NULL || pgo_lsn_parse(value, &s->reverse_want) < 0) {
			free(value);
			return -1;
		}
		free(value);
		s->reverse_deadline_ms = st_monotonic_ms() + 30000;
		st_notice("reverse requested: waiting for the drain lsn=" PGO_LSN_FMT,
			  PGO_LSN_ARGS(s->reverse_want));
	}
	bool drained = !pga_group_open(s->apply) && !pga_in_source_txn(s->apply) &&
		       s->durable >= s->last_commit_end &&
		       (s->durable >= s->reverse_want || s->received >= s->reverse_want);
	if (drained)
		return 2;
	if (st_monotonic_ms() > s->reverse_deadline_ms) {
		char why[256];
		snprintf(why, sizeof(why), "not drained within 30 s: the master is at " PGO_LSN_FMT
			 ", received " PGO_LSN_FMT ", durable " PGO_LSN_FMT " (is it fenced?)",
			 PGO_LSN_ARGS(s->reverse_want), PGO_LSN_ARGS(s->received),
			 PGO_LSN_ARGS(s->durable));
		set_reverse(r, "failed", 0, why);
		atomic_store(&r->reverse_requested, 0);
		s->reverse_deadline_ms = 0;
	}
	return 0;
}

/*
 * The sequence copy, periodically and when the admin socket asks: read on
 * the master's side connection, then set on the standby's, neither waited
 * for.  sequences_synced_ms is when the read went out: the standby's
 * sequences are at least where the master's were then.
 */
static int
sequences_step(struct stream *s, char **error_r)
{
	if (s->seq_names != NULL) {
		if (s->tgt_side.job != SIDE_IDLE)
			return 0;
		const char *pv[] = { s->seq_names, s->seq_values };
		int rc = side_send(s->conf, &s->tgt_side, SIDE_SEQ_SET, PGS_SEQUENCES_SET, 2, pv,
				   error_r);
		free(s->seq_names);
		free(s->seq_values);
		s->seq_names = s->seq_values = NULL;
		return rc;
	}
	if (s->src_side.job != SIDE_IDLE || s->tgt_side.job == SIDE_SEQ_SET)
		return 0;
	/* A request that comes while a copy is under way waits for the next. */
	if (st_monotonic_ms() < s->next_sequences_ms &&
	    !atomic_exchange(&s->r->sequences_requested, 0))
		return 0;
	s->next_sequences_ms = st_monotonic_ms() + SEQUENCE_SYNC_MS;
	return side_send(s->conf, &s->src_side, SIDE_SEQ_READ, PGS_SEQUENCES_READ, 0, NULL,
			 error_r);
}

static void
sequences_copied(struct stream *s, unsigned moved)
{
	if (moved > 0)
		st_debug("sequences copied moved=%u", moved);
	pthread_mutex_lock(&s->r->lock);
	s->r->st.sequences_synced_ms = s->seq_read_ms;
	pthread_mutex_unlock(&s->r->lock);
}

/* A side connection has something: a job's answer, taken here. */
static int
side_answered(struct stream *s, struct side *sd, char **error_r)
{
	enum side_job job;
	PGresult *res;
	int rc = 0;

	if (side_service(s->conf, sd, &job, &res, error_r) < 0)
		return -1;
	switch (job) {
	case SIDE_IDLE:
		return 0;
	case SIDE_DURABLE:
		rc = durable_answered(s, res, error_r);
		break;
	case SIDE_SEQ_READ:
		if (side_check(s->conf, sd, job, res, error_r) < 0) {
			rc = -1;
			break;
		}
		s->seq_read_ms = sd->sent_ms;
		if (PQgetisnull(res, 0, 0) || PQnfields(res) != 2) {
			sequences_copied(s, 0);	/* no sequence, or none used yet */
			break;
		}
		s->seq_names = xstrdup(PQgetvalue(res, 0, 0));
		s->seq_values = xstrdup(PQgetvalue(res, 0, 1));
		rc = sequences_step(s, error_r);
		break;
	case SIDE_SEQ_SET:
		if (side_check(s->conf, sd, job, res, error_r) < 0) {
			rc = -1;
			break;
		}
		sequences_copied(s, (unsigned)strtoul(PQgetvalue(res, 0, 0), NULL, 10));
		break;
	}
	PQclear(res);
	return rc;
}

/* Has the cluster state moved on (switchover, failover)?  Then this
 * session ends and the engine follows the new state. */
static bool
cstate_changed(struct stream *s)
{
	struct st_cstate cs;
	char *err = NULL;
	bool changed = false;

	s->next_cstate_ms = st_monotonic_ms() + IDLE_CHECK_MS;
	if (st_cstate_load(s->cstate_path, &cs, &err) != 0) {
		free(err);
		return false;	/* unreadable now: keep going, the engine reports it later */
	}
	const char *src = find_source(&cs, s->target);
	if (cs.epoch != s->epoch || src == NULL || strcmp(src, s->source) != 0) {
		st_notice("cluster state changed epoch=%" PRIu64 " source=%s: ending this session",
			  cs.epoch, src != NULL ? src : "none");
		changed = true;
	}
	return changed;
}

static int
stream_loop(struct stream *s, char **error_r)
{
	struct pgrepl *r = s->r;

	set_state(r, "streaming");
	while (!stopping(r)) {
		/* Take what the socket has into libpq's buffer. */
		if (!PQconsumeInput(s->repl)) {
			st_set_error(error_r, "lost the replication connection to the master: %s",
				     pgc_errmsg(s->repl));
			return -1;
		}
		/* A bounded batch at a time, and nothing while the standby is
		 * behind (pga_behind): the stream waits for its answer. */
		bool dry = false;
		for (int i = 0; i < 10000 && !pga_behind(s->apply); i++) {
			char *buf = NULL;
			int n = PQgetCopyData(s->repl, &buf, 1);
			if (n == 0) {
				dry = true;
				break;
			}
			if (n == -1) {
				PGresult *res = PQgetResult(s->repl);
				char *why = pgc_result_error(res);
				PQclear(res);
				st_set_error(error_r, "the master ended the replication stream: %s", why);
				free(why);
				return -1;
			}
			if (n < 0) {
				st_set_error(error_r, "replication stream from the master: %s",
					     pgc_errmsg(s->repl));
				return -1;
			}
			int rc = handle_copydata(s, (const uint8_t *)buf, (size_t)n, error_r);
			PQfreemem(buf);
			if (rc < 0)
				return -1;
			if (st_monotonic_ms() >= s->next_feedback_ms)
				break;
		}
		/* Nothing more for now: commit what is complete (low latency when
		 * idle, big groups under a backlog). */
		if (pga_commit_if_due(s->apply, dry, error_r) < 0)
			return -1;
		if (st_monotonic_ms() >= s->next_feedback_ms && feedback_due(s, error_r) < 0)
			return -1;
		publish(s);
		long long now = st_monotonic_ms();
		if (now >= s->next_cstate_ms && cstate_changed(s))
			return 0;
		if (sequences_step(s, error_r) < 0)
			return -1;
		if (atomic_load(&r->reverse_requested)) {
			int rc = reverse_check(s, error_r);
			if (rc != 0)
				return rc;
		}
		bool behind = pga_behind(s->apply);
		if (!dry && !behind)
			continue;

		long timeout = s->next_feedback_ms - st_monotonic_ms();
		if (s->next_cstate_ms - st_monotonic_ms() < timeout)
			timeout = s->next_cstate_ms - st_monotonic_ms();
		long due = pga_ms_until_due(s->apply);
		if (due >= 0 && due < timeout)
			timeout = due;
		if (timeout < 0)
			timeout = 0;
		struct pollfd pfd[5] = {
			{ .fd = PQsocket(s->repl), .events = behind ? 0 : POLLIN },
			{ .fd = pga_socket(s->apply),
			  .events = POLLIN | (pga_wants_write(s->apply) ? POLLOUT : 0) },
			{ .fd = r->wake_fd, .events = POLLIN },
		};
		side_pollfd(&s->src_side, &pfd[3]);
		side_pollfd(&s->tgt_side, &pfd[4]);
		if (poll(pfd, 5, (int)timeout) < 0 && errno != EINTR) {
			st_set_error(error_r, "poll: %s", strerror(errno));
			return -1;
		}
		if (pfd[1].revents != 0 && pga_service(s->apply, error_r) < 0)
			return -1;
		if (pfd[2].revents != 0)
			drain_wake(r);
		if (pfd[3].revents != 0 && side_answered(s, &s->src_side, error_r) < 0)
			return -1;
		if (pfd[4].revents != 0 && side_answered(s, &s->tgt_side, error_r) < 0)
			return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ one session */

static const char *
find_source(const struct st_cstate *cs, const char *target)
{
	for (size_t i = 0; i < cs->n_edges[ST_SVC_PG]; i++)
		if (strcmp(cs->edges[ST_SVC_PG][i].target, target) == 0)
			return cs->edges[ST_SVC_PG][i].source;
	return NULL;
}

static int
slot_exists(PGconn *src, const char *slot, bool *exists_r, char **error_r)
{
	char *lit = pgc_literal(slot), *value = NULL;
	char *sql = xasprintf("SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s "
			      "AND plugin = 'pgoutput'", lit);
	int rc = pgc_value(src, sql, &value, error_r);

	*exists_r = value != NULL;
	free(value);
	free(sql);
	free(lit);
	return rc;
}

/* ------------------------------------------------------------ DDL marked done */

static char *lsn_text(pgo_lsn l);

/*
 * STATE_DIR/pgrepl-ddl-done holds "SOURCE LSN" lines: the DDL message at LSN
 * from SOURCE was applied on the standby by hand ("ddl-done"), and the
 * stream goes on past it.  Once the standby has applied past LSN a mark has
 * done its work and goes, with the statement's file (pgapply.c, ddl_file).
 * Several can wait at once: a DDL passed over in a transaction of nothing
 * else may be read again after a later one stops the stream.
 */
#define DDL_MARKS_MAX 64

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
static size_t
ddl_done_read(const struct st_node *node, const char *source, pgo_lsn progress, pgo_lsn *lsns)
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
 * Replicate SOURCE -> this node until stopped or an error: 0 (stopped, or
 * the cluster state moved on), 2 (drained for a reverse), 3 (a statement of
 * many rows failed: start again at once, one statement per row up to
 * r->rowwise_until) or -1 with *error_r.
 */
static int
replicate(struct pgrepl *r, const struct st_conf *conf, const char *source, const char *target,
	  uint64_t epoch, char **error_r)
{
	const struct st_node *node = st_conf_node(conf, target);
	char slot[64], origin[96], *marker = NULL, *err = NULL, *ddl_key = NULL;
	struct stream s = { .r = r, .conf = conf, .source = source, .target = target,
			    .origin = origin, .epoch = epoch, .cstate_path = st_cstate_path(node),
			    .src_side = { .node = source }, .tgt_side = { .node = target } };
	PGconn *tgt = NULL, *src = NULL;
	int rc = -1;

	name_part(slot, sizeof(slot), "standin_", target);
	name_part(origin, sizeof(origin), "standin_from_", source);
	marker = xasprintf("%s/pgrepl-%s.sync", node->state_dir, source);
	pthread_mutex_lock(&r->lock);
	snprintf(r->st.source, sizeof(r->st.source), "%s", source);
	snprintf(r->st.target, sizeof(r->st.target), "%s", target);
	snprintf(r->st.slot, sizeof(r->st.slot), "%s", slot);
	snprintf(r->st.origin, sizeof(r->st.origin), "%s", origin);
	pthread_mutex_unlock(&r->lock);

	set_state(r, "connecting");
	tgt = pgc_connect(conf, target, PGC_NORMAL, "standin-pgrepl apply", &err);
	if (tgt == NULL)
		goto fail;
	bool have_origin;
	pgo_lsn progress;
	if (pgs_origin_progress(tgt, origin, &have_origin, &progress, &err) < 0)
		goto fail;

	bool need_sync = r->resync || pgs_marker_present(marker) || !have_origin;
	if (need_sync) {
		char stale_slot[64], peer_origin[96];
		name_part(stale_slot, sizeof(stale_slot), "standin_", source);
		name_part(peer_origin, sizeof(peer_origin), "standin_from_", target);
		struct pgs_request req = {
			.conf = conf, .source = source, .target = target, .slot = slot,
			.publication = PUBLICATION, .origin = origin, .marker = marker,
			.jobs = COPY_JOBS, .force = r->resync, .stop = &r->stop_int,
			.stale_slot = stale_slot, .peer_origin = peer_origin,
			.report_dir = node->state_dir,
		};
		pgo_lsn start;
		st_notice("initial sync source=%s target=%s reason=%s", source, target,
			  r->resync ? "--resync" : !have_origin ? "no-replication-origin"
								  : "unfinished-sync");
		set_state(r, "initial sync");
		if (pgs_initial_sync(&req, &r->st.sync, &start, &err) < 0)
			goto fail;
		r->resync = false;
		st_notice("initial sync done source=%s target=%s start=" PGO_LSN_FMT, source, target,
			  PGO_LSN_ARGS(start));
	}

	src = pgc_connect(conf, source, PGC_NORMAL, "standin-pgrepl check", &err);
	if (src == NULL)
		goto fail;
	bool exists;
	if (slot_exists(src, slot, &exists, &err) < 0)
		goto fail;
	if (!exists) {
		char *who = pgc_describe(conf, source);
		err = xasprintf("replication slot %s is missing on the master %s: the changes since "
				"the standby's position cannot be streamed; start standin-pgrepl "
				"once with --resync to copy the database again", slot, who);
		free(who);
		goto fail;
	}
	if (pgs_ensure_publication(src, PUBLICATION, &err) < 0 ||
	    pgs_ensure_ddl_capture(src, &ddl_key, &err) < 0 ||
	    pgs_free_slot(src, slot, false, &err) < 0)
		goto fail;
	PQfinish(src);
	src = NULL;

	pgo_lsn ddl_done[DDL_MARKS_MAX];
	size_t n_ddl_done = ddl_done_read(node, source, need_sync ? UINT64_MAX : progress,
					  ddl_done);
	struct pga_options opts = {
		.origin = origin, .group_max_txns = GROUP_MAX_TXNS, .group_max_ms = GROUP_MAX_MS,
		.ddl_prefix = DDL_PREFIX, .ddl_key = ddl_key, .stop = &r->stop_int,
		.rowwise_until = strcmp(r->rowwise_source, source) == 0 ? r->rowwise_until : 0,
		.master_wins = conf->pg.conflicts == ST_PG_CONFLICTS_MASTER_WINS,
		.ddl_dir = node->state_dir,
		.ddl_done = ddl_done, .n_ddl_done = n_ddl_done,
	};
	pgo_lsn start;
	s.apply = pga_new(tgt, &opts, &start, &err);
	if (s.apply == NULL)
		goto fail;
	s.durable = start;
	s.received = start;
	s.last_commit_end = start;

	if (conf->pg.streaming) {
		/* What an earlier session spooled is sent again from its start. */
		char *dir = xasprintf("%s/pgrepl-spool", node->state_dir);
		s.spool = pgsp_new(dir, &err);
		free(dir);
		if (s.spool == NULL)
			goto fail;
	}
	s.repl = pgc_connect(conf, source, PGC_REPLICATION, "standin-pgrepl", &err);
	if (s.repl == NULL)
		goto fail;
	char *slot_id = pgc_ident(slot);
	char *start_sql = xasprintf("START_REPLICATION SLOT %s LOGICAL " PGO_LSN_FMT
				    " (proto_version '%s', publication_names '\"" PUBLICATION "\"', "
				    "messages 'true'%s)", slot_id, PGO_LSN_ARGS(start),
				    s.spool != NULL ? "2" : "1",
				    s.spool != NULL ? ", streaming 'on'" : "");
	free(slot_id);
	PGresult *res = PQexec(s.repl, start_sql);
	free(start_sql);
	if (PQresultStatus(res) != PGRES_COPY_BOTH) {
		err = pgc_result_error(res);
		PQclear(res);
		goto fail;
	}
	PQclear(res);
	if (PQsetnonblocking(s.repl, 1) != 0) {
		err = xasprintf("cannot make the stream non-blocking: %s", pgc_errmsg(s.repl));
		goto fail;
	}
	st_notice("streaming source=%s target=%s slot=%s start=" PGO_LSN_FMT, source, target, slot,
		  PGO_LSN_ARGS(start));
	set_error(r, "streaming", NULL);
	s.next_feedback_ms = st_monotonic_ms();
	s.next_cstate_ms = st_monotonic_ms() + IDLE_CHECK_MS;
	s.next_sequences_ms = st_monotonic_ms();
	rc = stream_loop(&s, &err);
	if (rc < 0)
		goto fail;
	goto out;
fail:
	st_set_error(error_r, "%s -> %s: %s", source, target, err != NULL ? err : "unknown error");
	if (s.apply != NULL && pga_batch_failed(s.apply)) {
		/* Everything received is past the failed statement's rows. */
		r->rowwise_until = s.received;
		snprintf(r->rowwise_source, sizeof(r->rowwise_source), "%s", source);
		rc = 3;
	}
out:
	free(err);
	free(marker);
	free(s.cstate_path);
	side_close(&s.src_side);
	side_close(&s.tgt_side);
	free(s.seq_names);
	free(s.seq_values);
	if (ddl_key != NULL)
		explicit_bzero(ddl_key, strlen(ddl_key));
	free(ddl_key);
	pgo_msg_clear(&s.msg);
	pgo_msg_clear(&s.replay_msg);
	pgsp_free(&s.spool);
	if (s.apply != NULL)
		r->resolved_before += pga_stats(s.apply)->conflicts_resolved;
	pga_free(&s.apply);
	if (s.repl != NULL) {
		PQputCopyEnd(s.repl, NULL);
		PQfinish(s.repl);
	}
	PQfinish(src);
	PQfinish(tgt);
	return rc;
}

/*
 * Switchover, after the drain: this node (the standby) will be the master and
 * OLD_SOURCE its standby.  Make this node feed OLD_SOURCE from now, with no
 * copy, then idle until the cluster state says so.
 */
static void
reverse(struct pgrepl *r, const struct st_conf *conf, const char *old_source, const char *me,
	const char *cstate_path)
{
	char new_slot[64], new_origin[96], stale_slot[64], *err = NULL;
	pgo_lsn start = 0;

	name_part(new_slot, sizeof(new_slot), "standin_", old_source);
	name_part(new_origin, sizeof(new_origin), "standin_from_", me);
	name_part(stale_slot, sizeof(stale_slot), "standin_", me);
	set_state(r, "reversing");
	if (pgs_prepare_reverse(conf, me, old_source, PUBLICATION, new_slot, new_origin, stale_slot,
				&start, &err) < 0) {
		set_reverse(r, "failed", 0, err);
		set_error(r, "error", err);
		free(err);
		atomic_store(&r->reverse_requested, 0);
		return;
	}
	set_reverse(r, "done", start, NULL);
	atomic_store(&r->reverse_requested, 0);
	set_error(r, "reversed (waiting for the cluster state)", NULL);
	/* Until the cluster state says this node is the master, pulling again from
	 * the old master would find its slot gone: wait. */
	while (!stopping(r)) {
		struct st_cstate cs;
		if (st_cstate_load(cstate_path, &cs, &err) == 0) {
			const char *src = find_source(&cs, me);
			if (src == NULL || strcmp(src, old_source) != 0)
				break;
		}
		free(err);
		err = NULL;
		pause_ms(r, 500);
	}
	free(err);
}

static void *
engine_main(void *arg)
{
	struct pgrepl *r = arg;
	const struct st_conf *conf = r->conf;
	const char *me = r->node->name;
	char *path = st_cstate_path(r->node);
	long retry_ms = RETRY_MIN_MS;

	while (!stopping(r)) {
		struct st_cstate cs;
		char *err = NULL;
		int lrc = st_cstate_load(path, &cs, &err);
		if (lrc != 0) {
			if (lrc > 0)
				err = xasprintf("%s does not exist (standinctl state init)", path);
			set_error(r, "no cluster state", err);
			free(err);
			pause_ms(r, IDLE_CHECK_MS);
			continue;
		}
		const char *source = find_source(&cs, me);
		if (source == NULL) {
			set_error(r, strcmp(cs.master, me) == 0 ? "idle (master)" : "idle (no source)",
				  NULL);
			pause_ms(r, IDLE_CHECK_MS);
			continue;
		}
		char src_name[ST_NAME_MAX + 1];
		snprintf(src_name, sizeof(src_name), "%s", source);
		long long began = st_monotonic_ms();
		int rrc = replicate(r, conf, src_name, me, cs.epoch, &err);
		if (rrc == 2) {
			reverse(r, conf, src_name, me, path);
			continue;
		}
		if (rrc == 0 || stopping(r)) {
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
		set_error(r, "error", err);
		free(err);
		/* Back off, but start over quickly after a long healthy run. */
		if (st_monotonic_ms() - began > 60000)
			retry_ms = RETRY_MIN_MS;
		pause_ms(r, retry_ms);
		retry_ms = retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : retry_ms * 2;
	}
	free(path);
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
	st_info("engine stopped");
}

static void
pgrepl_stop(struct st_daemon *d)
{
	engine_stop(d->priv);
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

static char *
lsn_text(pgo_lsn l)
{
	return xasprintf(PGO_LSN_FMT, PGO_LSN_ARGS(l));
}

static void
set_lsn(json_t *obj, const char *key, pgo_lsn l)
{
	char *s = lsn_text(l);
	json_object_set_new(obj, key, json_string(s));
	free(s);
}

static void
pgrepl_status(struct st_daemon *d, json_t *obj)
{
	struct pgrepl *r = d->priv;
	struct status st;

	pthread_mutex_lock(&r->lock);
	st = r->st;
	st.error = NULL;
	pthread_mutex_unlock(&r->lock);

	json_object_set_new(obj, "state", json_string(st.state ? st.state : "starting"));
	json_object_set_new(obj, "source", st.source[0] ? json_string(st.source) : json_null());
	json_object_set_new(obj, "target", st.target[0] ? json_string(st.target) : json_null());
	json_object_set_new(obj, "slot", st.slot[0] ? json_string(st.slot) : json_null());
	json_object_set_new(obj, "origin", st.origin[0] ? json_string(st.origin) : json_null());
	set_lsn(obj, "received_lsn", st.received);
	set_lsn(obj, "applied_lsn", st.applied);
	set_lsn(obj, "flushed_lsn", st.flushed);
	set_lsn(obj, "server_lsn", st.server_end);
	bool streaming = st.state != NULL && strcmp(st.state, "streaming") == 0;
	if (streaming) {
		json_object_set_new(obj, "lag_bytes", json_integer(st.server_end > st.applied
								    ? (json_int_t)(st.server_end - st.applied) : 0));
		double lag = st.oldest_pending_ms > 0 ? (double)(st_now_ms() - st.oldest_pending_ms) / 1000.0
						      : 0.0;
		json_object_set_new(obj, "lag_seconds", json_real(lag < 0 ? 0 : lag));
	} else {
		json_object_set_new(obj, "lag_bytes", json_null());
		json_object_set_new(obj, "lag_seconds", json_null());
	}
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
		char *l = lsn_text(st.reverse_lsn);
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
	st_metric(out, "standin_pg_lag_bytes", "gauge", "WAL bytes the standby is behind.", labels,
		  st.server_end > st.applied ? (double)(st.server_end - st.applied) : 0);
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
		st_buf_puts(reply, "{\"error\":\"usage: ddl-done LSN (the LSN the error names, "
				   "e.g. ddl-done 0/16B3748)\"}\n");
		return;
	}
	pthread_mutex_lock(&r->lock);
	snprintf(source, sizeof(source), "%s", r->st.source);
	pthread_mutex_unlock(&r->lock);
	if (source[0] == '\0') {
		st_buf_puts(reply, "{\"error\":\"no master to stream from yet\"}\n");
		return;
	}
	char *path = ddl_done_path(r->node), *lsn_s = lsn_text(lsn);
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
		json_t *o = json_pack("{s:s}", "error", err);
		char *text = json_dumps(o, JSON_COMPACT);
		st_buf_printf(reply, "%s\n", text);
		free(text);
		json_decref(o);
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

/*
 * "reverse": the switchover's step on the standby, once the master is fenced:
 * wait until its position is drained here, then make this node feed it
 * (reverse.state in status: requested, done, failed).
 */
static void
cmd_reverse(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct pgrepl *r = d->priv;
	uint64_t one = 1;

	(void)args;
	pthread_mutex_lock(&r->lock);
	bool streaming = r->st.state != NULL && strcmp(r->st.state, "streaming") == 0;
	pthread_mutex_unlock(&r->lock);
	if (!streaming) {
		/* Only a standby that streams from its master can take its place. */
		st_buf_puts(reply, "{\"error\":\"not streaming: reverse is for the standby, "
				   "while it streams from the master\"}\n");
		return;
	}
	set_reverse(r, "requested", 0, NULL);
	atomic_store(&r->reverse_requested, 1);
	if (write(r->wake_fd, &one, sizeof(one)) < 0)
		st_warn("cannot wake the engine error=%s", st_q(strerror(errno)));
	st_buf_puts(reply, "{\"requested\":true}\n");
}

static const struct st_ctl_command pgrepl_commands[] = {
	{ "reverse", cmd_reverse, "switchover: once drained, make this standby feed its master" },
	{ "drain", cmd_drain, "drain LSN [TIMEOUT_MS]: tell (or wait until) the standby has applied up to LSN" },
	{ "position", cmd_position, "position: the master's LSN applied and durable here" },
	{ "sequences", cmd_sequences, "copy the master's sequences to the standby now" },
	{ "ddl-done", cmd_ddl_done, "ddl-done LSN: go on past the DDL at LSN, applied by hand" },
	{ NULL, NULL, NULL },
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
