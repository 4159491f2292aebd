/*
 * ldentry.c: entries, differences, DNs, UUID sets (see ldentry.h).
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "replicators/ldap/ldentry.h"

const char *const lde_copied_opattrs[] = {
	"entryUUID", "createTimestamp", "creatorsName", "modifyTimestamp", "modifiersName", NULL,
};

char *lde_request_attrs[] = {
	"*", "entryUUID", "createTimestamp", "creatorsName", "modifyTimestamp", "modifiersName",
	NULL,
};

char *lde_sync_attrs[] = {
	"*", "entryUUID", "createTimestamp", "creatorsName", "modifyTimestamp", "modifiersName",
	"entryCSN", NULL,
};

struct lde_entry *
lde_entry_new(const char *dn)
{
	struct lde_entry *e = xcalloc(1, sizeof(*e));

	e->dn = xstrdup(dn);
	return e;
}

void
lde_entry_add(struct lde_entry *e, const char *name, const struct berval *vals, size_t n)
{
	struct lde_attr *a;

	e->attrs = xrealloc(e->attrs, (e->n + 1) * sizeof(*e->attrs));
	a = &e->attrs[e->n++];
	a->name = xstrdup(name);
	a->n = n;
	a->vals = xcalloc(n > 0 ? n : 1, sizeof(*a->vals));
	for (size_t i = 0; i < n; i++) {
		a->vals[i].bv_len = vals[i].bv_len;
		a->vals[i].bv_val = xmalloc(vals[i].bv_len + 1);
		if (vals[i].bv_len > 0)
			memcpy(a->vals[i].bv_val, vals[i].bv_val, vals[i].bv_len);
		a->vals[i].bv_val[vals[i].bv_len] = '\0';
	}
}

void
lde_entry_free(struct lde_entry **ep)
{
	struct lde_entry *e = *ep;

	if (e == NULL)
		return;
	for (size_t i = 0; i < e->n; i++) {
		for (size_t j = 0; j < e->attrs[i].n; j++)
			free(e->attrs[i].vals[j].bv_val);
		free(e->attrs[i].vals);
		free(e->attrs[i].name);
	}
	free(e->attrs);
	free(e->dn);
	free(e->csn);
	free(e);
	*ep = NULL;
}

const struct lde_attr *
lde_entry_get(const struct lde_entry *e, const char *name)
{
	for (size_t i = 0; i < e->n; i++)
		if (strcasecmp(e->attrs[i].name, name) == 0)
			return &e->attrs[i];
	return NULL;
}

struct lde_entry *
lde_entry_from_message(LDAP *ld, LDAPMessage *msg, char **error_r)
{
	BerElement *ber = NULL;
	char *dn = ldap_get_dn(ld, msg);

	if (dn == NULL) {
		st_set_error(error_r, "an entry without a DN");
		return NULL;
	}
	struct lde_entry *e = lde_entry_new(dn);
	ldap_memfree(dn);
	for (char *a = ldap_first_attribute(ld, msg, &ber); a != NULL;
	     a = ldap_next_attribute(ld, msg, ber)) {
		struct berval **vals = ldap_get_values_len(ld, msg, a);
		size_t n = vals != NULL ? (size_t)ldap_count_values_len(vals) : 0;
		if (strcasecmp(a, "entryCSN") == 0) {
			/* Kept apart: the standby's entryCSN is its own. */
			if (n > 0 && e->csn == NULL)
				e->csn = xstrndup(vals[0]->bv_val, vals[0]->bv_len);
			ldap_value_free_len(vals);
			ldap_memfree(a);
			continue;
		}
		struct berval *flat = xcalloc(n > 0 ? n : 1, sizeof(*flat));
		for (size_t i = 0; i < n; i++)
			flat[i] = *vals[i];
		lde_entry_add(e, a, flat, n);
		free(flat);
		ldap_value_free_len(vals);
		ldap_memfree(a);
	}
	if (ber != NULL)
		ber_free(ber, 0);
	return e;
}

/* ------------------------------------------------------------ values */

static int
bv_cmp(const void *pa, const void *pb)
{
	const struct berval *a = *(const struct berval *const *)pa;
	const struct berval *b = *(const struct berval *const *)pb;

	if (a->bv_len != b->bv_len)
		return a->bv_len < b->bv_len ? -1 : 1;
	return a->bv_len == 0 ? 0 : memcmp(a->bv_val, b->bv_val, a->bv_len);
}

