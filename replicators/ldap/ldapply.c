/*
 * ldapply.c: the queued changes, applied to the standby (see ldapply.h).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "replicators/ldap/ldapply.h"

#define CACHE_SLOTS 8192
#define CACHE_MAX_BYTES (256 * 1024)	/* bigger entries are looked up each time */

enum step {
	STEP_LOOKUP,		/* search (entryUUID=U) */
	STEP_ADD,
	STEP_MODRDN,
	STEP_MODIFY,
	STEP_DELETE,
	STEP_OCCUPANT,		/* refresh: who holds the DN an add wanted? */
	STEP_LIST,		/* lda_list */
};

struct op {
	struct op *next;
	struct ldq_item *item;	/* NULL for STEP_LIST */
	enum step step;
	int msgid;
	struct lde_entry *found;	/* STEP_LOOKUP / STEP_OCCUPANT result */
	unsigned n_found;
	LDAPMod **mods;
	bool renamed;			/* modrdn done: the DN is the master's now */
	enum step parked_step;		/* the write a parked op sends when it may */
	LDAPMod **pending_mods;		/* ... STEP_MODIFY's */
};

struct lda {
	LDAP *ld;
	char *suffix;
	struct ldq *q;
	unsigned max_in_flight, in_flight;
	bool refresh;
	const struct lde_uuid_set *standby_had;	/* refresh: the standby's UUIDs at its start */
	/* While persisting: the entries as last applied, so that a change to
	 * one of them needs no lookup (direct-mapped, a collision evicts). */
	struct cache_slot {
		uint8_t uuid[LDSYNC_UUID_LEN];
		struct lde_entry *e;
	} *cache;
	struct op *ops;			/* in flight */
	struct lde_entry **deferred;
	size_t n_deferred;
	uint8_t (*deferred_uuids)[LDSYNC_UUID_LEN];
	/* lda_list */
	bool listing, listed;
	struct lda_listed *list;
	size_t n_list, cap_list;
	struct lda_stats stats;
};

static LDAPControl relax_ctrl = {
	.ldctl_oid = LDAP_CONTROL_RELAX,
	.ldctl_value = { 0, NULL },
	.ldctl_iscritical = 1,
};
static LDAPControl *relax_ctrls[] = { &relax_ctrl, NULL };

struct lda *
lda_new(LDAP *target, const char *suffix, struct ldq *q, unsigned max_in_flight)
{
	struct lda *a = xcalloc(1, sizeof(*a));

	a->ld = target;
	a->suffix = xstrdup(suffix);
	a->q = q;
	a->max_in_flight = max_in_flight > 0 ? max_in_flight : 1;
	return a;
}

static void
op_free(struct op *op)
{
	lde_entry_free(&op->found);
	lde_mods_free(&op->mods);
	lde_mods_free(&op->pending_mods);
	free(op);
}

void
lda_free(struct lda **ap)
{
	struct lda *a = *ap;

	if (a == NULL)
		return;
	while (a->ops != NULL) {
		struct op *next = a->ops->next;
		op_free(a->ops);
		a->ops = next;
	}
	/* Parked ops live in their items. */
	for (size_t i = 0; i < ldq_count(a->q); i++) {
		struct ldq_item *it = ldq_at(a->q, i);
		if (it->state == LDQ_PARKED && it->data != NULL) {
			op_free(it->data);
			it->data = NULL;
		}
	}
	for (size_t i = 0; i < a->n_deferred; i++)
		lde_entry_free(&a->deferred[i]);
	free(a->deferred);
	free(a->deferred_uuids);
	lda_list_free(a->list, a->n_list);
	for (size_t i = 0; a->cache != NULL && i < CACHE_SLOTS; i++)
		lde_entry_free(&a->cache[i].e);
	free(a->cache);
	free(a->suffix);
	free(a);
	*ap = NULL;
}

void
lda_set_refresh(struct lda *a, bool refresh)
{
	a->refresh = refresh;
	if (!refresh)
		a->standby_had = NULL;
}

void
lda_set_standby_had(struct lda *a, const struct lde_uuid_set *had)
{
	a->standby_had = had;
}

unsigned
lda_in_flight(const struct lda *a)
{
	return a->in_flight;
}

