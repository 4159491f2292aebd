/*
 * imsync.c: one user's folder tree, one folder's messages (see imsync.h).
 *
 * A folder pass, with S the source (EXAMINE, read-only) and T the target:
 *  1. UIDVALIDITY: if either side's differs from the state (the folder was
 *     recreated), or the state is new and T is not empty, the map is
 *     rebuilt by content: messages are paired by their identity key
 *     (RFC822.SIZE, INTERNALDATE and Message-ID), in UID order.  Nothing is
 *     copied twice; T's messages that were copies of messages S no longer
 *     has are expunged; T's messages of unknown origin (an old master's
 *     mail after a failover) are copied to S and paired with their copies:
 *     mail is never lost.
 *  2. Pending intents (an APPEND batch cut by a crash): T's messages from
 *     the batch's recorded UIDNEXT on are paired with the batch by key; the
 *     unpaired ones are copied again by step 3.
 *  3. New messages: S's UIDs from the state's UIDNEXT on that are not in the
 *     map are copied in batches (at most BATCH_MSGS messages or BATCH_BYTES):
 *     journal the batch's intents and fdatasync, APPEND them with their flags
 *     and INTERNALDATE (one MULTIAPPEND command, one transaction on T, where
 *     T has it; else one by one), journal the APPENDUIDs and fdatasync.  A
 *     first fill (no state, T empty) journals nothing: a crash leaves no
 *     state and a T that is not empty, which step 1 pairs by content.
 *  4. Flags: S's messages changed since the state's modseq (CHANGEDSINCE),
 *     or all of them when it is unknown, compared with T's and stored.
 *  5. Expunges: when S's count differs from the map's, S's UIDs are listed
 *     and T's copies of the missing ones are expunged (UID EXPUNGE).
 *  6. Checkpoint: the state file is rewritten and the journal emptied.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "lib/durable.h"
#include "lib/log.h"
#include "replicators/imap/imname.h"
#include "replicators/imap/imsync.h"

#define BATCH_MSGS 64
#define BATCH_BYTES (16u << 20)
#define META_SLICE 2048		/* messages whose sizes are fetched at a time */
#define INTENT_SETTLE_MS 5000	/* resolve_intents: how long a cut batch may take to land */

void
im_tree_free(struct im_tree *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->v[i].folder);
	free(t->v);
	free(t->refused);
	memset(t, 0, sizeof(*t));
}

char *
im_state_path(const char *root, const char *user, const char *folder)
{
	char *u = im_state_dir_name(user), *f = folder ? im_state_file_name(folder) : NULL;
	char *p = f ? xasprintf("%s/%s/%s", root, u, f) : xasprintf("%s/%s", root, u);

	free(u);
	free(f);
	return p;
}

/* -- a folder pass ------------------------------------------------------- */

struct pass {
	const struct im_env *env;
	const char *user, *folder;
	struct im_sess *src, *tgt;
	struct im_state st;
	struct im_status s, t;
	uint32_t tgt_uidnext;	/* lower bound of the next target UID */
	uint64_t modseq_before;	/* the state's modseq when the pass began */
	bool first_fill;	/* an empty standby folder, no state: everything is copied */
	char *err;
};

static int
pass_fail(struct pass *p, const char *fmt, ...) ST_PRINTF(2, 3);

static int
pass_fail(struct pass *p, const char *fmt, ...)
{
	va_list ap;
	char *what;

	va_start(ap, fmt);
	what = xvasprintf(fmt, ap);
	va_end(ap);
	free(p->err);
	p->err = xasprintf("user %s folder %s: %s", st_q(p->user), st_q(p->folder), what);
	free(what);
	return -1;
}

static int
sess_fail(struct pass *p, struct im_sess *s)
{
	return pass_fail(p, "%s", im_sess_error(s));
}

static int
state_fail(struct pass *p, char *err)
{
	pass_fail(p, "%s", err);
	free(err);
	return -1;
}

static int
jlog(struct pass *p, const char *fmt, ...) ST_PRINTF(2, 3);

static int
jlog(struct pass *p, const char *fmt, ...)
{
	char line[512], *err = NULL;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (im_state_log(&p->st, &err, "%s", line) < 0)
		return state_fail(p, err);
	return 0;
}

static int
jsync(struct pass *p)
{
	char *err = NULL;

	if (im_state_sync(&p->st, &err) < 0)
		return state_fail(p, err);
	return 0;
}

static int
cmp_key(const struct im_msg *a, const struct im_msg *b)
{
	int c = memcmp(a->key, b->key, IM_KEY_LEN);
	if (c != 0)
		return c;
	return a->uid < b->uid ? -1 : a->uid > b->uid;
}

static int
cmp_key_q(const void *a, const void *b)
{
	return cmp_key(*(const struct im_msg *const *)a, *(const struct im_msg *const *)b);
}

static struct im_msg **
by_key(struct im_msgs *m)
{
	struct im_msg **v = xmalloc((m->n ? m->n : 1) * sizeof(*v));

	for (size_t i = 0; i < m->n; i++)
		v[i] = &m->v[i];
	qsort(v, m->n, sizeof(*v), cmp_key_q);
	return v;
}

/* Is UID among the target UIDs of the map?  (Builds a sorted copy once.) */
static uint32_t *
tgt_uids_sorted(const struct im_state *st)
{
	uint32_t *v = xmalloc((st->n_map ? st->n_map : 1) * sizeof(*v));

	for (size_t i = 0; i < st->n_map; i++)
		v[i] = st->map[i].tgt;
	for (size_t i = 1; i < st->n_map; i++) {	/* nearly sorted: insertion sort */
		uint32_t x = v[i];
		size_t j = i;
		while (j > 0 && v[j - 1] > x) {
			v[j] = v[j - 1];
			j--;
		}
		v[j] = x;
	}
	return v;
}

static bool
in_sorted(const uint32_t *v, size_t n, uint32_t x)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (v[mid] < x)
			lo = mid + 1;
		else if (v[mid] > x)
			hi = mid;
		else
			return true;
	}
	return false;
}

