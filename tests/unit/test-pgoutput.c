/*
 * test-pgoutput: the logical replication stream decoder.  Messages are built
 * byte by byte as PostgreSQL 15's walsender and pgoutput send them
 * (protocol-logicalrep-message-formats.html, protocol-replication.html):
 * every kind decodes to the right fields, values of every kind and size,
 * storage reused across parses, and every truncation or corruption refused
 * with a message, never a read outside the buffer (inputs are exact-size
 * heap copies, so AddressSanitizer sees any overread).
 */
#include "config.h"

#include "replicators/pg/pgoutput.h"
#include "tests/unit/testutil.h"

#include <inttypes.h>

/* ------------------------------------------------------------ builders */

struct mb {
	uint8_t *p;
	size_t len, cap;
};

static void
mb_reserve(struct mb *b, size_t n)
{
	if (b->cap - b->len < n) {
		b->cap = (b->len + n) * 2;
		b->p = xrealloc(b->p, b->cap);
	}
}

static void
mb_free(struct mb *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static void
put_bytes(struct mb *b, const void *p, size_t n)
{
	mb_reserve(b, n);
	if (n > 0)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void
put_u8(struct mb *b, uint8_t v)
{
	put_bytes(b, &v, 1);
}

static void
put_u16(struct mb *b, uint16_t v)
{
	uint8_t x[2] = { (uint8_t)(v >> 8), (uint8_t)v };

	put_bytes(b, x, sizeof(x));
}

static void
put_u32(struct mb *b, uint32_t v)
{
	uint8_t x[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };

	put_bytes(b, x, sizeof(x));
}

static void
put_u64(struct mb *b, uint64_t v)
{
	put_u32(b, (uint32_t)(v >> 32));
	put_u32(b, (uint32_t)v);
}

/* A protocol String: the bytes and a NUL. */
static void
put_string(struct mb *b, const char *s)
{
	put_bytes(b, s, strlen(s) + 1);
}

/* TupleData columns. */
static void
col_null(struct mb *b)
{
	put_u8(b, 'n');
}

static void
col_unchanged(struct mb *b)
{
	put_u8(b, 'u');
}

static void
col_text_n(struct mb *b, const void *p, uint32_t n)
{
	put_u8(b, 't');
	put_u32(b, n);
	put_bytes(b, p, n);
}

static void
col_text(struct mb *b, const char *s)
{
	col_text_n(b, s, (uint32_t)strlen(s));
}

static void
col_binary(struct mb *b, const void *p, uint32_t n)
{
	put_u8(b, 'b');
	put_u32(b, n);
	put_bytes(b, p, n);
}

/* The type byte, and inside a streamed transaction the xid. */
static void
data_header(struct mb *b, char kind, bool in_stream, uint32_t xid)
{
	put_u8(b, (uint8_t)kind);
	if (in_stream)
		put_u32(b, xid);
}

static void
msg_begin(struct mb *b, pgo_lsn final_lsn, int64_t ts, uint32_t xid)
{
	put_u8(b, 'B');
	put_u64(b, final_lsn);
	put_u64(b, (uint64_t)ts);
	put_u32(b, xid);
}

static void
msg_commit(struct mb *b, uint8_t flags, pgo_lsn commit_lsn, pgo_lsn end_lsn, int64_t ts)
{
	put_u8(b, 'C');
	put_u8(b, flags);
	put_u64(b, commit_lsn);
	put_u64(b, end_lsn);
	put_u64(b, (uint64_t)ts);
}

static void
msg_origin(struct mb *b, pgo_lsn lsn, const char *name)
{
	put_u8(b, 'O');
	put_u64(b, lsn);
	put_string(b, name);
}

struct col_def {
	uint8_t flags;
	const char *name;
	uint32_t type_oid;
	int32_t typmod;
};

static void
msg_relation(struct mb *b, bool in_stream, uint32_t xid, uint32_t relid, const char *nsp,
	     const char *rel, char ident, uint16_t ncols, const struct col_def *cols)
{
	data_header(b, 'R', in_stream, xid);
	put_u32(b, relid);
	put_string(b, nsp);
	put_string(b, rel);
	put_u8(b, (uint8_t)ident);
	put_u16(b, ncols);
	for (uint16_t i = 0; i < ncols; i++) {
		put_u8(b, cols[i].flags);
		put_string(b, cols[i].name);
		put_u32(b, cols[i].type_oid);
		put_u32(b, (uint32_t)cols[i].typmod);
	}
}

static void
msg_type(struct mb *b, bool in_stream, uint32_t xid, uint32_t oid, const char *nsp,
	 const char *name)
{
	data_header(b, 'Y', in_stream, xid);
	put_u32(b, oid);
	put_string(b, nsp);
	put_string(b, name);
}

static void
msg_truncate(struct mb *b, bool in_stream, uint32_t xid, uint8_t options, uint32_t nrels,
	     const uint32_t *relids)
{
	data_header(b, 'T', in_stream, xid);
	put_u32(b, nrels);
	put_u8(b, options);
	for (uint32_t i = 0; i < nrels; i++)
		put_u32(b, relids[i]);
}

static void
msg_message(struct mb *b, bool in_stream, uint32_t xid, uint8_t flags, pgo_lsn lsn,
	    const char *prefix, const void *content, uint32_t n)
{
	data_header(b, 'M', in_stream, xid);
	put_u8(b, flags);
	put_u64(b, lsn);
	put_string(b, prefix);
	put_u32(b, n);
	put_bytes(b, content, n);
}

static void
msg_stream_start(struct mb *b, uint32_t xid, uint8_t first)
{
	put_u8(b, 'S');
	put_u32(b, xid);
	put_u8(b, first);
}

static void
msg_stream_commit(struct mb *b, uint32_t xid, uint8_t flags, pgo_lsn commit_lsn,
		  pgo_lsn end_lsn, int64_t ts)
{
	put_u8(b, 'c');
	put_u32(b, xid);
	put_u8(b, flags);
	put_u64(b, commit_lsn);
	put_u64(b, end_lsn);
	put_u64(b, (uint64_t)ts);
}

static void
msg_stream_abort(struct mb *b, uint32_t xid, uint32_t subxid)
{
	put_u8(b, 'A');
	put_u32(b, xid);
	put_u32(b, subxid);
}

/* Insert into relation 16385: (42, 'hello', NULL). */
static void
msg_insert_simple(struct mb *b, bool in_stream, uint32_t xid)
{
	data_header(b, 'I', in_stream, xid);
	put_u32(b, 16385);
	put_u8(b, 'N');
	put_u16(b, 3);
	col_text(b, "42");
	col_text(b, "hello");
	col_null(b);
}

/* Update of relation 16385, key changed: 'K' (42) then 'N' (43, unchanged). */
static void
msg_update_key(struct mb *b, bool in_stream, uint32_t xid)
{
	data_header(b, 'U', in_stream, xid);
	put_u32(b, 16385);
	put_u8(b, 'K');
	put_u16(b, 2);
	col_text(b, "42");
	col_null(b);
	put_u8(b, 'N');
	put_u16(b, 2);
	col_text(b, "43");
	col_unchanged(b);
}

/* Delete from relation 16386 with REPLICA IDENTITY FULL: the whole old row. */
static void
msg_delete_full(struct mb *b, bool in_stream, uint32_t xid)
{
	data_header(b, 'D', in_stream, xid);
	put_u32(b, 16386);
	put_u8(b, 'O');
	put_u16(b, 3);
	col_text(b, "7");
	col_text(b, "seven");
	col_null(b);
}

/* 2024-01-01 00:00:00 UTC in PostgreSQL microseconds. */
#define TS_2024 INT64_C(757382400000000)

/* ------------------------------------------------------------ parsing */

/* An exact-size heap copy of B, so any overread is an ASan report. */
static uint8_t *
heap_copy(const uint8_t *p, size_t len)
{
	uint8_t *copy = xmalloc(len > 0 ? len : 1);

	if (len > 0)
		memcpy(copy, p, len);
	return copy;
}

/*
 * Parse the first LEN bytes of B and insist on success.  The input is then
 * scribbled over and freed: the message must not point into it.
 */
static void
parse_ok_n(const struct mb *b, size_t len, bool in_stream, struct pgo_msg *m)
{
	uint8_t *copy = heap_copy(b->p, len);
	char *error = NULL;
	int ret = pgo_parse(copy, len, in_stream, m, &error);

	ck_assert_msg(ret == 0, "parse failed: %s", error != NULL ? error : "(no error)");
	ck_assert_ptr_null(error);
	memset(copy, 0xa5, len);
	free(copy);
}

static void
parse_ok(const struct mb *b, bool in_stream, struct pgo_msg *m)
{
	parse_ok_n(b, b->len, in_stream, m);
}

/* Parse LEN bytes of B, insist on failure; the error contains WANT (if set). */
static void
parse_fail_n(const struct mb *b, size_t len, bool in_stream, struct pgo_msg *m,
	     const char *want)
{
	uint8_t *copy = heap_copy(b->p, len);
	char *error = NULL;
	int ret = pgo_parse(copy, len, in_stream, m, &error);

	ck_assert_msg(ret == -1, "parse of %zu bytes succeeded (kind %c)", len, (int)m->kind);
	ck_assert_ptr_nonnull(error);
	ck_assert_msg(error[0] != '\0', "empty error message");
	if (want != NULL)
		ck_assert_msg(strstr(error, want) != NULL, "error \"%s\" does not contain \"%s\"",
			      error, want);
	free(error);
	free(copy);
}

static void
parse_fail(const struct mb *b, bool in_stream, struct pgo_msg *m, const char *want)
{
	parse_fail_n(b, b->len, in_stream, m, want);
}

/* Text values are NUL-terminated and hold no NUL. */
static void
assert_text(const struct pgo_value *v, const char *want)
{
	ck_assert_int_eq(v->kind, PGO_VAL_TEXT);
	ck_assert_ptr_nonnull(v->data);
	ck_assert_uint_eq(v->len, strlen(want));
	ck_assert_uint_eq(strlen(v->data), v->len);
	ck_assert_str_eq(v->data, want);
}

static void
assert_binary(const struct pgo_value *v, const void *want, uint32_t n)
{
	ck_assert_int_eq(v->kind, PGO_VAL_BINARY);
	ck_assert_ptr_nonnull(v->data);
	ck_assert_uint_eq(v->len, n);
	ck_assert_int_eq(memcmp(v->data, want, n), 0);
	ck_assert_int_eq(v->data[n], '\0');
}

static void
assert_null(const struct pgo_value *v, enum pgo_value_kind kind)
{
	ck_assert_int_eq(v->kind, kind);
	ck_assert_ptr_null(v->data);
	ck_assert_uint_eq(v->len, 0);
}

/* ------------------------------------------------------------ messages */

START_TEST(test_begin)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	msg_begin(&b, UINT64_C(0x16B374D848), TS_2024, 742);
	ck_assert_uint_eq(b.len, 21);
	for (int stream = 0; stream <= 1; stream++) {
		/* Begin never carries a leading xid, in a stream or not. */
		parse_ok(&b, stream, &m);
		ck_assert_int_eq(m.kind, PGO_BEGIN);
		ck_assert_uint_eq(m.u.begin.final_lsn, UINT64_C(0x16B374D848));
		ck_assert_int_eq(m.u.begin.commit_time, TS_2024);
		ck_assert_uint_eq(m.xid, 742);
		ck_assert(!m.has_xid);
	}
	mb_free(&b);

	/* Extreme values: all bits set, negative time (before 2000). */
	msg_begin(&b, UINT64_MAX, -1, UINT32_MAX);
	parse_ok(&b, false, &m);
	ck_assert_uint_eq(m.u.begin.final_lsn, UINT64_MAX);
	ck_assert_int_eq(m.u.begin.commit_time, -1);
	ck_assert_uint_eq(m.xid, UINT32_MAX);
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_commit)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	msg_commit(&b, 0, UINT64_C(0x16B374D848), UINT64_C(0x16B374D878), TS_2024 + 1);
	ck_assert_uint_eq(b.len, 26);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_COMMIT);
	ck_assert_uint_eq(m.u.commit.flags, 0);
	ck_assert_uint_eq(m.u.commit.commit_lsn, UINT64_C(0x16B374D848));
	ck_assert_uint_eq(m.u.commit.end_lsn, UINT64_C(0x16B374D878));
	ck_assert_int_eq(m.u.commit.commit_time, TS_2024 + 1);
	ck_assert(!m.has_xid);
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_origin)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	msg_origin(&b, UINT64_C(0x100000028), "pg_16390");
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_ORIGIN);
	ck_assert_uint_eq(m.u.origin.commit_lsn, UINT64_C(0x100000028));
	ck_assert_str_eq(m.u.origin.name, "pg_16390");
	mb_free(&b);

	/* Inside a stream (PostgreSQL sends it after Stream Start): no xid. */
	msg_origin(&b, 0, "");
	parse_ok(&b, true, &m);
	ck_assert_int_eq(m.kind, PGO_ORIGIN);
	ck_assert(!m.has_xid);
	ck_assert_uint_eq(m.u.origin.commit_lsn, 0);
	ck_assert_str_eq(m.u.origin.name, "");
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

