/*
 * test-ldsync: the LDAP replicator's pure parts.  RFC 4533 values are built
 * with liblber exactly as slapd's syncprov encodes them (a sequence with
 * optional cookie and booleans left out when they have their default), and
 * decoded; every truncation of a valid value is refused or decoded without
 * a read outside the buffer (the inputs are exact-size heap copies).  Then
 * entries and their differences, DNs, the UUID set, and the ordering queue:
 * what may run in parallel, what must wait, when a cookie is covered.
 */
#include "config.h"

#include "replicators/ldap/ldentry.h"
#include "replicators/ldap/ldqueue.h"
#include "replicators/ldap/ldsync.h"
#include "tests/unit/testutil.h"

static const uint8_t U1[16] = { 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
				0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00 };
static const uint8_t U2[16] = { 2 };
static const uint8_t U3[16] = { 3 };
static const uint8_t U4[16] = { 4 };

/* BER from a ber_printf format, as an exact-size heap berval. */
static struct berval
encode(const char *fmt, ...)
{
	BerElement *ber = ber_alloc_t(LBER_USE_DER);
	struct berval flat, out;
	va_list ap;

	void *x[4];

	va_start(ap, fmt);
	for (int i = 0; i < 4; i++)	/* in order: argument evaluation order is unspecified */
		x[i] = va_arg(ap, void *);
	va_end(ap);
	ck_assert_int_ge(ber_printf(ber, fmt, x[0], x[1], x[2], x[3]), 0);
	ck_assert_int_eq(ber_flatten2(ber, &flat, 0), 0);
	out.bv_len = flat.bv_len;
	out.bv_val = xmalloc(flat.bv_len);
	memcpy(out.bv_val, flat.bv_val, flat.bv_len);
	ber_free(ber, 1);
	return out;
}

static struct berval
bv(const char *s, size_t n)
{
	struct berval b = { .bv_len = n, .bv_val = (char *)s };
	return b;
}

/* Every proper prefix of V must be refused (or decode) without overread. */
static void
truncations(const struct berval *v, int (*parse)(const struct berval *, void *, char **),
	    void (*clear)(void *), void *out)
{
	for (size_t n = 0; n < v->bv_len; n++) {
		struct berval t = { .bv_len = n, .bv_val = xmalloc(n > 0 ? n : 1) };
		char *err = NULL;
		memcpy(t.bv_val, v->bv_val, n);
		if (parse(&t, out, &err) == 0)
			clear(out);
		else
			ck_assert_ptr_nonnull(err);
		free(err);
		free(t.bv_val);
	}
}

static int p_state(const struct berval *v, void *o, char **e) { return ldsync_parse_state(v, o, e); }
static void c_state(void *o) { ldsync_state_clear(o); }
static int p_info(const struct berval *v, void *o, char **e) { return ldsync_parse_info(v, o, e); }
static void c_info(void *o) { ldsync_info_clear(o); }
static int p_done(const struct berval *v, void *o, char **e) { return ldsync_parse_done(v, o, e); }
static void c_done(void *o) { ldsync_done_clear(o); }

START_TEST(test_state)
{
	const char *ctext = "rid=000,csn=20261123105305.397177Z#000000#001#000000";
	struct berval uuid = bv((const char *)U1, 16), cookie = bv(ctext, strlen(ctext));
	struct berval v = encode("{eOO}", (void *)(intptr_t)LDSYNC_ADD, &uuid, &cookie, NULL);
	struct ldsync_state st;
	char *err = NULL;

	ck_assert_msg(ldsync_parse_state(&v, &st, &err) == 0, "%s", err);
	ck_assert_int_eq(st.state, LDSYNC_ADD);
	ck_assert_mem_eq(st.uuid, U1, 16);
	ck_assert(st.has_cookie);
	ck_assert_str_eq((char *)st.cookie.data, "rid=000,csn=20261123105305.397177Z#000000#001#000000");
	ldsync_state_clear(&st);
	truncations(&v, p_state, c_state, &st);
	free(v.bv_val);

	/* No cookie (present state during a refresh). */
	v = encode("{eO}", (void *)(intptr_t)LDSYNC_PRESENT, &uuid, NULL, NULL);
	ck_assert_int_eq(ldsync_parse_state(&v, &st, &err), 0);
	ck_assert_int_eq(st.state, LDSYNC_PRESENT);
	ck_assert(!st.has_cookie);
	free(v.bv_val);

	/* A 15-byte UUID, an unknown state, trailing bytes. */
	struct berval shortu = bv((const char *)U1, 15);
	v = encode("{eO}", (void *)(intptr_t)LDSYNC_ADD, &shortu, NULL, NULL);
	ck_assert_int_eq(ldsync_parse_state(&v, &st, &err), -1);
	ck_assert_ptr_nonnull(strstr(err, "15 bytes"));
	free(err);
	err = NULL;
	free(v.bv_val);
	v = encode("{eO}", (void *)(intptr_t)7, &uuid, NULL, NULL);
	ck_assert_int_eq(ldsync_parse_state(&v, &st, &err), -1);
	free(err);
	err = NULL;
	free(v.bv_val);
	v = encode("{eO}O", (void *)(intptr_t)LDSYNC_ADD, &uuid, &uuid, NULL);
	ck_assert_int_eq(ldsync_parse_state(&v, &st, &err), -1);
	free(err);
	free(v.bv_val);
}
END_TEST

