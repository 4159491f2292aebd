/*
 * imsync.h: what standin-imaprepl does to one user (the folder tree and
 * subscriptions) and to one folder (messages, flags, expunges).  Blocking;
 * run on worker threads, one job at a time per folder and never a folder
 * job of a user while that user's tree job runs (the scheduler in
 * imaprepl.c sees to it).
 */
#ifndef STANDIN_IMSYNC_H
#define STANDIN_IMSYNC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "replicators/imap/imsess.h"

struct im_counters {
	atomic_uint_fast64_t appended, appended_bytes, flag_updates, expunged;
	atomic_uint_fast64_t folders_created, folders_renamed, folders_deleted;
	atomic_uint_fast64_t subscriptions, reconciled, recovered, standby_extra;
};

struct im_env {
	const struct im_login *src, *tgt;
	const char *state_root;		/* STATE_DIR/imaprepl-SOURCE */
	const char *src_node;
	struct im_counters *c;
	const atomic_bool *stopping;	/* set: give up between messages */
};

struct im_todo {
	char *folder;
	uint64_t behind;		/* source messages not on the standby yet (estimate) */
	bool changed;			/* needs a folder pass */
};

#define IM_DIGEST_HEX (2 * IM_KEY_LEN + 1)

struct im_tree {
	struct im_todo *v;
	size_t n;
	uint64_t messages;		/* on the source, all folders */
	size_t folders;			/* selectable folders on the source */
	bool unchanged;			/* the quick check found the saved listing: V is empty */
	char digest[IM_DIGEST_HEX];	/* the source's listing digest ("": unusable) */
	char *refused;			/* the master's folders whose names cannot be sent, and why; NULL: none */
};
void im_tree_free(struct im_tree *t);

/*
 * A worker's two sessions (source and standby), kept from one job to the
 * next while they serve the same user: a login per job made Dovecot fork
 * two imap processes for every folder pass.  Sessions unused for
 * IM_CONNS_IDLE_MS are not trusted and opened anew; a job that fails on a
 * kept session that turns out broken (the server closed it) is run once
 * more on new ones.  Zero-initialised; closed with im_conns_close.
 */
#define IM_CONNS_IDLE_MS 60000
struct im_conns {
	char *user;
	const struct im_login *src_login, *tgt_login;
	struct im_sess *src, *tgt;
	long long used_ms;		/* st_monotonic_ms() at the end of the last job */
};
void im_conns_close(struct im_conns *c);

/*
 * Mirror USER's folder tree and subscriptions, then STATUS every source
 * folder: OUT lists them, with changed set where the folder's state says a
 * folder pass is due.  A master's folder whose name no command may carry
 * (imname.h) is left out and named in out->refused: the rest is done.  Returns 0 or -1 with a message naming the server,
 * user and folder.
 *
 * With QUICK, first the quick check: on the master's session only, LIST,
 * LSUB and a STATUS of every folder, hashed (out->digest's recipe); equal
 * to the digest saved by im_listing_save, nothing changed since everything
 * was copied: out->unchanged, and the standby is not even logged into.
 * Servers without CONDSTORE always get the whole pass.
 */
int im_sync_tree(const struct im_env *env, struct im_conns *c, const char *user, bool quick,
		 struct im_tree *out, char **error_r) ST_WARN_UNUSED;

/*
 * Save DIGEST (an im_tree's, once every folder pass it asked for ended
 * well): the standby holds everything the master showed then.
 * STATE_ROOT/USERHEX/listing.
 */
int im_listing_save(const struct im_env *env, const char *user, const char *digest, char **error_r)
	ST_WARN_UNUSED;

/* One folder pass: new messages, flag changes, expunges. */
int im_sync_folder(const struct im_env *env, struct im_conns *c, const char *user, const char *folder,
		   char **error_r) ST_WARN_UNUSED;

/* STATE_ROOT/USERDIR/FOLDERFILE, without suffix (imname.h). */
char *im_state_path(const char *root, const char *user, const char *folder);

#endif