/* Step 1: rebuild the map by content. */
static int
reconcile(struct pass *p, bool source_recreated)
{
	struct im_msgs sm = { 0 }, tm = { 0 };
	struct im_msg **sv = NULL, **tv = NULL;
	struct im_uids drop = { 0 }, extra = { 0 };
	struct im_msgs xm = { 0 };
	uint32_t *old_tgt = NULL;
	size_t old_n = 0, matched = 0;
	int rc = -1;

	st_notice("user %s folder %s: pairing messages by content (source UIDVALIDITY %" PRIu32 ", "
		  "standby %" PRIu32 ", state %" PRIu32 "/%" PRIu32 ")", st_q(p->user), st_q(p->folder),
		  p->s.uidvalidity, p->t.uidvalidity, p->st.src_uidvalidity, p->st.tgt_uidvalidity);
	if (source_recreated) {
		/* T's copies of the old source folder's messages. */
		old_tgt = tgt_uids_sorted(&p->st);
		old_n = p->st.n_map;
	}
	if (im_fetch(p->src, NULL, 0, 1, IM_F_META, 0, &sm) < 0) {
		sess_fail(p, p->src);
		goto out;
	}
	if (im_fetch(p->tgt, NULL, 0, 1, IM_F_META, 0, &tm) < 0) {
		sess_fail(p, p->tgt);
		goto out;
	}
	if (jlog(p, "V %" PRIu32 " %" PRIu32, p->s.uidvalidity, p->t.uidvalidity) < 0)
		goto out;
	sv = by_key(&sm);
	tv = by_key(&tm);
	for (size_t i = 0, j = 0; j < tm.n; ) {
		int c = i < sm.n ? memcmp(sv[i]->key, tv[j]->key, IM_KEY_LEN) : 1;
		if (i < sm.n && c == 0) {
			if (jlog(p, "M %" PRIu32 " %" PRIu32, sv[i]->uid, tv[j]->uid) < 0)
				goto out;
			matched++;
			i++;
			j++;
		} else if (i < sm.n && c < 0) {
			i++;
		} else {
			if (old_tgt && in_sorted(old_tgt, old_n, tv[j]->uid))
				im_uids_add(&drop, tv[j]->uid);
			else
				im_uids_add(&extra, tv[j]->uid);
			j++;
		}
	}
	if (drop.n > 0) {
		if (im_expunge_uids(p->tgt, drop.v, drop.n) < 0) {
			sess_fail(p, p->tgt);
			goto out;
		}
		atomic_fetch_add(&p->env->c->expunged, drop.n);
	}
	if (extra.n > 0) {
		/* Mail is never lost: what only the standby has (an old master's
		 * mail after a failover) is copied to the master and paired with
		 * its copy there.  A crash in between pairs it by content again. */
		st_warn("user %s folder %s: the standby has %zu message(s) the master does not have; "
			"copying them to the master", st_q(p->user), st_q(p->folder), extra.n);
		if (im_fetch(p->tgt, extra.v, extra.n, 0, IM_F_META | IM_F_FLAGS | IM_F_BODY, 0,
			     &xm) < 0) {
			sess_fail(p, p->tgt);
			goto out;
		}
		for (size_t k = 0; k < xm.n; k++) {
			uint32_t validity = 0, uid = 0;
			if (im_append(p->src, p->folder, &xm.v[k], &validity, &uid) < 0) {
				sess_fail(p, p->src);
				goto out;
			}
			if (uid == 0 || validity != p->s.uidvalidity) {
				/* Without APPENDUID the copy cannot be paired now: stop
				 * before the checkpoint, so the next pass pairs it by
				 * content instead of copying it back (twice on the standby). */
				pass_fail(p, "the master took standby UID %" PRIu32 " without an "
					  "APPENDUID for this folder: paired by content at the next "
					  "pass", xm.v[k].uid);
				goto out;
			}
			if (jlog(p, "M %" PRIu32 " %" PRIu32, uid, xm.v[k].uid) < 0)
				goto out;
			st_notice("user %s folder %s: standby UID %" PRIu32 " copied to the master as "
				  "UID %" PRIu32, st_q(p->user), st_q(p->folder), xm.v[k].uid, uid);
		}
		atomic_fetch_add(&p->env->c->standby_extra, extra.n);
	}
	if (jsync(p) < 0)
		goto out;
	atomic_fetch_add(&p->env->c->reconciled, 1);
	st_notice("user %s folder %s: %zu message(s) already on the standby, %zu to copy, %zu expunged",
		  st_q(p->user), st_q(p->folder), matched, sm.n - matched, drop.n);
	rc = 0;
out:
	free(sv);
	free(tv);
	free(old_tgt);
	im_uids_free(&drop);
	im_uids_free(&extra);
	im_msgs_free(&xm);
	im_msgs_free(&sm);
	im_msgs_free(&tm);
	return rc;
}

/* Step 2: an APPEND batch was cut short. */
static int
resolve_intents(struct pass *p)
{
	struct im_uids cand = { 0 }, fresh = { 0 };
	struct im_msgs tm = { 0 };
	uint32_t *mapped = tgt_uids_sorted(&p->st);
	size_t paired = 0;
	int rc = -1;

	if (im_search_from(p->tgt, p->st.intent_tgt_uidnext, &cand) < 0) {
		sess_fail(p, p->tgt);
		goto out;
	}
	/*
	 * The batch may not be on the standby yet although it was sent whole:
	 * a daemon killed during a MULTIAPPEND leaves the standby's server
	 * finishing the command (it commits, then finds the client gone).
	 * Copying again before that lands would copy twice.  So while fewer
	 * messages than intents are there, the folder is watched for
	 * INTENT_SETTLE_MS (UID SEARCH every 250 ms) for more to appear.
	 */
	for (long waited = 0, total = 0; cand.n < p->st.n_intents && waited < INTENT_SETTLE_MS &&
	     total < 6 * INTENT_SETTLE_MS; waited += 250, total += 250) {
		struct im_uids again = { 0 };

		if (atomic_load(p->env->stopping)) {
			pass_fail(p, "stopping");
			goto out;
		}
		struct timespec ts = { 0, 250 * 1000000L };
		nanosleep(&ts, NULL);
		if (im_search_from(p->tgt, p->st.intent_tgt_uidnext, &again) < 0) {
			sess_fail(p, p->tgt);
			goto out;
		}
		if (again.n != cand.n)
			waited = 0;	/* it moves: the interrupted command is landing */
		im_uids_free(&cand);
		cand = again;
	}
	for (size_t i = 0; i < cand.n; i++)
		if (!in_sorted(mapped, p->st.n_map, cand.v[i]))
			im_uids_add(&fresh, cand.v[i]);
	if (fresh.n > 0 && im_fetch(p->tgt, fresh.v, fresh.n, 0, IM_F_META, 0, &tm) < 0) {
		sess_fail(p, p->tgt);
		goto out;
	}
	/* In order: the batch was appended in source UID order. */
	size_t j = 0;
	for (size_t i = 0; i < p->st.n_intents && j < tm.n; i++) {
		const struct im_intent *in = &p->st.intents[i];
		if (im_state_find(&p->st, in->src))
			continue;
		for (size_t k = j; k < tm.n; k++) {
			if (memcmp(tm.v[k].key, in->key, IM_KEY_LEN) == 0) {
				if (jlog(p, "M %" PRIu32 " %" PRIu32, in->src, tm.v[k].uid) < 0)
					goto out;
				paired++;
				j = k + 1;
				break;
			}
		}
	}
	/* Before "C", which ends the intents: the unpaired ones are copied
	 * again, from the lowest one on (copy_new searches from src_uidnext). */
	size_t n_intents = p->st.n_intents, unpaired = 0;
	uint32_t rewind = p->st.src_uidnext;
	for (size_t i = 0; i < n_intents; i++) {
		const struct im_intent *in = &p->st.intents[i];
		if (im_state_find(&p->st, in->src))
			continue;
		unpaired++;
		if (rewind > 0 && in->src < rewind)
			rewind = in->src;
	}
	if (jlog(p, "C") < 0 || jsync(p) < 0)
		goto out;
	if (rewind < p->st.src_uidnext) {
		st_info("user %s folder %s: copying again from source UID %" PRIu32 " (was %" PRIu32 ")",
			st_q(p->user), st_q(p->folder), rewind, p->st.src_uidnext);
		p->st.src_uidnext = rewind;
	}
	atomic_fetch_add(&p->env->c->recovered, paired);
	st_notice("user %s folder %s: interrupted copy resolved: %zu message(s) were on the standby "
		  "already, %zu will be copied", st_q(p->user), st_q(p->folder), paired, unpaired);
	rc = 0;
out:
	free(mapped);
	im_uids_free(&cand);
	im_uids_free(&fresh);
	im_msgs_free(&tm);
	return rc;
}