START_TEST(test_info)
{
	struct berval cookie = bv("rid=000,csn=X", 13), u1 = bv((const char *)U1, 16),
		      u2 = bv((const char *)U2, 16), u3 = bv((const char *)U3, 16);
	struct ldsync_info info;
	char *err = NULL;

	/* newcookie [0] */
	struct berval v = encode("tO", (void *)(uintptr_t)LDAP_TAG_SYNC_NEW_COOKIE, &cookie, NULL, NULL);
	ck_assert_int_eq(ldsync_parse_info(&v, &info, &err), 0);
	ck_assert_int_eq(info.kind, LDSYNC_NEW_COOKIE);
	ck_assert_str_eq((char *)info.cookie.data, "rid=000,csn=X");
	ldsync_info_clear(&info);
	free(v.bv_val);

	/* refreshDelete with a cookie and refreshDone FALSE */
	v = encode("t{Ob}", (void *)(uintptr_t)LDAP_TAG_SYNC_REFRESH_DELETE, &cookie, (void *)0, NULL);
	ck_assert_int_eq(ldsync_parse_info(&v, &info, &err), 0);
	ck_assert_int_eq(info.kind, LDSYNC_REFRESH_DELETE);
	ck_assert(info.has_cookie);
	ck_assert(!info.refresh_done);
	ldsync_info_clear(&info);
	truncations(&v, p_info, c_info, &info);
	free(v.bv_val);

	/* refreshPresent, empty: refreshDone defaults to TRUE */
	v = encode("t{}", (void *)(uintptr_t)LDAP_TAG_SYNC_REFRESH_PRESENT, NULL, NULL, NULL);
	ck_assert_int_eq(ldsync_parse_info(&v, &info, &err), 0);
	ck_assert_int_eq(info.kind, LDSYNC_REFRESH_PRESENT);
	ck_assert(info.refresh_done);
	ck_assert(!info.has_cookie);
	free(v.bv_val);

	/* syncIdSet, refreshDeletes TRUE, three UUIDs */
	struct berval set[] = { u1, u2, u3, { 0, NULL } };
	v = encode("t{Ob[W]}", (void *)(uintptr_t)LDAP_TAG_SYNC_ID_SET, &cookie, (void *)1, set);
	ck_assert_int_eq(ldsync_parse_info(&v, &info, &err), 0);
	ck_assert_int_eq(info.kind, LDSYNC_ID_SET);
	ck_assert(info.refresh_deletes);
	ck_assert_uint_eq(info.n_uuids, 3);
	ck_assert_mem_eq(info.uuids[0], U1, 16);
	ck_assert_mem_eq(info.uuids[2], U3, 16);
	ldsync_info_clear(&info);
	truncations(&v, p_info, c_info, &info);
	free(v.bv_val);

	/* syncIdSet without cookie or boolean (present UUIDs), empty set */
	struct berval none[] = { { 0, NULL } };
	v = encode("t{[W]}", (void *)(uintptr_t)LDAP_TAG_SYNC_ID_SET, none, NULL, NULL);
	ck_assert_int_eq(ldsync_parse_info(&v, &info, &err), 0);
	ck_assert(!info.refresh_deletes);
	ck_assert_uint_eq(info.n_uuids, 0);
	ldsync_info_clear(&info);
	free(v.bv_val);

	/* A UUID of the wrong size, an unknown tag */
	struct berval bad[] = { u1, cookie, { 0, NULL } };
	v = encode("t{[W]}", (void *)(uintptr_t)LDAP_TAG_SYNC_ID_SET, bad, NULL, NULL);
	ck_assert_int_eq(ldsync_parse_info(&v, &info, &err), -1);
	ck_assert_ptr_nonnull(strstr(err, "13 bytes"));
	free(err);
	err = NULL;
	free(v.bv_val);
	v = encode("t{}", (void *)(uintptr_t)0xa7, NULL, NULL, NULL);
	ck_assert_int_eq(ldsync_parse_info(&v, &info, &err), -1);
	ck_assert_ptr_nonnull(strstr(err, "unknown tag"));
	free(err);
	free(v.bv_val);
}
END_TEST

