/*
 * ldsync.c: RFC 4533 control and message values (see ldsync.h).
 *
 * The ASN.1, from RFC 4533 section 2:
 *   syncRequestValue ::= SEQUENCE { mode ENUMERATED, cookie syncCookie OPTIONAL,
 *                                   reloadHint BOOLEAN DEFAULT FALSE }
 *   syncStateValue   ::= SEQUENCE { state ENUMERATED, entryUUID syncUUID,
 *                                   cookie syncCookie OPTIONAL }
 *   syncDoneValue    ::= SEQUENCE { cookie syncCookie OPTIONAL,
 *                                   refreshDeletes BOOLEAN DEFAULT FALSE }
 *   syncInfoValue    ::= CHOICE {
 *       newcookie      [0] syncCookie,
 *       refreshDelete  [1] SEQUENCE { cookie OPTIONAL, refreshDone BOOLEAN DEFAULT TRUE },
 *       refreshPresent [2] SEQUENCE { cookie OPTIONAL, refreshDone BOOLEAN DEFAULT TRUE },
 *       syncIdSet      [3] SEQUENCE { cookie OPTIONAL, refreshDeletes BOOLEAN DEFAULT FALSE,
 *                                     syncUUIDs SET OF syncUUID } }
 * where syncUUID is an OCTET STRING of 16 bytes and syncCookie an OCTET STRING.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ldap.h>

#include "replicators/ldap/ldsync.h"

/* A decoder over a copy of VALUE's bytes (ber_init copies); ber_free(ber, 1). */
static BerElement *
reader(const struct berval *value)
{
	struct berval bv = *value;
	static char empty[1];

	if (bv.bv_val == NULL)
		bv.bv_val = empty;
	return ber_init(&bv);
}

void
ldsync_cookie_set(struct ldsync_cookie *c, const void *data, size_t len)
{
	free(c->data);
	c->data = xmalloc(len + 1);
	if (len > 0)
		memcpy(c->data, data, len);
	c->data[len] = '\0';	/* slapd's cookies are text: keep them printable as C strings */
	c->len = len;
}

void
ldsync_cookie_copy(struct ldsync_cookie *dst, const struct ldsync_cookie *src)
{
	if (src->data == NULL) {
		ldsync_cookie_clear(dst);
		return;
	}
	ldsync_cookie_set(dst, src->data, src->len);
}

void
ldsync_cookie_clear(struct ldsync_cookie *c)
{
	free(c->data);
	c->data = NULL;
	c->len = 0;
}