static const struct col_def three_cols[] = {
	{ 1, "id", 23, -1 },
	{ 0, "name", 25, -1 },
	{ 0, "price", 1700, 655366 },	/* numeric(10,2) */
};

START_TEST(test_relation)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	msg_relation(&b, false, 0, 16385, "public", "accounts", 'd', 3, three_cols);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_RELATION);
	ck_assert(!m.has_xid);
	ck_assert_uint_eq(m.u.relation.relid, 16385);
	ck_assert_str_eq(m.u.relation.nspname, "public");
	ck_assert_str_eq(m.u.relation.relname, "accounts");
	ck_assert_int_eq(m.u.relation.identity, PGO_IDENT_DEFAULT);
	ck_assert_uint_eq(m.u.relation.ncols, 3);
	for (int i = 0; i < 3; i++) {
		const struct pgo_column *c = &m.u.relation.cols[i];
		ck_assert_int_eq(c->key, three_cols[i].flags == 1);
		ck_assert_str_eq(c->name, three_cols[i].name);
		ck_assert_uint_eq(c->type_oid, three_cols[i].type_oid);
		ck_assert_int_eq(c->typmod, three_cols[i].typmod);
	}
	mb_free(&b);

	/* Every replica identity; pg_catalog is sent as "". */
	static const char idents[] = { 'd', 'n', 'f', 'i' };
	for (size_t i = 0; i < sizeof(idents); i++) {
		msg_relation(&b, false, 0, 1259, "", "pg_class", idents[i], 1, three_cols);
		parse_ok(&b, false, &m);
		ck_assert_int_eq(m.u.relation.identity, idents[i]);
		ck_assert_str_eq(m.u.relation.nspname, "");
		ck_assert_str_eq(m.u.relation.relname, "pg_class");
		mb_free(&b);
	}

	/* No columns at all (CREATE TABLE t ()). */
	msg_relation(&b, false, 0, 16400, "s", "empty", 'n', 0, NULL);
	parse_ok(&b, false, &m);
	ck_assert_uint_eq(m.u.relation.ncols, 0);
	mb_free(&b);

	/* UTF-8 names. */
	static const struct col_def utf8_cols[] = { { 1, "cl\xc3\xa9", 25, -1 } };
	msg_relation(&b, false, 0, 16401, "sch\xc3\xa9ma", "\xe2\x9c\x93", 'f', 1, utf8_cols);
	parse_ok(&b, false, &m);
	ck_assert_str_eq(m.u.relation.nspname, "sch\xc3\xa9ma");
	ck_assert_str_eq(m.u.relation.relname, "\xe2\x9c\x93");
	ck_assert_str_eq(m.u.relation.cols[0].name, "cl\xc3\xa9");
	mb_free(&b);

	/* In a streamed transaction: the xid comes first. */
	msg_relation(&b, true, 9001, 16385, "public", "accounts", 'i', 3, three_cols);
	parse_ok(&b, true, &m);
	ck_assert_int_eq(m.kind, PGO_RELATION);
	ck_assert(m.has_xid);
	ck_assert_uint_eq(m.xid, 9001);
	ck_assert_uint_eq(m.u.relation.relid, 16385);
	ck_assert_str_eq(m.u.relation.relname, "accounts");
	ck_assert_int_eq(m.u.relation.identity, PGO_IDENT_INDEX);
	ck_assert_uint_eq(m.u.relation.ncols, 3);
	ck_assert_str_eq(m.u.relation.cols[2].name, "price");
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_relation_1600_columns)
{
	enum { N = 1600 };
	struct col_def *cols = xcalloc(N, sizeof(*cols));
	char (*names)[16] = xcalloc(N, sizeof(*names));
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	for (int i = 0; i < N; i++) {
		snprintf(names[i], sizeof(names[i]), "column_%04d", i);
		cols[i].flags = i < 2;
		cols[i].name = names[i];
		cols[i].type_oid = 20 + (uint32_t)i % 7;
		cols[i].typmod = i % 3 == 0 ? -1 : i;
	}
	msg_relation(&b, false, 0, 77777, "public", "wide", 'f', N, cols);
	parse_ok(&b, false, &m);
	ck_assert_uint_eq(m.u.relation.ncols, N);
	ck_assert_int_eq(m.u.relation.identity, PGO_IDENT_FULL);
	for (int i = 0; i < N; i++) {
		const struct pgo_column *c = &m.u.relation.cols[i];
		ck_assert_int_eq(c->key, i < 2);
		ck_assert_str_eq(c->name, names[i]);
		ck_assert_uint_eq(c->type_oid, cols[i].type_oid);
		ck_assert_int_eq(c->typmod, cols[i].typmod);
	}
	mb_free(&b);

	/* And a 1600-column row for it, every kind of value. */
	data_header(&b, 'I', false, 0);
	put_u32(&b, 77777);
	put_u8(&b, 'N');
	put_u16(&b, N);
	for (int i = 0; i < N; i++) {
		switch (i % 4) {
		case 0: col_text(&b, names[i]); break;
		case 1: col_null(&b); break;
		case 2: col_unchanged(&b); break;
		case 3: col_binary(&b, names[i], 4); break;
		}
	}
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_INSERT);
	ck_assert_uint_eq(m.u.change.new_tuple.ncols, N);
	for (int i = 0; i < N; i++) {
		const struct pgo_value *v = &m.u.change.new_tuple.cols[i];
		switch (i % 4) {
		case 0: assert_text(v, names[i]); break;
		case 1: assert_null(v, PGO_VAL_NULL); break;
		case 2: assert_null(v, PGO_VAL_UNCHANGED); break;
		case 3: assert_binary(v, names[i], 4); break;
		}
	}
	mb_free(&b);
	pgo_msg_clear(&m);
	free(cols);
	free(names);
}
END_TEST

