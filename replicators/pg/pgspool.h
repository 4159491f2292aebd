/*
 * pgspool.h: large transactions streamed while in progress (pgoutput
 * protocol 2, "streaming 'on'"), kept on disk until their fate is known.
 *
 * The master streams a transaction that outgrows its logical_decoding_work_mem
 * in blocks (Stream Start, changes, Stream Stop), interleaved with other
 * transactions, and ends it with Stream Commit or Stream Abort.  Nothing of it
 * may reach the standby before the commit (the standby applies in commit
 * order), so each change is appended to a file of its own transaction, XID.spool
 * in the spool directory, as it comes; at Stream Commit the file is read back
 * in order and applied as one transaction, then removed.
 *
 * A Stream Abort of a subtransaction (ROLLBACK TO SAVEPOINT) cuts the file
 * back to where that subtransaction's first change was written: whatever was
 * written after it belongs to it or to its children, which die with it (the
 * same rule as PostgreSQL's own apply worker, worker.c subxact_info_add).
 *
 * The files are not durable and need not be: after a restart the master
 * streams every transaction still in progress from its first change again
 * (first_segment set), so pgsp_new() removes what an earlier session left.
 *
 * One pgsp belongs to one replication session; it is not thread-safe.
 * Record format: a 4-byte length in network order, then the raw pgoutput
 * message as it came (with its xid).
 */
#ifndef STANDIN_PGSPOOL_H
#define STANDIN_PGSPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/util.h"

struct pgsp;

/* Open the spool directory DIR (created 0700 if missing) and remove the
 * *.spool files an earlier session left in it. */
struct pgsp *pgsp_new(const char *dir, char **error_r);
void pgsp_free(struct pgsp **sp);

/* Stream Start: the following changes are XID's.  FIRST: its first block. */
int pgsp_block_start(struct pgsp *sp, uint32_t xid, bool first, char **error_r) ST_WARN_UNUSED;
/* Inside a block: one change (or Relation, Type, Message, Origin) of SUBXID
 * (the xid the message carries: XID itself or one of its subtransactions; 0
 * for a message that carries none, which belongs to XID). */
int pgsp_write(struct pgsp *sp, uint32_t subxid, const uint8_t *msg, size_t len,
	       char **error_r) ST_WARN_UNUSED;
/* Stream Stop. */
int pgsp_block_stop(struct pgsp *sp, char **error_r) ST_WARN_UNUSED;
/* Between Stream Start and Stream Stop? */
bool pgsp_in_block(const struct pgsp *sp);

/* Stream Abort: all of XID when SUBXID == XID, else that subtransaction.  An
 * xid that spooled nothing is not an error (an empty subtransaction). */
int pgsp_abort(struct pgsp *sp, uint32_t xid, uint32_t subxid, char **error_r) ST_WARN_UNUSED;

/*
 * Stream Commit: call FN for each message of XID in order, then remove its
 * file.  FN returns 0 or -1 with *error_r, which stops the replay.  A
 * transaction this session never saw a first block of is an error.
 */
typedef int pgsp_replay_fn(void *ctx, const uint8_t *msg, size_t len, char **error_r);
int pgsp_replay(struct pgsp *sp, uint32_t xid, pgsp_replay_fn *fn, void *ctx,
		char **error_r) ST_WARN_UNUSED;

/* Transactions spooled and not yet committed or aborted, and their bytes. */
unsigned pgsp_open_txns(const struct pgsp *sp);
uint64_t pgsp_open_bytes(const struct pgsp *sp);
/* Transactions replayed (committed) in this session. */
uint64_t pgsp_replayed(const struct pgsp *sp);

#endif
