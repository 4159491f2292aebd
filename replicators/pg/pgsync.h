/*
 * pgsync.h: the initial copy of the master's database to the standby.
 *
 * In one snapshot: the logical slot is created with an exported snapshot;
 * pg_dump --schema-only --snapshot takes the schema; the standby's old tables
 * and event triggers are dropped (CASCADE) and the pre-data part restored
 * (pg_restore --clean --if-exists, so a retry after a crash starts over
 * cleanly); every published table is copied with COPY, several at once, each
 * worker importing the snapshot; then the post-data part (indexes,
 * constraints, triggers) is built over the loaded tables, as pg_restore does
 * it; sequences are set.  Last, the standby's origin is
 * advanced to the slot's consistent point, so streaming starts exactly after
 * the snapshot: no change lost or applied twice.
 *
 * A marker file STATE_DIR/pgrepl-SOURCE.sync exists from the first write to
 * the standby until the origin is set; a standby that holds tables and has
 * no marker is refused unless FORCE.
 */
#ifndef STANDIN_PGSYNC_H
#define STANDIN_PGSYNC_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "lib/conf.h"
#include "replicators/pg/pgoutput.h"

struct pgs_request {
	const struct st_conf *conf;
	const char *source, *target;	/* node names */
	const char *slot;		/* logical slot on the source */
	const char *publication;
	const char *origin;		/* replication origin on the target */
	const char *marker;		/* marker file path */
	unsigned jobs;			/* tables copied at once */
	/* Divergence report (pgdiverge.h): the slot this node fed SOURCE with
	 * when it was the master, SOURCE's origin for what it applied from us,
	 * and where the report goes. */
	const char *stale_slot, *peer_origin, *report_dir;
	bool force;			/* overwrite a non-empty standby */
	volatile int *stop;		/* non-zero: give up soon */
};

struct pgs_progress {
	unsigned tables_total, tables_done;
	unsigned long long rows_copied;
};

/* Is an initial sync needed (marker present), per the marker file. */
bool pgs_marker_present(const char *marker);

int pgs_initial_sync(const struct pgs_request *req, struct pgs_progress *progress,
		     pgo_lsn *start_r, char **error_r) ST_WARN_UNUSED;

/* Make sure the publication (FOR ALL TABLES) exists on the source. */
int pgs_ensure_publication(PGconn *src_conn, const char *publication, char **error_r) ST_WARN_UNUSED;

/*
 * Install (or refresh) DDL capture on the source (ddl_capture.sql): the event
 * triggers of the server module standin_ddl (standin_ddl.c), which emits each
 * DDL statement alone as a transactional logical message with prefix
 * "standin.ddl", signed with a key kept in standin.ddl_key (readable only by
 * superusers), so no other user can forge one.  *key_r is that key.  Warns
 * when the module is not preloaded by the source's server.
 */
int pgs_ensure_ddl_capture(PGconn *src, char **key_r, char **error_r) ST_WARN_UNUSED;

/*
 * Copy every sequence's value from SRC to TGT, never moving a sequence of
 * TGT backwards.  *n_r: how many were moved.
 */
int pgs_sync_sequences(PGconn *src, PGconn *tgt, unsigned *n_r, char **error_r) ST_WARN_UNUSED;

/*
 * The same copy in its two statements, for a caller that runs them without
 * blocking: PGS_SEQUENCES_READ on the master gives one row of two text
 * arrays (names and values, both NULL when no sequence has a value yet);
 * PGS_SEQUENCES_SET on the standby takes them as $1 and $2 and gives one
 * row, how many sequences it moved.
 */
extern const char PGS_SEQUENCES_READ[];
extern const char PGS_SEQUENCES_SET[];

/*
 * After a planned switchover, when NEW_TARGET (the old master, fenced) holds
 * exactly what NEW_SOURCE holds (drained): make NEW_SOURCE feed NEW_TARGET
 * with no copy.  A slot NEW_SLOT is created on NEW_SOURCE (no snapshot; its
 * consistent point is "now", before NEW_SOURCE takes writes), NEW_ORIGIN on
 * NEW_TARGET is advanced to that point, and NEW_TARGET's STALE_SLOT (the one
 * NEW_SOURCE pulled with; NULL: left) is dropped.  *start_r: the consistent
 * point.
 */
int pgs_prepare_reverse(const struct st_conf *conf, const char *new_source,
			const char *new_target, const char *publication, const char *new_slot,
			const char *new_origin, const char *stale_slot, pgo_lsn *start_r,
			char **error_r) ST_WARN_UNUSED;

/*
 * ORIGIN's progress on C that is durable (pg_replication_origin_progress(
 * origin, true)); *exists_r false (and *lsn_r 0) when there is no such origin.
 */
int pgs_origin_progress(PGconn *c, const char *origin, bool *exists_r, pgo_lsn *lsn_r,
			char **error_r) ST_WARN_UNUSED;

/* Drop SLOT on the connection's server if it exists, ending its walsender if
 * it is still active (a previous run of ours, killed).  0 or -1. */
int pgs_free_slot(PGconn *conn, const char *slot, bool drop, char **error_r) ST_WARN_UNUSED;
/* Drop every standin_ slot of the connection's database (a standby's). */
int pgs_free_standin_slots(PGconn *conn, char **error_r) ST_WARN_UNUSED;

#endif