size_t
lda_deferred(const struct lda *a)
{
	return a->n_deferred;
}

const struct lda_stats *
lda_stats(const struct lda *a)
{
	return &a->stats;
}

/* ------------------------------------------------------------ sending */

static const char *
step_name(enum step s)
{
	switch (s) {
	case STEP_LOOKUP: return "search by entryUUID";
	case STEP_ADD: return "add";
	case STEP_MODRDN: return "modrdn";
	case STEP_MODIFY: return "modify";
	case STEP_DELETE: return "delete";
	case STEP_OCCUPANT: return "search";
	case STEP_LIST: return "search";
	}
	return "?";
}

static void
track(struct lda *a, struct op *op, int msgid)
{
	op->msgid = msgid;
	op->next = a->ops;
	a->ops = op;
	a->in_flight++;
}

static void
untrack(struct lda *a, struct op *op)
{
	for (struct op **p = &a->ops; *p != NULL; p = &(*p)->next) {
		if (*p == op) {
			*p = op->next;
			a->in_flight--;
			return;
		}
	}
}

static int
sent(struct lda *a, struct op *op, int rc, int msgid, const char *dn, char **error_r)
{
	if (rc != LDAP_SUCCESS) {
		st_set_error(error_r, "cannot send the %s of %s to the standby: %s",
			     step_name(op->step), dn, ldap_err2string(rc));
		op_free(op);
		return -1;
	}
	track(a, op, msgid);
	return 0;
}

static int
send_lookup(struct lda *a, struct op *op, char **error_r)
{
	char uuid[LDSYNC_UUID_TEXT], filter[64];
	int msgid = -1;

	ldsync_uuid_text(op->item->uuid, uuid);
	snprintf(filter, sizeof(filter), "(entryUUID=%s)", uuid);
	op->step = STEP_LOOKUP;
	lde_entry_free(&op->found);
	op->n_found = 0;
	int rc = ldap_search_ext(a->ld, a->suffix, LDAP_SCOPE_SUBTREE, filter, lde_request_attrs, 0,
				 NULL, NULL, NULL, 2, &msgid);
	return sent(a, op, rc, msgid, uuid, error_r);
}

static int
send_add(struct lda *a, struct op *op, char **error_r)
{
	int msgid = -1;

	op->step = STEP_ADD;
	lde_mods_free(&op->mods);
	op->mods = lde_add_mods(op->item->entry);
	int rc = ldap_add_ext(a->ld, op->item->entry->dn, op->mods, relax_ctrls, NULL, &msgid);
	return sent(a, op, rc, msgid, op->item->entry->dn, error_r);
}

static int
send_modrdn(struct lda *a, struct op *op, char **error_r)
{
	char *rdn = NULL, *parent = NULL, *old_rdn = NULL, *old_parent = NULL;
	const char *new_dn = op->item->entry->dn, *old_dn = op->found->dn;
	int msgid = -1, rc;

	if (lde_dn_split(new_dn, &rdn, &parent) < 0 || lde_dn_split(old_dn, &old_rdn, &old_parent) < 0) {
		st_set_error(error_r, "cannot parse the DN %s or %s", new_dn, old_dn);
		op_free(op);
		rc = -1;
		goto out;
	}
	bool moved = (parent == NULL) != (old_parent == NULL) ||
		     (parent != NULL && !lde_dn_equal(parent, old_parent));
	op->step = STEP_MODRDN;
	rc = ldap_rename(a->ld, old_dn, rdn, moved ? parent : NULL, 1, relax_ctrls, NULL, &msgid);
	rc = sent(a, op, rc, msgid, old_dn, error_r);
out:
	free(rdn);
	free(parent);
	free(old_rdn);
	free(old_parent);
	return rc;
}

static int
send_modify(struct lda *a, struct op *op, LDAPMod **mods, char **error_r)
{
	int msgid = -1;

	op->step = STEP_MODIFY;
	lde_mods_free(&op->mods);
	op->mods = mods;
	int rc = ldap_modify_ext(a->ld, op->found->dn, op->mods, relax_ctrls, NULL, &msgid);
	return sent(a, op, rc, msgid, op->found->dn, error_r);
}

