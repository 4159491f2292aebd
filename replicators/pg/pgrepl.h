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
#define FAST_FEEDBACK_MS 20		/* ...while a switchover drains and reverses */
#define FAST_FEEDBACK_FOR_MS 10000
#define GROUP_MAX_TXNS 1000
#define GROUP_MAX_MS 200
#define COPY_JOBS 4
#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 30000
#define IDLE_CHECK_MS 2000
#define SEQUENCE_SYNC_MS 10000
/* The lag clock: a non-transactional logical message with the master's time
 * (unix ms), emitted on the master every HEARTBEAT_MS by the standby's
 * session; lag = now - the newest one applied here (pgstream.c). */
#define HEARTBEAT_PREFIX "standin.heartbeat"
#define HEARTBEAT_MS 1000
/* The master's slots, read every SLOTS_CHECK_MS while idle as the master. */
#define SLOTS_CHECK_MS 10000
#define SLOTS_MAX 16

struct pgr_slot {
	char name[64];
	bool active;
	int64_t retained;		/* bytes of WAL it holds back */
	char wal_status[16];		/* reserved, extended, unreserved, lost */
};

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
	/*
	 * An error stays until the master's position at the failure is confirmed
	 * applied here (confirmed >= error_until): a retry that connects again
	 * shows "retrying", not "streaming", and keeps last_error.
	 */
	pgo_lsn error_until;
	const char *session_state;	/* the session's own state meanwhile */
	pgo_lsn confirmed;		/* told to the master as flushed here */
	int64_t heartbeat_ms;		/* master time of the newest heartbeat applied, 0 none */
	long long heartbeat_saved_ms;	/* monotonic ms it was last written to STATE_DIR */
	struct pgr_slot slots[SLOTS_MAX];
	size_t n_slots;
	long long slots_ms;		/* unix ms they were read, 0 never */
	char slots_error[256];
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
	atomic_llong fast_feedback_until; /* a drain asked: feedback every FAST_FEEDBACK_MS until
					   then (monotonic ms), so the master's slot follows */
	uint64_t resolved_before;	/* conflicts resolved by the sessions that ended */
	struct st_bgjob *reverse_job;	/* admin "reverse NODE" in flight (pgrepl.c) */
	struct st_cstate_follower follow;	/* the engine thread's, no watch */

	pthread_mutex_t lock;
	struct status st;
};

/* Up to this many DDL statements marked done wait at once (pgrepl.c). */
#define DDL_MARKS_MAX 64

/*
 * The state and error the status shows; wake the loop to publish them.
 * pgr_set_state keeps an error that is pending (error_until); pgr_fail sets
 * one, pending until the master's position received so far is applied here;
 * pgr_set_error sets STATE and ERROR (NULL: none) and ends a pending one.
 */
void pgr_set_state(struct pgrepl *r, const char *state);
void pgr_fail(struct pgrepl *r, const char *error);
void pgr_set_error(struct pgrepl *r, const char *state, const char *error);
/* Called with r->lock held: the pending error ends once CONFIRMED passes it. */
void pgr_confirmed_locked(struct pgrepl *r, pgo_lsn confirmed);
/* The heartbeat kept in STATE_DIR across restarts (pgrepl.heartbeat). */
void pgr_heartbeat_load(struct pgrepl *r);
void pgr_heartbeat_save(struct pgrepl *r, bool force);
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