START_TEST(test_done)
{
	struct berval cookie = bv("c1", 2);
	struct ldsync_done d;
	char *err = NULL;
	struct berval v = encode("{Ob}", &cookie, (void *)1, NULL, NULL);

	ck_assert_int_eq(ldsync_parse_done(&v, &d, &err), 0);
	ck_assert(d.has_cookie);
	ck_assert(d.refresh_deletes);
	ldsync_done_clear(&d);
	truncations(&v, p_done, c_done, &d);
	free(v.bv_val);
	v = encode("{}", NULL, NULL, NULL, NULL);
	ck_assert_int_eq(ldsync_parse_done(&v, &d, &err), 0);
	ck_assert(!d.has_cookie);
	ck_assert(!d.refresh_deletes);
	free(v.bv_val);
}
END_TEST

START_TEST(test_request)
{
	struct ldsync_cookie c = { 0 };
	struct berval out, got;
	char *err = NULL;
	ber_int_t mode, hint;

	ldsync_cookie_set(&c, "rid=000,csn=1", 13);
	ck_assert_int_eq(ldsync_request_value(LDAP_SYNC_REFRESH_AND_PERSIST, &c, true, &out, &err), 0);
	BerElement *ber = ber_init(&out);
	ck_assert(ber_scanf(ber, "{emb}", &mode, &got, &hint) != LBER_ERROR);
	ck_assert_int_eq(mode, LDAP_SYNC_REFRESH_AND_PERSIST);
	ck_assert_int_eq((int)got.bv_len, 13);
	ck_assert(hint);
	ber_free(ber, 1);
	ber_memfree(out.bv_val);
	/* No cookie, no hint: just the mode. */
	ck_assert_int_eq(ldsync_request_value(LDAP_SYNC_REFRESH_ONLY, NULL, false, &out, &err), 0);
	ber = ber_init(&out);
	ck_assert(ber_scanf(ber, "{e}", &mode) != LBER_ERROR);
	ck_assert_int_eq(mode, LDAP_SYNC_REFRESH_ONLY);
	ber_free(ber, 1);
	ber_memfree(out.bv_val);
	ldsync_cookie_clear(&c);
}
END_TEST

START_TEST(test_cookie_csn)
{
	struct ldsync_cookie c = { 0 };
	char csn[64];

	ldsync_cookie_set(&c, "rid=000,csn=20261123105305.397177Z#000000#001#000000", 52);
	ck_assert_int_eq(ldsync_cookie_csn(&c, csn, sizeof(csn)), 0);
	ck_assert_str_eq(csn, "20261123105305.397177Z#000000#001#000000");
	const char *multi = "rid=001,sid=002,csn=20261123105305.000000Z#000000#001#000000;"
			    "20261123105306.000000Z#000000#002#000000,delcsn=20990101000000.000000Z#000000#001#000000";
	ldsync_cookie_set(&c, multi, strlen(multi));
	ck_assert_int_eq(ldsync_cookie_csn(&c, csn, sizeof(csn)), 0);
	ck_assert_str_eq(csn, "20261123105306.000000Z#000000#002#000000");
	ldsync_cookie_set(&c, "rid=000", 7);
	ck_assert_int_eq(ldsync_cookie_csn(&c, csn, sizeof(csn)), -1);
	ldsync_cookie_set(&c, "rid=000,csn=", 12);
	ck_assert_int_eq(ldsync_cookie_csn(&c, csn, sizeof(csn)), -1);
	ldsync_cookie_from_csn(&c, "20261123105305.397177Z#000000#002#000000");
	ck_assert_str_eq((char *)c.data, "rid=000,csn=20261123105305.397177Z#000000#002#000000");
	ldsync_cookie_clear(&c);

	ck_assert_int_eq(ldsync_csn_ms("20261123105305.397177Z#000000#001#000000"),
			 1795431185397LL);
	ck_assert_int_eq(ldsync_csn_ms("garbage"), -1);
	ck_assert_int_eq(ldsync_csn_ms(""), -1);
}
END_TEST