static int
copy_batch(struct pass *p, const uint32_t *src_uids, size_t n)
{
	struct im_msgs m = { 0 };
	uint32_t validity = 0, *uids = NULL;
	int rc = -1;

	if (im_fetch(p->src, src_uids, n, 0, IM_F_FLAGS | IM_F_META | IM_F_BODY, 0, &m) < 0)
		return sess_fail(p, p->src);
	if (m.n == 0) {
		rc = 0;
		goto out;
	}
	if (jlog(p, "A %" PRIu32, p->tgt_uidnext) < 0)
		goto out;
	for (size_t i = 0; i < m.n; i++) {
		char hex[2 * IM_KEY_LEN + 1];
		im_key_hex(m.v[i].key, hex);
		if (jlog(p, "I %" PRIu32 " %" PRIu64 " %" PRId64 " %s", m.v[i].uid, m.v[i].size, m.v[i].date,
			 hex) < 0)
			goto out;
	}
	if (jsync(p) < 0)
		goto out;
	uids = xcalloc(m.n, sizeof(*uids));
	int many = im_append_many(p->tgt, p->folder, m.v, m.n, &validity, uids);
	if (many < 0) {
		sess_fail(p, p->tgt);
		goto out;
	}
	for (size_t i = 0; i < m.n; i++) {
		if (atomic_load(p->env->stopping)) {
			pass_fail(p, "stopping");
			goto out;
		}
		if (many == 1 && im_append(p->tgt, p->folder, &m.v[i], &validity, &uids[i]) < 0) {
			sess_fail(p, p->tgt);
			goto out;
		}
		if (validity != p->t.uidvalidity) {
			pass_fail(p, "the standby's UIDVALIDITY changed from %" PRIu32 " to %" PRIu32
				  " during the pass; the next pass pairs messages by content",
				  p->t.uidvalidity, validity);
			goto out;
		}
		if (jlog(p, "M %" PRIu32 " %" PRIu32, m.v[i].uid, uids[i]) < 0)
			goto out;
		if (uids[i] >= p->tgt_uidnext)
			p->tgt_uidnext = uids[i] + 1;
		atomic_fetch_add(&p->env->c->appended, 1);
		atomic_fetch_add(&p->env->c->appended_bytes, m.v[i].body_len);
	}
	if (jlog(p, "C") < 0 || jsync(p) < 0)
		goto out;
	st_debug("user %s folder %s: %zu message(s) appended %s", st_q(p->user), st_q(p->folder), m.n,
		 many == 0 ? "in one MULTIAPPEND" : "one by one");
	rc = 0;
out:
	free(uids);
	im_msgs_free(&m);
	return rc;
}

/* Copies the messages of M (with their sizes) that the map lacks, in batches. */
static int
copy_sized(struct pass *p, const struct im_msgs *m)
{
	for (size_t i = 0; i < m->n;) {
		uint32_t batch[BATCH_MSGS];
		size_t n = 0;
		uint64_t bytes = 0;

		while (i < m->n && n < BATCH_MSGS) {
			if (im_state_find(&p->st, m->v[i].uid)) {
				i++;
				continue;
			}
			if (n > 0 && bytes + m->v[i].size > BATCH_BYTES)
				break;
			bytes += m->v[i].size;
			batch[n++] = m->v[i++].uid;
		}
		if (n > 0 && copy_batch(p, batch, n) < 0)
			return -1;
	}
	return 0;
}

/* Step 3. */
static int
copy_new(struct pass *p)
{
	uint32_t from = p->st.src_uidnext ? p->st.src_uidnext : 1;
	struct im_uids all = { 0 }, todo = { 0 };
	struct im_msgs sizes = { 0 };
	int rc = -1;

	if (p->s.messages <= META_SLICE) {
		/* A small folder: the sizes of its new messages in one FETCH, no SEARCH first. */
		if (im_fetch(p->src, NULL, 0, from, IM_F_META, 0, &sizes) < 0)
			return sess_fail(p, p->src);
		if (copy_sized(p, &sizes) < 0)
			goto out;
	} else {
		if (im_search_from(p->src, from, &all) < 0)
			return sess_fail(p, p->src);
		for (size_t i = 0; i < all.n; i++)
			if (!im_state_find(&p->st, all.v[i]))
				im_uids_add(&todo, all.v[i]);
		/* Sizes by slices, so that memory does not grow with the folder. */
		for (size_t at = 0; at < todo.n; at += META_SLICE) {
			size_t len = todo.n - at < META_SLICE ? todo.n - at : META_SLICE;

			im_msgs_free(&sizes);
			if (im_fetch(p->src, todo.v + at, len, 0, IM_F_META, 0, &sizes) < 0) {
				sess_fail(p, p->src);
				goto out;
			}
			if (copy_sized(p, &sizes) < 0)
				goto out;
		}
	}
	if (p->s.uidnext > p->st.src_uidnext && jlog(p, "U %" PRIu32, p->s.uidnext) < 0)
		goto out;
	rc = 0;
out:
	im_uids_free(&all);
	im_uids_free(&todo);
	im_msgs_free(&sizes);
	return rc;
}

struct change {
	uint32_t tgt;
	const char *flags;
};

static int
cmp_change(const void *a, const void *b)
{
	const struct change *x = a, *y = b;
	int c = strcmp(x->flags, y->flags);
	return c ? c : (x->tgt < y->tgt ? -1 : x->tgt > y->tgt);
}

/* Step 4. */
static int
sync_flags(struct pass *p)
{
	bool full = p->st.src_modseq == 0 || p->s.highestmodseq == 0;
	struct im_msgs sm = { 0 }, tm = { 0 };
	struct change *ch = NULL;
	size_t n = 0;
	int rc = -1;

	if (!full && p->s.highestmodseq == p->st.src_modseq)
		return 0;
	/*
	 * A first fill copied every message with the flags it had when its
	 * body was fetched, after the EXAMINE whose HIGHESTMODSEQ is recorded:
	 * a change since then is the next pass's CHANGEDSINCE.
	 */
	if (p->st.n_map == 0 || p->first_fill)
		goto done;
	if (im_fetch(p->src, NULL, 0, 1, IM_F_FLAGS, full ? 0 : p->st.src_modseq, &sm) < 0)
		return sess_fail(p, p->src);
	if (full && im_fetch(p->tgt, NULL, 0, 1, IM_F_FLAGS, 0, &tm) < 0) {
		sess_fail(p, p->tgt);
		goto out;
	}
	ch = xmalloc((sm.n ? sm.n : 1) * sizeof(*ch));
	for (size_t i = 0, j = 0; i < sm.n; i++) {
		const struct im_pair *pr = im_state_find(&p->st, sm.v[i].uid);
		if (pr == NULL)
			continue;
		if (full) {
			while (j < tm.n && tm.v[j].uid < pr->tgt)
				j++;
			/* tm is sorted by target UID; pairs are nearly in the same order. */
			const struct im_msg *t = NULL;
			if (j < tm.n && tm.v[j].uid == pr->tgt)
				t = &tm.v[j];
			else {
				size_t lo = 0, hi = tm.n;
				while (lo < hi) {
					size_t mid = lo + (hi - lo) / 2;
					if (tm.v[mid].uid < pr->tgt)
						lo = mid + 1;
					else
						hi = mid;
				}
				if (lo < tm.n && tm.v[lo].uid == pr->tgt)
					t = &tm.v[lo];
				j = 0;
			}
			if (t != NULL && strcmp(t->flags, sm.v[i].flags) == 0)
				continue;
		}
		ch[n].tgt = pr->tgt;
		ch[n].flags = sm.v[i].flags;
		n++;
	}
	qsort(ch, n, sizeof(*ch), cmp_change);
	for (size_t i = 0; i < n;) {
		size_t k = i;
		struct im_uids u = { 0 };
		while (k < n && strcmp(ch[k].flags, ch[i].flags) == 0)
			im_uids_add(&u, ch[k++].tgt);
		int r = im_store_flags(p->tgt, u.v, u.n, ch[i].flags);
		im_uids_free(&u);
		if (r < 0) {
			sess_fail(p, p->tgt);
			goto out;
		}
		atomic_fetch_add(&p->env->c->flag_updates, k - i);
		i = k;
	}
done:
	if (p->s.highestmodseq > 0 && jlog(p, "Q %" PRIu64, p->s.highestmodseq) < 0)
		goto out;
	rc = 0;
out:
	free(ch);
	im_msgs_free(&sm);
	im_msgs_free(&tm);
	return rc;
}