START_TEST(test_type)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	msg_type(&b, false, 0, 16390, "public", "mood");
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_TYPE);
	ck_assert(!m.has_xid);
	ck_assert_uint_eq(m.u.type.oid, 16390);
	ck_assert_str_eq(m.u.type.nspname, "public");
	ck_assert_str_eq(m.u.type.typname, "mood");
	mb_free(&b);

	msg_type(&b, true, 55, 16391, "", "int4range");
	parse_ok(&b, true, &m);
	ck_assert(m.has_xid);
	ck_assert_uint_eq(m.xid, 55);
	ck_assert_uint_eq(m.u.type.oid, 16391);
	ck_assert_str_eq(m.u.type.nspname, "");
	ck_assert_str_eq(m.u.type.typname, "int4range");
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_insert_values)
{
	static const char utf8[] = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xf0\x9f\x90\x98";
	static const uint8_t high[] = { 0xff, 0xfe, 0x80, 0xc0, 0x7f, 0x01 };
	static const uint8_t bin[] = { 0x00, 0x01, 0x00, 0xff, 0x00, 0x00, 'x', 0x00 };
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	data_header(&b, 'I', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'N');
	put_u16(&b, 9);
	col_text(&b, "42");
	col_text(&b, "");
	col_null(&b);
	col_unchanged(&b);
	col_text(&b, utf8);
	col_text_n(&b, high, sizeof(high));
	col_binary(&b, bin, sizeof(bin));
	col_binary(&b, "", 0);
	col_text(&b, "{\"a\": [1, 2], \"b\": \"\\u0000-escaped\"}");
	parse_ok(&b, false, &m);

	ck_assert_int_eq(m.kind, PGO_INSERT);
	ck_assert(!m.has_xid);
	ck_assert_uint_eq(m.u.change.relid, 16385);
	ck_assert_int_eq(m.u.change.old_kind, 0);
	ck_assert_uint_eq(m.u.change.old_tuple.ncols, 0);
	const struct pgo_tuple *t = &m.u.change.new_tuple;
	ck_assert_uint_eq(t->ncols, 9);
	assert_text(&t->cols[0], "42");
	assert_text(&t->cols[1], "");
	assert_null(&t->cols[2], PGO_VAL_NULL);
	assert_null(&t->cols[3], PGO_VAL_UNCHANGED);
	assert_text(&t->cols[4], utf8);
	ck_assert_int_eq(t->cols[5].kind, PGO_VAL_TEXT);
	ck_assert_uint_eq(t->cols[5].len, sizeof(high));
	ck_assert_int_eq(memcmp(t->cols[5].data, high, sizeof(high)), 0);
	ck_assert_int_eq(t->cols[5].data[sizeof(high)], '\0');
	assert_binary(&t->cols[6], bin, sizeof(bin));
	assert_binary(&t->cols[7], "", 0);
	assert_text(&t->cols[8], "{\"a\": [1, 2], \"b\": \"\\u0000-escaped\"}");
	mb_free(&b);

	/* Every value byte except NUL, in text. */
	uint8_t all[255];
	for (int i = 0; i < 255; i++)
		all[i] = (uint8_t)(i + 1);
	data_header(&b, 'I', false, 0);
	put_u32(&b, 1);
	put_u8(&b, 'N');
	put_u16(&b, 2);
	col_text_n(&b, all, sizeof(all));
	col_binary(&b, all, sizeof(all));
	parse_ok(&b, false, &m);
	ck_assert_uint_eq(m.u.change.new_tuple.cols[0].len, 255);
	ck_assert_uint_eq(strlen(m.u.change.new_tuple.cols[0].data), 255);
	ck_assert_int_eq(memcmp(m.u.change.new_tuple.cols[0].data, all, 255), 0);
	assert_binary(&m.u.change.new_tuple.cols[1], all, 255);
	mb_free(&b);

	/* Zero columns. */
	data_header(&b, 'I', false, 0);
	put_u32(&b, 2);
	put_u8(&b, 'N');
	put_u16(&b, 0);
	parse_ok(&b, false, &m);
	ck_assert_uint_eq(m.u.change.relid, 2);
	ck_assert_uint_eq(m.u.change.new_tuple.ncols, 0);
	mb_free(&b);

	/* In a stream. */
	msg_insert_simple(&b, true, 12345);
	parse_ok(&b, true, &m);
	ck_assert_int_eq(m.kind, PGO_INSERT);
	ck_assert(m.has_xid);
	ck_assert_uint_eq(m.xid, 12345);
	ck_assert_uint_eq(m.u.change.relid, 16385);
	ck_assert_uint_eq(m.u.change.new_tuple.ncols, 3);
	assert_text(&m.u.change.new_tuple.cols[1], "hello");
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_insert_1mb)
{
	enum { BIG = 1024 * 1024 };
	char *text = xmalloc(BIG + 1);
	uint8_t *bin = xmalloc(BIG);
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	for (size_t i = 0; i < BIG; i++) {
		text[i] = (char)('a' + i % 26);
		bin[i] = (uint8_t)(i * 7);	/* NULs every 256 bytes */
	}
	text[BIG] = '\0';
	data_header(&b, 'I', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'N');
	put_u16(&b, 3);
	col_text(&b, "1");
	col_text_n(&b, text, BIG);
	col_binary(&b, bin, BIG);
	parse_ok(&b, false, &m);
	const struct pgo_tuple *t = &m.u.change.new_tuple;
	ck_assert_uint_eq(t->ncols, 3);
	assert_text(&t->cols[0], "1");
	ck_assert_uint_eq(t->cols[1].len, BIG);
	ck_assert_uint_eq(strlen(t->cols[1].data), BIG);
	ck_assert_int_eq(memcmp(t->cols[1].data, text, BIG), 0);
	assert_binary(&t->cols[2], bin, BIG);

	/* One byte short, anywhere in the big value: refused. */
	parse_fail_n(&b, b.len - 1, false, &m, "Insert message");
	parse_fail_n(&b, b.len - BIG / 2, false, &m, "truncated value");
	mb_free(&b);

	/* Same in a Message. */
	msg_message(&b, false, 0, 1, 77, "big", bin, BIG);
	parse_ok(&b, false, &m);
	ck_assert_uint_eq(m.u.message.len, BIG);
	ck_assert_int_eq(memcmp(m.u.message.content, bin, BIG), 0);
	mb_free(&b);
	pgo_msg_clear(&m);
	free(text);
	free(bin);
}
END_TEST

