/*
 * pgstream.c: one replication session of standin-pgrepl, from a source to
 * this node: the replication connection and its feedback, the apply
 * (pgapply.c), streamed transactions (pgspool.c), the side connections'
 * queries (positions, sequences), and the initial sync when one is needed.
 * The daemon (pgrepl.c) runs it on its engine thread.
 */
#include "config.h"

#include "replicators/pg/pgrepl.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/durable.h"
#include "lib/log.h"
#include "lib/pgconn.h"
#include "replicators/pg/pgapply.h"
#include "replicators/pg/pgspool.h"

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
	SIDE_HEARTBEAT,			/* master: the lag clock's message */
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
	case SIDE_HEARTBEAT:
		return "sending the heartbeat on the master";
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


struct stream {
	struct pgrepl *r;
	const struct st_conf *conf;
	const char *source, *target, *origin;
	uint64_t epoch;			/* of the cluster state this session follows */
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
	long long rate_ms;		/* when rate_txns/rate_rows were taken */
	uint64_t rate_txns, rate_rows;
	pgo_lsn confirmed;		/* last sent to the master as flushed */
	/* Heartbeats received, waiting for the commits before them to be
	 * applied here: NEED is the last commit end received before each. */
	struct { pgo_lsn need; int64_t ms; } hb[32];
	size_t hb_n;
	long long next_heartbeat_ms;
	bool hb_failed;			/* the last heartbeat failed (logged once) */
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
	/* A heartbeat counts once every commit received before it is applied. */
	size_t done = 0;
	while (done < s->hb_n && ps->applied_lsn >= s->hb[done].need) {
		if (s->hb[done].ms > r->st.heartbeat_ms)
			r->st.heartbeat_ms = s->hb[done].ms;
		done++;
	}
	if (done > 0) {
		memmove(s->hb, s->hb + done, (s->hb_n - done) * sizeof(s->hb[0]));
		s->hb_n -= done;
	}
	pgr_confirmed_locked(r, s->confirmed);
	pthread_mutex_unlock(&r->lock);
	if (done > 0)
		pgr_heartbeat_save(r, false);
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
	s->confirmed = flushed;
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