START_TEST(test_cookie_covers)
{
	struct ldsync_cookie c = { 0 };
	const char *a1 = "20261207120000.000001Z#000000#001#000000";
	const char *a2 = "20261207120005.000000Z#000000#001#000000";
	const char *b1 = "20261207110000.000000Z#000000#002#000000";

	ck_assert(ldsync_cookie_covers(&c, ""));
	ck_assert(!ldsync_cookie_covers(&c, a1));
	ldsync_cookie_set(&c, "rid=000,csn=20261207120000.000001Z#000000#001#000000", 52);
	ck_assert(ldsync_cookie_covers(&c, a1));
	ck_assert(!ldsync_cookie_covers(&c, a2));		/* newer, same serverID */
	ck_assert(!ldsync_cookie_covers(&c, b1));		/* a serverID it has not seen */
	char both[128];
	snprintf(both, sizeof(both), "%s;%s", a1, b1);
	ck_assert(!ldsync_cookie_covers(&c, both));
	ldsync_cookie_set(&c, "rid=000,sid=001,csn=20261207120005.000000Z#000000#001#000000;"
			  "20261207110000.000000Z#000000#002#000000", 101);
	ck_assert(ldsync_cookie_covers(&c, both));
	ck_assert(ldsync_cookie_covers(&c, a2));
	ck_assert(!ldsync_cookie_covers(&c, ";"));
	ck_assert(!ldsync_cookie_covers(&c, "x;"));
	ldsync_cookie_clear(&c);
}
END_TEST

START_TEST(test_cookie_merge)
{
	struct ldsync_cookie acc = { 0 }, in = { 0 };
	const char *full = "rid=000,csn=20261123100000.000000Z#000000#000#000000;"
			   "20261123100500.000000Z#000000#001#000000";

	/* An empty accumulator takes the cookie as it is. */
	ldsync_cookie_set(&in, full, strlen(full));
	ldsync_cookie_merge(&acc, &in);
	ck_assert_str_eq((char *)acc.data, full);
	/* A persist-stage cookie with serverID 001 only: 000 is kept. */
	const char *live = "rid=000,csn=20261123110000.000000Z#000000#001#000000";
	ldsync_cookie_set(&in, live, strlen(live));
	ldsync_cookie_merge(&acc, &in);
	ck_assert_str_eq((char *)acc.data, "rid=000,csn=20261123100000.000000Z#000000#000#000000;"
					   "20261123110000.000000Z#000000#001#000000");
	/* An older CSN never moves a serverID back; a new serverID is added. */
	const char *old = "rid=000,sid=002,csn=20261123090000.000000Z#000000#001#000000;"
			  "20261123120000.000000Z#000000#002#000000,delcsn=x";
	ldsync_cookie_set(&in, old, strlen(old));
	ldsync_cookie_merge(&acc, &in);
	ck_assert_str_eq((char *)acc.data, "rid=000,sid=002,csn=20261123100000.000000Z#000000#000#000000;"
					   "20261123110000.000000Z#000000#001#000000;"
					   "20261123120000.000000Z#000000#002#000000,delcsn=x");
	char csn[64];
	ck_assert_int_eq(ldsync_cookie_csn(&acc, csn, sizeof(csn)), 0);
	ck_assert_str_eq(csn, "20261123120000.000000Z#000000#002#000000");
	ldsync_cookie_clear(&acc);
	ldsync_cookie_clear(&in);
}
END_TEST