START_TEST(test_update)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	/* No old tuple: only 'N'. */
	data_header(&b, 'U', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'N');
	put_u16(&b, 3);
	col_text(&b, "42");
	col_text(&b, "renamed");
	col_unchanged(&b);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_UPDATE);
	ck_assert_uint_eq(m.u.change.relid, 16385);
	ck_assert_int_eq(m.u.change.old_kind, 0);
	ck_assert_uint_eq(m.u.change.old_tuple.ncols, 0);
	ck_assert_uint_eq(m.u.change.new_tuple.ncols, 3);
	assert_text(&m.u.change.new_tuple.cols[0], "42");
	assert_text(&m.u.change.new_tuple.cols[1], "renamed");
	assert_null(&m.u.change.new_tuple.cols[2], PGO_VAL_UNCHANGED);
	mb_free(&b);

	/* Key changed: 'K' with the old key, then 'N'. */
	msg_update_key(&b, false, 0);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_UPDATE);
	ck_assert_int_eq(m.u.change.old_kind, 'K');
	ck_assert_uint_eq(m.u.change.old_tuple.ncols, 2);
	assert_text(&m.u.change.old_tuple.cols[0], "42");
	assert_null(&m.u.change.old_tuple.cols[1], PGO_VAL_NULL);
	ck_assert_uint_eq(m.u.change.new_tuple.ncols, 2);
	assert_text(&m.u.change.new_tuple.cols[0], "43");
	assert_null(&m.u.change.new_tuple.cols[1], PGO_VAL_UNCHANGED);
	/* The two tuples do not share storage. */
	ck_assert_ptr_ne(m.u.change.old_tuple.cols, m.u.change.new_tuple.cols);
	mb_free(&b);

	/* REPLICA IDENTITY FULL: 'O' with the whole old row. */
	data_header(&b, 'U', true, 4242);
	put_u32(&b, 16386);
	put_u8(&b, 'O');
	put_u16(&b, 3);
	col_text(&b, "7");
	col_text(&b, "old \xc3\xa9");
	col_null(&b);
	put_u8(&b, 'N');
	put_u16(&b, 3);
	col_text(&b, "7");
	col_text(&b, "new \xc3\xa9");
	col_text(&b, "2024-01-01");
	parse_ok(&b, true, &m);
	ck_assert(m.has_xid);
	ck_assert_uint_eq(m.xid, 4242);
	ck_assert_uint_eq(m.u.change.relid, 16386);
	ck_assert_int_eq(m.u.change.old_kind, 'O');
	ck_assert_uint_eq(m.u.change.old_tuple.ncols, 3);
	assert_text(&m.u.change.old_tuple.cols[0], "7");
	assert_text(&m.u.change.old_tuple.cols[1], "old \xc3\xa9");
	assert_null(&m.u.change.old_tuple.cols[2], PGO_VAL_NULL);
	ck_assert_uint_eq(m.u.change.new_tuple.ncols, 3);
	assert_text(&m.u.change.new_tuple.cols[1], "new \xc3\xa9");
	assert_text(&m.u.change.new_tuple.cols[2], "2024-01-01");
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_delete)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	data_header(&b, 'D', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'K');
	put_u16(&b, 3);
	col_text(&b, "42");
	col_null(&b);
	col_null(&b);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_DELETE);
	ck_assert_uint_eq(m.u.change.relid, 16385);
	ck_assert_int_eq(m.u.change.old_kind, 'K');
	ck_assert_uint_eq(m.u.change.old_tuple.ncols, 3);
	assert_text(&m.u.change.old_tuple.cols[0], "42");
	assert_null(&m.u.change.old_tuple.cols[1], PGO_VAL_NULL);
	ck_assert_uint_eq(m.u.change.new_tuple.ncols, 0);
	mb_free(&b);

	msg_delete_full(&b, false, 0);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_DELETE);
	ck_assert_uint_eq(m.u.change.relid, 16386);
	ck_assert_int_eq(m.u.change.old_kind, 'O');
	ck_assert_uint_eq(m.u.change.old_tuple.ncols, 3);
	assert_text(&m.u.change.old_tuple.cols[1], "seven");
	assert_null(&m.u.change.old_tuple.cols[2], PGO_VAL_NULL);
	ck_assert_uint_eq(m.u.change.new_tuple.ncols, 0);
	mb_free(&b);

	msg_delete_full(&b, true, 99);
	parse_ok(&b, true, &m);
	ck_assert(m.has_xid);
	ck_assert_uint_eq(m.xid, 99);
	ck_assert_int_eq(m.u.change.old_kind, 'O');
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_truncate)
{
	static const uint32_t relids[] = { 16385, 16386, UINT32_MAX };
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	msg_truncate(&b, false, 0, PGO_TRUNCATE_CASCADE | PGO_TRUNCATE_RESTART_IDENTITY, 3,
		     relids);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_TRUNCATE);
	ck_assert_uint_eq(m.u.truncate.options,
			  PGO_TRUNCATE_CASCADE | PGO_TRUNCATE_RESTART_IDENTITY);
	ck_assert_uint_eq(m.u.truncate.nrels, 3);
	for (int i = 0; i < 3; i++)
		ck_assert_uint_eq(m.u.truncate.relids[i], relids[i]);
	mb_free(&b);

	msg_truncate(&b, true, 31337, 0, 1, relids);
	parse_ok(&b, true, &m);
	ck_assert(m.has_xid);
	ck_assert_uint_eq(m.xid, 31337);
	ck_assert_uint_eq(m.u.truncate.options, 0);
	ck_assert_uint_eq(m.u.truncate.nrels, 1);
	ck_assert_uint_eq(m.u.truncate.relids[0], 16385);
	mb_free(&b);

	/* Many relations. */
	enum { N = 5000 };
	uint32_t *many = xcalloc(N, sizeof(*many));
	for (uint32_t i = 0; i < N; i++)
		many[i] = 16384 + i;
	msg_truncate(&b, false, 0, PGO_TRUNCATE_CASCADE, N, many);
	parse_ok(&b, false, &m);
	ck_assert_uint_eq(m.u.truncate.nrels, N);
	ck_assert_uint_eq(m.u.truncate.relids[0], 16384);
	ck_assert_uint_eq(m.u.truncate.relids[N - 1], 16384 + N - 1);
	mb_free(&b);
	free(many);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_message)
{
	static const uint8_t content[] = { 'a', 0x00, 'b', 0xff, 0x00 };
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	msg_message(&b, false, 0, 1, UINT64_C(0x3000060), "standin", content, sizeof(content));
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_MESSAGE);
	ck_assert(!m.has_xid);
	ck_assert(m.u.message.transactional);
	ck_assert_uint_eq(m.u.message.lsn, UINT64_C(0x3000060));
	ck_assert_str_eq(m.u.message.prefix, "standin");
	ck_assert_uint_eq(m.u.message.len, sizeof(content));
	ck_assert_int_eq(memcmp(m.u.message.content, content, sizeof(content)), 0);
	ck_assert_int_eq(m.u.message.content[sizeof(content)], '\0');
	mb_free(&b);

	/* Non-transactional, empty content. */
	msg_message(&b, false, 0, 0, 5, "", "", 0);
	parse_ok(&b, false, &m);
	ck_assert(!m.u.message.transactional);
	ck_assert_uint_eq(m.u.message.lsn, 5);
	ck_assert_str_eq(m.u.message.prefix, "");
	ck_assert_uint_eq(m.u.message.len, 0);
	ck_assert_ptr_nonnull(m.u.message.content);
	ck_assert_str_eq(m.u.message.content, "");
	mb_free(&b);

	/* Text content, in a stream. */
	msg_message(&b, true, 777, 1, 6, "standin.ddl", "CREATE TABLE t (a int)", 22);
	parse_ok(&b, true, &m);
	ck_assert(m.has_xid);
	ck_assert_uint_eq(m.xid, 777);
	ck_assert_str_eq(m.u.message.prefix, "standin.ddl");
	ck_assert_str_eq(m.u.message.content, "CREATE TABLE t (a int)");
	ck_assert_uint_eq(m.u.message.len, 22);
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_stream)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	msg_stream_start(&b, 1000, 1);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_STREAM_START);
	ck_assert_uint_eq(m.xid, 1000);
	ck_assert(!m.has_xid);
	ck_assert(m.u.stream_start.first_segment);
	mb_free(&b);

	msg_stream_start(&b, 1000, 0);
	parse_ok(&b, true, &m);
	ck_assert_int_eq(m.kind, PGO_STREAM_START);
	ck_assert_uint_eq(m.xid, 1000);
	ck_assert(!m.u.stream_start.first_segment);
	mb_free(&b);

	put_u8(&b, 'E');
	parse_ok(&b, true, &m);
	ck_assert_int_eq(m.kind, PGO_STREAM_STOP);
	ck_assert(!m.has_xid);
	mb_free(&b);

	msg_stream_commit(&b, 1000, 0, UINT64_C(0x1A2B3C4D5E), UINT64_C(0x1A2B3C4D9E), TS_2024);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_STREAM_COMMIT);
	ck_assert_uint_eq(m.xid, 1000);
	ck_assert(!m.has_xid);
	ck_assert_uint_eq(m.u.commit.flags, 0);
	ck_assert_uint_eq(m.u.commit.commit_lsn, UINT64_C(0x1A2B3C4D5E));
	ck_assert_uint_eq(m.u.commit.end_lsn, UINT64_C(0x1A2B3C4D9E));
	ck_assert_int_eq(m.u.commit.commit_time, TS_2024);
	mb_free(&b);

	msg_stream_abort(&b, 1000, 1001);
	parse_ok(&b, false, &m);
	ck_assert_int_eq(m.kind, PGO_STREAM_ABORT);
	ck_assert_uint_eq(m.xid, 1000);
	ck_assert_uint_eq(m.u.stream_abort.subxid, 1001);
	mb_free(&b);

	/* Whole subtransaction aborted: subxid == xid. */
	msg_stream_abort(&b, 1000, 1000);
	parse_ok(&b, true, &m);
	ck_assert_uint_eq(m.u.stream_abort.subxid, 1000);
	mb_free(&b);

	/* Update with 'K' inside a stream (xid, then relid). */
	msg_update_key(&b, true, 1001);
	parse_ok(&b, true, &m);
	ck_assert_int_eq(m.kind, PGO_UPDATE);
	ck_assert(m.has_xid);
	ck_assert_uint_eq(m.xid, 1001);
	ck_assert_uint_eq(m.u.change.relid, 16385);
	ck_assert_int_eq(m.u.change.old_kind, 'K');
	assert_text(&m.u.change.new_tuple.cols[0], "43");
	mb_free(&b);

	/* Stream data parsed as if outside a stream is misread, never accepted silently
	 * here: the xid 0x000003e8 becomes the relid and the relid's bytes the tag. */
	msg_insert_simple(&b, true, 1000);
	parse_fail(&b, false, &m, "Insert message");
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_kind_name)
{
	ck_assert_str_eq(pgo_kind_name(PGO_BEGIN), "Begin");
	ck_assert_str_eq(pgo_kind_name(PGO_COMMIT), "Commit");
	ck_assert_str_eq(pgo_kind_name(PGO_ORIGIN), "Origin");
	ck_assert_str_eq(pgo_kind_name(PGO_RELATION), "Relation");
	ck_assert_str_eq(pgo_kind_name(PGO_TYPE), "Type");
	ck_assert_str_eq(pgo_kind_name(PGO_INSERT), "Insert");
	ck_assert_str_eq(pgo_kind_name(PGO_UPDATE), "Update");
	ck_assert_str_eq(pgo_kind_name(PGO_DELETE), "Delete");
	ck_assert_str_eq(pgo_kind_name(PGO_TRUNCATE), "Truncate");
	ck_assert_str_eq(pgo_kind_name(PGO_MESSAGE), "Message");
	ck_assert_str_eq(pgo_kind_name(PGO_STREAM_START), "Stream Start");
	ck_assert_str_eq(pgo_kind_name(PGO_STREAM_STOP), "Stream Stop");
	ck_assert_str_eq(pgo_kind_name(PGO_STREAM_COMMIT), "Stream Commit");
	ck_assert_str_eq(pgo_kind_name(PGO_STREAM_ABORT), "Stream Abort");
	ck_assert_str_eq(pgo_kind_name((enum pgo_kind)'Z'), "unknown");
}
END_TEST