bool
lde_values_equal(const struct berval *a, size_t na, const struct berval *b, size_t nb)
{
	if (na != nb)
		return false;
	if (na == 0)
		return true;
	if (na == 1)
		return a[0].bv_len == b[0].bv_len &&
		       (a[0].bv_len == 0 || memcmp(a[0].bv_val, b[0].bv_val, a[0].bv_len) == 0);
	const struct berval **sa = xcalloc(na, sizeof(*sa)), **sb = xcalloc(nb, sizeof(*sb));
	for (size_t i = 0; i < na; i++) {
		sa[i] = &a[i];
		sb[i] = &b[i];
	}
	qsort(sa, na, sizeof(*sa), bv_cmp);
	qsort(sb, nb, sizeof(*sb), bv_cmp);
	bool equal = true;
	for (size_t i = 0; equal && i < na; i++)
		equal = bv_cmp(&sa[i], &sb[i]) == 0;
	free(sa);
	free(sb);
	return equal;
}

static LDAPMod *
new_mod(int op, const struct lde_attr *a, bool with_values)
{
	LDAPMod *m = xcalloc(1, sizeof(*m));
	size_t n = with_values ? a->n : 0;

	m->mod_op = op | LDAP_MOD_BVALUES;
	m->mod_type = a->name;
	m->mod_bvalues = xcalloc(n + 1, sizeof(*m->mod_bvalues));
	for (size_t i = 0; i < n; i++)
		m->mod_bvalues[i] = &a->vals[i];
	return m;
}

void
lde_diff(const struct lde_entry *master, const struct lde_entry *standby, LDAPMod ***mods_r,
	 size_t *n_r)
{
	LDAPMod **mods = xcalloc(master->n + standby->n + 1, sizeof(*mods));
	size_t n = 0;

	for (size_t i = 0; i < master->n; i++) {
		const struct lde_attr *m = &master->attrs[i];
		const struct lde_attr *s = lde_entry_get(standby, m->name);
		if (s == NULL || !lde_values_equal(m->vals, m->n, s->vals, s->n))
			mods[n++] = new_mod(LDAP_MOD_REPLACE, m, true);
	}
	for (size_t i = 0; i < standby->n; i++) {
		const struct lde_attr *s = &standby->attrs[i];
		if (lde_entry_get(master, s->name) == NULL)
			mods[n++] = new_mod(LDAP_MOD_REPLACE, s, false);
	}
	/* A modify sets the standby's own modifyTimestamp and modifiersName
	 * unless the request carries them: send the master's even when equal. */
	static const char *const stamps[] = { "modifyTimestamp", "modifiersName" };
	size_t changed = n;
	for (size_t k = 0; changed > 0 && k < 2; k++) {
		const struct lde_attr *m = lde_entry_get(master, stamps[k]);
		bool sent = false;
		for (size_t i = 0; i < n; i++)
			sent = sent || strcasecmp(mods[i]->mod_type, stamps[k]) == 0;
		if (m != NULL && !sent)
			mods[n++] = new_mod(LDAP_MOD_REPLACE, m, true);
	}
	if (n == 0) {
		free(mods);
		mods = NULL;
	}
	*mods_r = mods;
	*n_r = n;
}

LDAPMod **
lde_add_mods(const struct lde_entry *e)
{
	LDAPMod **mods = xcalloc(e->n + 1, sizeof(*mods));
	size_t n = 0;

	for (size_t i = 0; i < e->n; i++)
		if (e->attrs[i].n > 0)
			mods[n++] = new_mod(LDAP_MOD_ADD, &e->attrs[i], true);
	return mods;
}

void
lde_mods_free(LDAPMod ***modsp)
{
	LDAPMod **mods = *modsp;

	if (mods == NULL)
		return;
	for (size_t i = 0; mods[i] != NULL; i++) {
		free(mods[i]->mod_bvalues);
		free(mods[i]);
	}
	free(mods);
	*modsp = NULL;
}

/* ------------------------------------------------------------ DNs */

bool
lde_dn_equal(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}

/* Does DN end with ",ANCESTOR" (ASCII case folded)? */
static bool
under(const char *dn, const char *ancestor)
{
	size_t ld = strlen(dn), la = strlen(ancestor);

	return la > 0 && ld > la + 1 && dn[ld - la - 1] == ',' &&
	       (ld - la - 1 == 0 || dn[ld - la - 2] != '\\') &&
	       strcasecmp(dn + ld - la, ancestor) == 0;
}

bool
lde_dn_related(const char *a, const char *b)
{
	return lde_dn_equal(a, b) || under(a, b) || under(b, a);
}