START_TEST(test_uuid_text)
{
	char text[LDSYNC_UUID_TEXT];
	uint8_t back[16];

	ldsync_uuid_text(U1, text);
	ck_assert_str_eq(text, "11223344-5566-7788-99aa-bbccddeeff00");
	ck_assert_int_eq(ldsync_uuid_parse(text, back), 0);
	ck_assert_mem_eq(back, U1, 16);
	ck_assert_int_eq(ldsync_uuid_parse("11223344-5566-7788-99AA-BBCCDDEEFF00", back), 0);
	ck_assert_mem_eq(back, U1, 16);
	ck_assert_int_eq(ldsync_uuid_parse("11223344556677889 9aabbccddeeff00", back), -1);
	ck_assert_int_eq(ldsync_uuid_parse("11223344-5566-7788-99aa-bbccddeeff0", back), -1);
	ck_assert_int_eq(ldsync_uuid_parse("11223344-5566-7788-99aa-bbccddeeff001", back), -1);
}
END_TEST

/* ------------------------------------------------------------ entries */

static void
add_str(struct lde_entry *e, const char *name, int n, ...)
{
	struct berval vals[8];
	va_list ap;

	va_start(ap, n);
	for (int i = 0; i < n; i++) {
		const char *s = va_arg(ap, const char *);
		vals[i] = bv(s, strlen(s));
	}
	va_end(ap);
	lde_entry_add(e, name, vals, (size_t)n);
}

static const LDAPMod *
mod_for(LDAPMod **mods, const char *name)
{
	for (size_t i = 0; mods != NULL && mods[i] != NULL; i++)
		if (strcasecmp(mods[i]->mod_type, name) == 0)
			return mods[i];
	return NULL;
}

START_TEST(test_diff)
{
	struct lde_entry *m = lde_entry_new("cn=a,dc=x"), *s = lde_entry_new("cn=a,dc=x");
	LDAPMod **mods;
	size_t n;

	add_str(m, "objectClass", 2, "top", "person");
	add_str(m, "cn", 1, "a");
	add_str(m, "member", 3, "x", "y", "z");
	add_str(m, "sn", 1, "new");
	add_str(s, "objectclass", 2, "person", "top");	/* other order, other case of the name */
	add_str(s, "cn", 1, "a");
	add_str(s, "member", 3, "z", "x", "y");
	add_str(s, "sn", 1, "old");
	add_str(s, "description", 1, "gone on the master");
	lde_diff(m, s, &mods, &n);
	ck_assert_uint_eq(n, 2);
	const LDAPMod *sn = mod_for(mods, "sn"), *desc = mod_for(mods, "description");
	ck_assert_ptr_nonnull(sn);
	ck_assert_int_eq(sn->mod_op, LDAP_MOD_REPLACE | LDAP_MOD_BVALUES);
	ck_assert_str_eq(sn->mod_bvalues[0]->bv_val, "new");
	ck_assert_ptr_null(sn->mod_bvalues[1]);
	ck_assert_ptr_nonnull(desc);
	ck_assert_ptr_null(desc->mod_bvalues[0]);	/* replace with no value: delete */
	ck_assert_ptr_null(mod_for(mods, "member"));
	lde_mods_free(&mods);
	ck_assert_ptr_null(mods);

	/* Equal entries: nothing to send. */
	lde_diff(m, m, &mods, &n);
	ck_assert_uint_eq(n, 0);
	ck_assert_ptr_null(mods);

	/* Any change also sends the master's modify stamps, equal or not (the
	 * standby would otherwise stamp the modify with its own). */
	add_str(m, "modifyTimestamp", 1, "20261123000000Z");
	add_str(s, "modifyTimestamp", 1, "20261123000000Z");
	lde_diff(m, s, &mods, &n);
	ck_assert_uint_eq(n, 3);
	ck_assert_ptr_nonnull(mod_for(mods, "modifyTimestamp"));
	lde_mods_free(&mods);
	lde_diff(m, m, &mods, &n);
	ck_assert_uint_eq(n, 0);

	/* Add request: every attribute with its values, binary kept. */
	struct berval bin = bv("\0\x01\xff", 3);
	lde_entry_add(m, "jpegPhoto", &bin, 1);
	mods = lde_add_mods(m);
	const LDAPMod *photo = mod_for(mods, "jpegPhoto");
	ck_assert_ptr_nonnull(photo);
	ck_assert_uint_eq(photo->mod_bvalues[0]->bv_len, 3);
	ck_assert_mem_eq(photo->mod_bvalues[0]->bv_val, "\0\x01\xff", 3);
	lde_mods_free(&mods);
	lde_entry_free(&m);
	lde_entry_free(&s);
	ck_assert_ptr_null(m);
}
END_TEST

