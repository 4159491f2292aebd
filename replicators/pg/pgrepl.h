/*
 * pgrepl.h: what standin-pgrepl's daemon (pgrepl.c: status, admin commands,
 * the engine thread's loop over the cluster state)
 * and its stream session (pgstream.c: one session from a source, its side
 * queries, feedback and sequence copies) share.  Not a library: one program.
 */
#ifndef STANDIN_PGREPL_H
#define STANDIN_PGREPL_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/bgjob.h"
#include "lib/cstate.h"
#include "lib/daemon.h"
#include "replicators/pg/pgoutput.h"
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
	const char *reverse_state;	/* "running", "done", "failed" or NULL */
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
	struct st_bgjob *reverse_job;	/* admin "reverse NODE" in flight (pgrepl.c) */
	struct st_cstate_follower follow;	/* the engine thread's, no watch */

	pthread_mutex_t lock;
	struct status st;
};

/* Up to this many DDL statements marked done wait at once (pgrepl.c). */
#define DDL_MARKS_MAX 64

/* The state and error the status shows; wake the loop to publish them. */
void pgr_set_state(struct pgrepl *r, const char *state);
void pgr_set_error(struct pgrepl *r, const char *state, const char *error);
void pgr_set_reverse(struct pgrepl *r, const char *state, pgo_lsn lsn, const char *error);
bool pgr_stopping(struct pgrepl *r);
/* Read the wake-up eventfd quiet again; sleep up to MS or until woken. */
void pgr_drain_wake(struct pgrepl *r);
void pgr_pause_ms(struct pgrepl *r, long ms);
/* Slot and origin names: PREFIX then NODE in lower case letters, digits, '_'. */
void pgr_name_part(char *out, size_t size, const char *prefix, const char *node);
/* "0/16B3748"; the caller frees it. */
char *pgr_lsn_text(pgo_lsn l);
/* The DDL messages from SOURCE marked done and not passed yet (PROGRESS). */
size_t pgr_ddl_done_read(const struct st_node *node, const char *source, pgo_lsn progress,
			 pgo_lsn *lsns);

/*
 * Replicate SOURCE -> TARGET until stopped or an error: 0 (stopped, or the
 * cluster state moved on), 3 (a statement of many rows failed: start again
 * at once, one statement per row up to r->rowwise_until) or -1 with
 * *error_r (pgstream.c).
 */
int pgr_replicate(struct pgrepl *r, const struct st_conf *conf, const char *source,
		  const char *target, uint64_t epoch, char **error_r);

#endif
