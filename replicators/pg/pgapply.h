/*
 * pgapply.h: apply decoded pgoutput changes to the standby, exactly once.
 *
 * One target connection in libpq pipeline mode (non-blocking).  Source
 * transactions are grouped into one target transaction, bounded by count and
 * time, in commit order:
 *
 *   BEGIN; row statements ...; SYNC          (every row's result is checked:
 *                                             an UPDATE/DELETE must hit one row)
 *   pg_replication_origin_xact_setup(end LSN of the group's last source
 *   transaction, its commit time); COMMIT; SYNC
 *
 * so the replication origin moves in the same transaction as the data: after
 * a crash the standby's pg_replication_origin_progress() is exactly the last
 * source transaction it holds.  Rows use prepared statements per relation,
 * operation and set of unchanged TOAST columns; within a group, rows of one
 * relation and operation go many to one statement (see "batches" in
 * pgapply.c).  A conflict (duplicate key, missing row, missing table or
 * column) rolls the group back and stops with an error naming the table
 * and the key; nothing is skipped.  When a statement of many rows fails,
 * pga_batch_failed() says so: the caller starts again with rowwise_until
 * past that point, and the one-row statements name the row.
 *
 * The caller owns the connection; pga never closes it.
 */
#ifndef STANDIN_PGAPPLY_H
#define STANDIN_PGAPPLY_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "replicators/pg/pgoutput.h"

struct pga;

struct pga_options {
	const char *origin;		/* replication origin name on the target */
	unsigned group_max_txns;	/* source transactions per target transaction */
	long group_max_ms;		/* ... and at most this old */
	const char *ddl_prefix;		/* logical message prefix carrying DDL */
	const char *ddl_key;		/* the master's standin.ddl_key: DDL must be signed */
	const char *ddl_dir;		/* where a failed DDL statement is written (0600) */
	const pgo_lsn *ddl_done;	/* DDL messages at these LSNs were applied by hand */
	size_t n_ddl_done;
	volatile int *stop;		/* non-zero: give up waiting for the standby */
	pgo_lsn rowwise_until;		/* one statement per row until applied past this */
	bool master_wins;		/* [pg] conflicts = master-wins (see pgapply.c) */
};

struct pga_stats {
	uint64_t txns;			/* source transactions committed on the target */
	uint64_t rows;			/* rows applied */
	uint64_t groups;		/* target transactions */
	uint64_t ddl;			/* DDL statements executed */
	uint64_t ddl_rejected;		/* "standin.ddl" messages not signed by our trigger */
	uint64_t ddl_skipped;		/* DDL passed over: marked done (ddl_done) */
	uint64_t batches;		/* statements of many rows sent */
	uint64_t batched_rows;		/* the rows in them */
	uint64_t conflicts_resolved;	/* master-wins: conflicts resolved and committed */
	pgo_lsn applied_lsn;		/* end LSN of the last committed source txn */
	int64_t applied_commit_time;	/* its commit time (PostgreSQL epoch, us) */
};

/*
 * Set up the target session: create the origin if it is missing, bind the
 * session to it, session settings, pipeline mode.  *start_r is the origin's
 * durable progress (0 when new).  NULL with *error_r on failure.
 */
struct pga *pga_new(PGconn *target, const struct pga_options *opts, pgo_lsn *start_r,
		    char **error_r) ST_WARN_UNUSED;
void pga_free(struct pga **pga);

/* Feed one decoded message.  0, or -1 with *error_r (the group is rolled back). */
int pga_message(struct pga *pga, const struct pgo_msg *msg, char **error_r) ST_WARN_UNUSED;

/*
 * Commit the open group if it is due (count or age), or when it holds a
 * complete source transaction, FORCE is set (the stream has nothing more
 * for now) and the standby is not behind (see COMMITS_AHEAD in pgapply.c).
 * 0 or -1 with *error_r.
 */
int pga_commit_if_due(struct pga *pga, bool force, char **error_r) ST_WARN_UNUSED;

/*
 * True while the standby is behind: groups' COMMITs sent and not answered
 * yet, as many as are worth having ahead of it, or a SYNC.  Meanwhile the
 * stream is left unread; an answer makes the target socket readable.
 */
bool pga_behind(const struct pga *pga);

/* True while a group is open on the target (rows not yet committed). */
bool pga_group_open(const struct pga *pga);
/* True between a source Begin and its Commit. */
bool pga_in_source_txn(const struct pga *pga);
/* Milliseconds until the open group is due (0 if due now; -1 if none open). */
long pga_ms_until_due(const struct pga *pga);

/* The target socket, and servicing it when poll() says it is ready. */
int pga_socket(const struct pga *pga);
bool pga_wants_write(const struct pga *pga);
int pga_service(struct pga *pga, char **error_r) ST_WARN_UNUSED;

/*
 * End the pipeline segment with a SYNC: after the open group's COMMIT, or
 * now if none is open (once a second: the standby session's statistics
 * are reported at a SYNC).  Until its answer the standby is behind.
 */
int pga_sync(struct pga *pga, char **error_r) ST_WARN_UNUSED;

const struct pga_stats *pga_stats(const struct pga *pga);

/*
 * True when the session that failed should start again at once, one
 * statement per row (opts.rowwise_until): a statement of many rows failed,
 * or, with master_wins, a conflict came that the row-by-row forms resolve.
 */
bool pga_batch_failed(const struct pga *pga);

#endif
