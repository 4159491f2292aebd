/*
 * etcd.h: the cluster store (doc/architecture.md, section 4): etcd v3 over
 * its JSON gateway (Debian's etcd-server 3.4: POST /v3/kv/range, /v3/kv/txn,
 * /v3/lease/...), with libcurl and jansson.  Keys and values are sent
 * base64-encoded and int64 fields as JSON strings, as the gateway wants.
 *
 * Blocking calls, each within [cluster] etcd_timeout; every URL of
 * [cluster] etcd is tried in turn, starting from the last that answered.
 * A handle belongs to one thread at a time.  With etcd_user, a token is
 * asked first (/v3/auth/authenticate) and asked again when etcd says it is
 * no longer valid.
 *
 * Every key standin writes is under /standin/CLUSTER/ (st_etcd_key).
 */
#ifndef STANDIN_ETCD_H
#define STANDIN_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/conf.h"

struct st_etcd;

struct st_etcd_kv {
	char *key;
	char *value;			/* NUL-terminated copy (values may hold NULs: len) */
	size_t len;
	int64_t create_revision, mod_revision, version, lease;
};

/* NULL with *error_r when CONF has no [cluster] etcd, or a secret cannot be read. */
struct st_etcd *st_etcd_open(const struct st_conf *conf, char **error_r) ST_WARN_UNUSED;
void st_etcd_close(struct st_etcd **e);

/* "/standin/CLUSTER/NAME"; the caller frees it. */
char *st_etcd_key(const struct st_conf *conf, const char *name);

/* The URL that answered last (for messages). */
const char *st_etcd_url(const struct st_etcd *e);

/*
 * KEY's value: 1 (found, *kv_r filled: free with st_etcd_kv_clear), 0 (no
 * such key) or -1 with *error_r.  *rev_r (may be NULL): the store's
 * revision when it answered.
 */
int st_etcd_get(struct st_etcd *e, const char *key, struct st_etcd_kv *kv_r, int64_t *rev_r,
		char **error_r) ST_WARN_UNUSED;

/* Every key under PREFIX, in key order; 0 or -1.  Free with st_etcd_kvs_free. */
int st_etcd_list(struct st_etcd *e, const char *prefix, struct st_etcd_kv **kvs_r, size_t *n_r,
		 int64_t *rev_r, char **error_r) ST_WARN_UNUSED;
/* The same, only keys last written at revision MIN_MOD_REV or later. */
int st_etcd_list_since(struct st_etcd *e, const char *prefix, int64_t min_mod_rev, struct st_etcd_kv **kvs_r,
		       size_t *n_r, int64_t *rev_r, char **error_r) ST_WARN_UNUSED;

/*
 * Write KEY only if its mod_revision is still MOD_REV (0: only if KEY does
 * not exist), in one txn: of two writers that read the same revision exactly
 * one wins.  LEASE 0: none.  1 written (*rev_r: the new revision), 0 not
 * (someone wrote it since; *current_r, if not NULL, gets what is there now,
 * found or not: current_r->key NULL when it does not exist), -1 error.
 */
int st_etcd_put_if(struct st_etcd *e, const char *key, const void *value, size_t len,
		   int64_t mod_rev, int64_t lease, int64_t *rev_r, struct st_etcd_kv *current_r,
		   char **error_r) ST_WARN_UNUSED;

/* The same, and only while GUARD_KEY exists with create_revision
 * GUARD_CREATE_REV (the switchover that writes the state still holds its key). */
int st_etcd_put_if_guarded(struct st_etcd *e, const char *key, const void *value, size_t len,
			   int64_t mod_rev, const char *guard_key, int64_t guard_create_rev,
			   int64_t lease, int64_t *rev_r, struct st_etcd_kv *current_r,
			   char **error_r) ST_WARN_UNUSED;

/* Unconditional put and delete (members' records, under their lease). */
int st_etcd_put(struct st_etcd *e, const char *key, const void *value, size_t len, int64_t lease,
		char **error_r) ST_WARN_UNUSED;
int st_etcd_delete(struct st_etcd *e, const char *key, char **error_r) ST_WARN_UNUSED;

/* Leases: grant (TTL seconds), keep alive (*ttl_r 0: the lease is gone), revoke. */
int st_etcd_lease_grant(struct st_etcd *e, long ttl_s, int64_t *id_r, char **error_r)
	ST_WARN_UNUSED;
int st_etcd_lease_keepalive(struct st_etcd *e, int64_t id, long *ttl_r, char **error_r)
	ST_WARN_UNUSED;
int st_etcd_lease_revoke(struct st_etcd *e, int64_t id, char **error_r) ST_WARN_UNUSED;

/*
 * Wait up to TIMEOUT_MS for the next change of KEY (with PREFIX true: of
 * any key under it) after revision AFTER_REV: a watch from AFTER_REV + 1,
 * closed at its first event, so nothing written since AFTER_REV is missed.
 * 1 (something changed: read it again), 0 (nothing within the time) or -1
 * with *error_r (etcd unreachable, or the revision compacted away).
 */
int st_etcd_wait(struct st_etcd *e, const char *key, bool prefix, int64_t after_rev,
		 long timeout_ms, char **error_r) ST_WARN_UNUSED;

void st_etcd_kv_clear(struct st_etcd_kv *kv);
void st_etcd_kvs_free(struct st_etcd_kv *kvs, size_t n);

#endif
