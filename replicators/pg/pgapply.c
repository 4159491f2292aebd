/*
 * pgapply.c: apply pgoutput changes to the standby (see pgapply.h).
 *
 * Everything sent to the target goes through send_*() and is recorded in a
 * queue of pending results, in order; pump() flushes libpq's output and
 * reads results as they come, checking each against its queue entry.  The
 * first failure is kept (with the table and key it concerns); the pipeline
 * aborts everything after it up to the next SYNC, and the group is rolled
 * back.
 *
 * A row statement that finds no row (or too many) is no error to
 * PostgreSQL, so each UPDATE, DELETE and batch is sent wrapped in a count
 * that raises one on the standby itself (count_wrap).  The abort then takes
 * the group's COMMIT with it, and the COMMITs of the groups sent after it
 * up to the next SYNC: a group is committed without waiting for any answer,
 * to its rows or to the group before (commit_group).
 */
#include "config.h"

#include "replicators/pg/pgapply.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <jansson.h>
#include <fcntl.h>
#include <unistd.h>

#include "lib/durable.h"
#include "lib/log.h"
#include "lib/pgconn.h"
#include "replicators/pg/pgsql.h"

/* What a pgq_count_wrap()ped statement that touched another number of rows
 * fails with: the cast of this text and the count to a number (SQLSTATE
 * 22P02, invalid_text_representation).  No function of our own: a
 * temporary one would be dropped in a transaction of its own when the
 * session ends, and that commit would carry the replication origin's
 * position of a group that failed (pg_replication_origin_xact_setup's
 * position stays set after an abort). */
/* The settings a DDL message carries (standin_ddl.c, carried_settings), then
 * check_function_bodies, which the standby turns off (as pg_restore does:
 * the master checked the bodies).  Set for the statement, restored after. */
static const char *const ddl_settings[] = {
	"search_path", "standard_conforming_strings", "backslash_quote", "DateStyle",
	"IntervalStyle", "TimeZone", "timezone_abbreviations", "default_tablespace",
	"default_table_access_method", "default_toast_compression", "xmloption",
	"transform_null_equals", "array_nulls", "check_function_bodies",
};
#define DDL_SETTINGS (sizeof(ddl_settings) / sizeof(ddl_settings[0]))

#define ROWS_SQLSTATE "22P02"

/* ------------------------------------------------------------ relations */

struct stmt {
	char op;			/* 'I', 'U', 'D' */
	char *mask;			/* 'U': which new columns are unchanged TOAST */
	uint32_t rows;			/* 0: one row; else a batch of this many */
	bool merge;			/* U, D as MERGE (see merge_ok) */
	char name[24];
	struct stmt *next;
};

/*
 * Rows of one relation, one operation and one column set, waiting to be
 * sent as one statement (see "batches" below).  Row I's values are
 * vals[I * nvals ...], offsets into data (-1: NULL); for UPDATE and DELETE
 * the key columns come first.
 */
struct batch {
	char op;
	char *mask;			/* 'U': as for prepared(); NULL otherwise */
	uint16_t nvals, nkeys;
	uint16_t *cols;			/* nvals column numbers */
	uint32_t *types;		/* nvals type OIDs (U, D) */
	uint32_t rows, cap;		/* cap: a power of two, the biggest statement */
	long *vals;
	struct st_buf data;
	uint32_t *slots;		/* U, D: key hash -> row + 1 (0: empty), 2 * cap */
	bool listed;			/* in pga.open */
};

/* ------------------------------------------------------------ pending */

enum pend_kind {
	PEND_COMMAND,			/* BEGIN, SET, TRUNCATE, DDL: must succeed */
	PEND_PREPARE,
	PEND_ROW,			/* a row statement; U/D must affect one row */
	PEND_BATCH,			/* a batch: must affect exactly .rows rows */
	PEND_COMMIT,			/* must end in COMMIT, not ROLLBACK */
	PEND_MERGE_CHECK,		/* merge_check()'s answer for .relid */
	PEND_RESOLVE,			/* master-wins: resolve_first()'s count */
	PEND_SYNC,
};

/* What a group brings to the stats once the standby says COMMIT. */
struct group_figures {
	unsigned txns;
	uint64_t rows, ddl;
	pgo_lsn end_lsn;
	int64_t commit_time;
};

struct pending {
	enum pend_kind kind;
	char op;
	bool got_result;
	uint32_t rows;			/* PEND_BATCH */
	uint32_t relid;			/* PEND_MERGE_CHECK */
	unsigned check;			/* PEND_MERGE_CHECK */
	struct group_figures group;	/* PEND_COMMIT */
	char *what;			/* for messages: "INSERT into public.t key (id)=(5)" */
	char *ddl;			/* a DDL statement: its text, for ddl_failed() */
	pgo_lsn ddl_lsn;		/* ... and its message's LSN */
};

struct pga {
	PGconn *conn;
	char *origin;
	unsigned group_max_txns;
	long group_max_ms;
	char *ddl_prefix;
	char *ddl_key;
	char *ddl_dir;
	pgo_lsn *ddl_done;
	size_t n_ddl_done;
	char *ddl_saved[DDL_SETTINGS];	/* this session's values of ddl_settings */
	volatile int *stop;

	struct pga_rel *rels;
	size_t rel_cap, rel_count;
	unsigned stmt_seq;
	unsigned merge_checks;		/* merge_check()s sent */
	/* Relations with a batch, in the order they got one. */
	uint32_t *open;
	size_t open_count, open_cap;
	pgo_lsn rowwise_until;		/* no batches until applied past this */
	bool batch_failed;		/* a batch is the first failure */
	bool master_wins;		/* resolve conflicts row by row (resolve_first) */
	bool resolve_restart;		/* a conflict to resolve row by row */
	uint64_t resolved_pending;	/* resolved in groups whose COMMIT is due */

	struct pending *q;
	size_t q_head, q_tail, q_cap;
	char *error;			/* first failure since the last SYNC */

	bool in_source_txn;
	bool group_open;
	/* Groups whose COMMIT is sent and not yet answered (see
	 * pga_commit_if_due). */
	unsigned commits_due;
	unsigned syncs_due;		/* SYNCs sent and not yet answered */
	bool sync_wanted;		/* pga_sync: after the open group's COMMIT */
	unsigned group_txns;
	long long group_start_ms;
	pgo_lsn group_end_lsn;
	int64_t group_commit_time;
	uint64_t group_rows, group_ddl;

	const char **params;
	size_t params_cap;
	unsigned unpumped;		/* queries sent since the last pump() */

	struct pga_stats stats;
};

static int pump(struct pga *p, bool until_empty, char **error_r);
static void ddl_failed(struct pga *p, const struct pending *pd, const char *why);

/* ------------------------------------------------------------ relation cache */

static void
stmt_free_all(struct stmt *s)
{
	while (s != NULL) {
		struct stmt *next = s->next;
		free(s->mask);
		free(s);
		s = next;
	}
}

static void
rel_clear(struct pga_rel *r)
{
	free(r->nspname);
	free(r->relname);
	free(r->qname);
	free(r->display);
	for (uint16_t i = 0; i < r->ncols; i++) {
		free(r->cols[i].name);
		free(r->cols[i].qname);
	}
	free(r->cols);
	stmt_free_all(r->stmts);
	if (r->batch != NULL) {
		free(r->batch->mask);
		free(r->batch->cols);
		free(r->batch->types);
		free(r->batch->vals);
		free(r->batch->slots);
		st_buf_free(&r->batch->data);
		free(r->batch);
	}
	memset(r, 0, sizeof(*r));
}

static struct pga_rel *
rel_slot(struct pga *p, uint32_t relid, bool insert)
{
	if (insert && (p->rel_count + 1) * 2 > p->rel_cap) {
		size_t old_cap = p->rel_cap;
		struct pga_rel *old = p->rels;
		p->rel_cap = old_cap == 0 ? 64 : old_cap * 2;
		p->rels = xcalloc(p->rel_cap, sizeof(*p->rels));
		p->rel_count = 0;
		for (size_t i = 0; i < old_cap; i++) {
			if (old[i].relid != 0) {
				*rel_slot(p, old[i].relid, true) = old[i];
				p->rel_count++;
			}
		}
		free(old);
	}
	if (p->rel_cap == 0)
		return NULL;
	for (size_t i = (relid * 2654435761u) & (p->rel_cap - 1);; i = (i + 1) & (p->rel_cap - 1)) {
		if (p->rels[i].relid == relid)
			return &p->rels[i];
		if (p->rels[i].relid == 0)
			return insert ? &p->rels[i] : NULL;
	}
}

static void
rel_update(struct pga *p, const struct pgo_msg *m)
{
	struct pga_rel *r = rel_slot(p, m->u.relation.relid, true);

	if (r->relid == 0)
		p->rel_count++;
	else
		rel_clear(r);
	r->relid = m->u.relation.relid;
	r->nspname = xstrdup(m->u.relation.nspname[0] ? m->u.relation.nspname : "pg_catalog");
	r->relname = xstrdup(m->u.relation.relname);
	char *qn = pgc_ident(r->nspname), *qr = pgc_ident(r->relname);
	r->qname = xasprintf("%s.%s", qn, qr);
	r->display = xasprintf("%s.%s", r->nspname, r->relname);
	free(qn);
	free(qr);
	r->identity = m->u.relation.identity;
	r->ncols = m->u.relation.ncols;
	r->cols = xcalloc(r->ncols > 0 ? r->ncols : 1, sizeof(*r->cols));
	for (uint16_t i = 0; i < r->ncols; i++) {
		r->cols[i].name = xstrdup(m->u.relation.cols[i].name);
		r->cols[i].qname = pgc_ident(r->cols[i].name);
		r->cols[i].key = m->u.relation.cols[i].key;
		r->cols[i].type_oid = m->u.relation.cols[i].type_oid;
		r->nkeys += r->cols[i].key;
	}
}

/* ------------------------------------------------------------ queue */

static struct pending *
enqueue(struct pga *p, enum pend_kind kind, char op, char *what)
{
	if (p->q_tail == p->q_cap) {
		if (p->q_head > 0) {
			memmove(p->q, p->q + p->q_head, (p->q_tail - p->q_head) * sizeof(*p->q));
			p->q_tail -= p->q_head;
			p->q_head = 0;
		}
		if (p->q_tail == p->q_cap) {
			p->q_cap = p->q_cap == 0 ? 1024 : p->q_cap * 2;
			p->q = xrealloc(p->q, p->q_cap * sizeof(*p->q));
		}
	}
	struct pending *pd = &p->q[p->q_tail++];
	pd->kind = kind;
	pd->op = op;
	pd->got_result = false;
	pd->what = what;
	pd->ddl = NULL;
	pd->ddl_lsn = 0;
	return pd;
}