START_TEST(test_values_equal)
{
	struct berval a[] = { bv("x", 1), bv("xy", 2), bv("", 0) };
	struct berval b[] = { bv("", 0), bv("x", 1), bv("xy", 2) };
	struct berval c[] = { bv("", 0), bv("x", 1), bv("xz", 2) };
	struct berval d[] = { bv("x\0y", 3) }, e[] = { bv("x\0z", 3) };

	ck_assert(lde_values_equal(a, 3, b, 3));
	ck_assert(!lde_values_equal(a, 3, c, 3));
	ck_assert(!lde_values_equal(a, 3, b, 2));
	ck_assert(lde_values_equal(a, 0, b, 0));
	ck_assert(!lde_values_equal(d, 1, e, 1));	/* bytes after a NUL count */
}
END_TEST

START_TEST(test_dn)
{
	char *rdn, *parent;

	ck_assert(lde_dn_related("cn=a,ou=p,dc=x", "ou=p,dc=x"));
	ck_assert(lde_dn_related("ou=P,DC=x", "cn=a,ou=p,dc=x"));
	ck_assert(lde_dn_related("dc=x", "dc=x"));
	ck_assert(!lde_dn_related("cn=a,ou=p,dc=x", "cn=b,ou=p,dc=x"));
	ck_assert(!lde_dn_related("cn=xou=p,dc=x", "ou=p,dc=x"));
	ck_assert(!lde_dn_related("cn=a\\,ou=p,dc=x", "ou=p,dc=x") ||
		  true);	/* an escaped comma is not a boundary; being careful is allowed */
	ck_assert_int_eq(lde_dn_split("cn=Smith\\, John,ou=people,dc=example,dc=com", &rdn, &parent), 0);
	ck_assert_str_eq(rdn, "cn=Smith\\2C John");
	ck_assert_str_eq(parent, "ou=people,dc=example,dc=com");
	free(rdn);
	free(parent);
	ck_assert_int_eq(lde_dn_split("dc=com", &rdn, &parent), 0);
	ck_assert_str_eq(rdn, "dc=com");
	ck_assert_ptr_null(parent);
	free(rdn);
	ck_assert_int_eq(lde_dn_split("not a dn", &rdn, &parent), -1);
	ck_assert_int_eq(lde_dn_depth("cn=a\\,b,ou=p,dc=x"), 3);
	ck_assert_int_eq(lde_dn_depth("cn=J\xc3\xb6rg,dc=x"), 2);
}
END_TEST

START_TEST(test_uuid_set)
{
	struct lde_uuid_set s;
	uint8_t u[16] = { 0 };

	lde_uuid_set_init(&s);
	ck_assert(!lde_uuid_set_has(&s, U1));
	ck_assert(!lde_uuid_set_remove(&s, U1));
	for (unsigned i = 0; i < 20000; i++) {
		memcpy(u, &i, sizeof(i));
		ck_assert(lde_uuid_set_add(&s, u));
	}
	ck_assert(!lde_uuid_set_add(&s, u));
	ck_assert_uint_eq(s.n, 20000);
	for (unsigned i = 0; i < 20000; i += 2) {
		memcpy(u, &i, sizeof(i));
		ck_assert(lde_uuid_set_remove(&s, u));
	}
	for (unsigned i = 0; i < 20000; i++) {
		memcpy(u, &i, sizeof(i));
		ck_assert(lde_uuid_set_has(&s, u) == (i % 2 == 1));
	}
	/* Adding after many removals reuses the space. */
	for (unsigned i = 0; i < 20000; i += 2) {
		memcpy(u, &i, sizeof(i));
		ck_assert(lde_uuid_set_add(&s, u));
	}
	ck_assert_uint_eq(s.n, 20000);
	lde_uuid_set_clear(&s);
}
END_TEST

/* ------------------------------------------------------------ queue */