/*
 * Step 5.  With QRESYNC, the UIDs VANISHED since the modseq of the last
 * pass; otherwise (or when the count still disagrees after them) every
 * source UID, compared with the map.
 */
static int
sync_expunges(struct pass *p, bool by_vanished)
{
	struct im_uids all = { 0 }, gone_src = { 0 }, gone_tgt = { 0 };
	int rc = -1;

	if (by_vanished) {
		if (im_vanished(p->src, p->modseq_before, p->s.uidnext, &all) < 0)
			return sess_fail(p, p->src);
		for (size_t i = 0, j = 0; i < p->st.n_map; i++) {
			while (j < all.n && all.v[j] < p->st.map[i].src)
				j++;
			if (j < all.n && all.v[j] == p->st.map[i].src) {
				im_uids_add(&gone_src, p->st.map[i].src);
				im_uids_add(&gone_tgt, p->st.map[i].tgt);
			}
		}
	} else {
		if (im_search_from(p->src, 1, &all) < 0)
			return sess_fail(p, p->src);
		for (size_t i = 0, j = 0; i < p->st.n_map; i++) {
			while (j < all.n && all.v[j] < p->st.map[i].src)
				j++;
			if (j < all.n && all.v[j] == p->st.map[i].src)
				continue;
			im_uids_add(&gone_src, p->st.map[i].src);
			im_uids_add(&gone_tgt, p->st.map[i].tgt);
		}
	}
	if (gone_tgt.n > 0) {
		if (im_expunge_uids(p->tgt, gone_tgt.v, gone_tgt.n) < 0) {
			sess_fail(p, p->tgt);
			goto out;
		}
		for (size_t i = 0; i < gone_src.n; i++)
			if (jlog(p, "X %" PRIu32, gone_src.v[i]) < 0)
				goto out;
		atomic_fetch_add(&p->env->c->expunged, gone_tgt.n);
		st_info("user %s folder %s: %zu message(s) expunged on the standby (found by %s)",
			st_q(p->user), st_q(p->folder), gone_tgt.n, by_vanished ? "VANISHED" : "UID comparison");
	}
	rc = 0;
out:
	im_uids_free(&all);
	im_uids_free(&gone_src);
	im_uids_free(&gone_tgt);
	return rc;
}

/*
 * The standby lost copies (expunged there by someone else): drop them from
 * the map so that they are copied again, and say so.
 */
static int
check_target(struct pass *p, size_t *lost_r)
{
	struct im_uids all = { 0 };
	uint32_t lowest = 0;
	size_t lost = 0;
	int rc = -1;

	if (im_search_from(p->tgt, 1, &all) < 0)
		return sess_fail(p, p->tgt);
	for (size_t i = 0; i < p->st.n_map;) {
		uint32_t t = p->st.map[i].tgt, s = p->st.map[i].src;
		if (in_sorted(all.v, all.n, t)) {
			i++;
			continue;
		}
		if (jlog(p, "X %" PRIu32, s) < 0)
			goto out;
		if (lowest == 0 || s < lowest)
			lowest = s;
		lost++;
	}
	if (lost > 0) {
		st_warn("user %s folder %s: %zu message(s) were removed from the standby by someone "
			"else; copying them again", st_q(p->user), st_q(p->folder), lost);
		if (jlog(p, "U %" PRIu32, lowest) < 0)
			goto out;
	}
	*lost_r = lost;
	rc = 0;
out:
	im_uids_free(&all);
	return rc;
}

static int
folder_pass(struct pass *p)
{
	char *err = NULL;
	char *path = im_state_path(p->env->state_root, p->user, p->folder);
	char *dir = im_state_path(p->env->state_root, p->user, NULL);
	int rc;

	rc = st_mkdir_p(dir, 0700, &err);
	free(dir);
	/* A hashed state file keeps the folder's name, and must be this folder's. */
	if (im_state_file_hashed(p->folder))
		p->st.name = xstrdup(p->folder);
	if (rc == 0)
		rc = im_state_load(&p->st, path, p->env->src_node, &err);
	free(path);
	if (rc < 0)
		return state_fail(p, err);

	if (im_select(p->src, p->folder, true, &p->s) < 0)
		return sess_fail(p, p->src);
	if (im_select(p->tgt, p->folder, false, &p->t) < 0)
		return sess_fail(p, p->tgt);
	p->tgt_uidnext = p->t.uidnext;

	p->modseq_before = p->st.src_modseq;
	bool fresh = p->st.src_uidvalidity == 0 && p->st.n_map == 0;
	bool src_changed = !fresh && p->st.src_uidvalidity != p->s.uidvalidity;
	bool tgt_changed = !fresh && p->st.tgt_uidvalidity != p->t.uidvalidity;
	if (fresh && p->t.messages == 0 && !p->st.pending && p->st.journal_bytes == 0) {
		/*
		 * A first fill: no state, no journal, the standby's folder empty.
		 * Nothing is journaled until the checkpoint: after a crash before
		 * it, the next pass finds no state and a standby that is not empty
		 * and pairs the messages by content (step 1), so none is copied
		 * twice; and a fill costs no fdatasync per batch.
		 */
		p->st.unjournaled = true;
		p->first_fill = true;
		if (jlog(p, "V %" PRIu32 " %" PRIu32, p->s.uidvalidity, p->t.uidvalidity) < 0)
			return -1;
	} else if (fresh || src_changed || tgt_changed) {
		if (p->st.pending && jlog(p, "C") < 0)
			return -1;
		if (reconcile(p, src_changed && !tgt_changed) < 0)
			return -1;
	}
	if (p->st.pending && resolve_intents(p) < 0)
		return -1;
	if (copy_new(p) < 0 || sync_flags(p) < 0)
		return -1;
	if (p->s.messages != p->st.n_map) {
		bool vanished = im_sess_qresync(p->src) && p->modseq_before > 0 &&
				p->s.uidvalidity == p->st.src_uidvalidity;
		if (vanished && sync_expunges(p, true) < 0)
			return -1;
		/* libetpan keeps one VANISHED response only: the count has the last word. */
		if (p->s.messages != p->st.n_map) {
			if (vanished)
				st_info("user %s folder %s: VANISHED left %zu mapped for %" PRIu32
					" messages; comparing UIDs", st_q(p->user), st_q(p->folder),
					p->st.n_map, p->s.messages);
			if (sync_expunges(p, false) < 0)
				return -1;
		}
	}
	/*
	 * The standby's count, after what this pass did, tells whether it lost
	 * copies (not after a first fill: they were all just appended).
	 */
	struct im_status t2;
	size_t lost = 0;
	if (!p->first_fill && im_status(p->tgt, p->folder, &t2) == 0 && t2.messages < p->st.n_map &&
	    (check_target(p, &lost) < 0 || (lost > 0 && copy_new(p) < 0)))
		return -1;
	if (im_state_checkpoint(&p->st, &err) < 0)
		return state_fail(p, err);
	return 0;
}