static void
dequeue(struct pga *p)
{
	free(p->q[p->q_head].what);
	free(p->q[p->q_head].ddl);
	p->q_head++;
	if (p->q_head == p->q_tail)
		p->q_head = p->q_tail = 0;
}

static size_t
queued(const struct pga *p)
{
	return p->q_tail - p->q_head;
}

static void ST_PRINTF(2, 3)
fail(struct pga *p, const char *fmt, ...)
{
	va_list ap;

	if (p->error != NULL)
		return;
	va_start(ap, fmt);
	p->error = xvasprintf(fmt, ap);
	va_end(ap);
}

/* The rows a pgq_count_wrap()ped statement touched, as its answer or as its
 * failure says, in *N_R; false for any other answer. */
static bool
counted(const PGresult *res, unsigned long long *n_r)
{
	const char *text, *state, *mark;
	char *end;

	if (PQresultStatus(res) == PGRES_COMMAND_OK) {
		/* A MERGE: its command tag counts the rows it changed. */
		if (strncmp(PQcmdStatus((PGresult *)res), "MERGE ", 6) != 0)
			return false;
		text = PQcmdTuples((PGresult *)res);
	} else if (PQresultStatus(res) == PGRES_TUPLES_OK) {
		if (PQntuples(res) != 1 || PQnfields(res) != 1 || PQgetisnull(res, 0, 0))
			return false;
		text = PQgetvalue(res, 0, 0);
	} else {
		state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		text = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		if (state == NULL || strcmp(state, ROWS_SQLSTATE) != 0 || text == NULL ||
		    (mark = strstr(text, ROWS_MARK)) == NULL)
			return false;
		text = mark + strlen(ROWS_MARK);
	}
	if (*text < '0' || *text > '9')
		return false;
	errno = 0;
	*n_r = strtoull(text, &end, 10);
	return errno == 0 && end != text;
}

/*
 * [pg] conflicts = master-wins.  A conflict (a duplicate key, a row to
 * change or delete that is not there) fails the group as with stop; then
 * the session starts again at once, one statement per row up to where the
 * stream was (opts.rowwise_until), and there each row goes in a form that
 * does not conflict (resolve_first): an INSERT after a DELETE of the
 * standby's row with its key; an UPDATE as a DELETE of the old row and an
 * INSERT of the new one (after a DELETE by the new key, which an UPDATE of
 * the key may find taken), when the master sent every column (an unchanged
 * TOAST value is not sent: such an UPDATE stays one, and a missing row
 * still stops the stream); a DELETE that may find nothing.  The DELETE's
 * count tells whether there was a conflict; each one is logged (table, key,
 * what was done) and counted once its group commits (conflicts_resolved).
 * What no such form fixes (a missing table or column, a duplicate on
 * another unique index) stops the stream as with stop.
 */
static void
conflict_seen(struct pga *p)
{
	/* Not while row by row already: that conflict has no resolution. */
	if (p->master_wins && p->stats.applied_lsn >= p->rowwise_until)
		p->resolve_restart = true;
}

static void
resolve_answered(struct pga *p, const struct pending *pd, const PGresult *res)
{
	unsigned long long n = 0;
	const char *done = NULL;

	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
		n = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
	if (pd->op == 'I' && n > 0)
		done = "the standby had a row with this key: the master's replaces it";
	else if (pd->op == 'U' && n == 0)
		done = "the standby had no such row: the master's new row is inserted";
	else if (pd->op == 'D' && n == 0)
		done = "the standby had no such row: nothing to delete";
	if (done == NULL)
		return;
	p->resolved_pending++;
	st_warn("conflict resolved (conflicts = master-wins) change=%s resolution=%s",
		st_q(pd->what), st_q(done));
}

/* Check one result against the head of the queue. */
static void
check_result(struct pga *p, struct pending *pd, PGresult *res)
{
	ExecStatusType st = PQresultStatus(res);

	pd->got_result = true;
	if (pd->kind == PEND_COMMIT)
		p->commits_due--;
	if (st == PGRES_PIPELINE_ABORTED)
		return;		/* an earlier statement failed; that one is reported */
	if (pd->kind == PEND_BATCH && p->error == NULL) {
		unsigned long long n;
		bool have = counted(res, &n);
		if (have && n == pd->rows)
			return;
		/* Which row?  The session starts again row by row to say. */
		char *why = have ? xasprintf("it affected %llu rows, not %" PRIu32, n, pd->rows)
			  : st != PGRES_TUPLES_OK ? pgc_result_error(res)
			  : xasprintf("it answered %d rows", PQntuples(res));
		p->batch_failed = true;
		fail(p, "%s failed on the standby: %s", pd->what, why);
		free(why);
		return;
	}
	if (pd->kind == PEND_ROW && (pd->op == 'U' || pd->op == 'D')) {
		unsigned long long n;
		if (counted(res, &n)) {
			if (n != 1) {
				fail(p, "conflict: %s found %llu rows on the standby (expected 1)",
				     pd->what, n);
				conflict_seen(p);
			}
			return;
		}
		if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
			fail(p, "%s: unexpected answer from the standby (%s, %d rows)", pd->what,
			     PQresStatus(st), PQntuples(res));
			return;
		}
		/* Any other failure: as for every statement, below. */
	}
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		char *why = pgc_result_error(res);
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *kind = "";
		if (state != NULL && strcmp(state, "23505") == 0) {
			kind = "conflict: duplicate key: ";
			conflict_seen(p);
		} else if (state != NULL && (strcmp(state, "42P01") == 0 || strcmp(state, "42703") == 0))
			kind = "conflict: missing object on the standby: ";
		if (pd->ddl != NULL && p->error == NULL)
			ddl_failed(p, pd, why);
		else
			fail(p, "%s%s failed on the standby: %s", kind, pd->what ? pd->what : "statement", why);
		free(why);
		return;
	}
	switch (pd->kind) {
	case PEND_COMMIT:
		if (strcmp(PQcmdStatus(res), "COMMIT") != 0) {
			fail(p, "COMMIT on the standby answered %s", PQcmdStatus(res));
		} else {
			p->stats.txns += pd->group.txns;
			p->stats.rows += pd->group.rows;
			p->stats.ddl += pd->group.ddl;
			p->stats.groups++;
			p->stats.applied_lsn = pd->group.end_lsn;
			p->stats.conflicts_resolved += p->resolved_pending;
			p->resolved_pending = 0;
			p->stats.applied_commit_time = pd->group.commit_time;
		}
		break;
	case PEND_RESOLVE:
		resolve_answered(p, pd, res);
		break;
	case PEND_MERGE_CHECK: {
		struct pga_rel *r = rel_slot(p, pd->relid, false);
		if (r != NULL && r->merge_check == pd->check)
			r->merge_ok = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) &&
				      strcmp(PQgetvalue(res, 0, 0), "t") == 0 ? 1 : -1;
		break;
	}
	default:
		break;
	}
}

/* Read every result that is ready, without blocking. */
static int
drain(struct pga *p, char **error_r)
{
	int nulls = 0;

	if (!PQconsumeInput(p->conn)) {
		st_set_error(error_r, "lost the standby connection: %s", pgc_errmsg(p->conn));
		return -1;
	}
	while (queued(p) > 0 && !PQisBusy(p->conn)) {
		PGresult *res = PQgetResult(p->conn);
		struct pending *pd = &p->q[p->q_head];

		if (res == NULL) {
			if (pd->got_result) {
				dequeue(p);
				nulls = 0;
				continue;
			}
			if (++nulls > 1)
				break;
			continue;
		}
		nulls = 0;
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
			if (pd->kind != PEND_SYNC) {
				PQclear(res);
				st_set_error(error_r, "standby pipeline out of step (SYNC for %s)",
					     pd->what ? pd->what : "a statement");
				return -1;
			}
			p->syncs_due--;
			dequeue(p);
		} else {
			if (pd->kind == PEND_SYNC) {
				PQclear(res);
				st_set_error(error_r, "standby pipeline out of step (result for a SYNC)");
				return -1;
			}
			check_result(p, pd, res);
		}
		PQclear(res);
	}
	if (PQstatus(p->conn) == CONNECTION_BAD) {
		st_set_error(error_r, "lost the standby connection: %s", pgc_errmsg(p->conn));
		return -1;
	}
	return 0;
}

/*
 * Wait until the standby's socket is ready.  No time limit: a long statement
 * (an index build, a lock) is legitimate, and a dead peer is found by TCP
 * keepalives; but a stop request ends the wait within a second.
 */
static int
wait_socket(struct pga *p, bool want_write, char **error_r)
{
	struct pollfd pfd = { .fd = PQsocket(p->conn), .events = POLLIN };

	if (want_write)
		pfd.events |= POLLOUT;
	for (;;) {
		int n = poll(&pfd, 1, 1000);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR) {
			st_set_error(error_r, "poll: %s", strerror(errno));
			return -1;
		}
		if (p->stop != NULL && *p->stop) {
			st_set_error(error_r, "stopped while waiting for the standby");
			return -1;
		}
	}
}

/*
 * Send what libpq holds, reading results meanwhile (so neither side waits
 * on a full socket); with UNTIL_EMPTY, also wait for every pending result.
 * Without it, still wait while more than MAX_IN_FLIGHT results are due: a
 * huge source transaction must not queue without bound in this process.
 */
#define MAX_IN_FLIGHT 20000

static int
pump(struct pga *p, bool until_empty, char **error_r)
{
	size_t max_queued = until_empty ? 0 : MAX_IN_FLIGHT;

	for (;;) {
		int f = PQflush(p->conn);
		if (f < 0) {
			st_set_error(error_r, "cannot send to the standby: %s", pgc_errmsg(p->conn));
			return -1;
		}
		if (drain(p, error_r) < 0)
			return -1;
		if (f == 0 && queued(p) <= max_queued)
			return 0;
		if (wait_socket(p, f == 1, error_r) < 0)
			return -1;
	}
}

/*
 * After a send.  libpq queues pipelined queries in its output buffer (and
 * sends by itself once 8 kB are queued); every PUMP_EVERY queries we also
 * flush and read the results that came back, so neither side's buffers grow
 * without bound, at one pair of system calls per batch, not per row.
 */
