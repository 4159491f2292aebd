/*
 * ldqueue.h: the order in which changes from the sync stream may be applied
 * to the standby.  No network here: ldapply.c drives the items, this module
 * only says which may start, which must wait, and which cookie is covered.
 *
 * slapd runs the operations of one connection concurrently, so pipelined
 * operations complete in any order.  An item may start only when no earlier
 * unfinished item touches the same entry (entryUUID) or a DN above, below or
 * equal to its own; an item whose standby DN turns out to differ (a rename)
 * checks again before it writes.  An item that fails in a way an earlier
 * item could explain (entry exists, parent missing, has children) is retried
 * once every earlier item is done.  A cookie becomes "applied" when every
 * item pushed before it is done.
 *
 * Memory: the queue owns its items (ldq_item_free frees their fields) and
 * cookies.
 */
#ifndef STANDIN_LDQUEUE_H
#define STANDIN_LDQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "replicators/ldap/ldentry.h"
#include "replicators/ldap/ldsync.h"

enum ldq_kind {
	LDQ_UPSERT,		/* add or modify (and rename) to the master's entry */
	LDQ_DELETE,		/* delete by entryUUID */
};

enum ldq_state {
	LDQ_WAITING,		/* not started */
	LDQ_RUNNING,		/* operations in flight */
	LDQ_PARKED,		/* looked up; waits for earlier items before writing */
	LDQ_DONE,
};

struct ldq_item {
	uint64_t seq;
	enum ldq_kind kind;
	enum ldq_state state;
	uint8_t uuid[LDSYNC_UUID_LEN];
	char *dn;			/* the master's DN, NULL when unknown (delete by UUID) */
	char *old_dn;			/* the standby's DN once looked up, if different */
	struct lde_entry *entry;	/* UPSERT: the master's entry */
	bool wait_all;			/* start only when every earlier item is done */
	unsigned retries;
	void *data;			/* the driver's */
};

struct ldq {
	struct ldq_item **items;	/* ring of unfinished and not yet popped items */
	size_t cap, head, count;
	size_t max_items;
	uint64_t next_seq;
	struct ldq_cookie_mark {
		uint64_t after_seq;	/* covered once every item <= after_seq is done */
		struct ldsync_cookie cookie;
	} *cookies;
	size_t n_cookies;
	struct ldsync_cookie applied;	/* the newest cookie whose items are all done */
	bool applied_changed;		/* since ldq_take_applied() */
	uint64_t done_items;
	bool ordered;			/* writes in order (ldq_set_ordered) */
};

void ldq_init(struct ldq *q, size_t max_items);
void ldq_clear(struct ldq *q);

bool ldq_full(const struct ldq *q);
/* The unfinished (or not yet popped) item I, oldest first (I < ldq_count). */
struct ldq_item *ldq_at(const struct ldq *q, size_t i);
bool ldq_idle(const struct ldq *q);	/* nothing unfinished */
size_t ldq_count(const struct ldq *q);

/* A new item (owned by the queue from now on): UUID, DN (may be NULL for a
 * delete), ENTRY (UPSERT; taken over). */
struct ldq_item *ldq_push(struct ldq *q, enum ldq_kind kind, const uint8_t uuid[LDSYNC_UUID_LEN],
			  const char *dn, struct lde_entry *entry);

/* COOKIE is covered once everything pushed so far is done. */
void ldq_push_cookie(struct ldq *q, const struct ldsync_cookie *cookie);

/*
 * The first item that may proceed now: a WAITING one that may start, or a
 * PARKED one that may write.  The caller sets its state to RUNNING and goes
 * on with it; NULL when none.
 */
struct ldq_item *ldq_next(struct ldq *q);

/* Would ITEM, with its DNs as known now, write safely (no earlier unfinished
 * item conflicts)?  false: park it (state PARKED) until ldq_next returns it. */
bool ldq_may_write(const struct ldq *q, const struct ldq_item *item);

/*
 * Ordered (the default after ldq_init: off): an item writes only once every
 * earlier item is done, so that a change the standby refuses has nothing
 * after it applied (lookups still go ahead).  Off: the DN and entryUUID
 * rules above only (a refresh from scratch, whose order is not the
 * master's anyway).
 */
void ldq_set_ordered(struct ldq *q, bool ordered);

/* Does an earlier item remain unfinished? */
bool ldq_has_earlier(const struct ldq *q, const struct ldq_item *item);

/* Start ITEM again once every earlier item is done. */
void ldq_retry_later(struct ldq *q, struct ldq_item *item);

/* ITEM is applied; pops finished items and releases covered cookies. */
void ldq_done(struct ldq *q, struct ldq_item *item);

/* The newest covered cookie, if it changed since the last call; false when
 * it did not. */
bool ldq_take_applied(struct ldq *q, struct ldsync_cookie *out);

void ldq_item_set_old_dn(struct ldq_item *item, const char *old_dn);

#endif