/* ------------------------------------------------------------ samples */

/* Every valid message kind, in and out of streams. */
struct sample {
	const char *name;
	bool in_stream;
	enum pgo_kind kind;
	struct mb b;
};

#define MAX_SAMPLES 40

static size_t
build_samples(struct sample *s)
{
	static const uint32_t relids[] = { 16385, 16386 };
	static const uint8_t bin[] = { 0, 1, 0, 0xff };
	size_t n = 0;

#define ADD(nm, stream, k) \
	(s[n].name = (nm), s[n].in_stream = (stream), s[n].kind = (k), &s[n++].b)

	msg_begin(ADD("begin", false, PGO_BEGIN), UINT64_C(0x16B374D848), TS_2024, 742);
	msg_commit(ADD("commit", false, PGO_COMMIT), 0, 1, 2, TS_2024);
	msg_origin(ADD("origin", false, PGO_ORIGIN), 3, "node_a");
	msg_origin(ADD("origin empty", false, PGO_ORIGIN), 3, "");
	msg_relation(ADD("relation", false, PGO_RELATION), false, 0, 16385, "public", "t", 'd',
		     3, three_cols);
	msg_relation(ADD("relation no cols", false, PGO_RELATION), false, 0, 1, "", "", 'n', 0,
		     NULL);
	msg_relation(ADD("stream relation", true, PGO_RELATION), true, 5, 16385, "public",
		     "t", 'f', 3, three_cols);
	msg_type(ADD("type", false, PGO_TYPE), false, 0, 16390, "public", "mood");
	msg_type(ADD("stream type", true, PGO_TYPE), true, 5, 16390, "public", "mood");
	msg_insert_simple(ADD("insert", false, PGO_INSERT), false, 0);
	msg_insert_simple(ADD("stream insert", true, PGO_INSERT), true, 5);

	struct mb *b = ADD("insert binary/unchanged", false, PGO_INSERT);
	data_header(b, 'I', false, 0);
	put_u32(b, 16385);
	put_u8(b, 'N');
	put_u16(b, 3);
	col_binary(b, bin, sizeof(bin));
	col_unchanged(b);
	col_text(b, "");

	b = ADD("update new only", false, PGO_UPDATE);
	data_header(b, 'U', false, 0);
	put_u32(b, 16385);
	put_u8(b, 'N');
	put_u16(b, 1);
	col_text(b, "x");

	msg_update_key(ADD("update key", false, PGO_UPDATE), false, 0);
	msg_update_key(ADD("stream update key", true, PGO_UPDATE), true, 5);

	b = ADD("update full", false, PGO_UPDATE);
	data_header(b, 'U', false, 0);
	put_u32(b, 16386);
	put_u8(b, 'O');
	put_u16(b, 2);
	col_text(b, "1");
	col_null(b);
	put_u8(b, 'N');
	put_u16(b, 2);
	col_text(b, "1");
	col_text(b, "v");

	b = ADD("delete key", false, PGO_DELETE);
	data_header(b, 'D', false, 0);
	put_u32(b, 16385);
	put_u8(b, 'K');
	put_u16(b, 1);
	col_text(b, "42");

	msg_delete_full(ADD("delete full", false, PGO_DELETE), false, 0);
	msg_delete_full(ADD("stream delete full", true, PGO_DELETE), true, 5);
	msg_truncate(ADD("truncate", false, PGO_TRUNCATE), false, 0, 1, 2, relids);
	msg_truncate(ADD("stream truncate", true, PGO_TRUNCATE), true, 5, 3, 1, relids);
	msg_message(ADD("message", false, PGO_MESSAGE), false, 0, 1, 9, "standin", "a\0b", 3);
	msg_message(ADD("message empty", false, PGO_MESSAGE), false, 0, 0, 9, "", "", 0);
	msg_message(ADD("stream message", true, PGO_MESSAGE), true, 5, 1, 9, "p", "xyz", 3);
	msg_stream_start(ADD("stream start", false, PGO_STREAM_START), 5, 1);
	put_u8(ADD("stream stop", true, PGO_STREAM_STOP), 'E');
	msg_stream_commit(ADD("stream commit", false, PGO_STREAM_COMMIT), 5, 0, 10, 20, TS_2024);
	msg_stream_abort(ADD("stream abort", false, PGO_STREAM_ABORT), 5, 6);
#undef ADD
	ck_assert_uint_le(n, MAX_SAMPLES);
	return n;
}

static void
free_samples(struct sample *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		mb_free(&s[i].b);
}

