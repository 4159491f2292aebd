/*
 * ldqueue.c: which change may be applied now (see ldqueue.h).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "replicators/ldap/ldqueue.h"

void
ldq_init(struct ldq *q, size_t max_items)
{
	memset(q, 0, sizeof(*q));
	q->max_items = max_items > 0 ? max_items : 1;
	q->cap = 16;
	while (q->cap < q->max_items)
		q->cap *= 2;
	q->items = xcalloc(q->cap, sizeof(*q->items));
	q->next_seq = 1;
}

static void
item_free(struct ldq_item *it)
{
	free(it->dn);
	free(it->old_dn);
	lde_entry_free(&it->entry);
	free(it);
}

void
ldq_clear(struct ldq *q)
{
	for (size_t i = 0; i < q->count; i++)
		item_free(q->items[(q->head + i) & (q->cap - 1)]);
	free(q->items);
	for (size_t i = 0; i < q->n_cookies; i++)
		ldsync_cookie_clear(&q->cookies[i].cookie);
	free(q->cookies);
	ldsync_cookie_clear(&q->applied);
	memset(q, 0, sizeof(*q));
}

static struct ldq_item *
at(const struct ldq *q, size_t i)
{
	return q->items[(q->head + i) & (q->cap - 1)];
}

struct ldq_item *
ldq_at(const struct ldq *q, size_t i)
{
	return at(q, i);
}

bool
ldq_full(const struct ldq *q)
{
	return q->count >= q->max_items;
}

size_t
ldq_count(const struct ldq *q)
{
	return q->count;
}

bool
ldq_idle(const struct ldq *q)
{
	for (size_t i = 0; i < q->count; i++)
		if (at(q, i)->state != LDQ_DONE)
			return false;
	return true;
}

struct ldq_item *
ldq_push(struct ldq *q, enum ldq_kind kind, const uint8_t uuid[LDSYNC_UUID_LEN], const char *dn,
	 struct lde_entry *entry)
{
	struct ldq_item *it = xcalloc(1, sizeof(*it));

	if (q->count == q->cap) {	/* only when the caller ignores ldq_full() */
		struct ldq_item **items = xcalloc(q->cap * 2, sizeof(*items));
		for (size_t i = 0; i < q->count; i++)
			items[i] = at(q, i);
		free(q->items);
		q->items = items;
		q->head = 0;
		q->cap *= 2;
	}
	it->seq = q->next_seq++;
	it->kind = kind;
	it->state = LDQ_WAITING;
	memcpy(it->uuid, uuid, LDSYNC_UUID_LEN);
	it->dn = dn != NULL ? xstrdup(dn) : NULL;
	it->entry = entry;
	q->items[(q->head + q->count) & (q->cap - 1)] = it;
	q->count++;
	return it;
}

/* The cookies covered now: every item up to their mark is done. */
static void
release_cookies(struct ldq *q)
{
	uint64_t first_unfinished = q->next_seq;
	size_t keep = 0;

	for (size_t i = 0; i < q->count; i++) {
		if (at(q, i)->state != LDQ_DONE) {
			first_unfinished = at(q, i)->seq;
			break;
		}
	}
	for (size_t i = 0; i < q->n_cookies; i++) {
		struct ldq_cookie_mark *c = &q->cookies[i];
		if (c->after_seq < first_unfinished) {
			ldsync_cookie_clear(&q->applied);
			q->applied = c->cookie;		/* moved; later marks are newer */
			memset(&c->cookie, 0, sizeof(c->cookie));
			q->applied_changed = true;
		} else {
			q->cookies[keep++] = *c;
		}
	}
	q->n_cookies = keep;
}

void
ldq_push_cookie(struct ldq *q, const struct ldsync_cookie *cookie)
{
	q->cookies = xrealloc(q->cookies, (q->n_cookies + 1) * sizeof(*q->cookies));
	struct ldq_cookie_mark *c = &q->cookies[q->n_cookies++];
	c->after_seq = q->next_seq - 1;
	memset(&c->cookie, 0, sizeof(c->cookie));
	ldsync_cookie_copy(&c->cookie, cookie);
	release_cookies(q);
}