void
im_conns_close(struct im_conns *c)
{
	im_sess_close(c->src);
	im_sess_close(c->tgt);
	free(c->user);
	memset(c, 0, sizeof(*c));
}

/*
 * C's sessions for USER, opened where C has none for USER (or they are too
 * old); *REUSED_R tells whether they served an earlier job.
 */
static int
conns_get(const struct im_env *env, struct im_conns *c, const char *user, bool need_tgt, bool *reused_r,
	  char **error_r)
{
	*reused_r = c->user != NULL;
	if (c->user != NULL && (strcmp(c->user, user) != 0 || c->src_login != env->src || c->tgt_login != env->tgt ||
				st_monotonic_ms() - c->used_ms > IM_CONNS_IDLE_MS || c->src == NULL ||
				im_sess_broken(c->src) || (c->tgt != NULL && im_sess_broken(c->tgt)))) {
		im_conns_close(c);
		*reused_r = false;
	}
	if (c->user == NULL) {
		c->user = xstrdup(user);
		c->src_login = env->src;
		c->tgt_login = env->tgt;
	}
	if (c->src == NULL && (c->src = im_sess_open(env->src, user, error_r)) == NULL)
		return -1;
	if (need_tgt && c->tgt == NULL && (c->tgt = im_sess_open(env->tgt, user, error_r)) == NULL)
		return -1;
	return 0;
}

/*
 * After a job: keep C's sessions when it went well; on failure drop them
 * and say whether the job is worth running again on new ones (it failed on
 * kept sessions that turned out broken: the server closed them meanwhile).
 */
static bool
conns_done(struct im_conns *c, int rc, bool reused)
{
	bool again = rc < 0 && reused && ((c->src && im_sess_broken(c->src)) || (c->tgt && im_sess_broken(c->tgt)));

	/*
	 * A kept session stays in its mailbox (the next job's SELECT replaces
	 * it, STATUS of it and tree passes unselect first); one whose server
	 * has no UNSELECT is closed.
	 */
	if (rc < 0 || (c->src != NULL && im_sess_park(c->src) != 0) || (c->tgt != NULL && im_sess_park(c->tgt) != 0))
		im_conns_close(c);
	else
		c->used_ms = st_monotonic_ms();
	return again;
}

/*
 * Run JOB (a folder or a tree pass) on C's sessions for USER (the standby's
 * only with NEED_TGT: JOB gets NULL else); once more on new sessions when
 * it failed on kept ones that turned out broken.  WHAT names the job in the
 * log line that says so.
 */
static int
with_conns(const struct im_env *env, struct im_conns *c, const char *user, bool need_tgt, const char *what,
	   int (*job)(struct im_sess *src, struct im_sess *tgt, void *arg, char **error_r), void *arg,
	   char **error_r)
{
	char *err = NULL;
	bool reused;
	int rc;

	for (int attempt = 0;; attempt++) {
		rc = conns_get(env, c, user, need_tgt, &reused, &err);
		if (rc == 0)
			rc = job(c->src, need_tgt ? c->tgt : NULL, arg, &err);
		if (!conns_done(c, rc, reused) || attempt > 0)
			break;
		st_info("user %s%s: a kept session was closed (%s); again on new ones", st_q(user), what,
			err ? err : "?");
		free(err);
		err = NULL;
	}
	if (rc < 0)
		st_set_error(error_r, "%s", err ? err : "pass failed");
	free(err);
	return rc;
}

static int
folder_job(struct im_sess *src, struct im_sess *tgt, void *arg, char **error_r)
{
	struct pass p = *(const struct pass *)arg;
	int rc;

	im_state_init(&p.st);
	p.src = src;
	p.tgt = tgt;
	rc = folder_pass(&p);
	if (rc < 0)
		st_set_error(error_r, "%s", p.err ? p.err : "folder pass failed");
	free(p.err);
	im_state_free(&p.st);
	return rc;
}

int
im_sync_folder(const struct im_env *env, struct im_conns *c, const char *user, const char *folder,
	       char **error_r)
{
	struct pass p = { .env = env, .user = user, .folder = folder };
	char *what = xasprintf(" folder %s", st_q(folder));
	int rc = with_conns(env, c, user, true, what, folder_job, &p, error_r);

	free(what);
	return rc;
}

/* -- the folder tree ----------------------------------------------------- */

struct known {
	char *name;		/* folder name (from the state file's name, or from inside a hashed one) */
	uint32_t src_uidvalidity, tgt_uidvalidity;
	uint32_t src_uidnext;
	uint64_t src_modseq;
	size_t n_map;
	bool seen;		/* still on the source */
};

static void
known_free(struct known *k, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(k[i].name);
	free(k);
}

/* Whether FILE (no suffix) is the state file name of folder NAME. */
static bool
name_is_file(const char *name, const char *file)
{
	char *f = im_state_file_name(name);
	bool same = strcmp(f, file) == 0;

	free(f);
	return same;
}

static int
load_known(const struct im_env *env, const char *user, struct known **out, size_t *n_out, char **error_r)
{
	char *dir = im_state_path(env->state_root, user, NULL);
	DIR *d = opendir(dir);
	struct known *v = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;

	*out = NULL;
	*n_out = 0;
	if (d == NULL) {
		free(dir);
		return 0;
	}
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		size_t len = strlen(e->d_name);
		if (len < 7 || strcmp(e->d_name + len - 6, ".state") != 0)
			continue;
		/* "x" and the name in hex, or "h" and its SHA-256 with the name inside (imname.h). */
		char *hex = xstrndup(e->d_name, len - 6), *name = im_name_unhex(hex);
		bool hashed = hex[0] == 'h' && len - 6 == 1 + IM_DIGEST_HEX - 1 &&
			      strspn(hex + 1, "0123456789abcdef") == IM_DIGEST_HEX - 1;
		if (name == NULL && !hashed) {
			free(hex);
			continue;
		}
		char *path = xasprintf("%s/%s", dir, hex), *err = NULL;
		struct im_state st;
		im_state_init(&st);
		if (im_state_load(&st, path, env->src_node, &err) < 0) {
			st_set_error(error_r, "user %s: %s", st_q(user), err);
			free(err);
			rc = -1;
		} else if (hashed && (st.name == NULL || !name_is_file(st.name, hex))) {
			st_set_error(error_r, "user %s: %s.state names no folder, or another folder than its "
				     "file name says (remove it: the folder is paired by content again)",
				     st_q(user), path);
			rc = -1;
		} else {
			if (hashed) {
				name = st.name;
				st.name = NULL;
			}
			if (n == cap) {
				cap = cap ? 2 * cap : 16;
				v = xrealloc(v, cap * sizeof(*v));
			}
			v[n++] = (struct known){ .name = name, .src_uidvalidity = st.src_uidvalidity,
						 .tgt_uidvalidity = st.tgt_uidvalidity,
						 .src_uidnext = st.src_uidnext, .src_modseq = st.src_modseq,
						 .n_map = st.n_map };
			name = NULL;
		}
		im_state_free(&st);
		free(path);
		free(hex);
		free(name);
		if (rc < 0)
			break;
	}
	closedir(d);
	free(dir);
	if (rc < 0) {
		known_free(v, n);
		return -1;
	}
	*out = v;
	*n_out = n;
	return 0;
}