static int
send_delete(struct lda *a, struct op *op, char **error_r)
{
	int msgid = -1;

	op->step = STEP_DELETE;
	int rc = ldap_delete_ext(a->ld, op->found->dn, NULL, NULL, &msgid);
	return sent(a, op, rc, msgid, op->found->dn, error_r);
}

static int
send_occupant(struct lda *a, struct op *op, char **error_r)
{
	int msgid = -1;

	op->step = STEP_OCCUPANT;
	lde_entry_free(&op->found);
	op->n_found = 0;
	int rc = ldap_search_ext(a->ld, op->item->entry->dn, LDAP_SCOPE_BASE, "(objectClass=*)",
				 lde_request_attrs, 0, NULL, NULL, NULL, 1, &msgid);
	return sent(a, op, rc, msgid, op->item->entry->dn, error_r);
}

/* ------------------------------------------------------------ entry cache */

static struct cache_slot *
cache_slot(struct lda *a, const uint8_t *uuid)
{
	uint32_t h = 2166136261u;

	if (a->cache == NULL)
		a->cache = xcalloc(CACHE_SLOTS, sizeof(*a->cache));
	for (int i = 0; i < LDSYNC_UUID_LEN; i++)
		h = (h ^ uuid[i]) * 16777619u;
	return &a->cache[h % CACHE_SLOTS];
}

/* Take the cached entry of UUID out of the cache (the caller owns it). */
static struct lde_entry *
cache_take(struct lda *a, const uint8_t *uuid)
{
	struct cache_slot *c = cache_slot(a, uuid);
	struct lde_entry *e = NULL;

	if (c->e != NULL && memcmp(c->uuid, uuid, LDSYNC_UUID_LEN) == 0) {
		e = c->e;
		c->e = NULL;
	}
	return e;
}

static void
cache_drop(struct lda *a, const uint8_t *uuid)
{
	struct lde_entry *e = cache_take(a, uuid);

	lde_entry_free(&e);
}

/* ITEM's entry is now what the standby holds: keep it (taken from ITEM). */
static void
cache_keep(struct lda *a, struct ldq_item *item)
{
	size_t bytes = 0;

	if (item->entry == NULL)
		return;
	for (size_t i = 0; i < item->entry->n; i++)
		for (size_t j = 0; j < item->entry->attrs[i].n; j++)
			bytes += item->entry->attrs[i].vals[j].bv_len;
	if (bytes > CACHE_MAX_BYTES) {
		cache_drop(a, item->uuid);
		return;
	}
	struct cache_slot *c = cache_slot(a, item->uuid);
	lde_entry_free(&c->e);
	memcpy(c->uuid, item->uuid, LDSYNC_UUID_LEN);
	c->e = item->entry;
	item->entry = NULL;
}

/* ------------------------------------------------------------ steps */

static void
finish(struct lda *a, struct op *op)
{
	struct ldq_item *item = op->item;

	op_free(op);
	ldq_done(a->q, item);
}

/* The item waits for earlier ones (ldq_next hands it back later), then
 * sends STEP. */
static void
park(struct op *op, enum step step)
{
	op->parked_step = step;
	op->item->state = LDQ_PARKED;
	op->item->data = op;
}

/* Ordered writes (ldq_set_ordered): an add or a modify waits its turn too. */
static bool
must_wait(struct lda *a, struct op *op)
{
	return a->q->ordered && !ldq_may_write(a->q, op->item);
}

static int
add_or_park(struct lda *a, struct op *op, char **error_r)
{
	if (must_wait(a, op)) {
		park(op, STEP_ADD);
		return 0;
	}
	return send_add(a, op, error_r);
}

static int
modify_or_park(struct lda *a, struct op *op, LDAPMod **mods, char **error_r)
{
	if (must_wait(a, op)) {
		lde_mods_free(&op->pending_mods);
		op->pending_mods = mods;
		park(op, STEP_MODIFY);
		return 0;
	}
	return send_modify(a, op, mods, error_r);
}