static struct ldq_item *
next_running(struct ldq *q)
{
	struct ldq_item *it = ldq_next(q);

	if (it != NULL)
		it->state = LDQ_RUNNING;
	return it;
}

START_TEST(test_queue_parallel_and_ordered)
{
	struct ldq q;

	ldq_init(&q, 16);
	struct ldq_item *parent = ldq_push(&q, LDQ_UPSERT, U1, "ou=p,dc=x", NULL);
	struct ldq_item *child = ldq_push(&q, LDQ_UPSERT, U2, "cn=a,ou=p,dc=x", NULL);
	struct ldq_item *other = ldq_push(&q, LDQ_UPSERT, U3, "cn=b,ou=q,dc=x", NULL);

	/* The parent and an unrelated entry run at once; the child waits. */
	ck_assert_ptr_eq(next_running(&q), parent);
	ck_assert_ptr_eq(next_running(&q), other);
	ck_assert_ptr_null(ldq_next(&q));
	ldq_done(&q, other);
	ck_assert_ptr_null(ldq_next(&q));
	ldq_done(&q, parent);
	ck_assert_ptr_eq(next_running(&q), child);
	ldq_done(&q, child);
	ck_assert(ldq_idle(&q));
	ck_assert_uint_eq(ldq_count(&q), 0);

	/* The same entry twice: in order, even with unrelated DNs (a rename). */
	struct ldq_item *a = ldq_push(&q, LDQ_UPSERT, U4, "cn=one,dc=x", NULL);
	struct ldq_item *b = ldq_push(&q, LDQ_UPSERT, U4, "cn=two,ou=z,dc=x", NULL);
	ck_assert_ptr_eq(next_running(&q), a);
	ck_assert_ptr_null(ldq_next(&q));
	ldq_done(&q, a);
	ck_assert_ptr_eq(next_running(&q), b);
	ldq_done(&q, b);
	ldq_clear(&q);
}
END_TEST

START_TEST(test_queue_unknown_dn_is_a_barrier)
{
	struct ldq q;

	ldq_init(&q, 16);
	struct ldq_item *a = ldq_push(&q, LDQ_UPSERT, U1, "cn=a,dc=x", NULL);
	struct ldq_item *del = ldq_push(&q, LDQ_DELETE, U2, NULL, NULL);
	struct ldq_item *c = ldq_push(&q, LDQ_UPSERT, U3, "cn=c,dc=y", NULL);

	ck_assert_ptr_eq(next_running(&q), a);
	ck_assert_ptr_null(ldq_next(&q));	/* the delete could be anywhere */
	ldq_done(&q, a);
	ck_assert_ptr_eq(next_running(&q), del);
	ck_assert_ptr_null(ldq_next(&q));
	ldq_item_set_old_dn(del, "cn=d,dc=x");	/* looked up: now known */
	ck_assert_ptr_eq(next_running(&q), c);
	ldq_done(&q, del);
	ldq_done(&q, c);
	ldq_clear(&q);
}
END_TEST

START_TEST(test_queue_rename_parks)
{
	struct ldq q;

	ldq_init(&q, 16);
	/* An add under X's old place, then X's rename elsewhere. */
	struct ldq_item *add = ldq_push(&q, LDQ_UPSERT, U1, "cn=kid,cn=x,dc=x", NULL);
	struct ldq_item *ren = ldq_push(&q, LDQ_UPSERT, U2, "cn=x2,dc=x", NULL);
	ck_assert_ptr_eq(next_running(&q), add);
	ck_assert_ptr_eq(next_running(&q), ren);	/* DNs unrelated as far as known */
	/* ren's lookup finds X at cn=x,dc=x: it may not write before add is done. */
	ldq_item_set_old_dn(ren, "cn=x,dc=x");
	ck_assert(!ldq_may_write(&q, ren));
	ren->state = LDQ_PARKED;
	ck_assert_ptr_null(ldq_next(&q));
	ldq_done(&q, add);
	ck_assert(ldq_may_write(&q, ren));
	ck_assert_ptr_eq(ldq_next(&q), ren);
	ldq_done(&q, ren);
	ldq_clear(&q);
}
END_TEST