static const struct im_folder *
find_folder(const struct im_folders *f, const char *name)
{
	for (size_t i = 0; i < f->n; i++)
		if (strcmp(f->v[i].name, name) == 0)
			return &f->v[i];
	return NULL;
}

static struct known *
find_known(struct known *k, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(k[i].name, name) == 0)
			return &k[i];
	return NULL;
}

/* Whether the space-separated words of A and B are the same set (NULL: none). */
static bool
same_words(const char *a, const char *b)
{
	for (int pass = 0; pass < 2; pass++) {
		const char *x = pass ? b : a, *y = pass ? a : b;
		for (const char *p = x ? x : ""; *p;) {
			size_t len = strcspn(p, " ");
			bool found = false;
			for (const char *q = y ? y : ""; *q && !found;) {
				size_t l2 = strcspn(q, " ");
				found = l2 == len && strncasecmp(p, q, len) == 0;
				q += l2;
				q += strspn(q, " ");
			}
			if (len > 0 && !found)
				return false;
			p += len;
			p += strspn(p, " ");
		}
	}
	return true;
}

static bool
is_inbox(const char *name)
{
	return strcasecmp(name, "INBOX") == 0;
}

static int
cmp_depth_desc(const void *a, const void *b)
{
	size_t x = strlen(*(char *const *)a), y = strlen(*(char *const *)b);
	return x < y ? 1 : x > y ? -1 : 0;
}

/*
 * A state file that keeps its folder's name (a hashed one, imname.h) cannot
 * be renamed: FROM's state is loaded (its journal replayed), written for TO
 * (a stale journal of TO removed first), and FROM's files removed.  A
 * crash in between leaves both, and FROM's is dropped by the next tree
 * pass as a folder gone from the master and the standby.
 */
static int
rewrite_state(const struct im_env *env, const char *user, const char *from, const char *to, const char *a,
	      const char *b, char **error_r)
{
	struct im_state st;
	char *bs = xasprintf("%s.state", b), *bj = xasprintf("%s.journal", b), *text = NULL;
	size_t len;
	int rc = -1;

	im_state_init(&st);
	if (im_state_file_hashed(from))
		st.name = xstrdup(from);
	if (im_state_load(&st, a, env->src_node, error_r) < 0)
		goto out;
	free(st.name);
	st.name = im_state_file_hashed(to) ? xstrdup(to) : NULL;
	text = im_state_format(&st, &len);
	if (unlink(bj) < 0 && errno != ENOENT) {
		st_set_error(error_r, "cannot remove %s: %s", bj, strerror(errno));
		goto out;
	}
	if (st_durable_write(bs, text, len, 0600, error_r) < 0 || im_state_remove(a, error_r) < 0)
		goto out;
	st_debug("user %s: state of folder %s now kept as %s", st_q(user), st_q(to), bs);
	rc = 0;
out:
	free(text);
	free(bs);
	free(bj);
	im_state_free(&st);
	return rc;
}

static int
rename_state(const struct im_env *env, const char *user, const char *from, const char *to, char **error_r)
{
	char *a = im_state_path(env->state_root, user, from), *b = im_state_path(env->state_root, user, to);
	int rc = 0;

	if (im_state_file_hashed(from) || im_state_file_hashed(to)) {
		rc = rewrite_state(env, user, from, to, a, b, error_r);
		free(a);
		free(b);
		return rc;
	}
	for (int i = 0; i < 2 && rc == 0; i++) {
		const char *suffix = i == 0 ? ".journal" : ".state";
		char *x = xasprintf("%s%s", a, suffix), *y = xasprintf("%s%s", b, suffix);
		if (rename(x, y) < 0 && errno != ENOENT) {
			st_set_error(error_r, "cannot rename %s to %s: %s", x, y, strerror(errno));
			rc = -1;
		}
		if (rc == 0 && i == 1 && st_fsync_parent_dir(y, error_r) < 0)
			rc = -1;
		free(x);
		free(y);
	}
	free(a);
	free(b);
	return rc;
}

/* -- the listing digest (the quick check, imsync.h) ----------------------- */

static int
cmp_line(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * The SHA-256 (hex) of what the master shows of a user's tree: every
 * folder's name, attributes and STATUS (SL, STAT), and the subscriptions
 * (SS), in name order.  False where it cannot tell every change: a
 * selectable folder without HIGHESTMODSEQ (flag changes leave UIDNEXT and
 * MESSAGES alone).
 */
static bool
listing_digest(const struct im_folders *sl, const struct im_folders *ss, const struct im_status *stat,
	       char out[IM_DIGEST_HEX])
{
	size_t n = sl->n + ss->n;
	char **lines = xcalloc(n + 1, sizeof(*lines));
	bool usable = true;

	for (size_t i = 0; i < sl->n; i++) {
		char *hex = im_name_hex(sl->v[i].name);
		if (sl->v[i].noselect)
			lines[i] = xasprintf("F %s noselect\n", hex);
		else
			lines[i] = xasprintf("F %s %s %" PRIu32 " %" PRIu32 " %" PRIu32 " %" PRIu64 "\n", hex,
					     sl->v[i].special ? sl->v[i].special : "-", stat[i].uidvalidity,
					     stat[i].uidnext, stat[i].messages, stat[i].highestmodseq);
		if (!sl->v[i].noselect && stat[i].highestmodseq == 0)
			usable = false;
		free(hex);
	}
	for (size_t i = 0; i < ss->n; i++) {
		char *hex = im_name_hex(ss->v[i].name);
		lines[sl->n + i] = xasprintf("S %s\n", hex);
		free(hex);
	}
	qsort(lines, n, sizeof(*lines), cmp_line);

	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char md[IM_KEY_LEN];
	unsigned len = 0;
	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		fprintf(stderr, "standin: out of memory (SHA-256)\n");
		abort();
	}
	for (size_t i = 0; i < n; i++) {
		EVP_DigestUpdate(ctx, lines[i], strlen(lines[i]));
		free(lines[i]);
	}
	EVP_DigestFinal_ex(ctx, md, &len);
	EVP_MD_CTX_free(ctx);
	free(lines);
	im_key_hex(md, out);
	return usable;
}

static char *
listing_path(const struct im_env *env, const char *user)
{
	char *dir = im_state_path(env->state_root, user, NULL);
	char *path = xasprintf("%s/listing", dir);

	free(dir);
	return path;
}

int
im_listing_save(const struct im_env *env, const char *user, const char *digest, char **error_r)
{
	char *dir = im_state_path(env->state_root, user, NULL), *path = listing_path(env, user);
	char *text = xasprintf("%s\n", digest);
	int rc = st_mkdir_p(dir, 0700, error_r);

	if (rc == 0)
		rc = st_durable_write(path, text, strlen(text), 0600, error_r);
	free(text);
	free(path);
	free(dir);
	return rc;
}