bool
ldsync_cookie_equal(const struct ldsync_cookie *a, const struct ldsync_cookie *b)
{
	if ((a->data == NULL) != (b->data == NULL))
		return false;
	return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static ber_len_t
remaining(BerElement *ber)
{
	ber_len_t n = 0;

	if (ber_get_option(ber, LBER_OPT_REMAINING_BYTES, &n) != LBER_OPT_SUCCESS)
		return 0;
	return n;
}

/*
 * Enter a constructed element with tag TAG; *rest_r is what must remain
 * once its contents are read.  Fields are read by position, so without
 * this bound a value placed after the sequence would be taken for one of
 * its optional fields.
 */
static int
seq_open(BerElement *ber, ber_tag_t tag, ber_len_t *rest_r)
{
	ber_len_t len;

	if (ber_skip_tag(ber, &len) != tag)
		return -1;
	ber_len_t rem = remaining(ber);
	if (len > rem)
		return -1;
	*rest_r = rem - len;
	return 0;
}

static bool
seq_more(BerElement *ber, ber_len_t rest)
{
	return remaining(ber) > rest;
}

/* An optional cookie at the reader's position, inside the sequence. */
static int
optional_cookie(BerElement *ber, ber_len_t rest, bool *has_r, struct ldsync_cookie *c)
{
	ber_len_t len;
	struct berval bv;

	if (!seq_more(ber, rest) || ber_peek_tag(ber, &len) != LDAP_TAG_SYNC_COOKIE)
		return 0;
	if (ber_scanf(ber, "m", &bv) == LBER_ERROR || remaining(ber) < rest)
		return -1;
	ldsync_cookie_set(c, bv.bv_val, bv.bv_len);
	*has_r = true;
	return 0;
}

/* An optional BOOLEAN at the reader's position, inside the sequence. */
static int
optional_bool(BerElement *ber, ber_len_t rest, bool *value_r)
{
	ber_len_t len;
	ber_int_t b;

	if (!seq_more(ber, rest) || ber_peek_tag(ber, &len) != LBER_BOOLEAN)
		return 0;
	if (ber_scanf(ber, "b", &b) == LBER_ERROR || remaining(ber) < rest)
		return -1;
	*value_r = b != 0;
	return 0;
}

/* The sequence is read to its end and nothing follows the value. */
static bool
seq_closed(BerElement *ber, ber_len_t rest)
{
	return remaining(ber) == rest && rest == 0;
}

static int
parse_state(BerElement *ber, struct ldsync_state *out, char **error_r)
{
	ber_int_t state;
	struct berval uuid;
	ber_len_t rest;

	memset(out, 0, sizeof(*out));
	if (seq_open(ber, LBER_SEQUENCE, &rest) < 0 || ber_scanf(ber, "em", &state, &uuid) == LBER_ERROR ||
	    remaining(ber) < rest) {
		st_set_error(error_r, "malformed Sync State control");
		return -1;
	}
	if (state < LDSYNC_PRESENT || state > LDSYNC_DELETE) {
		st_set_error(error_r, "Sync State control with unknown state %d", (int)state);
		return -1;
	}
	if (uuid.bv_len != LDSYNC_UUID_LEN) {
		st_set_error(error_r, "Sync State control with an entryUUID of %lu bytes, not 16",
			     (unsigned long)uuid.bv_len);
		return -1;
	}
	out->state = (enum ldsync_state_kind)state;
	memcpy(out->uuid, uuid.bv_val, LDSYNC_UUID_LEN);
	if (optional_cookie(ber, rest, &out->has_cookie, &out->cookie) < 0 || !seq_closed(ber, rest)) {
		ldsync_state_clear(out);
		st_set_error(error_r, "malformed Sync State control");
		return -1;
	}
	return 0;
}

int
ldsync_parse_state(const struct berval *value, struct ldsync_state *out, char **error_r)
{
	BerElement *ber;
	int rc;

	/* liblber 2.5 reads through a NULL buffer when given no bytes at all. */
	if (value == NULL || value->bv_len == 0 || (ber = reader(value)) == NULL) {
		memset(out, 0, sizeof(*out));
		st_set_error(error_r, "empty or unreadable RFC 4533 value");
		return -1;
	}
	rc = parse_state(ber, out, error_r);
	ber_free(ber, 1);
	return rc;
}

void
ldsync_state_clear(struct ldsync_state *s)
{
	ldsync_cookie_clear(&s->cookie);
	s->has_cookie = false;
}

static int
parse_info(BerElement *ber, struct ldsync_info *out, char **error_r)
{
	ber_len_t len, rest;
	struct berval bv;
	BerVarray uuids = NULL;
	ber_tag_t tag = ber_peek_tag(ber, &len);

	memset(out, 0, sizeof(*out));
	switch (tag) {
	case LDAP_TAG_SYNC_NEW_COOKIE:
		out->kind = LDSYNC_NEW_COOKIE;
		if (ber_scanf(ber, "m", &bv) == LBER_ERROR)
			goto bad;
		ldsync_cookie_set(&out->cookie, bv.bv_val, bv.bv_len);
		out->has_cookie = true;
		rest = 0;
		break;
	case LDAP_TAG_SYNC_REFRESH_DELETE:
	case LDAP_TAG_SYNC_REFRESH_PRESENT:
		out->kind = tag == LDAP_TAG_SYNC_REFRESH_DELETE ? LDSYNC_REFRESH_DELETE
								 : LDSYNC_REFRESH_PRESENT;
		out->refresh_done = true;
		if (seq_open(ber, tag, &rest) < 0 ||
		    optional_cookie(ber, rest, &out->has_cookie, &out->cookie) < 0 ||
		    optional_bool(ber, rest, &out->refresh_done) < 0)
			goto bad;
		break;
	case LDAP_TAG_SYNC_ID_SET:
		out->kind = LDSYNC_ID_SET;
		if (seq_open(ber, tag, &rest) < 0 ||
		    optional_cookie(ber, rest, &out->has_cookie, &out->cookie) < 0 ||
		    optional_bool(ber, rest, &out->refresh_deletes) < 0 || !seq_more(ber, rest) ||
		    ber_scanf(ber, "[W]", &uuids) == LBER_ERROR || remaining(ber) < rest)
			goto bad;
		size_t n = 0;
		while (uuids != NULL && uuids[n].bv_val != NULL)
			n++;
		out->uuids = n > 0 ? xcalloc(n, LDSYNC_UUID_LEN) : NULL;
		for (size_t i = 0; i < n; i++) {
			if (uuids[i].bv_len != LDSYNC_UUID_LEN) {
				st_set_error(error_r, "syncIdSet with an entryUUID of %lu bytes, not 16",
					     (unsigned long)uuids[i].bv_len);
				ber_bvarray_free(uuids);
				ldsync_info_clear(out);
				return -1;
			}
			memcpy(out->uuids[i], uuids[i].bv_val, LDSYNC_UUID_LEN);
		}
		out->n_uuids = n;
		ber_bvarray_free(uuids);
		uuids = NULL;
		break;
	default:
		st_set_error(error_r, "Sync Info message with unknown tag 0x%lx", (unsigned long)tag);
		return -1;
	}
	if (!seq_closed(ber, rest))
		goto bad;
	return 0;
bad:
	if (uuids != NULL)
		ber_bvarray_free(uuids);
	ldsync_info_clear(out);
	st_set_error(error_r, "malformed Sync Info message");
	return -1;
}

int
ldsync_parse_info(const struct berval *value, struct ldsync_info *out, char **error_r)
{
	BerElement *ber;
	int rc;

	/* liblber 2.5 reads through a NULL buffer when given no bytes at all. */
	if (value == NULL || value->bv_len == 0 || (ber = reader(value)) == NULL) {
		memset(out, 0, sizeof(*out));
		st_set_error(error_r, "empty or unreadable RFC 4533 value");
		return -1;
	}
	rc = parse_info(ber, out, error_r);
	ber_free(ber, 1);
	return rc;
}

void
ldsync_info_clear(struct ldsync_info *info)
{
	ldsync_cookie_clear(&info->cookie);
	free(info->uuids);
	info->uuids = NULL;
	info->n_uuids = 0;
	info->has_cookie = false;
}

static int
parse_done(BerElement *ber, struct ldsync_done *out, char **error_r)
{
	ber_len_t rest;

	memset(out, 0, sizeof(*out));
	if (seq_open(ber, LBER_SEQUENCE, &rest) < 0 ||
	    optional_cookie(ber, rest, &out->has_cookie, &out->cookie) < 0 ||
	    optional_bool(ber, rest, &out->refresh_deletes) < 0 || !seq_closed(ber, rest)) {
		ldsync_done_clear(out);
		st_set_error(error_r, "malformed Sync Done control");
		return -1;
	}
	return 0;
}

int
ldsync_parse_done(const struct berval *value, struct ldsync_done *out, char **error_r)
{
	BerElement *ber;
	int rc;

	/* liblber 2.5 reads through a NULL buffer when given no bytes at all. */
	if (value == NULL || value->bv_len == 0 || (ber = reader(value)) == NULL) {
		memset(out, 0, sizeof(*out));
		st_set_error(error_r, "empty or unreadable RFC 4533 value");
		return -1;
	}
	rc = parse_done(ber, out, error_r);
	ber_free(ber, 1);
	return rc;
}

void
ldsync_done_clear(struct ldsync_done *d)
{
	ldsync_cookie_clear(&d->cookie);
	d->has_cookie = false;
}

int
ldsync_request_value(int mode, const struct ldsync_cookie *cookie, bool reload_hint,
		     struct berval *out, char **error_r)
{
	BerElement *ber = ber_alloc_t(LBER_USE_DER);
	int rc = -1;

	out->bv_val = NULL;
	out->bv_len = 0;
	if (ber == NULL) {
		st_set_error(error_r, "out of memory encoding the Sync Request control");
		return -1;
	}
	if (ber_printf(ber, "{e", (ber_int_t)mode) < 0)
		goto out;
	if (cookie != NULL && cookie->data != NULL && cookie->len > 0) {
		struct berval bv = { .bv_len = cookie->len, .bv_val = (char *)cookie->data };
		if (ber_printf(ber, "O", &bv) < 0)
			goto out;
	}
	if (reload_hint && ber_printf(ber, "b", (ber_int_t)1) < 0)
		goto out;
	if (ber_printf(ber, "N}") < 0 || ber_flatten2(ber, out, 1) < 0)
		goto out;
	rc = 0;
out:
	if (rc < 0)
		st_set_error(error_r, "cannot encode the Sync Request control");
	ber_free(ber, 1);
	return rc;
}

int
ldsync_cookie_csn(const struct ldsync_cookie *c, char *out, size_t size)
{
	const char *p = (const char *)c->data, *end = p + c->len;
	bool found = false;

	if (size == 0)
		return -1;
	out[0] = '\0';
	while (p != NULL && p < end) {
		const char *item_end = memchr(p, ',', (size_t)(end - p));
		if (item_end == NULL)
			item_end = end;
		if (item_end - p > 4 && memcmp(p, "csn=", 4) == 0) {
			/* csn=A;B;C: one per serverID; the newest is the largest. */
			const char *v = p + 4;
			while (v < item_end) {
				const char *semi = memchr(v, ';', (size_t)(item_end - v));
				const char *v_end = semi != NULL ? semi : item_end;
				size_t n = (size_t)(v_end - v);
				char cand[128];
				bool ok = n > 0 && n < size && n < sizeof(cand);
				for (size_t i = 0; ok && i < n; i++)
					ok = v[i] > ' ' && v[i] < 0x7f;
				if (ok) {

					memcpy(cand, v, n);
					cand[n] = '\0';
					if (!found || strcmp(cand, out) > 0) {
						memcpy(out, cand, n + 1);
						found = true;
					}
				}
				v = v_end + 1;
			}
		}
		p = item_end + 1;
	}
	return found ? 0 : -1;
}

#define MAX_SIDS 32

struct csn_vec {
	char csn[MAX_SIDS][128];
	size_t n;
};

/* The serverID field of a CSN (time#count#sid#mod), or "" */
static void
csn_sid(const char *csn, char *out, size_t size)
{
	const char *p = strchr(csn, '#');

	out[0] = '\0';
	if (p == NULL || (p = strchr(p + 1, '#')) == NULL)
		return;
	p++;
	size_t n = strcspn(p, "#");
	if (n < size) {
		memcpy(out, p, n);
		out[n] = '\0';
	}
}

static void
vec_add(struct csn_vec *v, const char *csn, size_t len)
{
	char c[128], sid[32], other[32];

	if (len == 0 || len >= sizeof(c))
		return;
	memcpy(c, csn, len);
	c[len] = '\0';
	csn_sid(c, sid, sizeof(sid));
	for (size_t i = 0; i < v->n; i++) {
		csn_sid(v->csn[i], other, sizeof(other));
		if (strcmp(sid, other) == 0) {
			if (strcmp(c, v->csn[i]) > 0)
				memcpy(v->csn[i], c, len + 1);
			return;
		}
	}
	if (v->n < MAX_SIDS)
		memcpy(v->csn[v->n++], c, len + 1);
}

/* Add the csn= values of C to V; append C's rid= and sid= fields to REST
 * and its others (delcsn=...) to TAIL. */
static void
cookie_split(const struct ldsync_cookie *c, struct csn_vec *v, struct st_buf *rest,
	     struct st_buf *tail)
{
	const char *p = (const char *)c->data, *end = p + c->len;

	while (p != NULL && p < end) {
		const char *item_end = memchr(p, ',', (size_t)(end - p));
		if (item_end == NULL)
			item_end = end;
		if (item_end - p > 4 && memcmp(p, "csn=", 4) == 0) {
			for (const char *q = p + 4; q < item_end;) {
				const char *semi = memchr(q, ';', (size_t)(item_end - q));
				const char *q_end = semi != NULL ? semi : item_end;
				vec_add(v, q, (size_t)(q_end - q));
				q = q_end + 1;
			}
		} else if (rest != NULL && item_end > p) {
			struct st_buf *b = item_end - p > 4 && (memcmp(p, "rid=", 4) == 0 ||
								memcmp(p, "sid=", 4) == 0) ? rest : tail;
			st_buf_puts(b, ",");
			st_buf_append(b, p, (size_t)(item_end - p));
		}
		p = item_end + 1;
	}
}

bool
ldsync_cookie_covers(const struct ldsync_cookie *c, const char *csns)
{
	struct csn_vec have = { .n = 0 };
	char sid[32], other[32];

	if (c->data != NULL)
		cookie_split(c, &have, NULL, NULL);
	for (const char *q = csns; *q != '\0';) {
		size_t n = strcspn(q, ";");
		char want[128];
		bool covered = false;
		if (n == 0 || n >= sizeof(want))
			return false;
		memcpy(want, q, n);
		want[n] = '\0';
		csn_sid(want, sid, sizeof(sid));
		for (size_t i = 0; i < have.n && !covered; i++) {
			csn_sid(have.csn[i], other, sizeof(other));
			covered = strcmp(sid, other) == 0 && strcmp(have.csn[i], want) >= 0;
		}
		if (!covered)
			return false;
		q += n;
		if (*q == ';')
			q++;
	}
	return true;
}

void
ldsync_cookie_merge(struct ldsync_cookie *acc, const struct ldsync_cookie *in)
{
	struct csn_vec v = { .n = 0 };
	struct st_buf out;

	if (in->data == NULL)
		return;
	if (acc->data == NULL) {
		ldsync_cookie_copy(acc, in);
		return;
	}
	struct st_buf tail;

	st_buf_init(&out);
	st_buf_init(&tail);
	cookie_split(acc, &v, NULL, NULL);
	cookie_split(in, &v, &out, &tail);
	if (v.n > 0) {
		st_buf_puts(&out, ",csn=");
		for (size_t i = 0; i < v.n; i++)
			st_buf_printf(&out, "%s%s", i > 0 ? ";" : "", v.csn[i]);
	}
	if (tail.len > 0)
		st_buf_append(&out, tail.data, tail.len);
	/* every field was written with a leading comma */
	if (out.len > 0)
		ldsync_cookie_set(acc, out.data + 1, out.len - 1);
	else
		ldsync_cookie_set(acc, "", 0);
	st_buf_free(&out);
	st_buf_free(&tail);
}

void
ldsync_cookie_from_csn(struct ldsync_cookie *c, const char *csn)
{
	char *text = xasprintf("rid=000,csn=%s", csn);

	ldsync_cookie_set(c, text, strlen(text));
	free(text);
}

long long
ldsync_csn_ms(const char *csn)
{
	struct tm tm;
	unsigned usec = 0;
	int n = 0;

	memset(&tm, 0, sizeof(tm));
	if (strlen(csn) < 15 ||
	    sscanf(csn, "%4d%2d%2d%2d%2d%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
		   &tm.tm_min, &tm.tm_sec, &n) != 6 || n != 14)
		return -1;
	if (csn[14] == '.') {
		const char *f = csn + 15;
		unsigned scale = 100000;
		for (; *f >= '0' && *f <= '9' && scale > 0; f++, scale /= 10)
			usec += (unsigned)(*f - '0') * scale;
	}
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return -1;
	return (long long)t * 1000 + usec / 1000;
}

void
ldsync_uuid_text(const uint8_t uuid[LDSYNC_UUID_LEN], char out[LDSYNC_UUID_TEXT])
{
	static const char hex[] = "0123456789abcdef";
	char *p = out;

	for (int i = 0; i < LDSYNC_UUID_LEN; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*p++ = '-';
		*p++ = hex[uuid[i] >> 4];
		*p++ = hex[uuid[i] & 15];
	}
	*p = '\0';
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int
ldsync_uuid_parse(const char *text, uint8_t uuid[LDSYNC_UUID_LEN])
{
	const char *p = text;

	for (int i = 0; i < LDSYNC_UUID_LEN; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10) {
			if (*p != '-')
				return -1;
			p++;
		}
		int hi = hexval(p[0]), lo = hi < 0 ? -1 : hexval(p[1]);
		if (hi < 0 || lo < 0)
			return -1;
		uuid[i] = (uint8_t)(hi << 4 | lo);
		p += 2;
	}
	return *p == '\0' ? 0 : -1;
}