/* What to do once the lookup by entryUUID answered. */
static int
after_lookup(struct lda *a, struct op *op, char **error_r)
{
	struct ldq_item *item = op->item;

	if (op->n_found > 1) {
		char uuid[LDSYNC_UUID_TEXT];
		ldsync_uuid_text(item->uuid, uuid);
		st_set_error(error_r, "the standby holds %u entries with entryUUID %s", op->n_found,
			     uuid);
		op_free(op);
		return -1;
	}
	if (item->kind == LDQ_DELETE) {
		if (op->found == NULL) {
			a->stats.missing_deletes++;
			finish(a, op);
			return 0;
		}
		ldq_item_set_old_dn(item, op->found->dn);
		if (!ldq_may_write(a->q, item)) {
			park(op, STEP_DELETE);
			return 0;
		}
		return send_delete(a, op, error_r);
	}
	if (op->found == NULL)
		return add_or_park(a, op, error_r);
	if (!op->renamed && strcmp(op->found->dn, item->entry->dn) != 0) {
		ldq_item_set_old_dn(item, op->found->dn);
		if (!ldq_may_write(a->q, item)) {
			park(op, STEP_MODRDN);
			return 0;
		}
		return send_modrdn(a, op, error_r);
	}
	LDAPMod **mods;
	size_t n;
	lde_diff(item->entry, op->found, &mods, &n);
	if (n == 0) {
		a->stats.unchanged++;
		cache_keep(a, item);
		finish(a, op);
		return 0;
	}
	return modify_or_park(a, op, mods, error_r);
}

/* Go on with a parked item (it may write now). */
static int
resume(struct lda *a, struct op *op, char **error_r)
{
	LDAPMod **mods;

	op->item->data = NULL;
	switch (op->parked_step) {
	case STEP_DELETE:
		return send_delete(a, op, error_r);
	case STEP_ADD:
		return send_add(a, op, error_r);
	case STEP_MODIFY:
		mods = op->pending_mods;
		op->pending_mods = NULL;
		return send_modify(a, op, mods, error_r);
	default:
		return send_modrdn(a, op, error_r);
	}
}

static void
defer(struct lda *a, struct op *op)
{
	struct ldq_item *item = op->item;

	a->deferred = xrealloc(a->deferred, (a->n_deferred + 1) * sizeof(*a->deferred));
	a->deferred_uuids = xrealloc(a->deferred_uuids,
				     (a->n_deferred + 1) * sizeof(*a->deferred_uuids));
	memcpy(a->deferred_uuids[a->n_deferred], item->uuid, LDSYNC_UUID_LEN);
	a->deferred[a->n_deferred++] = item->entry;
	item->entry = NULL;
	st_info("deferred until the end of the refresh (its parent is not there yet) dn=%s",
		st_q(a->deferred[a->n_deferred - 1]->dn));
	finish(a, op);
}

bool
lda_retry_deferred(struct lda *a)
{
	size_t n = a->n_deferred;

	a->n_deferred = 0;
	for (size_t i = 0; i < n; i++)
		ldq_push(a->q, LDQ_UPSERT, a->deferred_uuids[i], a->deferred[i]->dn, a->deferred[i]);
	return n > 0;
}

static char *
describe_failure(struct lda *a, LDAPMessage *msg, int *rc_r)
{
	int rc = LDAP_OTHER;
	char *matched = NULL, *diag = NULL, *text;

	if (ldap_parse_result(a->ld, msg, &rc, &matched, &diag, NULL, NULL, 0) != LDAP_SUCCESS)
		rc = LDAP_OTHER;
	if (!st_str_empty(diag))
		text = xasprintf("%s (%d): %s", ldap_err2string(rc), rc, diag);
	else
		text = xasprintf("%s (%d)", ldap_err2string(rc), rc);
	ldap_memfree(matched);
	ldap_memfree(diag);
	*rc_r = rc;
	return text;
}

/*
 * slapd names the attribute but not the value it refused ("objectClass:
 * value #1 invalid per syntax"): name it, from the master's entry.
 */
static char *
offending_value(const struct lde_entry *e, const char *why)
{
	const char *p = strstr(why, ": value #");
	unsigned idx;

	if (e == NULL || p == NULL || sscanf(p, ": value #%u", &idx) != 1)
		return NULL;
	const char *start = p;
	while (start > why && start[-1] != ' ' && start[-1] != ':')
		start--;
	char *attr = xstrndup(start, (size_t)(p - start));
	const struct lde_attr *a = lde_entry_get(e, attr);
	char *out = NULL;
	if (a != NULL && idx < a->n) {
		const struct berval *v = &a->vals[idx];
		bool text = true;
		for (size_t i = 0; text && i < v->bv_len && i < 200; i++)
			text = (unsigned char)v->bv_val[i] >= 0x20 && v->bv_val[i] != 0x7f;
		if (text && v->bv_len <= 200)
			out = xasprintf(" (the master's value #%u of %s is %s)", idx, attr,
					st_q(v->bv_val));
		else
			out = xasprintf(" (the master's value #%u of %s: %lu bytes)", idx, attr,
					(unsigned long)v->bv_len);
	}
	free(attr);
	return out;
}