	if (pgr_stopping(s->r)) {
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

/*
 * A heartbeat: the master's time when it was written.  Every commit the
 * master made before it came before it in the stream; once those are
 * applied here, the standby holds everything the master had at that time.
 * Any standby's heartbeat serves (each marks a moment of the master's WAL).
 */
static void
heartbeat_seen(struct stream *s, const struct pgo_msg *m)
{
	char *end;
	errno = 0;
	long long ms = strtoll(m->u.message.content, &end, 10);

	if (errno != 0 || end == m->u.message.content || *end != '\0' || ms <= 0) {
		st_warn("heartbeat with unreadable content %s at lsn=" PGO_LSN_FMT " ignored",
			st_q(m->u.message.content), PGO_LSN_ARGS(m->u.message.lsn));
		return;
	}
	if (s->hb_n == ST_ARRAY_SIZE(s->hb)) {
		/* Far behind: keep the newest; the older ones are passed anyway
		 * when it is (the lag shown errs on the high side meanwhile). */
		memmove(s->hb, s->hb + 1, (s->hb_n - 1) * sizeof(s->hb[0]));
		s->hb_n--;
	}
	s->hb[s->hb_n].need = s->last_commit_end;
	s->hb[s->hb_n].ms = ms;
	s->hb_n++;
}

/*
 * Every HEARTBEAT_MS, on the master's side connection: a non-transactional
 * logical message with the master's clock.  It fails quietly (logged once):
 * the lag then grows, which is what it should show.
 */
static int
heartbeat_step(struct stream *s, char **error_r)
{
	static const char sql[] =
		"SELECT pg_catalog.pg_logical_emit_message(false, '" HEARTBEAT_PREFIX "', "
		"(extract(epoch FROM pg_catalog.clock_timestamp()) * 1000)::bigint::text)";

	if (st_monotonic_ms() < s->next_heartbeat_ms || s->src_side.job != SIDE_IDLE)
		return 0;
	s->next_heartbeat_ms = st_monotonic_ms() + HEARTBEAT_MS;
	return side_send(s->conf, &s->src_side, SIDE_HEARTBEAT, sql, 0, NULL, error_r);
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
	if (s->msg.kind == PGO_MESSAGE && !s->msg.u.message.transactional &&
	    strcmp(s->msg.u.message.prefix, HEARTBEAT_PREFIX) == 0) {
		heartbeat_seen(s, &s->msg);
		return 0;
	}
	return pga_message(s->apply, &s->msg, error_r);
}

void
pgr_set_reverse(struct pgrepl *r, const char *state, pgo_lsn lsn, const char *error)
{
	pthread_mutex_lock(&r->lock);
	r->st.reverse_state = state;
	r->st.reverse_lsn = lsn;
	snprintf(r->st.reverse_error, sizeof(r->st.reverse_error), "%s", error ? error : "");
	pthread_mutex_unlock(&r->lock);
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
	case SIDE_HEARTBEAT: {
		char *why = NULL;
		if (side_check(s->conf, sd, job, res, &why) < 0) {
			if (!s->hb_failed)
				st_warn("%s: the lag shown grows until it works", why);
			s->hb_failed = true;
		} else if (s->hb_failed) {
			st_notice("heartbeats on the master work again");
			s->hb_failed = false;
		}
		free(why);
		break;
	}
	}
	PQclear(res);
	return rc;
}

/* Has the cluster state moved on (switchover, failover)?  Then this
 * session ends and the engine follows the new state. */
static bool
cstate_changed(struct stream *s)
{
	const struct st_cstate_follower *f = &s->r->follow;

	s->next_cstate_ms = st_monotonic_ms() + IDLE_CHECK_MS;
	if (!st_cstate_follow(&s->r->follow) || !f->valid)
		return false;	/* unchanged, or unreadable now: keep going */
	const char *src = st_cstate_source(&f->cs, ST_SVC_PG, s->target);
	if (f->cs.epoch != s->epoch || src == NULL || strcmp(src, s->source) != 0) {
		st_notice("cluster state changed epoch=%" PRIu64 " source=%s: ending this session",
			  f->cs.epoch, src != NULL ? src : "none");
		return true;
	}
	return false;
}

static int
stream_loop(struct stream *s, char **error_r)
{
	struct pgrepl *r = s->r;

	pgr_set_state(r, "streaming");
	while (!pgr_stopping(r)) {
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
		if (st_monotonic_ms() < atomic_load(&r->fast_feedback_until) &&
		    s->next_feedback_ms > st_monotonic_ms() + FAST_FEEDBACK_MS)
			s->next_feedback_ms = st_monotonic_ms() + FAST_FEEDBACK_MS;
		if (st_monotonic_ms() >= s->next_feedback_ms && feedback_due(s, error_r) < 0)
			return -1;
		publish(s);
		long long now = st_monotonic_ms();
		if (now >= s->next_cstate_ms && cstate_changed(s))
			return 0;
		if (sequences_step(s, error_r) < 0 || heartbeat_step(s, error_r) < 0)
			return -1;
		bool behind = pga_behind(s->apply);
		if (!dry && !behind)
			continue;

		long timeout = s->next_feedback_ms - st_monotonic_ms();
		if (s->next_cstate_ms - st_monotonic_ms() < timeout)
			timeout = s->next_cstate_ms - st_monotonic_ms();
		if (s->next_heartbeat_ms - st_monotonic_ms() < timeout)
			timeout = s->next_heartbeat_ms - st_monotonic_ms();
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
			pgr_drain_wake(r);
		if (pfd[3].revents != 0 && side_answered(s, &s->src_side, error_r) < 0)
			return -1;
		if (pfd[4].revents != 0 && side_answered(s, &s->tgt_side, error_r) < 0)
			return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ one session */

static int
slot_exists(PGconn *src, const char *slot, bool *exists_r, bool *lost_r, char **error_r)
{
	char *lit = pgc_literal(slot), *value = NULL;
	char *sql = xasprintf("SELECT coalesce(wal_status, '') FROM pg_catalog.pg_replication_slots "
			      "WHERE slot_name = %s AND plugin = 'pgoutput'", lit);
	int rc = pgc_value(src, sql, &value, error_r);

	*exists_r = value != NULL;
	*lost_r = value != NULL && strcmp(value, "lost") == 0;
	free(value);
	free(sql);
	free(lit);
	return rc;
}


/*
 * Replicate SOURCE -> this node until stopped or an error: 0 (stopped, or
 * the cluster state moved on), 3 (a statement of
 * many rows failed: start again at once, one statement per row up to
 * r->rowwise_until) or -1 with *error_r.
 */
int
pgr_replicate(struct pgrepl *r, const struct st_conf *conf, const char *source, const char *target,
	  uint64_t epoch, char **error_r)
{
	const struct st_node *node = st_conf_node(conf, target);
	char slot[64], origin[96], *marker = NULL, *err = NULL, *ddl_key = NULL;
	struct stream s = { .r = r, .conf = conf, .source = source, .target = target,
			    .origin = origin, .epoch = epoch,
			    .src_side = { .node = source }, .tgt_side = { .node = target } };
	PGconn *tgt = NULL, *src = NULL;
	int rc = -1;

	pgr_name_part(slot, sizeof(slot), "standin_", target);
	pgr_name_part(origin, sizeof(origin), "standin_from_", source);
	marker = xasprintf("%s/pgrepl-%s.sync", node->state_dir, source);
	pthread_mutex_lock(&r->lock);
	if (strcmp(r->st.source, source) != 0) {
		/* Positions of another server: not comparable, and an error
		 * pending on the old source's position is moot. */
		r->st.received = r->st.applied = r->st.flushed = r->st.server_end = 0;
		r->st.confirmed = 0;
		if (r->st.error_until != 0) {
			r->st.error_until = 0;
			free(r->st.error);
			r->st.error = NULL;
			r->st.error_seq++;
		}
	}
	snprintf(r->st.source, sizeof(r->st.source), "%s", source);
	snprintf(r->st.target, sizeof(r->st.target), "%s", target);
	snprintf(r->st.slot, sizeof(r->st.slot), "%s", slot);
	snprintf(r->st.origin, sizeof(r->st.origin), "%s", origin);
	pthread_mutex_unlock(&r->lock);

	pgr_set_state(r, "connecting");
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
		pgr_name_part(stale_slot, sizeof(stale_slot), "standin_", source);
		pgr_name_part(peer_origin, sizeof(peer_origin), "standin_from_", target);
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
		pgr_set_state(r, "initial sync");
		if (pgs_initial_sync(&req, &r->st.sync, &start, &err) < 0)
			goto fail;
		r->resync = false;
		st_notice("initial sync done source=%s target=%s start=" PGO_LSN_FMT, source, target,
			  PGO_LSN_ARGS(start));
	}

	if (!need_sync) {
		/* After a switchover (reverse), this node still holds the slots
		 * the other nodes pulled with when it was the master: here they
		 * only keep WAL.  (The initial sync drops its source's too.) */
		if (pgs_free_standin_slots(tgt, &err) < 0)
			goto fail;
	}

	src = pgc_connect(conf, source, PGC_NORMAL, "standin-pgrepl check", &err);
	if (src == NULL)
		goto fail;
	bool exists, lost;
	if (slot_exists(src, slot, &exists, &lost, &err) < 0)
		goto fail;
	if (lost) {
		char *who = pgc_describe(conf, source);
		err = xasprintf("replication slot %s on the master %s is lost: the WAL it needed "
				"went past max_slot_wal_keep_size; start standin-pgrepl once with "
				"--resync to copy the database again", slot, who);
		free(who);
		goto fail;
	}
	if (!exists) {
		char *who = pgc_describe(conf, source);
		err = xasprintf("replication slot %s is missing on the master %s: the changes since "
				"the standby's position cannot be streamed; start standin-pgrepl "
				"once with --resync to copy the database again", slot, who);
		free(who);
		goto fail;
	}
	/* Where the master is: the lag in bytes while this session starts. */
	char *end_text = NULL;
	pgo_lsn master_end = 0;
	if (pgc_value(src, "SELECT pg_catalog.pg_current_wal_lsn()", &end_text, &err) < 0)
		goto fail;
	if (end_text != NULL && pgo_lsn_parse(end_text, &master_end) == 0) {
		s.server_end = master_end;
		pthread_mutex_lock(&r->lock);
		r->st.server_end = master_end;
		pthread_mutex_unlock(&r->lock);
	}
	free(end_text);
	if (pgs_ensure_publication(src, PUBLICATION, &err) < 0 ||
	    pgs_ensure_ddl_capture(src, &ddl_key, &err) < 0 ||
	    pgs_free_slot(src, slot, false, &err) < 0)
		goto fail;
	PQfinish(src);
	src = NULL;

	pgo_lsn ddl_done[DDL_MARKS_MAX];
	size_t n_ddl_done = pgr_ddl_done_read(node, source, need_sync ? UINT64_MAX : progress,
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
	pgr_set_state(r, "streaming");
	s.next_feedback_ms = st_monotonic_ms();
	s.next_heartbeat_ms = st_monotonic_ms();
	s.next_cstate_ms = st_monotonic_ms() + IDLE_CHECK_MS;
	s.next_sequences_ms = st_monotonic_ms();
	rc = stream_loop(&s, &err);
	if (rc < 0)
		goto fail;
	goto out;
fail:
	st_set_error(error_r, "%s -> %s: %s", source, target, err != NULL ? err : "unknown error");
	if (s.apply != NULL)
		publish(&s);
	if (s.apply != NULL && pga_batch_failed(s.apply)) {
		/* Everything received is past the failed statement's rows. */
		r->rowwise_until = s.received;
		snprintf(r->rowwise_source, sizeof(r->rowwise_source), "%s", source);
		rc = 3;
	}
out:
	free(err);
	free(marker);
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