#define PUMP_EVERY 64

static int
after_send(struct pga *p, int ok, char **error_r)
{
	if (!ok) {
		st_set_error(error_r, "cannot queue a statement for the standby: %s",
			     pgc_errmsg(p->conn));
		return -1;
	}
	if (++p->unpumped < PUMP_EVERY)
		return 0;
	p->unpumped = 0;
	return pump(p, false, error_r);
}

static int
send_command(struct pga *p, const char *sql, char *what, char **error_r)
{
	enqueue(p, PEND_COMMAND, 0, what);
	return after_send(p, PQsendQueryParams(p->conn, sql, 0, NULL, NULL, NULL, NULL, 0), error_r);
}

static int
send_sync(struct pga *p, char **error_r)
{
	enqueue(p, PEND_SYNC, 0, NULL);
	p->syncs_due++;
	p->sync_wanted = false;
	return after_send(p, PQpipelineSync(p->conn), error_r);
}

/* The first failure since the last one taken, if any, into *ERROR_R. */
static int
take_error(struct pga *p, char **error_r)
{
	if (p->error == NULL)
		return 0;
	st_set_error(error_r, "%s", p->error);
	free(p->error);
	p->error = NULL;
	return -1;
}

/* SYNC and wait for everything; then the first error, if any. */
static int
sync_and_wait(struct pga *p, char **error_r)
{
	if (send_sync(p, error_r) < 0 || pump(p, true, error_r) < 0)
		return -1;
	return take_error(p, error_r);
}

/* ------------------------------------------------------------ rows */

static const char **
params(struct pga *p, size_t n)
{
	if (n > p->params_cap) {
		p->params_cap = n;
		p->params = xrealloc(p->params, n * sizeof(*p->params));
	}
	return p->params;
}

static const char *
val(const struct pgo_value *v)
{
	return v->kind == PGO_VAL_NULL ? NULL : v->data;
}

/*
 * MERGE.  pgq_count_wrap() costs the standby a CTE and a result row per
 * statement, about a fifth of what a group of pgbench's transactions costs it
 * (BENCHMARKS.md).  Where the standby's table has a unique index on the
 * replica identity's columns (or on some of them), UPDATE and DELETE go as
 *
 *   MERGE INTO ONLY t AS standin_t USING (VALUES ...) AS standin_v (c0, ...)
 *     ON standin_t.k = standin_v.c0 ...
 *     WHEN MATCHED THEN UPDATE SET c = standin_v.c1, ...    (or DELETE)
 *     WHEN NOT MATCHED AND (<fails>) IS NULL THEN INSERT DEFAULT VALUES
 *
 * (a row alone: USING (SELECT) ON standin_t.k = $n).  The unique index and
 * ONLY make a source row match at most one row; one that matches none
 * evaluates the NOT MATCHED condition, a cast of ROWS_MARK "0" and now() to
 * a number that fails (now(), stable, keeps the planner from folding it),
 * so the statement fails before its INSERT would, as a pgq_count_wrap()ped one
 * does.  So a MERGE that succeeds changed exactly its rows, which its command
 * tag says too.  The index is asked for when the Relation message comes
 * (merge_check); a plain table ('r'), no rules (MERGE refuses them), the
 * index unique, immediate (not DEFERRABLE: no transient duplicates), valid,
 * not partial, on no expression.  And no trigger that fires in this session
 * (ENABLE ALWAYS or REPLICA; session_replication_role = replica silences
 * the others): a row trigger could skip a row (return NULL) where the
 * count would have seen it, and PostgreSQL fires the statement triggers of
 * every action a MERGE names, INSERT included.
 */
static const char merge_check_sql[] =
	"SELECT c.relkind OPERATOR(pg_catalog.=) 'r' AND NOT c.relhasrules AND NOT EXISTS ("
	"SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid "
	"AND t.tgenabled OPERATOR(pg_catalog.=) ANY ('{A,R}'::pg_catalog.\"char\"[])) AND EXISTS ("
	"SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid "
	"AND i.indisunique AND i.indimmediate AND i.indisvalid AND i.indpred IS NULL "
	"AND i.indexprs IS NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest("
	"i.indkey[0:i.indnkeyatts OPERATOR(pg_catalog.-) 1]) AS k (attnum) "
	"JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid "
	"AND a.attnum OPERATOR(pg_catalog.=) k.attnum "
	"WHERE a.attname::pg_catalog.text OPERATOR(pg_catalog.<>) ALL ($2::pg_catalog.text[]))) "
	"FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)";

/* Ask the standby whether R's UPDATEs and DELETEs may go as MERGE. */
static int
merge_check(struct pga *p, struct pga_rel *r, char **error_r)
{
	r->merge_ok = -1;
	if (r->identity == PGO_IDENT_FULL || r->nkeys == 0)
		return 0;
	r->merge_ok = 0;
	r->merge_check = ++p->merge_checks;

	struct st_buf keys;
	st_buf_init(&keys);
	st_buf_puts(&keys, "{");
	for (uint16_t i = 0; i < r->ncols; i++) {
		if (!r->cols[i].key)
			continue;
		st_buf_puts(&keys, keys.len > 1 ? ",\"" : "\"");
		for (const char *c = r->cols[i].name; *c != '\0'; c++) {
			if (*c == '"' || *c == '\\')
				st_buf_puts(&keys, "\\");
			st_buf_append(&keys, c, 1);
		}
		st_buf_puts(&keys, "\"");
	}
	st_buf_puts(&keys, "}");
	const char *pv[] = { r->qname, keys.data };
	struct pending *pd = enqueue(p, PEND_MERGE_CHECK, 0,
				     xasprintf("the check of %s's unique index", r->display));
	pd->relid = r->relid;
	pd->check = r->merge_check;
	int ok = PQsendQueryParams(p->conn, merge_check_sql, 2, NULL, pv, NULL, NULL, 0);
	st_buf_free(&keys);
	return after_send(p, ok, error_r);
}