static bool
related(const char *a, const char *b)
{
	return a != NULL && b != NULL && lde_dn_related(a, b);
}

/* Must LATER wait for EARLIER (both unfinished)? */
static bool
conflicts(const struct ldq_item *later, const struct ldq_item *earlier)
{
	if (later->wait_all)
		return true;
	if (memcmp(later->uuid, earlier->uuid, LDSYNC_UUID_LEN) == 0)
		return true;
	/* An item whose DN is not known yet could be anywhere. */
	if ((later->dn == NULL && later->old_dn == NULL) ||
	    (earlier->dn == NULL && earlier->old_dn == NULL))
		return true;
	return related(later->dn, earlier->dn) || related(later->dn, earlier->old_dn) ||
	       related(later->old_dn, earlier->dn) || related(later->old_dn, earlier->old_dn);
}

static bool
blocked(const struct ldq *q, size_t idx)
{
	const struct ldq_item *it = at(q, idx);

	for (size_t i = 0; i < idx; i++) {
		const struct ldq_item *e = at(q, i);
		if (e->state != LDQ_DONE && conflicts(it, e))
			return true;
	}
	return false;
}

static bool
find(const struct ldq *q, const struct ldq_item *item, size_t *idx_r)
{
	if (q->count == 0 || item->seq < at(q, 0)->seq)
		return false;
	size_t idx = (size_t)(item->seq - at(q, 0)->seq);
	if (idx >= q->count || at(q, idx) != item)
		return false;
	*idx_r = idx;
	return true;
}

/* May the item at IDX write now? */
static bool
may_write_at(const struct ldq *q, size_t idx)
{
	if (!q->ordered)
		return !blocked(q, idx);
	for (size_t i = 0; i < idx; i++)
		if (at(q, i)->state != LDQ_DONE)
			return false;
	return true;
}

struct ldq_item *
ldq_next(struct ldq *q)
{
	for (size_t i = 0; i < q->count; i++) {
		struct ldq_item *it = at(q, i);
		if (it->state == LDQ_WAITING && !blocked(q, i))
			return it;
		if (it->state == LDQ_PARKED && may_write_at(q, i))
			return it;
	}
	return NULL;
}

bool
ldq_may_write(const struct ldq *q, const struct ldq_item *item)
{
	size_t idx;

	return !find(q, item, &idx) || may_write_at(q, idx);
}

void
ldq_set_ordered(struct ldq *q, bool ordered)
{
	q->ordered = ordered;
}

bool
ldq_has_earlier(const struct ldq *q, const struct ldq_item *item)
{
	size_t idx;

	if (!find(q, item, &idx))
		return false;
	for (size_t i = 0; i < idx; i++)
		if (at(q, i)->state != LDQ_DONE)
			return true;
	return false;
}

void
ldq_retry_later(struct ldq *q, struct ldq_item *item)
{
	(void)q;
	item->state = LDQ_WAITING;
	item->wait_all = true;
	item->retries++;
	free(item->old_dn);
	item->old_dn = NULL;
}

void
ldq_done(struct ldq *q, struct ldq_item *item)
{
	item->state = LDQ_DONE;
	lde_entry_free(&item->entry);	/* the biggest part; the rest goes when popped */
	q->done_items++;
	while (q->count > 0 && at(q, 0)->state == LDQ_DONE) {
		struct ldq_item *it = at(q, 0);
		q->head = (q->head + 1) & (q->cap - 1);
		q->count--;
		/* Keep the cookie marks' view: the popped seq is done. */
		item_free(it);
	}
	release_cookies(q);
}

bool
ldq_take_applied(struct ldq *q, struct ldsync_cookie *out)
{
	if (!q->applied_changed)
		return false;
	q->applied_changed = false;
	ldsync_cookie_copy(out, &q->applied);
	return true;
}

void
ldq_item_set_old_dn(struct ldq_item *item, const char *old_dn)
{
	free(item->old_dn);
	item->old_dn = old_dn != NULL ? xstrdup(old_dn) : NULL;
}
