/*
 * pgdiverge.h: the divergence report of an old master.
 *
 * After an unplanned failover the old master may hold transactions that it
 * committed but never shipped.  Before its database is replaced by a copy
 * of the new master's, the changes its own slot (the one the new master used
 * to pull from it) still holds past what the new master applied are decoded
 * and written as SQL to STATE_DIR/divergence-PEER-TIME.sql, so nothing is
 * dropped without a trace; then that stale slot is dropped.
 */
#ifndef STANDIN_PGDIVERGE_H
#define STANDIN_PGDIVERGE_H

#include <libpq-fe.h>
#include <stdint.h>

#include "lib/conf.h"

struct pgd_result {
	unsigned transactions;		/* transactions written to the report */
	unsigned rows;
	char *path;			/* the report, or NULL when there was nothing */
};

/*
 * LOCAL: a connection to this node's (the old master's) database.
 * PEER_SLOT: the slot the peer pulled with ("standin_PEER").
 * PEER_APPLIED: what the peer applied from us (its origin's progress; 0 if
 * unknown: then every change the slot holds is reported).
 * Returns 0 (with *result filled; nothing to do if the slot is absent) or -1.
 */
int pgd_report(PGconn *local, const char *peer_slot, const char *publication,
	       uint64_t peer_applied, const char *report_dir, const char *peer,
	       struct pgd_result *result, char **error_r) ST_WARN_UNUSED;
void pgd_result_clear(struct pgd_result *result);

#endif