static bool
same_mask(const char *a, const char *b)
{
	return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

static const char *
prepared(struct pga *p, struct pga_rel *r, char op, const char *mask, bool full,
	 const struct pgo_tuple *old, char **error_r)
{
	int nset = 0;
	for (uint16_t i = 0; op == 'U' && i < r->ncols; i++)
		nset += mask[i] == '.';
	/* An UPDATE that sets nothing stays the SELECT probe below. */
	bool merge = (op == 'D' || (op == 'U' && nset > 0)) && !full && r->nkeys > 0 &&
		     r->merge_ok == 1;
	for (struct stmt *s = r->stmts; s != NULL; s = s->next)
		if (s->op == op && s->rows == 0 && s->merge == merge && same_mask(s->mask, mask))
			return s->name;

	struct st_buf sql;
	st_buf_init(&sql);
	pgq_row_statement(&sql, r, op, mask, full, merge, old);

	struct stmt *s = xcalloc(1, sizeof(*s));
	s->op = op;
	s->merge = merge;
	s->mask = mask != NULL ? xstrdup(mask) : NULL;
	snprintf(s->name, sizeof(s->name), "standin_%u", ++p->stmt_seq);
	s->next = r->stmts;
	r->stmts = s;
	enqueue(p, PEND_PREPARE, 0, xasprintf("PREPARE %s", sql.data));
	int ok = PQsendPrepare(p->conn, s->name, sql.data, 0, NULL);
	st_buf_free(&sql);
	if (after_send(p, ok, error_r) < 0)
		return NULL;
	return s->name;
}

/* The values of pgq_where()'s parameters, from OLD, into PV from *N_R on. */
static int
where_params(const struct pga_rel *r, const struct pgo_tuple *old, bool full, const char **pv,
	     int *n_r, const char *what, char **error_r)
{
	for (uint16_t i = 0; i < r->ncols; i++) {
		if (full ? old->cols[i].kind == PGO_VAL_UNCHANGED : !r->cols[i].key)
			continue;
		if (old->cols[i].kind == PGO_VAL_UNCHANGED) {
			st_set_error(error_r, "%s on %s: key column %s is an unchanged TOAST value",
				     what, r->display, r->cols[i].name);
			return -1;
		}
		pv[(*n_r)++] = val(&old->cols[i]);
	}
	return 0;
}

/*
 * master-wins, row by row (conflict_seen): before a row's own statement,
 * the DELETE of the standby's row that OLD finds (by key, or FULL's old
 * row), counted (resolve_answered).  OP and WHAT say what the row is.
 */
static int
resolve_first(struct pga *p, struct pga_rel *r, char op, const struct pgo_tuple *old, bool full,
	      char *what, char **error_r)
{
	char *key = pgq_full_mask(r, old, full);
	const char *stmt = prepared(p, r, 'R', key, full, old, error_r);
	const char **pv = params(p, r->ncols);
	int n = 0;

	free(key);
	if (stmt == NULL ||
	    where_params(r, old, full, pv, &n, op == 'I' ? "Insert" : op == 'U' ? "Update" : "Delete",
			 error_r) < 0) {
		free(what);
		return -1;
	}
	enqueue(p, PEND_RESOLVE, op, what);
	return after_send(p, PQsendQueryPrepared(p->conn, stmt, n, p->params, NULL, NULL, 0),
			  error_r);
}

static bool batching(const struct pga *p);

/* Row by row under master-wins: the forms of resolve_first. */
static bool
resolving(const struct pga *p)
{
	return p->master_wins && !batching(p);
}

static int
send_row(struct pga *p, const char *stmt, int n, char op, char *what, char **error_r)
{
	enqueue(p, PEND_ROW, op, what);
	p->group_rows++;
	return after_send(p, PQsendQueryPrepared(p->conn, stmt, n, p->params, NULL, NULL, 0),
			  error_r);
}

static struct pga_rel *
known_rel(struct pga *p, uint32_t relid, const char *what, char **error_r)
{
	struct pga_rel *r = rel_slot(p, relid, false);

	if (r == NULL)
		st_set_error(error_r, "%s for relation OID %" PRIu32 " before its Relation message",
			     what, relid);
	return r;
}

static int
check_width(const struct pga_rel *r, const struct pgo_tuple *t, const char *what, char **error_r)
{
	if (t->ncols != r->ncols) {
		st_set_error(error_r, "%s on %s has %u columns, its Relation message %u", what,
			     r->display, t->ncols, r->ncols);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ batches */

/*
 * A PostgreSQL backend spends most of a one-row statement on the statement,
 * not on the row (bench/pg/statement-batching.sh), so rows of one relation,
 * one operation and one column set are gathered and sent as one statement:
 *
 *   INSERT INTO t (c, ...) OVERRIDING SYSTEM VALUE VALUES ($1, ...), (...)
 *   UPDATE t AS standin_t SET c = standin_v.c1, ...
 *     FROM (VALUES ($1, ...), (...)) AS standin_v (c0, c1, ...)
 *     WHERE standin_t.k = standin_v.c0 ...
 *   DELETE FROM t AS standin_t USING (VALUES ...) AS standin_v (c0, ...) WHERE ...
 *
 * The result is that of the stream's order because:
 * - a relation has at most one batch.  A row of another operation or column
 *   set, a row that cannot be batched (a key change, REPLICA IDENTITY FULL,
 *   a type that is not built in), the relation's Relation message, TRUNCATE,
 *   DDL and the group's COMMIT send it first.  Batches of different
 *   relations go in any order: the session runs with session_replication_role
 *   = replica, so no foreign key or ordinary trigger sees the order of rows
 *   of different tables within the group's transaction.
 * - in an UPDATE or DELETE batch each key appears once.  A later UPDATE of
 *   a key with the same column set replaces the earlier one's values (the
 *   row ends as the later one left it, as it would have); any other repeat
 *   sends the batch first.
 * - each batch must affect exactly its number of rows.  If one fails, or
 *   does not, the group is rolled back and the session starts again row by
 *   row until it is past that point, so that the error names the row (or,
 *   when the batch's order was the trouble, as for two rows swapping a
 *   unique value, the rows simply go through).
 *
 * VALUES in FROM needs its types: the master's type OIDs from the Relation
 * message, used only for built-in types (the same OID on the standby).
 */
#define BATCH_ROWS 128
#define FIRST_NORMAL_OID 16384

static bool
batching(const struct pga *p)
{
	return p->stats.applied_lsn >= p->rowwise_until;
}

static void
batch_clear(struct batch *b)
{
	b->rows = 0;
	st_buf_reset(&b->data);
	if (b->slots != NULL)
		memset(b->slots, 0, 2 * (size_t)b->cap * sizeof(*b->slots));
}

static void
batch_discard_all(struct pga *p)
{
	for (size_t i = 0; i < p->open_count; i++) {
		struct pga_rel *r = rel_slot(p, p->open[i], false);
		if (r != NULL && r->batch != NULL) {
			batch_clear(r->batch);
			r->batch->listed = false;
		}
	}
	p->open_count = 0;
}

static bool
batch_same_shape(const struct batch *b, char op, const char *mask)
{
	return b->op == op && same_mask(b->mask, mask);
}

/* The batch's statement for N rows, prepared once per session. */
static const char *
batch_prepared(struct pga *p, struct pga_rel *r, const struct batch *b, uint32_t n, char **error_r)
{
	bool merge = b->op != 'I' && r->merge_ok == 1;
	for (struct stmt *s = r->stmts; s != NULL; s = s->next)
		if (s->rows == n && s->merge == merge && batch_same_shape(b, s->op, s->mask))
			return s->name;

	struct st_buf sql;
	st_buf_init(&sql);
	int k = pgq_batch_statement(&sql, r, b->op, merge, b->nkeys, b->nvals, b->cols, n);
	/* VALUES in FROM needs its types: the master's built-in ones. */
	Oid *types = NULL;
	if (b->op != 'I') {
		types = xcalloc((size_t)n * b->nvals, sizeof(*types));
		for (uint32_t i = 0; i < n; i++)
			for (uint16_t j = 0; j < b->nvals; j++)
				types[(size_t)i * b->nvals + j] = b->types[j];
	}

	struct stmt *s = xcalloc(1, sizeof(*s));
	s->op = b->op;
	s->merge = merge;
	s->mask = b->mask != NULL ? xstrdup(b->mask) : NULL;
	s->rows = n;
	snprintf(s->name, sizeof(s->name), "standin_%u", ++p->stmt_seq);
	s->next = r->stmts;
	r->stmts = s;
	enqueue(p, PEND_PREPARE, 0, xasprintf("PREPARE of a %s of %" PRIu32 " rows of %s",
					      b->op == 'I' ? "INSERT" : b->op == 'U' ? "UPDATE"
								  : "DELETE", n, r->display));
	int ok = PQsendPrepare(p->conn, s->name, sql.data, k, types);
	st_buf_free(&sql);
	free(types);
	if (after_send(p, ok, error_r) < 0)
		return NULL;
	return s->name;
}

static const char *
batch_val(const struct batch *b, uint32_t row, uint16_t j)
{
	long o = b->vals[(size_t)row * b->nvals + j];
	return o < 0 ? NULL : b->data.data + o;
}

/* One row of a batch, alone: the one-row statement and its message. */
static int
batch_send_one(struct pga *p, struct pga_rel *r, const struct batch *b, uint32_t row,
	       char **error_r)
{
	const char *stmt = prepared(p, r, b->op, b->mask, false, NULL, error_r);
	if (stmt == NULL)
		return -1;
	const char **pv = params(p, b->nvals);
	uint16_t n = 0;
	/* The one-row statements take the values set first, then the key. */
	for (uint16_t j = b->nkeys; j < b->nvals; j++)
		pv[n++] = batch_val(b, row, j);
	for (uint16_t j = 0; j < b->nkeys; j++)
		pv[n++] = batch_val(b, row, j);
	char *what;
	if (b->op == 'I') {
		what = xasprintf("INSERT into %s", r->display);
	} else {
		/* The key as a tuple, for the message apply_update_delete writes. */
		struct pgo_value *kv = xcalloc(r->ncols, sizeof(*kv));
		struct pgo_tuple key = { .ncols = r->ncols, .cols = kv };
		for (uint16_t i = 0; i < r->ncols; i++)
			kv[i].kind = PGO_VAL_UNCHANGED;
		for (uint16_t j = 0; j < b->nkeys; j++) {
			const char *v = batch_val(b, row, j);
			struct pgo_value *k = &kv[b->cols[j]];
			k->kind = v != NULL ? PGO_VAL_TEXT : PGO_VAL_NULL;
			k->data = v;
			k->len = v != NULL ? (uint32_t)strlen(v) : 0;
		}
		char *desc = pgq_describe_row(r, &key, true);
		what = xasprintf("%s of %s", b->op == 'U' ? "UPDATE" : "DELETE", desc);
		free(desc);
		free(kv);
	}
	enqueue(p, PEND_ROW, b->op, what);
	return after_send(p, PQsendQueryPrepared(p->conn, stmt, n, pv, NULL, NULL, 0), error_r);
}

/* Send R's batch: the biggest statements that fit, a last row alone. */
static int
batch_flush(struct pga *p, struct pga_rel *r, char **error_r)
{
	struct batch *b = r->batch;
	uint32_t done = 0, n;

	if (b == NULL || b->rows == 0)
		return 0;
	n = b->cap;
	while (done < b->rows) {
		while (n > b->rows - done)
			n >>= 1;
		if (n == 1) {
			if (batch_send_one(p, r, b, done, error_r) < 0)
				return -1;
		} else {
			const char *stmt = batch_prepared(p, r, b, n, error_r);
			if (stmt == NULL)
				return -1;
			const char **pv = params(p, (size_t)n * b->nvals);
			for (uint32_t i = 0; i < n; i++)
				for (uint16_t j = 0; j < b->nvals; j++)
					pv[(size_t)i * b->nvals + j] = batch_val(b, done + i, j);
			struct pending *pd = enqueue(p, PEND_BATCH, b->op,
						     xasprintf("%s of %" PRIu32 " rows of %s in one "
							       "statement", b->op == 'I' ? "INSERT"
							       : b->op == 'U' ? "UPDATE" : "DELETE",
							       n, r->display));
			pd->rows = n;
			p->stats.batches++;
			p->stats.batched_rows += n;
			if (after_send(p, PQsendQueryPrepared(p->conn, stmt, (int)(n * b->nvals), pv,
							      NULL, NULL, 0), error_r) < 0)
				return -1;
		}
		done += n;
	}
	batch_clear(b);
	return 0;
}

static int
batch_flush_relid(struct pga *p, uint32_t relid, char **error_r)
{
	struct pga_rel *r = rel_slot(p, relid, false);

	return r != NULL ? batch_flush(p, r, error_r) : 0;
}

static int
batch_flush_all(struct pga *p, char **error_r)
{
	for (size_t i = 0; i < p->open_count; i++) {
		struct pga_rel *r = rel_slot(p, p->open[i], false);
		if (r == NULL || r->batch == NULL)
			continue;
		r->batch->listed = false;
		if (batch_flush(p, r, error_r) < 0) {
			batch_discard_all(p);
			return -1;
		}
	}
	p->open_count = 0;
	return 0;
}

static uint64_t
key_hash(const struct batch *b, const struct pgo_value *const *v)
{
	uint64_t h = 1469598103934665603u;

	for (uint16_t j = 0; j < b->nkeys; j++) {
		const unsigned char *s = (const unsigned char *)(v[j]->data ? v[j]->data : "");
		for (uint32_t i = 0; i < v[j]->len; i++)
			h = (h ^ s[i]) * 1099511628211u;
		h = (h ^ (unsigned char)v[j]->kind) * 1099511628211u;
	}
	return h;
}

static bool
key_equal(const struct batch *b, uint32_t row, const struct pgo_value *const *v)
{
	for (uint16_t j = 0; j < b->nkeys; j++) {
		const char *have = batch_val(b, row, j);
		if ((have == NULL) != (v[j]->kind == PGO_VAL_NULL) ||
		    (have != NULL && (strlen(have) != v[j]->len || memcmp(have, v[j]->data,
									     v[j]->len) != 0)))
			return false;
	}
	return true;
}

/* (Re)shape R's batch for OP/MASK and these columns. */
static struct batch *
batch_shape(struct pga_rel *r, char op, const char *mask, const uint16_t *cols, uint16_t nvals,
	    uint16_t nkeys)
{
	struct batch *b = r->batch;

	if (b != NULL && batch_same_shape(b, op, mask))
		return b;
	if (b == NULL) {
		b = r->batch = xcalloc(1, sizeof(*b));
		st_buf_init(&b->data);
	}
	free(b->mask);
	free(b->cols);
	free(b->types);
	free(b->vals);
	free(b->slots);
	b->op = op;
	b->mask = mask != NULL ? xstrdup(mask) : NULL;
	b->nvals = nvals;
	b->nkeys = nkeys;
	b->cols = xcalloc(nvals, sizeof(*b->cols));
	memcpy(b->cols, cols, nvals * sizeof(*cols));
	b->types = xcalloc(nvals, sizeof(*b->types));
	for (uint16_t j = 0; j < nvals; j++)
		b->types[j] = r->cols[cols[j]].type_oid;
	b->cap = 1;
	while (b->cap * 2 <= BATCH_ROWS && (size_t)b->cap * 2 * nvals <= 65535)
		b->cap *= 2;
	b->vals = xcalloc((size_t)b->cap * nvals, sizeof(*b->vals));
	b->slots = nkeys > 0 ? xcalloc(2 * (size_t)b->cap, sizeof(*b->slots)) : NULL;
	batch_clear(b);
	return b;
}

/*
 * Put a row into R's batch: 1 when it went in, 0 when it cannot be batched
 * (R's batch is then sent: the caller sends the row alone, after it), -1 on
 * error.  OLD finds the row (UPDATE, DELETE), NEWT has the values (INSERT,
 * UPDATE); MASK as for prepared().
 */
static int
batch_add(struct pga *p, struct pga_rel *r, char op, const char *mask, const struct pgo_tuple *old,
	  const struct pgo_tuple *newt, char **error_r)
{
	uint16_t *cols = NULL, nvals = 0, nkeys = 0;
	const struct pgo_value **v = NULL;
	struct batch *b;
	uint32_t slot = 0, row = UINT32_MAX;
	int rc = 0;

	if (!batching(p) || r->ncols == 0 || (op != 'I' && r->nkeys == 0))
		goto alone;
	cols = xcalloc(r->ncols, sizeof(*cols));
	v = xcalloc(r->ncols, sizeof(*v));
	if (op != 'I') {
		for (uint16_t i = 0; i < r->ncols; i++)
			if (r->cols[i].key) {
				v[nvals] = &old->cols[i];
				cols[nvals++] = i;
			}
		nkeys = nvals;
	}
	for (uint16_t i = 0; i < r->ncols && op != 'D'; i++)
		if (op == 'I' || mask[i] == '.') {
			v[nvals] = &newt->cols[i];
			cols[nvals++] = i;
		}
	if (op == 'U' && nvals == nkeys)
		goto alone;		/* nothing to set: the one-row SELECT */
	for (uint16_t j = 0; j < nvals; j++) {
		uint32_t t = r->cols[cols[j]].type_oid;
		if (v[j]->kind == PGO_VAL_UNCHANGED || v[j]->kind == PGO_VAL_BINARY ||
		    (op != 'I' && (t == 0 || t >= FIRST_NORMAL_OID)))
			goto alone;
	}

	b = r->batch;
	if (b != NULL && b->rows > 0 && !batch_same_shape(b, op, mask) &&
	    batch_flush(p, r, error_r) < 0)
		goto fail;
	b = batch_shape(r, op, mask, cols, nvals, nkeys);
	if (b->cap < 2)
		goto alone;

	if (nkeys > 0) {
		uint32_t home = (uint32_t)(key_hash(b, v) & (2 * b->cap - 1));
		slot = home;
		while (b->slots[slot] != 0) {
			uint32_t other = b->slots[slot] - 1;
			if (key_equal(b, other, v)) {
				if (op != 'U') {
					/* Not a thing the master does without a row
					 * in between; the batch goes first.  The slots
					 * are empty then: the row takes its home slot,
					 * where a later lookup starts. */
					if (batch_flush(p, r, error_r) < 0)
						goto fail;
					slot = home;
					break;
				}
				row = other;	/* the later UPDATE's values win */
				break;
			}
			slot = (slot + 1) & (2 * b->cap - 1);
		}
	}
	bool new_row = row == UINT32_MAX;
	if (new_row)
		row = b->rows;
	for (uint16_t j = 0; j < nvals; j++) {
		long *o = &b->vals[(size_t)row * nvals + j];
		if (v[j]->kind == PGO_VAL_NULL) {
			*o = -1;
			continue;
		}
		*o = (long)b->data.len;
		st_buf_append(&b->data, v[j]->data, v[j]->len);
		st_buf_append(&b->data, "", 1);
	}
	if (new_row) {
		b->rows++;
		if (nkeys > 0)
			b->slots[slot] = b->rows;
	}
	p->group_rows++;
	if (!b->listed) {
		if (p->open_count == p->open_cap) {
			p->open_cap = p->open_cap ? 2 * p->open_cap : 16;
			p->open = xrealloc(p->open, p->open_cap * sizeof(*p->open));
		}
		p->open[p->open_count++] = r->relid;
		b->listed = true;
	}
	rc = b->rows == b->cap && batch_flush(p, r, error_r) < 0 ? -1 : 1;
	goto out;
alone:
	rc = batch_flush(p, r, error_r) < 0 ? -1 : 0;
	goto out;
fail:
	rc = -1;
out:
	free(cols);
	free(v);
	return rc;
}

/* One row T, whole, as an INSERT of its own; WHAT (taken) names it. */
static int
send_insert(struct pga *p, struct pga_rel *r, const struct pgo_tuple *t, char *what, char **error_r)
{
	const char *stmt = prepared(p, r, 'I', NULL, false, NULL, error_r);
	const char **pv = params(p, r->ncols);

	for (uint16_t i = 0; stmt != NULL && i < r->ncols; i++) {
		if (t->cols[i].kind == PGO_VAL_UNCHANGED) {
			st_set_error(error_r, "%s: column %s is an unchanged TOAST value", what,
				     r->cols[i].name);
			stmt = NULL;
			break;
		}
		pv[i] = val(&t->cols[i]);
	}
	if (stmt == NULL) {
		free(what);
		return -1;
	}
	return send_row(p, stmt, r->ncols, 'I', what, error_r);
}

static int
apply_insert(struct pga *p, const struct pgo_msg *m, char **error_r)
{
	struct pga_rel *r = known_rel(p, m->u.change.relid, "Insert", error_r);
	const struct pgo_tuple *t = &m->u.change.new_tuple;

	if (r == NULL || check_width(r, t, "Insert", error_r) < 0)
		return -1;
	int batched = batch_add(p, r, 'I', NULL, NULL, t, error_r);
	if (batched != 0)
		return batched < 0 ? -1 : 0;
	if (resolving(p) && r->nkeys > 0 && r->identity != PGO_IDENT_FULL) {
		char *row = pgq_describe_row(r, t, true);
		char *what = xasprintf("INSERT into %s", row);
		free(row);
		if (resolve_first(p, r, 'I', t, false, what, error_r) < 0)
			return -1;
	}
	/* A duplicate key error from the standby names the key itself. */
	return send_insert(p, r, t, xasprintf("INSERT into %s", r->display), error_r);
}

static int
apply_update_delete(struct pga *p, const struct pgo_msg *m, char **error_r)
{
	char op = m->kind == PGO_UPDATE ? 'U' : 'D';
	const char *opname = op == 'U' ? "Update" : "Delete";
	struct pga_rel *r = known_rel(p, m->u.change.relid, opname, error_r);
	if (r == NULL)
		return -1;
	const struct pgo_tuple *newt = &m->u.change.new_tuple;
	const struct pgo_tuple *old = m->u.change.old_kind ? &m->u.change.old_tuple : newt;
	bool full = m->u.change.old_kind == 'O';

	if (r->identity == PGO_IDENT_NOTHING) {
		st_set_error(error_r, "%s on %s, which has REPLICA IDENTITY NOTHING", opname,
			     r->display);
		return -1;
	}
	if (check_width(r, old, opname, error_r) < 0 ||
	    (op == 'U' && check_width(r, newt, opname, error_r) < 0))
		return -1;
	if (!full && m->u.change.old_kind != 'K' && r->identity == PGO_IDENT_FULL) {
		st_set_error(error_r, "%s on %s (REPLICA IDENTITY FULL) without the old row", opname,
			     r->display);
		return -1;
	}
	if (resolving(p)) {
		bool whole = op == 'U';
		for (uint16_t i = 0; whole && i < r->ncols; i++)
			whole = newt->cols[i].kind != PGO_VAL_UNCHANGED;
		if (op == 'D' || whole) {
			char *row = pgq_describe_row(r, old, !full);
			char *what = xasprintf("%s of %s%s", op == 'U' ? "UPDATE" : "DELETE", row,
					       op == 'U' ? " (as DELETE and INSERT)" : "");
			free(row);
			if (resolve_first(p, r, op, old, full, what, error_r) < 0)
				return -1;
			if (op == 'D')
				return 0;
			/* The master's new row, whole; an UPDATE that changed the
			 * key also replaces a standby row with the new key. */
			bool keyed = r->nkeys > 0 && r->identity != PGO_IDENT_FULL;
			if (keyed) {
				row = pgq_describe_row(r, newt, true);
				what = xasprintf("UPDATE to %s", row);
				free(row);
				if (resolve_first(p, r, 'I', newt, false, what, error_r) < 0)
					return -1;
			}
			row = pgq_describe_row(r, newt, keyed);
			what = xasprintf("INSERT into %s (an UPDATE, as DELETE and INSERT)", row);
			free(row);
			return send_insert(p, r, newt, what, error_r);
		}
	}

	/* The new row's columns set by the UPDATE ('.'): not the unchanged TOAST
	 * values ('u'), nor the key columns when no old key came ('k': the key
	 * did not change).  Setting a key column to its own value is work for
	 * nothing, and an identity column GENERATED ALWAYS cannot be set. */
	char *mask = NULL;
	int n = 0;
	if (op == 'U') {
		mask = xcalloc(r->ncols + 1, 1);
		for (uint16_t i = 0; i < r->ncols; i++)
			mask[i] = newt->cols[i].kind == PGO_VAL_UNCHANGED ? 'u'
				: m->u.change.old_kind == 0 && r->cols[i].key ? 'k' : '.';
	}
	/* FULL: the old row's unchanged columns are left out of the WHERE: part of the mask. */
	char *key = pgq_full_mask(r, old, full);
	char *fullmask = xasprintf("%s|%s", mask ? mask : "", key ? key : "");
	/* A key change or REPLICA IDENTITY FULL goes alone, after the batch. */
	int batched = !full && (op == 'D' || m->u.change.old_kind == 0)
			      ? batch_add(p, r, op, fullmask, old, newt, error_r)
			      : batch_flush(p, r, error_r);
	const char *stmt = batched == 0 ? prepared(p, r, op, fullmask, full, old, error_r) : NULL;
	if (stmt == NULL) {
		free(mask);
		free(key);
		free(fullmask);
		return batched > 0 ? 0 : -1;
	}
	const char **pv = params(p, 2 * (size_t)r->ncols);
	if (op == 'U')
		for (uint16_t i = 0; i < r->ncols; i++)
			if (mask[i] == '.')
				pv[n++] = val(&newt->cols[i]);
	int rc = where_params(r, old, full, pv, &n, opname, error_r);
	free(mask);
	free(key);
	free(fullmask);
	if (rc < 0)
		return -1;
	char *row = pgq_describe_row(r, old, !full);
	char *what = xasprintf("%s of %s", op == 'U' ? "UPDATE" : "DELETE", row);
	free(row);
	return send_row(p, stmt, n, op, what, error_r);
}

static int
apply_truncate(struct pga *p, const struct pgo_msg *m, char **error_r)
{
	struct st_buf sql;

	if (batch_flush_all(p, error_r) < 0)
		return -1;
	st_buf_init(&sql);
	st_buf_puts(&sql, "TRUNCATE ");
	for (uint32_t i = 0; i < m->u.truncate.nrels; i++) {
		struct pga_rel *r = known_rel(p, m->u.truncate.relids[i], "Truncate", error_r);
		if (r == NULL) {
			st_buf_free(&sql);
			return -1;
		}
		/* ONLY: an inheritance child the master did not truncate is
		 * not in the list, and must stay. */
		st_buf_printf(&sql, "%sONLY %s", i ? ", " : "", r->qname);
	}
	if (m->u.truncate.options & PGO_TRUNCATE_RESTART_IDENTITY)
		st_buf_puts(&sql, " RESTART IDENTITY");
	if (m->u.truncate.options & PGO_TRUNCATE_CASCADE)
		st_buf_puts(&sql, " CASCADE");
	int rc = send_command(p, sql.data, xstrdup(sql.data), error_r);
	st_buf_free(&sql);
	return rc;
}

/* ------------------------------------------------------------ DDL */

static void
sha256(const void *a, size_t alen, const void *b, size_t blen, unsigned char out[32])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int n = 32;

	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(ctx, a, alen) != 1 || EVP_DigestUpdate(ctx, b, blen) != 1 ||
	    EVP_DigestFinal_ex(ctx, out, &n) != 1)
		st_fatal("SHA-256 failed");
	EVP_MD_CTX_free(ctx);
}

/* The message's signature checked: its body, or NULL (counted, warned). */
static const char *
ddl_body(struct pga *p, const struct pgo_msg *m, const char *lsn_text)
{
	const char *content = m->u.message.content;
	const char *nl = strchr(content, '\n');

	if (nl == NULL || nl - content != 64 || strlen(content) != m->u.message.len) {
		p->stats.ddl_rejected++;
		st_warn("malformed DDL message ignored lsn=%s", lsn_text);
		return NULL;
	}
	const char *body = nl + 1;
	size_t klen = strlen(p->ddl_key);
	unsigned char inner[32], mac[32];
	char hex[65];
	sha256(p->ddl_key, klen, body, strlen(body), inner);
	sha256(p->ddl_key, klen, inner, sizeof(inner), mac);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	if (CRYPTO_memcmp(hex, content, 64) != 0) {
		/* Any user can emit a logical message: one that standin's trigger did
		 * not sign is not a change of the master's data.  Refused, loudly. */
		p->stats.ddl_rejected++;
		st_warn("DDL message with a bad signature ignored lsn=%s (not from standin's "
			"trigger: forged, or standin.ddl_key changed on the master)", lsn_text);
		return NULL;
	}
	return body;
}

/* "CREATE TABLE public.t, role app": the DDL in messages, without its text
 * (which can hold a secret: CREATE USER MAPPING ... OPTIONS (password ...)). */
static char *
ddl_label(json_t *msg)
{
	struct st_buf b;
	json_t *objects = json_object_get(msg, "objects");
	const char *tag = json_string_value(json_object_get(msg, "tag"));
	const char *role = json_string_value(json_object_get(msg, "role"));
	size_t i, n = json_array_size(objects);

	st_buf_init(&b);
	st_buf_puts(&b, tag != NULL ? tag : "DDL");
	for (i = 0; i < n && i < 3; i++)
		st_buf_printf(&b, "%s%s", i ? ", " : " ",
			      json_string_value(json_array_get(objects, i)) ?: "?");
	if (n > 3)
		st_buf_printf(&b, " and %zu more", n - 3);
	if (role != NULL)
		st_buf_printf(&b, ", role %s", role);
	return st_buf_steal(&b);
}

/* How the administrator goes on past a DDL the standby cannot run. */
#define DDL_RESOLVE "apply it on the standby by hand as far as it must be, then run " \
	"\"standinctl pg ddl-done %s\" on this node to go on past it"

/*
 * The text of a DDL statement that the standby did not run, in
 * STATE_DIR/pgrepl-ddl-HI-LO.sql (mode 0600; not in the log or the status,
 * since it can hold a secret), headed by why: the file's path, or NULL.
 */
static char *
ddl_file(struct pga *p, pgo_lsn lsn, const char *label, const char *why, const char *stmt)
{
	char lsn_text[32], *path, *err = NULL;

	if (p->ddl_dir == NULL)
		return NULL;
	snprintf(lsn_text, sizeof(lsn_text), PGO_LSN_FMT, PGO_LSN_ARGS(lsn));
	path = xasprintf("%s/pgrepl-ddl-%X-%X.sql", p->ddl_dir, PGO_LSN_ARGS(lsn));
	char *one_line = xstrdup(why);
	for (char *c = one_line; *c != '\0'; c++)
		if (*c == '\n' || *c == '\r')
			*c = ' ';
	char *text = xasprintf("-- standin-pgrepl: the DDL statement at %s on the master\n"
			       "-- (%s), not applied on the standby:\n-- %s\n%s;\n",
			       lsn_text, label, one_line, stmt);
	free(one_line);
	if (st_durable_write(path, text, strlen(text), 0600, &err) < 0) {
		st_warn("cannot write the DDL statement path=%s error=%s", st_q(path), st_q(err));
		free(err);
		free(path);
		path = NULL;
	}
	free(text);
	return path;
}

/* A DDL statement failed on the standby: the error names it, the file that
 * holds its text, and says how to go on. */
static void
ddl_failed(struct pga *p, const struct pending *pd, const char *why)
{
	char lsn_text[32];
	char *path = ddl_file(p, pd->ddl_lsn, pd->what, why, pd->ddl);

	snprintf(lsn_text, sizeof(lsn_text), PGO_LSN_FMT, PGO_LSN_ARGS(pd->ddl_lsn));
	fail(p, "DDL at %s (%s) failed on the standby: %s; the statement is in %s: " DDL_RESOLVE,
	     lsn_text, pd->what, why, path != NULL ? path : "the master's log", lsn_text);
	free(path);
}

/* Did the administrator mark the DDL message at LSN done ("ddl-done")? */
static bool
ddl_marked_done(const struct pga *p, pgo_lsn lsn)
{
	for (size_t i = 0; i < p->n_ddl_done; i++)
		if (p->ddl_done[i] == lsn)
			return true;
	return false;
}

/* SELECT set_config($1, $2, true), ...: NAMES = VALUES, for the transaction. */
static int
send_settings(struct pga *p, const char *const *values, const char *what, char **error_r)
{
	struct st_buf sql;
	const char *pv[2 * DDL_SETTINGS];
	int n = 0;

	st_buf_init(&sql);
	st_buf_puts(&sql, "SELECT ");
	for (size_t i = 0; i < DDL_SETTINGS; i++) {
		if (values[i] == NULL)
			continue;
		st_buf_printf(&sql, "%spg_catalog.set_config($%d, $%d, true)", n ? ", " : "",
			      n + 1, n + 2);
		pv[n++] = ddl_settings[i];
		pv[n++] = values[i];
	}
	if (n == 0) {
		st_buf_free(&sql);
		return 0;
	}
	enqueue(p, PEND_COMMAND, 0, xstrdup(what));
	int rc = after_send(p, PQsendQueryParams(p->conn, sql.data, n, NULL, pv, NULL, NULL, 0),
			    error_r);
	st_buf_free(&sql);
	return rc;
}

/*
 * A "standin.ddl" message of format 2 (standin_ddl.c): signed JSON with the
 * statement's kind, command tag, role, objects, the settings it was read with
 * and its text.  Run as that role, with those settings, at its place in the
 * stream; "uncaptured", "unreproducible" (and anything else not runnable)
 * stop the stream with an error that says how to go on (unless the
 * administrator marked that LSN done, opts.ddl_done: see apply_ddl).
 */
static int
apply_ddl2(struct pga *p, const char *body, pgo_lsn lsn, const char *lsn_text, char **error_r)
{
	json_error_t jerr;
	json_t *msg = json_loads(body, JSON_REJECT_DUPLICATES, &jerr);
	const char *kind, *role, *stmt;
	const char *values[DDL_SETTINGS] = { NULL };
	char *label = NULL, *set_role = NULL, *rid = NULL;
	int rc = -1;

	if (msg == NULL || !json_is_object(msg)) {
		st_set_error(error_r, "DDL message at %s: not JSON (%s)", lsn_text, jerr.text);
		goto out;
	}
	label = ddl_label(msg);
	kind = json_string_value(json_object_get(msg, "kind"));
	role = json_string_value(json_object_get(msg, "role"));
	stmt = json_string_value(json_object_get(msg, "statement"));
	if (kind != NULL && strcmp(kind, "uncaptured") == 0) {
		st_set_error(error_r, "DDL at %s (%s) could not be captured exactly on the master "
			     "(standin_ddl is not in its shared_preload_libraries, and the statement "
			     "ran inside a function, a DO block or a procedure): " DDL_RESOLVE,
			     lsn_text, label, lsn_text);
		goto out;
	}
	if (kind != NULL && strcmp(kind, "unreproducible") == 0 && stmt != NULL) {
		const char *reason = json_string_value(json_object_get(msg, "reason"));
		char *path = ddl_file(p, lsn, label, reason != NULL ? reason : "", stmt);
		st_set_error(error_r, "DDL at %s (%s) cannot be run on the standby as it ran on the "
			     "master: %s; the statement is in %s: " DDL_RESOLVE, lsn_text, label,
			     reason != NULL ? reason : "(no reason given)",
			     path != NULL ? path : "the master's log", lsn_text);
		free(path);
		goto out;
	}
	if (kind == NULL || strcmp(kind, "statement") != 0 || role == NULL || stmt == NULL) {
		st_set_error(error_r, "DDL at %s (%s): unknown kind of DDL message %s (is standin "
			     "older here than on the master?): " DDL_RESOLVE, lsn_text, label,
			     st_q(kind != NULL ? kind : "(none)"), lsn_text);
		goto out;
	}
	const char *name;
	json_t *value;
	json_object_foreach(json_object_get(msg, "settings"), name, value) {
		size_t i;
		for (i = 0; i + 1 < DDL_SETTINGS && strcmp(ddl_settings[i], name) != 0; i++)
			;
		if (i + 1 == DDL_SETTINGS || !json_is_string(value)) {
			st_set_error(error_r, "DDL at %s (%s): setting %s is not known here (is "
				     "standin older here than on the master?)", lsn_text, label,
				     st_q(name));
			goto out;
		}
		values[i] = json_string_value(value);
	}
	values[DDL_SETTINGS - 1] = "off";	/* check_function_bodies */

	p->group_ddl++;
	st_debug("DDL lsn=%s ddl=%s statement=%s", lsn_text, st_q(label), st_q(stmt));
	rid = pgc_ident(role);
	set_role = xasprintf("SET LOCAL ROLE %s", rid);
	if (send_command(p, set_role, xasprintf("DDL at %s (%s): SET ROLE", lsn_text, label),
			 error_r) < 0 ||
	    send_settings(p, values, "DDL: the master's settings", error_r) < 0)
		goto out;
	struct pending *pd = enqueue(p, PEND_COMMAND, 0, xstrdup(label));
	pd->ddl = xstrdup(stmt);
	pd->ddl_lsn = lsn;
	if (after_send(p, PQsendQueryParams(p->conn, stmt, 0, NULL, NULL, NULL, NULL, 0),
		       error_r) < 0 ||
	    send_command(p, "RESET ROLE", xstrdup("RESET ROLE"), error_r) < 0 ||
	    send_settings(p, (const char *const *)p->ddl_saved, "DDL: this session's settings",
			  error_r) < 0)
		goto out;
	rc = 0;
out:
	free(label);
	free(set_role);
	free(rid);
	json_decref(msg);
	return rc;
}

/* Format 1 (standin 'DDL capture 2', before standin_ddl): MAC \n standin-ddl-1
 * \n ROLE \n SEARCH_PATH \n STATEMENT, still in a stream after an upgrade. */
static int
apply_ddl1(struct pga *p, const char *body, const char *lsn_text, char **error_r)
{
	char *copy = xstrdup(body), *fields[4] = { NULL };
	char *q = copy;
	for (int i = 0; i < 3; i++) {
		char *e = strchr(q, '\n');
		if (e == NULL)
			break;
		*e = '\0';
		fields[i] = q;
		q = e + 1;
	}
	fields[3] = q;
	if (fields[2] == NULL) {
		st_set_error(error_r, "DDL message at %s: unknown format", lsn_text);
		free(copy);
		return -1;
	}
	char *role = pgc_ident(fields[1]);
	char *set_role = xasprintf("SET LOCAL ROLE %s", role);
	const char *sp[] = { fields[2] };
	int rc = -1;

	p->group_ddl++;
	st_debug("DDL lsn=%s role=%s statement=%s", lsn_text, st_q(fields[1]), st_q(fields[3]));
	if (send_command(p, set_role, xasprintf("DDL at %s: %s", lsn_text, set_role), error_r) < 0)
		goto out;
	enqueue(p, PEND_COMMAND, 0, xasprintf("DDL at %s: search_path", lsn_text));
	if (after_send(p, PQsendQueryParams(p->conn, "SELECT pg_catalog.set_config('search_path', "
						      "$1, true)", 1, NULL, sp, NULL, NULL, 0),
		       error_r) < 0)
		goto out;
	if (send_command(p, fields[3], xasprintf("DDL at %s (format 1)", lsn_text), error_r) < 0 ||
	    send_command(p, "RESET ROLE", xstrdup("RESET ROLE"), error_r) < 0 ||
	    send_command(p, "SELECT pg_catalog.set_config('search_path', 'pg_catalog', true)",
			 xstrdup("reset search_path"), error_r) < 0)
		goto out;
	rc = 0;
out:
	free(role);
	free(set_role);
	free(copy);
	return rc;
}

static int
apply_ddl(struct pga *p, const struct pgo_msg *m, pgo_lsn lsn, char **error_r)
{
	char lsn_text[32];
	const char *body;

	snprintf(lsn_text, sizeof(lsn_text), PGO_LSN_FMT, PGO_LSN_ARGS(lsn));
	if (p->ddl_key == NULL) {
		st_set_error(error_r, "DDL message at %s, but no DDL key is known", lsn_text);
		return -1;
	}
	if (!m->u.message.transactional || !p->in_source_txn) {
		st_set_error(error_r, "non-transactional DDL message at %s", lsn_text);
		return -1;
	}
	if ((body = ddl_body(p, m, lsn_text)) == NULL)
		return 0;
	if (ddl_marked_done(p, lsn)) {
		p->stats.ddl_skipped++;
		st_notice("DDL skipped: marked done by the administrator lsn=%s", lsn_text);
		return 0;
	}
	if (body[0] == '{')
		return apply_ddl2(p, body, lsn, lsn_text, error_r);
	if (strncmp(body, "standin-ddl-1\n", 14) == 0)
		return apply_ddl1(p, body + 14, lsn_text, error_r);
	st_set_error(error_r, "DDL message at %s: unknown format", lsn_text);
	return -1;
}

/* ------------------------------------------------------------ groups */

static int
open_group(struct pga *p, char **error_r)
{
	if (p->group_open)
		return 0;
	/* Nothing goes after a SYNC before its answer (see pga_sync). */
	if (p->syncs_due > 0 && (pump(p, true, error_r) < 0 || take_error(p, error_r) < 0))
		return -1;
	p->group_open = true;
	p->group_txns = 0;
	p->group_rows = 0;
	p->group_ddl = 0;
	p->group_start_ms = st_monotonic_ms();
	enqueue(p, PEND_COMMAND, 0, xstrdup("BEGIN"));
	return after_send(p, PQsendQueryPrepared(p->conn, "standin_begin", 0, NULL, NULL, NULL, 0),
			  error_r);
}

static void
rollback_quietly(struct pga *p)
{
	char *err = NULL;

	batch_discard_all(p);
	if (PQstatus(p->conn) != CONNECTION_OK)
		return;
	free(p->error);
	p->error = NULL;
	if (send_command(p, "ROLLBACK", xstrdup("ROLLBACK"), &err) < 0 || sync_and_wait(p, &err) < 0)
		st_warn("rollback on the standby failed error=%s", st_q(err));
	free(err);
}

/*
 * Commit the open group: send its last rows, the origin's position and
 * COMMIT, and go on without waiting for any answer.  No SYNC follows, so
 * the groups sent since the last SYNC form one pipeline segment, and a
 * failure anywhere in it (a row that finds no row to change fails on the
 * standby, see count_wrap; a COMMIT that cannot commit) makes the standby
 * skip everything after it up to the next SYNC, the later groups' COMMITs
 * included: nothing commits past a failure, and the origin never moves
 * past it.  The standby sends an error at once; it comes out where the
 * answers are read (pga_service, the next commit, the next group after a
 * SYNC), and the session starts over from the origin's durable position.
 * So the standby commits a group as soon as it reaches its COMMIT, not a
 * round trip after the group before.  A flush request makes it send the
 * answers it has then, that COMMIT's among them, without a SYNC; or a SYNC
 * itself, when one is wanted (pga_sync).
 */
static int
commit_group(struct pga *p, char **error_r)
{
	char lsn[32], ts[32];

	if (batch_flush_all(p, error_r) < 0 || take_error(p, error_r) < 0) {
		rollback_quietly(p);
		p->group_open = false;
		return -1;
	}
	snprintf(lsn, sizeof(lsn), PGO_LSN_FMT, PGO_LSN_ARGS(p->group_end_lsn));
	snprintf(ts, sizeof(ts), "%" PRId64, p->group_commit_time);
	const char *pv[] = { lsn, ts };
	enqueue(p, PEND_COMMAND, 0, xstrdup("pg_replication_origin_xact_setup"));
	if (after_send(p, PQsendQueryPrepared(p->conn, "standin_origin_setup", 2, pv, NULL, NULL, 0),
		       error_r) < 0)
		return -1;
	struct pending *pd = enqueue(p, PEND_COMMIT, 0, xstrdup("COMMIT"));
	pd->group = (struct group_figures){
		.txns = p->group_txns,
		.rows = p->group_rows,
		.ddl = p->group_ddl,
		.end_lsn = p->group_end_lsn,
		.commit_time = p->group_commit_time,
	};
	p->group_open = false;
	p->commits_due++;
	if (after_send(p, PQsendQueryPrepared(p->conn, "standin_commit", 0, NULL, NULL, NULL, 0),
		       error_r) < 0)
		return -1;
	if (p->sync_wanted) {
		if (send_sync(p, error_r) < 0)
			return -1;
	} else if (!PQsendFlushRequest(p->conn)) {
		st_set_error(error_r, "cannot queue a flush request for the standby: %s",
			     pgc_errmsg(p->conn));
		return -1;
	}
	/* Send it now (what does not fit in the socket goes when poll says
	 * it can: pga_wants_write); the answers are read as they come. */
	if (PQflush(p->conn) < 0) {
		st_set_error(error_r, "cannot send to the standby: %s", pgc_errmsg(p->conn));
		return -1;
	}
	return 0;
}

long
pga_ms_until_due(const struct pga *p)
{
	if (!p->group_open)
		return -1;
	long left = p->group_max_ms - (long)(st_monotonic_ms() - p->group_start_ms);
	return left > 0 ? left : 0;
}

/*
 * The standby is behind while COMMITS_AHEAD groups wait for their COMMIT's
 * answer.  Then a group does not commit when the stream goes dry but stays
 * open, and the caller leaves the stream unread (pga_behind) until that
 * answer comes: what the master sent meanwhile is then read in one go and
 * joins the open group, which commits when the stream is dry again (or
 * when due by count or age).  So a quiet stream is applied transaction by
 * transaction, a busy one in groups as big as the standby's pace makes
 * them, read in big chunks rather than many small ones; and a transaction
 * that comes while the standby is busy commits one round trip later, not
 * two.  (Measured: one ahead, not two, gives the bigger groups and the
 * shorter lag; BENCHMARKS.md.)
 */
#define COMMITS_AHEAD 1

bool
pga_behind(const struct pga *p)
{
	return p->commits_due >= COMMITS_AHEAD || p->syncs_due > 0;
}

/*
 * A SYNC ends the pipeline segment, after the open group's COMMIT, or now if
 * none is open.  The apply session needs one now and then: PostgreSQL
 * reports a session's statistics (the ones autovacuum goes by) only when a
 * SYNC brings it to ReadyForQuery.  But after a SYNC the standby no longer
 * skips what follows a failure, so nothing is sent after one until its
 * answer is read (pga_behind, open_group): a failure before it ends the
 * session first.
 */
int
pga_sync(struct pga *p, char **error_r)
{
	if (p->syncs_due > 0)
		return 0;
	if (p->group_open) {
		p->sync_wanted = true;
		return 0;
	}
	return send_sync(p, error_r);
}

int
pga_commit_if_due(struct pga *p, bool force, char **error_r)
{
	if (!p->group_open || p->in_source_txn || p->group_txns == 0)
		return 0;
	if (p->group_txns >= p->group_max_txns || pga_ms_until_due(p) == 0 ||
	    (force && !pga_behind(p)))
		return commit_group(p, error_r);
	return 0;
}

int
pga_message(struct pga *p, const struct pgo_msg *m, char **error_r)
{
	int rc = 0;

	switch (m->kind) {
	case PGO_BEGIN:
		if (p->in_source_txn) {
			st_set_error(error_r, "Begin inside a transaction");
			return -1;
		}
		p->in_source_txn = true;
		rc = open_group(p, error_r);
		break;
	case PGO_COMMIT:
		if (!p->in_source_txn) {
			st_set_error(error_r, "Commit outside a transaction");
			return -1;
		}
		p->in_source_txn = false;
		p->group_txns++;
		p->group_end_lsn = m->u.commit.end_lsn;
		p->group_commit_time = m->u.commit.commit_time;
		if (p->group_txns >= p->group_max_txns)
			rc = commit_group(p, error_r);
		break;
	case PGO_RELATION:
		/* Its rows were for the columns as they were. */
		rc = batch_flush_relid(p, m->u.relation.relid, error_r);
		if (rc == 0) {
			rel_update(p, m);
			rc = merge_check(p, rel_slot(p, m->u.relation.relid, false), error_r);
		}
		break;
	case PGO_INSERT:
		rc = apply_insert(p, m, error_r);
		break;
	case PGO_UPDATE:
	case PGO_DELETE:
		rc = apply_update_delete(p, m, error_r);
		break;
	case PGO_TRUNCATE:
		rc = apply_truncate(p, m, error_r);
		break;
	case PGO_MESSAGE:
		if (p->ddl_prefix != NULL && strcmp(m->u.message.prefix, p->ddl_prefix) == 0) {
			rc = batch_flush_all(p, error_r);
			if (rc == 0)
				rc = apply_ddl(p, m, m->u.message.lsn, error_r);
		}
		break;
	case PGO_TYPE:
	case PGO_ORIGIN:
		break;
	case PGO_STREAM_START:
	case PGO_STREAM_STOP:
	case PGO_STREAM_COMMIT:
	case PGO_STREAM_ABORT:
		st_set_error(error_r, "%s message, but streaming was not asked for",
			     pgo_kind_name(m->kind));
		return -1;
	}
	if (rc < 0 && p->group_open) {
		rollback_quietly(p);
		p->group_open = false;
		p->in_source_txn = false;
	}
	return rc;
}

/* ------------------------------------------------------------ session */

/* A named statement, before pipeline mode. */
static int
prepare_now(PGconn *conn, const char *name, const char *sql, char **error_r)
{
	PGresult *res = PQprepare(conn, name, sql, 0, NULL);

	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		char *why = pgc_result_error(res);
		st_set_error(error_r, "preparing %s: %s", sql, why);
		free(why);
		PQclear(res);
		return -1;
	}
	PQclear(res);
	return 0;
}