START_TEST(test_every_truncation_refused)
{
	struct sample s[MAX_SAMPLES] = { 0 };
	size_t n = build_samples(s);
	struct pgo_msg m = { 0 };

	for (size_t i = 0; i < n; i++) {
		parse_ok(&s[i].b, s[i].in_stream, &m);
		ck_assert_msg(m.kind == s[i].kind, "%s: kind %c", s[i].name, (int)m.kind);
		ck_assert_int_eq(m.has_xid, s[i].in_stream && s[i].kind != PGO_STREAM_STOP);

		char *want = xasprintf("%s message: ", pgo_kind_name(s[i].kind));
		for (size_t len = 0; len < s[i].b.len; len++) {
			/* Past the type byte, the error names the message. */
			parse_fail_n(&s[i].b, len, s[i].in_stream, &m,
				     len == 0 ? "pgoutput message: truncated type" : want);
		}
		free(want);
		/* And one byte too many. */
		put_u8(&s[i].b, 0);
		parse_fail(&s[i].b, s[i].in_stream, &m, "1 unexpected trailing bytes");
	}
	free_samples(s, n);
	pgo_msg_clear(&m);
}
END_TEST

/* One message reused over many parses of every kind, good and bad. */
START_TEST(test_reuse)
{
	struct sample s[MAX_SAMPLES] = { 0 };
	size_t n = build_samples(s);
	struct pgo_msg m = { 0 };
	struct mb big = { 0 };
	char *text = xmalloc(300000);

	memset(text, 'q', 300000);
	data_header(&big, 'I', false, 0);
	put_u32(&big, 16385);
	put_u8(&big, 'N');
	put_u16(&big, 1);
	col_text_n(&big, text, 300000);

	for (int round = 0; round < 50; round++) {
		for (size_t i = 0; i < n; i++) {
			parse_ok(&s[i].b, s[i].in_stream, &m);
			ck_assert_int_eq(m.kind, s[i].kind);
			if (m.kind == PGO_INSERT) {
				/* Nothing left over from an earlier Update or Delete. */
				ck_assert_int_eq(m.u.change.old_kind, 0);
				ck_assert_uint_eq(m.u.change.old_tuple.ncols, 0);
				ck_assert_uint_eq(m.u.change.new_tuple.ncols, 3);
			}
			if (m.kind == PGO_RELATION && s[i].in_stream)
				ck_assert_str_eq(m.u.relation.cols[2].name, "price");
			/* A failing parse in between. */
			if ((i + (size_t)round) % 5 == 0)
				parse_fail_n(&s[i].b, s[i].b.len / 2, s[i].in_stream, &m, NULL);
		}
		if (round % 10 == 0) {
			parse_ok(&big, false, &m);
			ck_assert_uint_eq(m.u.change.new_tuple.cols[0].len, 300000);
			ck_assert_uint_ge(m.arena_cap, 300000);
		}
	}
	/* The arena was sized once for the big message and kept. */
	ck_assert_uint_ge(m.arena_cap, big.len);
	parse_ok(&s[0].b, false, &m);
	ck_assert_int_eq(m.kind, PGO_BEGIN);
	ck_assert_uint_eq(m.xid, 742);
	pgo_msg_clear(&m);

	free(text);
	mb_free(&big);
	free_samples(s, n);
}
END_TEST

START_TEST(test_msg_clear)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	/* Clearing a zeroed message, twice. */
	pgo_msg_clear(&m);
	pgo_msg_clear(&m);

	msg_relation(&b, false, 0, 16385, "public", "accounts", 'd', 3, three_cols);
	parse_ok(&b, false, &m);
	mb_free(&b);
	msg_update_key(&b, false, 0);
	parse_ok(&b, false, &m);
	mb_free(&b);
	static const uint32_t relids[] = { 1, 2 };
	msg_truncate(&b, false, 0, 0, 2, relids);
	parse_ok(&b, false, &m);
	ck_assert_ptr_nonnull(m.arena);

	pgo_msg_clear(&m);
	ck_assert_ptr_null(m.arena);
	ck_assert_ptr_null(m.values);
	ck_assert_ptr_null(m.columns);
	ck_assert_ptr_null(m.relids);
	ck_assert_uint_eq(m.arena_len, 0);
	ck_assert_uint_eq(m.arena_cap, 0);
	ck_assert_int_eq(m.has_xid, 0);
	ck_assert_uint_eq(m.xid, 0);

	/* Usable again after clearing. */
	parse_ok(&b, false, &m);
	ck_assert_uint_eq(m.u.truncate.nrels, 2);
	ck_assert_uint_eq(m.u.truncate.relids[1], 2);
	pgo_msg_clear(&m);

	/* And after a failure (the message holds storage, nothing valid). */
	parse_fail_n(&b, 3, false, &m, "Truncate message");
	pgo_msg_clear(&m);
	ck_assert_ptr_null(m.arena);
	mb_free(&b);
}
END_TEST

/* ------------------------------------------------------------ errors */

START_TEST(test_errors)
{
	struct pgo_msg m = { 0 };
	struct mb b = { 0 };

	/* Empty input. */
	parse_fail(&b, false, &m, "truncated type");

	/* Unknown message types, including protocol 3's two-phase ones. */
	static const char unknown[] = { 'Z', 'P', 'K', 'r', 'w', 0, (char)0xff };
	for (size_t i = 0; i < sizeof(unknown); i++) {
		put_u8(&b, (uint8_t)unknown[i]);
		put_u32(&b, 0);
		char *want = xasprintf("unknown message type 0x%02x", (uint8_t)unknown[i]);
		parse_fail(&b, false, &m, want);
		parse_fail(&b, true, &m, want);
		free(want);
		mb_free(&b);
	}

	/* Unknown column kind. */
	data_header(&b, 'I', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'N');
	put_u16(&b, 2);
	col_text(&b, "1");
	put_u8(&b, 'x');
	parse_fail(&b, false, &m, "unknown kind 0x78 of column 2");
	parse_fail(&b, false, &m, "Insert message");
	mb_free(&b);

	/* NUL inside a text value (but fine in binary). */
	data_header(&b, 'I', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'N');
	put_u16(&b, 1);
	col_text_n(&b, "ab\0cd", 5);
	parse_fail(&b, false, &m, "NUL byte in the text value of column 1");
	mb_free(&b);
	data_header(&b, 'U', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'K');
	put_u16(&b, 2);
	col_binary(&b, "ab\0cd", 5);
	col_text_n(&b, "\0", 1);
	put_u8(&b, 'N');
	put_u16(&b, 0);
	parse_fail(&b, false, &m, "Update message: NUL byte in the text value of column 2");
	mb_free(&b);

	/* Trailing bytes. */
	msg_insert_simple(&b, false, 0);
	put_u8(&b, 'n');
	parse_fail(&b, false, &m, "Insert message: 1 unexpected trailing bytes");
	mb_free(&b);
	msg_begin(&b, 1, 2, 3);
	put_u32(&b, 0);
	parse_fail(&b, false, &m, "Begin message: 4 unexpected trailing bytes");
	mb_free(&b);
	put_u8(&b, 'E');
	put_u32(&b, 1000);	/* Stream Stop carries nothing */
	parse_fail(&b, true, &m, "Stream Stop message");
	mb_free(&b);
	/* Fewer columns than sent. */
	data_header(&b, 'I', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'N');
	put_u16(&b, 1);
	col_text(&b, "1");
	col_text(&b, "2");
	parse_fail(&b, false, &m, "trailing bytes");
	mb_free(&b);

	/* Delete without 'K' or 'O'. */
	static const char bad_delete_tags[] = { 'N', 'X', 0 };
	for (size_t i = 0; i < sizeof(bad_delete_tags); i++) {
		data_header(&b, 'D', false, 0);
		put_u32(&b, 16385);
		put_u8(&b, (uint8_t)bad_delete_tags[i]);
		put_u16(&b, 1);
		col_text(&b, "1");
		parse_fail(&b, false, &m, "Delete message: expected old tuple tag 'K' or 'O'");
		mb_free(&b);
	}

	/* Insert with an old tuple, Update with neither tag, two old tuples. */
	data_header(&b, 'I', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'K');
	put_u16(&b, 1);
	col_text(&b, "1");
	parse_fail(&b, false, &m, "Insert message: expected new tuple tag 'N', got 0x4b");
	mb_free(&b);
	data_header(&b, 'U', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'X');
	put_u16(&b, 1);
	col_text(&b, "1");
	parse_fail(&b, false, &m, "Update message: expected new tuple tag 'N'");
	mb_free(&b);
	data_header(&b, 'U', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'K');
	put_u16(&b, 1);
	col_text(&b, "1");
	put_u8(&b, 'O');
	put_u16(&b, 1);
	col_text(&b, "1");
	parse_fail(&b, false, &m, "Update message: expected new tuple tag 'N'");
	mb_free(&b);

	/* Truncate with no relation, or more than the buffer holds. */
	static const uint32_t relids[] = { 16385, 16386 };
	msg_truncate(&b, false, 0, 0, 0, relids);
	parse_fail(&b, false, &m, "Truncate message: bad relation count 0");
	mb_free(&b);
	msg_truncate(&b, false, 0, 0, 2, relids);
	b.p[4] = 3;	/* count 3, two relids */
	parse_fail(&b, false, &m, "Truncate message: bad relation count 3");
	mb_free(&b);
	msg_truncate(&b, false, 0, 0, 1, relids);
	memset(b.p + 1, 0xff, 4);	/* count 4294967295 */
	parse_fail(&b, false, &m, "Truncate message: bad relation count 4294967295");
	mb_free(&b);
	msg_truncate(&b, true, 7, 0, 1, relids);
	b.p[5] = 0x10;	/* count 0x10000001 in a stream */
	parse_fail(&b, true, &m, "Truncate message: bad relation count 268435457");
	mb_free(&b);

	/* Lengths far past the end. */
	data_header(&b, 'I', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'N');
	put_u16(&b, 1);
	put_u8(&b, 't');
	put_u32(&b, UINT32_MAX);
	put_bytes(&b, "abc", 3);
	parse_fail(&b, false, &m, "Insert message: truncated value");
	b.p[8] = 'b';
	parse_fail(&b, false, &m, "Insert message: truncated value");
	mb_free(&b);
	data_header(&b, 'I', false, 0);
	put_u32(&b, 16385);
	put_u8(&b, 'N');
	put_u16(&b, UINT16_MAX);
	col_null(&b);
	parse_fail(&b, false, &m, "Insert message");
	mb_free(&b);
	msg_message(&b, false, 0, 1, 9, "p", "abc", 3);
	b.p[b.len - 7] = 0x7f;	/* length 0x7f000003 */
	parse_fail(&b, false, &m, "Message message: truncated content");
	mb_free(&b);
	msg_relation(&b, false, 0, 16385, "public", "t", 'd', 3, three_cols);
	b.p[1 + 4 + 7 + 2 + 1] = 0xff;	/* column count 0xff03 */
	parse_fail(&b, false, &m, "Relation message: 65283 columns");
	mb_free(&b);

	/* Unterminated strings. */
	put_u8(&b, 'O');
	put_u64(&b, 1);
	put_bytes(&b, "abc", 3);
	parse_fail(&b, false, &m, "Origin message: origin name string is not terminated");
	mb_free(&b);
	put_u8(&b, 'Y');
	put_u32(&b, 1);
	put_string(&b, "public");
	put_bytes(&b, "mood", 4);
	parse_fail(&b, false, &m, "Type message: type name string is not terminated");
	mb_free(&b);

	/* Unknown replica identity. */
	msg_relation(&b, false, 0, 16385, "public", "t", 'x', 3, three_cols);
	parse_fail(&b, false, &m, "Relation message: unknown replica identity 0x78");
	mb_free(&b);

	/* Stream data outside a stream: the xid's bytes misread, refused. */
	msg_truncate(&b, true, 0x54000000, 0, 1, relids);
	parse_fail(&b, false, &m, NULL);
	mb_free(&b);

	/* The error says where. */
	msg_insert_simple(&b, false, 0);
	b.p[8] = 'z';
	char *error = NULL;
	ck_assert_int_eq(pgo_parse(b.p, b.len, false, &m, &error), -1);
	ck_assert_str_eq(error, "Insert message: unknown kind 0x7a of column 1 at byte 9 of 26");
	/* A failing parse frees an earlier error left in *error_r. */
	ck_assert_int_eq(pgo_parse(b.p, 3, false, &m, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "Insert message: truncated relation OID"));
	free(error);
	mb_free(&b);
	pgo_msg_clear(&m);
}
END_TEST