/* A write failed with RC: retry, reconcile or stop. */
static int
write_failed(struct lda *a, struct op *op, int rc, const char *why, char **error_r)
{
	struct ldq_item *item = op->item;
	bool explainable = rc == LDAP_ALREADY_EXISTS || rc == LDAP_NO_SUCH_OBJECT ||
			   rc == LDAP_NOT_ALLOWED_ON_NONLEAF;
	const char *dn = op->found != NULL ? op->found->dn : item->entry != NULL ? item->entry->dn
										     : item->dn;

	cache_drop(a, item->uuid);
	if (explainable && item->retries < 3 && ldq_has_earlier(a->q, item)) {
		/* An earlier change still in flight may be the cause: again after it. */
		item->data = NULL;
		op_free(op);
		ldq_retry_later(a->q, item);
		return 0;
	}
	if (a->refresh && op->step == STEP_ADD && rc == LDAP_ALREADY_EXISTS)
		return send_occupant(a, op, error_r);
	if (a->refresh && rc == LDAP_NO_SUCH_OBJECT &&
	    (op->step == STEP_ADD || op->step == STEP_MODRDN)) {
		defer(a, op);
		return 0;
	}
	char *value = offending_value(item->entry, why);
	st_set_error(error_r, "the standby refused the %s of %s: %s%s", step_name(op->step),
		     dn != NULL ? dn : "(unknown DN)", why, value != NULL ? value : "");
	free(value);
	op_free(op);
	return -1;
}

static int
handle_result(struct lda *a, struct op *op, LDAPMessage *msg, char **error_r)
{
	int rc;
	char *why = describe_failure(a, msg, &rc);
	int ret = 0;

	switch (op->step) {
	case STEP_LOOKUP:
		if (rc != LDAP_SUCCESS && rc != LDAP_NO_SUCH_OBJECT && rc != LDAP_SIZELIMIT_EXCEEDED) {
			st_set_error(error_r, "searching the standby by entryUUID failed: %s", why);
			op_free(op);
			ret = -1;
			break;
		}
		ret = after_lookup(a, op, error_r);
		break;
	case STEP_ADD:
		if (rc != LDAP_SUCCESS) {
			ret = write_failed(a, op, rc, why, error_r);
			break;
		}
		a->stats.adds++;
		st_debug("added dn=%s", st_q(op->item->entry->dn));
		cache_keep(a, op->item);
		finish(a, op);
		break;
	case STEP_MODRDN:
		if (rc != LDAP_SUCCESS) {
			ret = write_failed(a, op, rc, why, error_r);
			break;
		}
		a->stats.renames++;
		op->renamed = true;
		st_debug("renamed old=%s new=%s", st_q(op->found->dn), st_q(op->item->entry->dn));
		/* Look again: the rename changed the entry (RDN values, timestamps). */
		ret = send_lookup(a, op, error_r);
		break;
	case STEP_MODIFY:
		if (rc != LDAP_SUCCESS) {
			ret = write_failed(a, op, rc, why, error_r);
			break;
		}
		a->stats.modifies++;
		cache_keep(a, op->item);
		finish(a, op);
		break;
	case STEP_DELETE:
		cache_drop(a, op->item->uuid);
		if (rc == LDAP_NO_SUCH_OBJECT) {
			a->stats.missing_deletes++;
			finish(a, op);
			break;
		}
		if (rc != LDAP_SUCCESS) {
			ret = write_failed(a, op, rc, why, error_r);
			break;
		}
		a->stats.deletes++;
		st_debug("deleted dn=%s", st_q(op->found->dn));
		finish(a, op);
		break;
	case STEP_OCCUPANT: {
		if (rc != LDAP_SUCCESS || op->found == NULL) {
			st_set_error(error_r, "the standby refused the add of %s (the entry exists), "
				     "then could not read it: %s", op->item->entry->dn, why);
			op_free(op);
			ret = -1;
			break;
		}
		const struct lde_attr *u = lde_entry_get(op->found, "entryUUID");
		char mine[LDSYNC_UUID_TEXT];
		ldsync_uuid_text(op->item->uuid, mine);
		st_notice("refresh: the standby's entry takes the master's entryUUID dn=%s "
			  "standby_uuid=%s master_uuid=%s", st_q(op->found->dn),
			  st_q(u != NULL && u->n > 0 ? u->vals[0].bv_val : "none"), mine);
		a->stats.adopted++;
		LDAPMod **mods;
		size_t n;
		lde_diff(op->item->entry, op->found, &mods, &n);
		if (n == 0) {
			finish(a, op);
			break;
		}
		ret = modify_or_park(a, op, mods, error_r);
		break;
	}
	case STEP_LIST:
		if (rc != LDAP_SUCCESS && rc != LDAP_NO_SUCH_OBJECT) {
			st_set_error(error_r, "listing the standby's entries failed: %s%s", why,
				     rc == LDAP_SIZELIMIT_EXCEEDED
				     ? " (give the bind identity an unlimited size limit on the "
				       "standby, e.g. limits dn.exact=BIND_DN size=unlimited)" : "");
			op_free(op);
			ret = -1;
			break;
		}
		a->listing = false;
		a->listed = true;
		op_free(op);
		break;
	}
	free(why);
	return ret;
}

