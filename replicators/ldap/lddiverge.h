/*
 * lddiverge.h: the LDAP divergence report of an old master.
 *
 * A refresh from scratch (no cookie for this source: an old master that
 * comes back after a failover, or a standby that already held entries)
 * makes the standby's directory equal to the master's: entries only the
 * standby had are deleted, values only it had are replaced.  So that
 * nothing goes without a trace, the standby's directory is first written
 * to a snapshot (STATE_DIR/ldaprepl-before-SOURCE.json: every entry under
 * the suffix with its user attributes and entryUUID, values in base64); once
 * the refresh is through, what the snapshot holds and the directory does
 * not any more goes to STATE_DIR/divergence-ldap-SOURCE-TIME.ldif (0600):
 * whole entries as add records, values as modify/add records, so an
 * administrator can look and replay what should be kept.  The snapshot is
 * removed after that.  A snapshot left by a crash is kept until a refresh
 * is through: it is the directory as it was before the first refresh.
 */
#ifndef STANDIN_LDDIVERGE_H
#define STANDIN_LDDIVERGE_H

#include <ldap.h>
#include <stddef.h>

#include "lib/util.h"

struct ldd_result {
	size_t entries;			/* whole entries only the snapshot has */
	size_t values;			/* values only the snapshot has, in entries both have */
	char *path;			/* the report, or NULL when there was nothing */
};

/* The snapshot of LD's SUFFIX at PATH, unless PATH exists.  0 written or
 * kept (*n_r entries, 0 when nothing to keep: no file), -1 error. */
int ldd_snapshot(LDAP *ld, const char *suffix, const char *path, size_t *n_r, char **error_r)
	ST_WARN_UNUSED;

/* Compare the snapshot at PATH with LD's SUFFIX now, write the report in
 * REPORT_DIR (PEER in its name), remove the snapshot.  0 or -1. */
int ldd_report(LDAP *ld, const char *suffix, const char *path, const char *report_dir,
	       const char *peer, struct ldd_result *r, char **error_r) ST_WARN_UNUSED;
void ldd_result_clear(struct ldd_result *r);

#endif