int
lde_dn_split(const char *dn, char **rdn_r, char **parent_r)
{
	LDAPDN ldn = NULL;
	char *rdn = NULL, *parent = NULL;
	int rc = -1;

	*rdn_r = NULL;
	*parent_r = NULL;
	if (ldap_str2dn(dn, &ldn, LDAP_DN_FORMAT_LDAPV3) != LDAP_SUCCESS || ldn == NULL ||
	    ldn[0] == NULL)
		goto out;
	if (ldap_rdn2str(ldn[0], &rdn, LDAP_DN_FORMAT_LDAPV3) != LDAP_SUCCESS)
		goto out;
	if (ldn[1] != NULL && ldap_dn2str(&ldn[1], &parent, LDAP_DN_FORMAT_LDAPV3) != LDAP_SUCCESS)
		goto out;
	*rdn_r = xstrdup(rdn);
	*parent_r = parent != NULL ? xstrdup(parent) : NULL;
	rc = 0;
out:
	if (rdn != NULL)
		ldap_memfree(rdn);
	if (parent != NULL)
		ldap_memfree(parent);
	if (ldn != NULL)
		ldap_dnfree(ldn);
	return rc;
}

int
lde_dn_depth(const char *dn)
{
	LDAPDN ldn = NULL;
	int n = 0;

	if (ldap_str2dn(dn, &ldn, LDAP_DN_FORMAT_LDAPV3) != LDAP_SUCCESS)
		return -1;
	while (ldn != NULL && ldn[n] != NULL)
		n++;
	if (ldn != NULL)
		ldap_dnfree(ldn);
	return n;
}

/* ------------------------------------------------------------ UUID set */

static size_t
uuid_hash(const uint8_t *u)
{
	uint64_t h = 1469598103934665603ULL;

	for (int i = 0; i < LDSYNC_UUID_LEN; i++) {
		h ^= u[i];
		h *= 1099511628211ULL;
	}
	return (size_t)h;
}

void
lde_uuid_set_init(struct lde_uuid_set *s)
{
	memset(s, 0, sizeof(*s));
}

void
lde_uuid_set_clear(struct lde_uuid_set *s)
{
	free(s->slots);
	free(s->used);
	memset(s, 0, sizeof(*s));
}

static bool
find_slot(const struct lde_uuid_set *s, const uint8_t *u, size_t *at_r)
{
	size_t i = uuid_hash(u) & (s->cap - 1);

	for (;;) {
		if (s->used[i] == 0) {
			*at_r = i;
			return false;
		}
		if (s->used[i] == 1 && memcmp(s->slots[i], u, LDSYNC_UUID_LEN) == 0) {
			*at_r = i;
			return true;
		}
		i = (i + 1) & (s->cap - 1);
	}
}

static void
grow(struct lde_uuid_set *s)
{
	struct lde_uuid_set old = *s;

	s->cap = old.cap == 0 ? 64 : old.cap * 2;
	if (old.cap > 0 && old.removed > old.n)
		s->cap = old.cap;	/* mostly tombstones: rehash at the same size */
	s->slots = xcalloc(s->cap, LDSYNC_UUID_LEN);
	s->used = xcalloc(s->cap, 1);
	s->n = 0;
	s->removed = 0;
	for (size_t i = 0; i < old.cap; i++) {
		if (old.used[i] == 1) {
			size_t at;
			find_slot(s, old.slots[i], &at);
			memcpy(s->slots[at], old.slots[i], LDSYNC_UUID_LEN);
			s->used[at] = 1;
			s->n++;
		}
	}
	free(old.slots);
	free(old.used);
}

bool
lde_uuid_set_add(struct lde_uuid_set *s, const uint8_t uuid[LDSYNC_UUID_LEN])
{
	size_t at;

	if ((s->n + s->removed + 1) * 4 > s->cap * 3)
		grow(s);
	if (find_slot(s, uuid, &at))
		return false;
	memcpy(s->slots[at], uuid, LDSYNC_UUID_LEN);
	s->used[at] = 1;
	s->n++;
	return true;
}

bool
lde_uuid_set_has(const struct lde_uuid_set *s, const uint8_t uuid[LDSYNC_UUID_LEN])
{
	size_t at;

	return s->cap > 0 && find_slot(s, uuid, &at);
}

bool
lde_uuid_set_remove(struct lde_uuid_set *s, const uint8_t uuid[LDSYNC_UUID_LEN])
{
	size_t at;

	if (s->cap == 0 || !find_slot(s, uuid, &at))
		return false;
	s->used[at] = 2;
	s->n--;
	s->removed++;
	return true;
}