/* The digest saved for USER: true, or false when there is none (or it is unreadable). */
static bool
listing_load(const struct im_env *env, const char *user, char out[IM_DIGEST_HEX])
{
	char *path = listing_path(env, user), *text = NULL, *err = NULL;
	size_t len = 0;
	bool ok = false;

	if (st_read_file(path, 4096, &text, &len, &err) == 0 && len == IM_DIGEST_HEX &&
	    text[IM_DIGEST_HEX - 1] == '\n' && strspn(text, "0123456789abcdef") == IM_DIGEST_HEX - 1) {
		memcpy(out, text, IM_DIGEST_HEX - 1);
		out[IM_DIGEST_HEX - 1] = '\0';
		ok = true;
	}
	free(err);
	free(text);
	free(path);
	return ok;
}

struct quick {
	const char *user;
	char digest[IM_DIGEST_HEX];
	bool usable;
	uint64_t messages;
	size_t folders;
};

/* The quick check's work, on the master's session only: LIST, LSUB, STATUS each. */
static int
quick_job(struct im_sess *src, struct im_sess *tgt, void *arg, char **error_r)
{
	struct quick *q = arg;
	struct im_folders sl = { 0 }, ss = { 0 };
	struct im_status *stat = NULL;
	int rc = -1;

	(void)tgt;
	if (im_list(src, false, &sl) < 0 || im_list(src, true, &ss) < 0) {
		st_set_error(error_r, "%s", im_sess_error(src));
		goto out;
	}
	stat = xcalloc(sl.n + 1, sizeof(*stat));
	q->messages = 0;
	q->folders = 0;
	for (size_t i = 0; i < sl.n; i++) {
		if (sl.v[i].noselect)
			continue;
		if (im_status(src, sl.v[i].name, &stat[i]) < 0) {
			st_set_error(error_r, "user %s: %s", st_q(q->user), im_sess_error(src));
			goto out;
		}
		q->messages += stat[i].messages;
		q->folders++;
	}
	q->usable = listing_digest(&sl, &ss, stat, q->digest);
	rc = 0;
out:
	free(stat);
	im_folders_free(&sl);
	im_folders_free(&ss);
	return rc;
}

/*
 * Drop from F the folders whose names cannot be sent (imname.h); with
 * REFUSED, say which and why there (the master's folders: they are not
 * replicated).  The standby's are only left alone.
 */
static void
drop_refused(struct im_folders *f, const char *user, const char *what, struct st_buf *refused)
{
	size_t o = 0;

	for (size_t i = 0; i < f->n; i++) {
		const char *why = im_mailbox_refusal(f->v[i].name);
		if (why == NULL) {
			f->v[o++] = f->v[i];
			continue;
		}
		if (refused != NULL)
			st_buf_printf(refused, "%suser %s folder %s on the master is not replicated: its name %s",
				      refused->len ? "; " : "", st_q(user), st_q(f->v[i].name), why);
		else
			st_debug("user %s: %s %s left alone: its name %s", st_q(user), what,
				 st_q(f->v[i].name), why);
		free(f->v[i].name);
		free(f->v[i].special);
	}
	f->n = o;
}

static int
tree_pass(const struct im_env *env, struct im_sess *src, struct im_sess *tgt, const char *user,
	  struct im_tree *out, char **error_r)
{
	struct im_folders sl = { 0 }, tl = { 0 }, ss = { 0 }, ts = { 0 };
	struct known *known = NULL;
	size_t n_known = 0;
	struct im_status *stat = NULL;
	char *err = NULL;
	char **gone = NULL;
	size_t n_gone = 0;
	int rc = -1;

	memset(out, 0, sizeof(*out));
	if (im_list(src, false, &sl) < 0 || im_list(src, true, &ss) < 0) {
		err = xstrdup(im_sess_error(src));
		goto out;
	}
	if (im_list(tgt, false, &tl) < 0 || im_list(tgt, true, &ts) < 0) {
		err = xstrdup(im_sess_error(tgt));
		goto out;
	}
	if (load_known(env, user, &known, &n_known, &err) < 0)
		goto out;
	/* Names no command may carry: said for the master's folders, which are not replicated. */
	struct st_buf refused;
	st_buf_init(&refused);
	drop_refused(&sl, user, "folder", &refused);
	drop_refused(&ss, user, "the master's subscription to", NULL);
	drop_refused(&tl, user, "the standby's folder", NULL);
	drop_refused(&ts, user, "the standby's subscription to", NULL);
	for (size_t k = 0; k < n_known;) {
		if (im_mailbox_refusal(known[k].name) == NULL) {
			k++;
			continue;
		}
		st_warn("user %s: a state is kept for folder %s, whose name no command may carry; ignored",
			st_q(user), st_q(known[k].name));
		free(known[k].name);
		known[k] = known[--n_known];
	}
	if (refused.len > 0)
		out->refused = st_buf_steal(&refused);
	st_buf_free(&refused);

	/* STATUS of every selectable source folder. */
	stat = xcalloc(sl.n + 1, sizeof(*stat));
	for (size_t i = 0; i < sl.n; i++) {
		if (sl.v[i].noselect)
			continue;
		if (im_status(src, sl.v[i].name, &stat[i]) < 0) {
			err = xasprintf("user %s: %s", st_q(user), im_sess_error(src));
			/* Renamed or deleted since the LIST: the caller lists again. */
			struct im_folders again = { 0 };
			if (!im_sess_broken(src) && im_list(src, false, &again) == 0 &&
			    find_folder(&again, sl.v[i].name) == NULL)
				rc = 1;
			im_folders_free(&again);
			goto out;
		}
	}

	/*
	 * What a later quick check compares with, once everything listed is
	 * copied; none while a folder is refused, so that every pass says so.
	 */
	if (!listing_digest(&sl, &ss, stat, out->digest) || out->refused != NULL)
		out->digest[0] = '\0';

	/* Folders gone from the source: renamed, or deleted. */
	gone = xcalloc(n_known + 1, sizeof(*gone));
	for (size_t k = 0; k < n_known; k++) {
		const struct im_folder *f = find_folder(&sl, known[k].name);
		if (f != NULL && !f->noselect)
			continue;
		/* A rename: exactly one new source folder with the same UIDVALIDITY. */
		ssize_t cand = -1;
		int count = 0;
		for (size_t i = 0; i < sl.n; i++) {
			if (sl.v[i].noselect || find_known(known, n_known, sl.v[i].name) ||
			    find_folder(&tl, sl.v[i].name) || stat[i].uidvalidity != known[k].src_uidvalidity ||
			    stat[i].uidnext < known[k].src_uidnext)
				continue;
			cand = (ssize_t)i;
			count++;
		}
		int same_validity = 0;
		for (size_t j = 0; j < n_known; j++)
			if (known[j].src_uidvalidity == known[k].src_uidvalidity)
				same_validity++;
		if (count == 1 && same_validity == 1 && find_folder(&tl, known[k].name) && !is_inbox(known[k].name)) {
			const char *to = sl.v[cand].name;
			st_notice("user %s: folder %s was renamed to %s on the master; renaming it on the standby",
				  st_q(user), st_q(known[k].name), st_q(to));
			if (im_rename(tgt, known[k].name, to) < 0) {
				err = xasprintf("user %s: %s", st_q(user), im_sess_error(tgt));
				goto out;
			}
			if (rename_state(env, user, known[k].name, to, &err) < 0)
				goto out;
			free(known[k].name);
			known[k].name = xstrdup(to);
			atomic_fetch_add(&env->c->folders_renamed, 1);
			/* The target's list changed: it now has TO (and not FROM). */
			im_folders_free(&tl);
			if (im_list(tgt, false, &tl) < 0) {
				err = xstrdup(im_sess_error(tgt));
				goto out;
			}
			continue;
		}
		gone[n_gone++] = known[k].name;
	}
	qsort(gone, n_gone, sizeof(*gone), cmp_depth_desc);
	for (size_t i = 0; i < n_gone; i++) {
		if (is_inbox(gone[i]))
			continue;
		if (find_folder(&tl, gone[i])) {
			st_notice("user %s: folder %s was deleted on the master; deleting it on the standby",
				  st_q(user), st_q(gone[i]));
			if (im_delete(tgt, gone[i]) < 0) {
				err = xasprintf("user %s: %s", st_q(user), im_sess_error(tgt));
				goto out;
			}
			atomic_fetch_add(&env->c->folders_deleted, 1);
		}
		char *path = im_state_path(env->state_root, user, gone[i]);
		int r = im_state_remove(path, &err);
		free(path);
		if (r < 0)
			goto out;
	}