/* ------------------------------------------------------------ CopyData */

static void
xlogdata(struct mb *b, pgo_lsn start, pgo_lsn end, int64_t ts, const struct mb *payload)
{
	put_u8(b, 'w');
	put_u64(b, start);
	put_u64(b, end);
	put_u64(b, (uint64_t)ts);
	put_bytes(b, payload->p, payload->len);
}

static void
keepalive(struct mb *b, pgo_lsn end, int64_t ts, uint8_t reply)
{
	put_u8(b, 'k');
	put_u64(b, end);
	put_u64(b, (uint64_t)ts);
	put_u8(b, reply);
}

static void
copydata_fail(const uint8_t *p, size_t len, const char *want)
{
	uint8_t *copy = heap_copy(p, len);
	struct pgo_copydata cd;
	char *error = NULL;

	ck_assert_msg(pgo_parse_copydata(copy, len, &cd, &error) == -1,
		      "CopyData of %zu bytes accepted", len);
	ck_assert_ptr_nonnull(error);
	if (want != NULL)
		ck_assert_msg(strstr(error, want) != NULL, "error \"%s\" does not contain \"%s\"",
			      error, want);
	free(error);
	free(copy);
}

START_TEST(test_copydata_xlogdata)
{
	struct mb payload = { 0 }, b = { 0 };
	struct pgo_copydata cd;
	struct pgo_msg m = { 0 };
	char *error = NULL;

	msg_insert_simple(&payload, false, 0);
	xlogdata(&b, UINT64_C(0x16B374D848), UINT64_C(0x16B374E000), TS_2024, &payload);
	ck_assert_uint_eq(b.len, 25 + payload.len);
	uint8_t *copy = heap_copy(b.p, b.len);
	ck_assert_int_eq(pgo_parse_copydata(copy, b.len, &cd, &error), 0);
	ck_assert_ptr_null(error);
	ck_assert_int_eq(cd.kind, PGO_COPY_XLOGDATA);
	ck_assert_uint_eq(cd.wal_start, UINT64_C(0x16B374D848));
	ck_assert_uint_eq(cd.wal_end, UINT64_C(0x16B374E000));
	ck_assert_int_eq(cd.send_time, TS_2024);
	ck_assert(!cd.reply_requested);
	ck_assert_ptr_eq(cd.data, copy + 25);
	ck_assert_uint_eq(cd.len, payload.len);

	/* The data is the pgoutput message. */
	ck_assert_int_eq(pgo_parse(cd.data, cd.len, false, &m, &error), 0);
	ck_assert_int_eq(m.kind, PGO_INSERT);
	assert_text(&m.u.change.new_tuple.cols[1], "hello");
	free(copy);

	/* Every truncation refused; 25 bytes is a header with no data. */
	for (size_t len = 0; len < b.len; len++) {
		if (len <= 25) {
			copydata_fail(b.p, len, len == 0 ? "truncated type" : "XLogData message");
		} else {
			/* A shorter payload is still a frame; pgo_parse refuses it. */
			copy = heap_copy(b.p, len);
			ck_assert_int_eq(pgo_parse_copydata(copy, len, &cd, &error), 0);
			ck_assert_uint_eq(cd.len, len - 25);
			ck_assert_int_eq(pgo_parse(cd.data, cd.len, false, &m, &error), -1);
			ck_assert_ptr_nonnull(error);
			free(error);
			error = NULL;
			free(copy);
		}
	}
	copydata_fail(b.p, 25, "XLogData message: empty WAL data");
	copydata_fail(b.p, 24, "XLogData message: truncated send time");
	copydata_fail(b.p, 3, "XLogData message: truncated start LSN");
	copydata_fail(b.p, 12, "XLogData message: truncated end LSN");
	mb_free(&b);
	mb_free(&payload);
	pgo_msg_clear(&m);
}
END_TEST

START_TEST(test_copydata_keepalive)
{
	struct mb b = { 0 };
	struct pgo_copydata cd;
	char *error = NULL;

	for (uint8_t reply = 0; reply <= 1; reply++) {
		keepalive(&b, UINT64_C(0xFFFFFFFF00000001), -TS_2024, reply);
		ck_assert_uint_eq(b.len, 18);
		uint8_t *copy = heap_copy(b.p, b.len);
		ck_assert_int_eq(pgo_parse_copydata(copy, b.len, &cd, &error), 0);
		ck_assert_int_eq(cd.kind, PGO_COPY_KEEPALIVE);
		ck_assert_uint_eq(cd.wal_end, UINT64_C(0xFFFFFFFF00000001));
		ck_assert_int_eq(cd.send_time, -TS_2024);
		ck_assert_int_eq(cd.reply_requested, reply == 1);
		ck_assert_uint_eq(cd.wal_start, 0);
		ck_assert_ptr_null(cd.data);
		ck_assert_uint_eq(cd.len, 0);
		free(copy);

		for (size_t len = 0; len < b.len; len++)
			copydata_fail(b.p, len, len == 0 ? "truncated type" : "keepalive message");
		copydata_fail(b.p, 17, "keepalive message: truncated reply flag");
		put_u8(&b, 0);
		copydata_fail(b.p, b.len, "keepalive message: 1 unexpected trailing bytes");
		mb_free(&b);
	}
	ck_assert_ptr_null(error);
}
END_TEST

