/*
 * ldentry.h: LDAP entries as standin compares them, DN helpers and a set of
 * entryUUIDs.  Pure functions over memory: unit-tested with no server.
 *
 * Memory: an lde_entry owns its strings and values; lde_entry_free().  The
 * LDAPMod arrays from lde_diff()/lde_add_mods() point into the entry they
 * were made from (which must outlive them); free the array itself with
 * lde_mods_free().
 */
#ifndef STANDIN_LDENTRY_H
#define STANDIN_LDENTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ldap.h>

#include "lib/util.h"
#include "replicators/ldap/ldsync.h"

struct lde_attr {
	char *name;			/* attribute description as the server sent it */
	struct berval *vals;		/* owned copies */
	size_t n;
};

struct lde_entry {
	char *dn;
	struct lde_attr *attrs;
	size_t n;
	char *csn;			/* its entryCSN when the server sent one (kept
					 * apart: never written), or NULL */
};

/*
 * The operational attributes standin copies from the master (with the
 * Relax Rules control) so that the standby's entries are the master's.
 * entryCSN cannot be set over LDAP; the others are the server's own.
 */
extern const char *const lde_copied_opattrs[];

/* Attributes requested from both servers: "*" and lde_copied_opattrs. */
extern char *lde_request_attrs[];
/* The same and entryCSN: what the sync search asks of the master (the
 * refresh is applied in entryCSN order). */
extern char *lde_sync_attrs[];

struct lde_entry *lde_entry_new(const char *dn);
void lde_entry_add(struct lde_entry *e, const char *name, const struct berval *vals, size_t n);
void lde_entry_free(struct lde_entry **e);
const struct lde_attr *lde_entry_get(const struct lde_entry *e, const char *name);

/* The entry a search returned (every attribute the message carries). */
struct lde_entry *lde_entry_from_message(LDAP *ld, LDAPMessage *msg, char **error_r);

/*
 * The modifications that make STANDBY equal to MASTER: a replace with the
 * master's values for each attribute whose values differ (as sets, byte for
 * byte), a replace with no value for each attribute the master does not
 * have.  *mods_r is NULL-terminated, or NULL when nothing differs; *n_r is
 * the count.
 */
void lde_diff(const struct lde_entry *master, const struct lde_entry *standby, LDAPMod ***mods_r,
	      size_t *n_r);

/* The attributes of E as an add request. */
LDAPMod **lde_add_mods(const struct lde_entry *e);
void lde_mods_free(LDAPMod ***mods);

/* Are two attribute value sets equal (any order, byte for byte)? */
bool lde_values_equal(const struct berval *a, size_t na, const struct berval *b, size_t nb);

/*
 * DNs.  Comparisons fold ASCII case only and take the DN strings as the
 * servers sent them (both are the same directory's DNs).
 */
bool lde_dn_equal(const char *a, const char *b);
/* Is one DN the other or an ancestor of it? */
bool lde_dn_related(const char *a, const char *b);
/* The parsed parent DN and first RDN of DN (NULL parent for a single RDN);
 * -1 when DN does not parse. */
int lde_dn_split(const char *dn, char **rdn_r, char **parent_r) ST_WARN_UNUSED;
/* Number of RDNs, or -1 when DN does not parse. */
int lde_dn_depth(const char *dn);

/* A set of entryUUIDs (open addressing). */
struct lde_uuid_set {
	uint8_t (*slots)[LDSYNC_UUID_LEN];
	uint8_t *used;			/* 0 empty, 1 used, 2 removed */
	size_t cap, n, removed;
};

void lde_uuid_set_init(struct lde_uuid_set *s);
void lde_uuid_set_clear(struct lde_uuid_set *s);
/* true when it was not there yet */
bool lde_uuid_set_add(struct lde_uuid_set *s, const uint8_t uuid[LDSYNC_UUID_LEN]);
bool lde_uuid_set_has(const struct lde_uuid_set *s, const uint8_t uuid[LDSYNC_UUID_LEN]);
bool lde_uuid_set_remove(struct lde_uuid_set *s, const uint8_t uuid[LDSYNC_UUID_LEN]);

#endif