static int
list_entry(struct lda *a, LDAPMessage *msg, char **error_r)
{
	struct berval **vals = ldap_get_values_len(a->ld, msg, "entryUUID");
	char *dn = ldap_get_dn(a->ld, msg);
	int rc = 0;

	if (dn == NULL || vals == NULL || vals[0] == NULL) {
		st_set_error(error_r, "the standby's entry %s has no entryUUID", dn ? dn : "?");
		rc = -1;
		goto out;
	}
	char text[LDSYNC_UUID_TEXT];
	size_t len = vals[0]->bv_len < sizeof(text) - 1 ? vals[0]->bv_len : sizeof(text) - 1;
	memcpy(text, vals[0]->bv_val, len);
	text[len] = '\0';
	if (a->n_list == a->cap_list) {
		a->cap_list = a->cap_list ? a->cap_list * 2 : 256;
		a->list = xrealloc(a->list, a->cap_list * sizeof(*a->list));
	}
	struct lda_listed *l = &a->list[a->n_list];
	if (ldsync_uuid_parse(text, l->uuid) < 0) {
		st_set_error(error_r, "the standby's entry %s has an entryUUID that does not parse: %s",
			     dn, st_q(text));
		rc = -1;
		goto out;
	}
	l->dn = xstrdup(dn);
	l->depth = lde_dn_depth(dn);
	a->n_list++;
out:
	if (dn != NULL)
		ldap_memfree(dn);
	ldap_value_free_len(vals);
	return rc;
}

int
lda_read(struct lda *a, char **error_r)
{
	struct timeval zero = { 0, 0 };

	for (;;) {
		LDAPMessage *msg = NULL;
		int type = ldap_result(a->ld, LDAP_RES_ANY, LDAP_MSG_ONE, &zero, &msg);
		if (type == 0)
			return 0;
		if (type < 0) {
			int err = LDAP_OTHER;
			ldap_get_option(a->ld, LDAP_OPT_RESULT_CODE, &err);
			st_set_error(error_r, "lost the connection to the standby: %s",
				     ldap_err2string(err));
			return -1;
		}
		int msgid = ldap_msgid(msg);
		struct op *op = NULL;
		for (struct op *o = a->ops; o != NULL; o = o->next)
			if (o->msgid == msgid)
				op = o;
		int rc = 0;
		if (op == NULL) {
			st_warn("a result from the standby for no request msgid=%d type=%d", msgid, type);
		} else if (type == LDAP_RES_SEARCH_ENTRY) {
			if (op->step == STEP_LIST) {
				rc = list_entry(a, msg, error_r);
			} else {
				op->n_found++;
				if (op->found == NULL)
					op->found = lde_entry_from_message(a->ld, msg, error_r);
				if (op->found == NULL)
					rc = -1;
			}
		} else if (type == LDAP_RES_SEARCH_REFERENCE || type == LDAP_RES_INTERMEDIATE) {
			/* not ours to follow */
		} else {
			untrack(a, op);
			rc = handle_result(a, op, msg, error_r);
		}
		ldap_msgfree(msg);
		if (rc < 0)
			return -1;
	}
}