START_TEST(test_copydata_errors)
{
	struct mb b = { 0 };

	copydata_fail(NULL, 0, "replication CopyData message: truncated type");
	static const uint8_t types[] = { 'r', 'x', 'd', 'W', 'K', 0, 0xff };
	for (size_t i = 0; i < sizeof(types); i++) {
		put_u8(&b, types[i]);
		for (int j = 0; j < 40; j++)
			put_u8(&b, 0);
		char *want = xasprintf("unknown message type 0x%02x", types[i]);
		copydata_fail(b.p, b.len, want);
		copydata_fail(b.p, 1, want);
		free(want);
		mb_free(&b);
	}

	/* A failing parse frees an earlier error left in *error_r. */
	struct pgo_copydata cd;
	char *error = xstrdup("old");
	static const uint8_t x[] = { 'x' };
	ck_assert_int_eq(pgo_parse_copydata(x, 1, &cd, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "unknown message type 0x78"));
	free(error);
}
END_TEST

START_TEST(test_status_update)
{
	uint8_t out[PGO_STATUS_UPDATE_LEN + 1];
	static const uint8_t want[PGO_STATUS_UPDATE_LEN] = {
		'r',
		0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x48,
		0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x40,
		0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
		0x00, 0x02, 0xB0, 0xD5, 0xD4, 0xE9, 0x40, 0x00,
		0x01,
	};

	ck_assert_int_eq(PGO_STATUS_UPDATE_LEN, 34);
	memset(out, 0xee, sizeof(out));
	pgo_build_status_update(out, UINT64_C(0x16B374D848), UINT64_C(0x16B374D840),
				UINT64_C(0x0102030405060708), TS_2024, true);
	ck_assert_mem_eq(out, want, PGO_STATUS_UPDATE_LEN);
	ck_assert_uint_eq(out[PGO_STATUS_UPDATE_LEN], 0xee);	/* nothing past 34 */

	pgo_build_status_update(out, 0, UINT64_MAX, 1, -1, false);
	ck_assert_uint_eq(out[0], 'r');
	for (int i = 1; i <= 8; i++)
		ck_assert_uint_eq(out[i], 0);
	for (int i = 9; i <= 16; i++)
		ck_assert_uint_eq(out[i], 0xff);
	for (int i = 17; i <= 23; i++)
		ck_assert_uint_eq(out[i], 0);
	ck_assert_uint_eq(out[24], 1);
	for (int i = 25; i <= 32; i++)
		ck_assert_uint_eq(out[i], 0xff);	/* -1 */
	ck_assert_uint_eq(out[33], 0);
}
END_TEST

/* ------------------------------------------------------------ LSN, time */

START_TEST(test_lsn_parse)
{
	pgo_lsn lsn = 12345;

	ck_assert_int_eq(pgo_lsn_parse("0/0", &lsn), 0);
	ck_assert_uint_eq(lsn, 0);
	ck_assert_int_eq(pgo_lsn_parse("16/B374D848", &lsn), 0);
	ck_assert_uint_eq(lsn, UINT64_C(0x16B374D848));
	ck_assert_int_eq(pgo_lsn_parse("16/b374d848", &lsn), 0);
	ck_assert_uint_eq(lsn, UINT64_C(0x16B374D848));
	ck_assert_int_eq(pgo_lsn_parse("FFFFFFFF/FFFFFFFF", &lsn), 0);
	ck_assert_uint_eq(lsn, UINT64_MAX);
	ck_assert_int_eq(pgo_lsn_parse("0/1", &lsn), 0);
	ck_assert_uint_eq(lsn, 1);
	ck_assert_int_eq(pgo_lsn_parse("1/0", &lsn), 0);
	ck_assert_uint_eq(lsn, UINT64_C(0x100000000));

	static const char *const bad[] = {
		"", "1/", "x/1", "1/2junk", "/", "/1", "1", "12", "1/x", "1/2/3", "1:2",
		"1/2 ", "g/0", "0/0\n",
		/* sscanf would take these: too many digits, signs, blanks, 0x. */
		"123456789/0", "0/123456789", "-1/2", " 1/2", "+1/2", "0x1/0x2", "1/ 2", "1/-0",
	};
	for (size_t i = 0; i < ST_ARRAY_SIZE(bad); i++) {
		lsn = 777;
		ck_assert_msg(pgo_lsn_parse(bad[i], &lsn) == -1, "\"%s\" accepted", bad[i]);
		ck_assert_uint_eq(lsn, 777);	/* untouched */
	}
	ck_assert_int_eq(pgo_lsn_parse(NULL, &lsn), -1);

	/* Round trip through PGO_LSN_FMT. */
	static const pgo_lsn values[] = {
		0, 1, UINT64_C(0x16B374D848), UINT64_C(0x100000000), UINT64_C(0xFFFFFFFF),
		UINT64_MAX, UINT64_C(0xDEADBEEF00C0FFEE),
	};
	static const char *const texts[] = {
		"0/0", "0/1", "16/B374D848", "1/0", "0/FFFFFFFF",
		"FFFFFFFF/FFFFFFFF", "DEADBEEF/C0FFEE",
	};
	for (size_t i = 0; i < ST_ARRAY_SIZE(values); i++) {
		char text[32];
		snprintf(text, sizeof(text), PGO_LSN_FMT, PGO_LSN_ARGS(values[i]));
		ck_assert_str_eq(text, texts[i]);
		ck_assert_int_eq(pgo_lsn_parse(text, &lsn), 0);
		ck_assert_uint_eq(lsn, values[i]);
	}
}
END_TEST

START_TEST(test_timestamps)
{
	ck_assert_int_eq(pgo_ts_to_unix_ms(0), 946684800000LL);
	ck_assert_int_eq(pgo_unix_ms_to_ts(946684800000LL), 0);
	ck_assert_int_eq(pgo_ts_to_unix_ms(TS_2024), 1704067200000LL);
	ck_assert_int_eq(pgo_unix_ms_to_ts(1704067200000LL), TS_2024);
	ck_assert_int_eq(pgo_ts_to_unix_ms(TS_2024 + 1999), 1704067200001LL);	/* us dropped */
	ck_assert_int_eq(pgo_unix_ms_to_ts(0), INT64_C(-946684800000000));
	ck_assert_int_eq(pgo_ts_to_unix_ms(INT64_C(-946684800000000)), 0);
	ck_assert_int_eq(pgo_ts_to_unix_ms(-1), 946684799999LL);	/* floor, before 2000 too */

	static const long long ms[] = { 0, 1, 946684800000LL, 946684800001LL, 1704067200123LL,
					4102444800000LL, 1LL << 45 };
	for (size_t i = 0; i < ST_ARRAY_SIZE(ms); i++)
		ck_assert_int_eq(pgo_ts_to_unix_ms(pgo_unix_ms_to_ts(ms[i])), ms[i]);
}
END_TEST

static Suite *
pgoutput_suite(void)
{
	Suite *s = suite_create("pgoutput");
	TCase *tc = tcase_create("pgoutput");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_begin);
	tcase_add_test(tc, test_commit);
	tcase_add_test(tc, test_origin);
	tcase_add_test(tc, test_relation);
	tcase_add_test(tc, test_relation_1600_columns);
	tcase_add_test(tc, test_type);
	tcase_add_test(tc, test_insert_values);
	tcase_add_test(tc, test_insert_1mb);
	tcase_add_test(tc, test_update);
	tcase_add_test(tc, test_delete);
	tcase_add_test(tc, test_truncate);
	tcase_add_test(tc, test_message);
	tcase_add_test(tc, test_stream);
	tcase_add_test(tc, test_kind_name);
	tcase_add_test(tc, test_every_truncation_refused);
	tcase_add_test(tc, test_reuse);
	tcase_add_test(tc, test_msg_clear);
	tcase_add_test(tc, test_errors);
	tcase_add_test(tc, test_copydata_xlogdata);
	tcase_add_test(tc, test_copydata_keepalive);
	tcase_add_test(tc, test_copydata_errors);
	tcase_add_test(tc, test_status_update);
	tcase_add_test(tc, test_lsn_parse);
	tcase_add_test(tc, test_timestamps);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(pgoutput_suite());
}