struct pga *
pga_new(PGconn *conn, const struct pga_options *opts, pgo_lsn *start_r, char **error_r)
{
	struct pga *p = xcalloc(1, sizeof(*p));
	char *lit = pgc_literal(opts->origin), *sql = NULL, *value = NULL, *err = NULL;

	p->conn = conn;
	p->origin = xstrdup(opts->origin);
	p->group_max_txns = opts->group_max_txns > 0 ? opts->group_max_txns : 1;
	p->group_max_ms = opts->group_max_ms;
	p->ddl_prefix = opts->ddl_prefix ? xstrdup(opts->ddl_prefix) : NULL;
	p->ddl_key = opts->ddl_key ? xstrdup(opts->ddl_key) : NULL;
	p->ddl_dir = opts->ddl_dir ? xstrdup(opts->ddl_dir) : NULL;
	if (opts->n_ddl_done > 0) {
		p->ddl_done = xcalloc(opts->n_ddl_done, sizeof(*p->ddl_done));
		memcpy(p->ddl_done, opts->ddl_done, opts->n_ddl_done * sizeof(*p->ddl_done));
		p->n_ddl_done = opts->n_ddl_done;
	}
	p->stop = opts->stop;
	p->rowwise_until = opts->rowwise_until;
	p->master_wins = opts->master_wins;

	sql = xasprintf("SELECT pg_catalog.pg_replication_origin_create(%s) "
			"WHERE pg_catalog.pg_replication_origin_oid(%s) IS NULL", lit, lit);
	if (pgc_exec(conn, sql, &err) < 0)
		goto fail;
	free(sql);
	sql = xasprintf("SELECT pg_catalog.pg_replication_origin_session_setup(%s)", lit);
	if (pgc_exec(conn, sql, &err) < 0)
		goto fail;
	/* The apply statements find their rows by key.  The planner would scan a
	 * small table whole instead (a 10-row table is one page, as far as its
	 * statistics know), which under churn it no longer is; and the keys of
	 * a batch are unique, so memoizing a lookup never pays.  As PostgreSQL's
	 * own apply worker, take the index. */
	if (pgc_exec(conn, "SET session_replication_role = replica; "
			   "SET synchronous_commit = off; SET search_path = pg_catalog; "
			   "SET enable_seqscan = off; SET enable_memoize = off", &err) < 0)
		goto fail;
	/* What a DDL statement's settings are put back to (apply_ddl2). */
	{
		struct st_buf q;
		st_buf_init(&q);
		st_buf_puts(&q, "SELECT ");
		for (size_t i = 0; i < DDL_SETTINGS; i++)
			st_buf_printf(&q, "%spg_catalog.current_setting('%s')", i ? ", " : "",
				      ddl_settings[i]);
		PGresult *res = PQexec(conn, q.data);
		st_buf_free(&q);
		if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
			err = pgc_result_error(res);
			PQclear(res);
			goto fail;
		}
		for (size_t i = 0; i < DDL_SETTINGS; i++)
			p->ddl_saved[i] = xstrdup(PQgetvalue(res, 0, (int)i));
		PQclear(res);
	}
	/* What every group sends, parsed once per session. */
	if (prepare_now(conn, "standin_begin", "BEGIN", &err) < 0 ||
	    prepare_now(conn, "standin_commit", "COMMIT", &err) < 0 ||
	    prepare_now(conn, "standin_origin_setup",
			"SELECT pg_catalog.pg_replication_origin_xact_setup("
			"$1::pg_catalog.pg_lsn, '2000-01-01 00:00:00+00'::pg_catalog.timestamptz + "
			"$2::pg_catalog.int8 * '1 microsecond'::pg_catalog.interval)", &err) < 0)
		goto fail;
	free(sql);
	sql = xasprintf("SELECT pg_catalog.pg_replication_origin_progress(%s, true)", lit);
	if (pgc_value(conn, sql, &value, &err) < 0)
		goto fail;
	*start_r = 0;
	if (value != NULL && pgo_lsn_parse(value, start_r) < 0) {
		err = xasprintf("bad origin progress %s", value);
		goto fail;
	}
	if (PQsetnonblocking(conn, 1) != 0 || PQenterPipelineMode(conn) != 1) {
		err = xasprintf("cannot enter pipeline mode: %s", pgc_errmsg(conn));
		goto fail;
	}
	p->stats.applied_lsn = *start_r;
	free(lit);
	free(sql);
	free(value);
	return p;