/*
 * While persisting, a change to an entry applied before, at the same DN,
 * goes out without a lookup: the standby holds what was applied.  true when
 * it did (*rc_r is the result).
 */
static bool
from_cache(struct lda *a, struct op *op, int *rc_r, char **error_r)
{
	struct ldq_item *item = op->item;
	const char *dn = item->kind == LDQ_UPSERT ? item->entry->dn : item->dn;
	struct lde_entry *cached;

	if (dn == NULL || (cached = cache_take(a, item->uuid)) == NULL)
		return false;
	if (strcmp(cached->dn, dn) != 0) {
		lde_entry_free(&cached);	/* a rename: look it up */
		return false;
	}
	op->found = cached;
	op->n_found = 1;
	if (item->kind == LDQ_DELETE) {
		if (must_wait(a, op)) {
			park(op, STEP_DELETE);
			*rc_r = 0;
		} else {
			*rc_r = send_delete(a, op, error_r);
		}
		return true;
	}
	LDAPMod **mods;
	size_t n;
	lde_diff(item->entry, op->found, &mods, &n);
	if (n == 0) {
		a->stats.unchanged++;
		cache_keep(a, item);
		finish(a, op);
		*rc_r = 0;
		return true;
	}
	*rc_r = modify_or_park(a, op, mods, error_r);
	return true;
}

int
lda_pump(struct lda *a, char **error_r)
{
	while (a->in_flight < a->max_in_flight) {
		struct ldq_item *item = ldq_next(a->q);
		if (item == NULL)
			return 0;
		int rc;
		if (item->state == LDQ_PARKED) {
			item->state = LDQ_RUNNING;
			rc = resume(a, item->data, error_r);
		} else {
			item->state = LDQ_RUNNING;
			struct op *op = xcalloc(1, sizeof(*op));
			op->item = item;
			/* A refresh into a standby that did not have this entryUUID when
			 * it started: add at once (an add that finds the DN taken goes
			 * through the usual reconciliation). */
			if (a->refresh && a->standby_had != NULL && item->kind == LDQ_UPSERT &&
			    item->retries == 0 && !lde_uuid_set_has(a->standby_had, item->uuid))
				rc = add_or_park(a, op, error_r);
			else if (!a->refresh && item->retries == 0 && from_cache(a, op, &rc, error_r))
				;
			else
				rc = send_lookup(a, op, error_r);
		}
		if (rc < 0)
			return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ listing */

int
lda_list_start(struct lda *a, char **error_r)
{
	static char *attrs[] = { "entryUUID", NULL };
	struct op *op = xcalloc(1, sizeof(*op));
	int msgid = -1;

	lda_list_free(a->list, a->n_list);
	a->list = NULL;
	a->n_list = a->cap_list = 0;
	a->listing = true;
	a->listed = false;
	op->step = STEP_LIST;
	int rc = ldap_search_ext(a->ld, a->suffix, LDAP_SCOPE_SUBTREE, "(objectClass=*)", attrs, 0,
				 NULL, NULL, NULL, 0, &msgid);
	return sent(a, op, rc, msgid, a->suffix, error_r);
}

bool
lda_list_done(const struct lda *a)
{
	return a->listed;
}

static int
deeper_first(const void *pa, const void *pb)
{
	const struct lda_listed *x = pa, *y = pb;

	return (x->depth < y->depth) - (x->depth > y->depth);
}

void
lda_list_take(struct lda *a, struct lda_listed **list_r, size_t *n_r)
{
	if (a->n_list > 1)
		qsort(a->list, a->n_list, sizeof(*a->list), deeper_first);
	*list_r = a->list;
	*n_r = a->n_list;
	a->list = NULL;
	a->n_list = a->cap_list = 0;
	a->listed = false;
}

void
lda_list_free(struct lda_listed *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(list[i].dn);
	free(list);
}
