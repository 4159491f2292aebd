/*
 * ldapply.h: apply the queued changes (ldqueue.h) to the standby slapd,
 * pipelined on one connection, and list the standby's entries for the
 * end-of-refresh reconciliation.
 *
 * Every write carries the Relax Rules control, so the standby keeps the
 * master's entryUUID, createTimestamp, creatorsName, modifyTimestamp and
 * modifiersName.  Entries are found on the standby by entryUUID: a known
 * UUID with a new DN is a rename (modrdn, with newSuperior when the parent
 * changes), a modify sends replace operations for the attributes that
 * differ.
 *
 * During a refresh (lda_set_refresh(true)) two cases are reconciled rather
 * than reported: a DN held on the standby by another entryUUID is adopted
 * (the entry takes the master's UUID and attributes: the standby's content
 * predates this refresh), and an entry whose parent is not there yet is
 * kept for lda_retry_deferred() at the end of the refresh.  While
 * persisting, both stop the stream with an error naming the DN.
 */
#ifndef STANDIN_LDAPPLY_H
#define STANDIN_LDAPPLY_H

#include <stdbool.h>
#include <stdint.h>

#include <ldap.h>

#include "replicators/ldap/ldqueue.h"

struct lda;

struct lda_stats {
	uint64_t adds, modifies, renames, deletes, unchanged, adopted, missing_deletes;
};

/* One entry of the standby (lda_list). */
struct lda_listed {
	uint8_t uuid[LDSYNC_UUID_LEN];
	char *dn;
	int depth;
};

struct lda *lda_new(LDAP *target, const char *suffix, struct ldq *q, unsigned max_in_flight);
void lda_free(struct lda **a);

void lda_set_refresh(struct lda *a, bool refresh);
/* During this refresh, entryUUIDs not in HAD (the standby's when the refresh
 * began; kept by the caller) are added without a lookup first. */
void lda_set_standby_had(struct lda *a, const struct lde_uuid_set *had);

/* Start what the queue allows. */
int lda_pump(struct lda *a, char **error_r) ST_WARN_UNUSED;
/* Take every result the connection has (never blocks). */
int lda_read(struct lda *a, char **error_r) ST_WARN_UNUSED;

unsigned lda_in_flight(const struct lda *a);
size_t lda_deferred(const struct lda *a);
/* Queue the deferred entries again (end of refresh); true if there were any. */
bool lda_retry_deferred(struct lda *a);

/* Start listing every entry of the standby under the suffix (entryUUID and
 * DN); lda_list_done() tells when it is complete. */
int lda_list_start(struct lda *a, char **error_r) ST_WARN_UNUSED;
bool lda_list_done(const struct lda *a);
/* Take the list (deepest DNs first); the caller frees it with lda_list_free. */
void lda_list_take(struct lda *a, struct lda_listed **list_r, size_t *n_r);
void lda_list_free(struct lda_listed *list, size_t n);

const struct lda_stats *lda_stats(const struct lda *a);

#endif