	/* Folders new on the source, with their special use where the standby takes it. */
	size_t unset_special = 0;
	for (size_t i = 0; i < sl.n; i++) {
		const struct im_folder *tf = find_folder(&tl, sl.v[i].name);
		bool set;

		if (sl.v[i].noselect)
			continue;
		if (tf != NULL) {
			if (!same_words(sl.v[i].special, tf->special))
				st_debug("user %s: folder %s is %s on the master, %s on the standby", st_q(user),
					 st_q(sl.v[i].name), sl.v[i].special ? sl.v[i].special : "of no special use",
					 tf->special ? tf->special : "of no special use");
			continue;
		}
		if (im_create_special(tgt, sl.v[i].name, sl.v[i].special, &set) < 0) {
			err = xasprintf("user %s: %s", st_q(user), im_sess_error(tgt));
			goto out;
		}
		if (sl.v[i].special != NULL && !set)
			unset_special++;
		atomic_fetch_add(&env->c->folders_created, 1);
	}
	if (unset_special > 0) {
		/* The standby's server may give them their special use from its configuration. */
		struct im_folders now = { 0 };
		if (im_list(tgt, false, &now) < 0) {
			err = xasprintf("user %s: %s", st_q(user), im_sess_error(tgt));
			goto out;
		}
		for (size_t i = 0; i < sl.n; i++) {
			const struct im_folder *nf = find_folder(&now, sl.v[i].name);
			if (sl.v[i].noselect || sl.v[i].special == NULL || find_folder(&tl, sl.v[i].name) ||
			    nf == NULL || same_words(sl.v[i].special, nf->special))
				continue;
			st_notice("user %s: folder %s is %s on the master, %s on the standby, whose server cannot "
				  "be told so over IMAP (no CREATE-SPECIAL-USE): give it the same special use in "
				  "its own configuration (Dovecot: special_use in the namespace's mailbox section)",
				  st_q(user), st_q(sl.v[i].name), sl.v[i].special,
				  nf->special ? nf->special : "of no special use");
		}
		im_folders_free(&now);
	}
	for (size_t i = 0; i < tl.n; i++)
		if (!tl.v[i].noselect && !find_folder(&sl, tl.v[i].name) && !find_known(known, n_known, tl.v[i].name))
			st_debug("user %s: the standby has folder %s, which the master does not; left alone",
				 st_q(user), st_q(tl.v[i].name));

	/* Subscriptions. */
	for (size_t i = 0; i < ss.n; i++) {
		if (find_folder(&ts, ss.v[i].name))
			continue;
		if (im_subscribe(tgt, ss.v[i].name, true) < 0) {
			err = xasprintf("user %s: %s", st_q(user), im_sess_error(tgt));
			goto out;
		}
		atomic_fetch_add(&env->c->subscriptions, 1);
	}
	for (size_t i = 0; i < ts.n; i++) {
		if (find_folder(&ss, ts.v[i].name))
			continue;
		if (im_subscribe(tgt, ts.v[i].name, false) < 0) {
			err = xasprintf("user %s: %s", st_q(user), im_sess_error(tgt));
			goto out;
		}
		atomic_fetch_add(&env->c->subscriptions, 1);
	}

	/* What each folder needs. */
	out->v = xcalloc(sl.n + 1, sizeof(*out->v));
	for (size_t i = 0; i < sl.n; i++) {
		if (sl.v[i].noselect)
			continue;
		const struct known *k = find_known(known, n_known, sl.v[i].name);
		struct im_todo *t = &out->v[out->n++];
		t->folder = xstrdup(sl.v[i].name);
		out->messages += stat[i].messages;
		out->folders++;
		if (k == NULL) {
			t->changed = true;
			t->behind = stat[i].messages;
			continue;
		}
		t->behind = stat[i].messages > k->n_map ? stat[i].messages - k->n_map : 0;
		t->changed = k->src_uidvalidity != stat[i].uidvalidity || k->src_uidnext != stat[i].uidnext ||
			     k->n_map != stat[i].messages || stat[i].highestmodseq == 0 ||
			     k->src_modseq != stat[i].highestmodseq;
		if (!t->changed) {
			/* The standby's side: recreated, or messages removed there. */
			struct im_status ts_;
			if (im_status(tgt, sl.v[i].name, &ts_) < 0) {
				err = xasprintf("user %s: %s", st_q(user), im_sess_error(tgt));
				goto out;
			}
			t->changed = ts_.uidvalidity != k->tgt_uidvalidity || ts_.messages != k->n_map;
		}
	}
	rc = 0;
out:
	if (rc != 0) {
		st_set_error(error_r, "%s", err ? err : "folder tree pass failed");
		im_tree_free(out);
	}
	free(err);
	free(gone);
	free(stat);
	known_free(known, n_known);
	im_folders_free(&sl);
	im_folders_free(&tl);
	im_folders_free(&ss);
	im_folders_free(&ts);
	return rc;
}

struct tree_job {
	const struct im_env *env;
	const char *user;
	struct im_tree *out;
};

/* A tree pass, listed again (at most 5 times) when the master's folders changed under it. */
static int
tree_job(struct im_sess *src, struct im_sess *tgt, void *arg, char **error_r)
{
	const struct tree_job *t = arg;
	int rc;

	/* Folders are created, renamed and deleted from no mailbox. */
	if (im_unselect(src) < 0 || (tgt != NULL && im_unselect(tgt) < 0)) {
		st_set_error(error_r, "%s", im_sess_error(im_sess_broken(src) ? src : tgt));
		return -1;
	}
	for (int changed = 0;; changed++) {
		rc = tree_pass(t->env, src, tgt, t->user, t->out, error_r);
		if (rc != 1 || changed == 5)
			break;
		st_debug("user %s: the master's folders changed during the tree pass (%s); again",
			 st_q(t->user), *error_r);
	}
	return rc > 0 ? -1 : rc;
}

int
im_sync_tree(const struct im_env *env, struct im_conns *c, const char *user, bool quick, struct im_tree *out,
	     char **error_r)
{
	struct tree_job t = { env, user, out };
	char saved[IM_DIGEST_HEX];

	memset(out, 0, sizeof(*out));
	if (quick && listing_load(env, user, saved)) {
		struct quick q = { .user = user };
		if (with_conns(env, c, user, false, "", quick_job, &q, error_r) < 0)
			return -1;
		if (q.usable && strcmp(q.digest, saved) == 0) {
			out->unchanged = true;
			out->messages = q.messages;
			out->folders = q.folders;
			return 0;
		}
	}
	return with_conns(env, c, user, true, "", tree_job, &t, error_r);
}