fail:
	st_set_error(error_r, "setting up replication origin %s on the standby: %s", opts->origin,
		     err);
	free(err);
	free(lit);
	free(sql);
	free(value);
	pga_free(&p);
	return NULL;
}

void
pga_free(struct pga **pp)
{
	struct pga *p = *pp;

	if (p == NULL)
		return;
	for (size_t i = 0; i < p->rel_cap; i++)
		if (p->rels[i].relid != 0)
			rel_clear(&p->rels[i]);
	free(p->rels);
	free(p->open);
	while (queued(p) > 0)
		dequeue(p);
	free(p->q);
	free(p->error);
	free(p->params);
	free(p->origin);
	free(p->ddl_prefix);
	free(p->ddl_dir);
	free(p->ddl_done);
	for (size_t i = 0; i < DDL_SETTINGS; i++)
		free(p->ddl_saved[i]);
	if (p->ddl_key != NULL)
		explicit_bzero(p->ddl_key, strlen(p->ddl_key));
	free(p->ddl_key);
	free(p);
	*pp = NULL;
}

bool
pga_group_open(const struct pga *p)
{
	return p->group_open;
}

bool
pga_in_source_txn(const struct pga *p)
{
	return p->in_source_txn;
}

int
pga_socket(const struct pga *p)
{
	return PQsocket(p->conn);
}

bool
pga_wants_write(const struct pga *p)
{
	return PQflush(p->conn) == 1;
}

int
pga_service(struct pga *p, char **error_r)
{
	if (pump(p, false, error_r) < 0)
		return -1;
	/* A failure ends the session now, whichever group it is in: nothing
	 * after it commits (see commit_group). */
	if (take_error(p, error_r) < 0) {
		if (p->group_open) {
			rollback_quietly(p);
			p->group_open = false;
		}
		return -1;
	}
	return 0;
}

const struct pga_stats *
pga_stats(const struct pga *p)
{
	return &p->stats;
}

bool
pga_batch_failed(const struct pga *p)
{
	return p->batch_failed || p->resolve_restart;
}
