/*
 * cstore.h: the cluster state in etcd (doc/architecture.md, section 4), at
 * /standin/CLUSTER/state, in the same text as STATE_DIR/cluster.state
 * (st_cstate_format, checksum included).  Every change is one txn that
 * compares the revision it read: of two writers exactly one wins, so the
 * epoch never goes back and never repeats.
 */
#ifndef STANDIN_CSTORE_H
#define STANDIN_CSTORE_H

#include <stdint.h>

#include "lib/cstate.h"
#include "lib/etcd.h"

/* 1 found (*st_r, *mod_rev_r), 0 none, -1 error (a damaged value names the key). */
int st_cstore_get(struct st_etcd *e, const struct st_conf *conf, struct st_cstate *st_r,
		  int64_t *mod_rev_r, char **error_r) ST_WARN_UNUSED;

/*
 * Write ST if the key's mod_revision is still MOD_REV (0: only if there is
 * no state yet).  1 written (*new_rev_r may be NULL), 0 someone changed it
 * since (*now_r, if not NULL, gets what is there now and *now_found_r says
 * whether there is one), -1 error.
 */
int st_cstore_put(struct st_etcd *e, const struct st_conf *conf, const struct st_cstate *st,
		  int64_t mod_rev, int64_t *new_rev_r, struct st_cstate *now_r, bool *now_found_r,
		  char **error_r) ST_WARN_UNUSED;

/* The same, only while GUARD_KEY is the key created at GUARD_CREATE_REV
 * (a switchover's point of no return: its key must still be there). */
int st_cstore_put_guarded(struct st_etcd *e, const struct st_conf *conf,
			  const struct st_cstate *st, int64_t mod_rev, const char *guard_key,
			  int64_t guard_create_rev, int64_t *new_rev_r, struct st_cstate *now_r,
			  bool *now_found_r, char **error_r) ST_WARN_UNUSED;

/*
 * Take the state in etcd into NODE's STATE_DIR/cluster.state (under its
 * lock) when its epoch is higher: the one rule (never back).  Returns
 * ST_PULL_TAKEN (written; *st_r), ST_PULL_SAME (already there), ST_PULL_NONE
 * (no state in etcd), ST_PULL_KEPT (this node's copy is ahead, or at the
 * same epoch with other content: kept; *error_r says which), or -1 with
 * *error_r.
 */
enum { ST_PULL_TAKEN = 1, ST_PULL_SAME, ST_PULL_NONE, ST_PULL_KEPT };
int st_cstore_pull(struct st_etcd *e, const struct st_conf *conf, const struct st_node *node,
		   struct st_cstate *st_r, char **error_r) ST_WARN_UNUSED;

#endif