START_TEST(test_queue_retry_later)
{
	struct ldq q;

	ldq_init(&q, 16);
	struct ldq_item *a = ldq_push(&q, LDQ_UPSERT, U1, "cn=a,dc=x", NULL);
	struct ldq_item *b = ldq_push(&q, LDQ_UPSERT, U2, "cn=b,dc=x", NULL);
	ck_assert_ptr_eq(next_running(&q), a);
	ck_assert_ptr_eq(next_running(&q), b);
	ck_assert(ldq_has_earlier(&q, b));
	ck_assert(!ldq_has_earlier(&q, a));
	ldq_retry_later(&q, b);	/* b failed in a way a could explain */
	ck_assert_ptr_null(ldq_next(&q));
	ldq_done(&q, a);
	ck_assert_ptr_eq(next_running(&q), b);
	ck_assert_uint_eq(b->retries, 1);
	ldq_done(&q, b);
	ldq_clear(&q);
}
END_TEST

START_TEST(test_queue_cookies)
{
	struct ldq q;
	struct ldsync_cookie c1 = { 0 }, c2 = { 0 }, got = { 0 };

	ldsync_cookie_set(&c1, "c1", 2);
	ldsync_cookie_set(&c2, "c2", 2);
	ldq_init(&q, 4);
	/* A cookie with nothing before it is covered at once. */
	ldq_push_cookie(&q, &c1);
	ck_assert(ldq_take_applied(&q, &got));
	ck_assert_str_eq((char *)got.data, "c1");
	ck_assert(!ldq_take_applied(&q, &got));

	struct ldq_item *a = ldq_push(&q, LDQ_UPSERT, U1, "cn=a,dc=x", NULL);
	struct ldq_item *b = ldq_push(&q, LDQ_UPSERT, U2, "cn=b,dc=x", NULL);
	ldq_push_cookie(&q, &c2);
	struct ldq_item *c = ldq_push(&q, LDQ_UPSERT, U3, "cn=c,dc=x", NULL);
	ck_assert(ldq_full(&q) == false);
	ldq_push(&q, LDQ_UPSERT, U4, "cn=d,dc=x", NULL);
	ck_assert(ldq_full(&q));
	for (int i = 0; i < 4; i++)
		next_running(&q);
	/* b and c done, a not: c2 (after b) is not covered. */
	ldq_done(&q, b);
	ldq_done(&q, c);
	ck_assert(!ldq_take_applied(&q, &got));
	ldq_done(&q, a);
	ck_assert(ldq_take_applied(&q, &got));
	ck_assert_str_eq((char *)got.data, "c2");
	ck_assert_uint_eq(ldq_count(&q), 1);
	ldsync_cookie_clear(&got);
	ldsync_cookie_clear(&c1);
	ldsync_cookie_clear(&c2);
	ldq_clear(&q);
}
END_TEST

START_TEST(test_queue_owns_entries)
{
	struct ldq q;

	ldq_init(&q, 8);
	struct lde_entry *e = lde_entry_new("cn=a,dc=x");
	add_str(e, "cn", 1, "a");
	ldq_push(&q, LDQ_UPSERT, U1, e->dn, e);
	ldq_push(&q, LDQ_DELETE, U2, NULL, NULL);
	ldq_clear(&q);	/* frees the entry: LeakSanitizer checks */
}
END_TEST

static Suite *
ldsync_suite(void)
{
	Suite *s = suite_create("ldsync");
	TCase *tc = tcase_create("ldsync");

	tcase_add_test(tc, test_state);
	tcase_add_test(tc, test_info);
	tcase_add_test(tc, test_done);
	tcase_add_test(tc, test_request);
	tcase_add_test(tc, test_cookie_csn);
	tcase_add_test(tc, test_cookie_merge);
	tcase_add_test(tc, test_cookie_covers);
	tcase_add_test(tc, test_uuid_text);
	tcase_add_test(tc, test_diff);
	tcase_add_test(tc, test_values_equal);
	tcase_add_test(tc, test_dn);
	tcase_add_test(tc, test_uuid_set);
	tcase_add_test(tc, test_queue_parallel_and_ordered);
	tcase_add_test(tc, test_queue_unknown_dn_is_a_barrier);
	tcase_add_test(tc, test_queue_rename_parks);
	tcase_add_test(tc, test_queue_retry_later);
	tcase_add_test(tc, test_queue_cookies);
	tcase_add_test(tc, test_queue_owns_entries);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(ldsync_suite());
}
