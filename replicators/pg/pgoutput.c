/*
 * pgoutput.c: decode the logical replication stream (see pgoutput.h).
 *
 * A reader walks the buffer with bounds checks; the first failure is kept
 * (with its offset) and every later read returns zeros, so a parse function
 * reads on and checks once at the end.  Copies go into the message's arena,
 * sized before the parse to the input length plus one: every copied item is
 * no longer than its encoding in the input (a string keeps its NUL, a value
 * trades its 5-byte header for a NUL), so pointers into it never move.
 */
#include "config.h"

#include "replicators/pg/pgoutput.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"

/* Days from 1970-01-01 to 2000-01-01. */
#define PG_EPOCH_OFFSET_MS (10957LL * 86400 * 1000)

/* Cap on columns and truncated relations, far above PostgreSQL's (1664 columns). */
#define PGO_MAX_COLS 4096
#define PGO_MAX_TRUNCATE 1000000

/* One side of "X/X": 1 to 8 hex digits, as PostgreSQL's pg_lsn input takes. */
static int
hex32(const char *s, size_t n, uint32_t *v_r)
{
	uint32_t v = 0;

	if (n < 1 || n > 8)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
			   : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
			   : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16;
		if (d > 15)
			return -1;
		v = v << 4 | d;
	}
	*v_r = v;
	return 0;
}

int
pgo_lsn_parse(const char *s, pgo_lsn *lsn_r)
{
	uint32_t hi, lo;
	const char *slash = s != NULL ? strchr(s, '/') : NULL;

	if (slash == NULL || hex32(s, (size_t)(slash - s), &hi) < 0 ||
	    hex32(slash + 1, strlen(slash + 1), &lo) < 0)
		return -1;
	*lsn_r = (pgo_lsn)hi << 32 | lo;
	return 0;
}

long long
pgo_ts_to_unix_ms(int64_t pg_us)
{
	/* Floor, so times before 2000 round down like the ones after. */
	int64_t ms = pg_us / 1000 - (pg_us % 1000 < 0 ? 1 : 0);
	return ms + PG_EPOCH_OFFSET_MS;
}

int64_t
pgo_unix_ms_to_ts(long long unix_ms)
{
	return (int64_t)(unix_ms - PG_EPOCH_OFFSET_MS) * 1000;
}

/* ------------------------------------------------------------ reader */

struct reader {
	const uint8_t *p;
	size_t len, pos;
	const char *what;	/* message being parsed, for errors */
	char *error;
	struct pgo_msg *msg;	/* arena owner, or NULL */
};

static void ST_PRINTF(2, 3)
rd_fail(struct reader *r, const char *fmt, ...)
{
	va_list ap;

	if (r->error != NULL)
		return;
	va_start(ap, fmt);
	char *why = xvasprintf(fmt, ap);
	va_end(ap);
	r->error = xasprintf("%s message: %s at byte %zu of %zu", r->what, why, r->pos, r->len);
	free(why);
	r->pos = r->len;
}

static bool
rd_need(struct reader *r, size_t n, const char *field)
{
	if (r->error != NULL)
		return false;
	if (r->len - r->pos < n) {
		rd_fail(r, "truncated %s (needs %zu bytes, %zu left)", field, n, r->len - r->pos);
		return false;
	}
	return true;
}

static uint8_t
rd_u8(struct reader *r, const char *field)
{
	if (!rd_need(r, 1, field))
		return 0;
	return r->p[r->pos++];
}

static uint16_t
rd_u16(struct reader *r, const char *field)
{
	if (!rd_need(r, 2, field))
		return 0;
	uint16_t v = (uint16_t)(r->p[r->pos] << 8 | r->p[r->pos + 1]);
	r->pos += 2;
	return v;
}

static uint32_t
rd_u32(struct reader *r, const char *field)
{
	if (!rd_need(r, 4, field))
		return 0;
	uint32_t v = (uint32_t)r->p[r->pos] << 24 | (uint32_t)r->p[r->pos + 1] << 16 |
		     (uint32_t)r->p[r->pos + 2] << 8 | (uint32_t)r->p[r->pos + 3];
	r->pos += 4;
	return v;
}

static uint64_t
rd_u64(struct reader *r, const char *field)
{
	uint64_t hi = rd_u32(r, field);
	uint64_t lo = rd_u32(r, field);

	return hi << 32 | lo;
}

static char *
arena_copy(struct pgo_msg *m, const void *p, size_t n)
{
	/* Cannot overflow: sized to the input in pgo_parse(); checked anyway. */
	if (m->arena_cap - m->arena_len < n + 1)
		st_fatal("pgoutput arena overflow (%zu + %zu > %zu)", m->arena_len, n + 1,
			 m->arena_cap);
	char *dst = m->arena + m->arena_len;
	memcpy(dst, p, n);
	dst[n] = '\0';
	m->arena_len += n + 1;
	return dst;
}

/* A NUL-terminated string of the protocol, copied into the arena. */
static const char *
rd_string(struct reader *r, const char *field)
{
	if (r->error != NULL)
		return "";
	const uint8_t *start = r->p + r->pos;
	const uint8_t *nul = memchr(start, '\0', r->len - r->pos);
	if (nul == NULL) {
		rd_fail(r, "%s string is not terminated", field);
		return "";
	}
	size_t n = (size_t)(nul - start);
	r->pos += n + 1;
	return arena_copy(r->msg, start, n);
}

static void
rd_end(struct reader *r)
{
	if (r->error == NULL && r->pos != r->len)
		rd_fail(r, "%zu unexpected trailing bytes", r->len - r->pos);
}

/* ------------------------------------------------------------ CopyData */

int
pgo_parse_copydata(const uint8_t *buf, size_t len, struct pgo_copydata *out, char **error_r)
{
	struct reader r = { .p = buf, .len = len, .what = "replication CopyData" };

	memset(out, 0, sizeof(*out));
	uint8_t kind = rd_u8(&r, "type");
	switch (kind) {
	case PGO_COPY_XLOGDATA:
		r.what = "XLogData";
		out->kind = PGO_COPY_XLOGDATA;
		out->wal_start = rd_u64(&r, "start LSN");
		out->wal_end = rd_u64(&r, "end LSN");
		out->send_time = (int64_t)rd_u64(&r, "send time");
		if (r.error == NULL) {
			out->data = buf + r.pos;
			out->len = len - r.pos;
			if (out->len == 0)
				rd_fail(&r, "empty WAL data");
		}
		break;
	case PGO_COPY_KEEPALIVE:
		r.what = "keepalive";
		out->kind = PGO_COPY_KEEPALIVE;
		out->wal_end = rd_u64(&r, "end LSN");
		out->send_time = (int64_t)rd_u64(&r, "send time");
		out->reply_requested = rd_u8(&r, "reply flag") != 0;
		rd_end(&r);
		break;
	default:
		if (r.error == NULL)
			rd_fail(&r, "unknown message type 0x%02x", kind);
		break;
	}
	if (r.error != NULL) {
		free(*error_r);
		*error_r = r.error;
		return -1;
	}
	return 0;
}

static void
put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

void
pgo_build_status_update(uint8_t out[PGO_STATUS_UPDATE_LEN], pgo_lsn written, pgo_lsn flushed,
			pgo_lsn applied, int64_t now_ts, bool reply)
{
	out[0] = 'r';
	put_u64(out + 1, written);
	put_u64(out + 9, flushed);
	put_u64(out + 17, applied);
	put_u64(out + 25, (uint64_t)now_ts);
	out[33] = reply ? 1 : 0;
}

/* ------------------------------------------------------------ pgoutput */

const char *
pgo_kind_name(enum pgo_kind kind)
{
	switch (kind) {
	case PGO_BEGIN: return "Begin";
	case PGO_COMMIT: return "Commit";
	case PGO_ORIGIN: return "Origin";
	case PGO_RELATION: return "Relation";
	case PGO_TYPE: return "Type";
	case PGO_INSERT: return "Insert";
	case PGO_UPDATE: return "Update";
	case PGO_DELETE: return "Delete";
	case PGO_TRUNCATE: return "Truncate";
	case PGO_MESSAGE: return "Message";
	case PGO_STREAM_START: return "Stream Start";
	case PGO_STREAM_STOP: return "Stream Stop";
	case PGO_STREAM_COMMIT: return "Stream Commit";
	case PGO_STREAM_ABORT: return "Stream Abort";
	}
	return "unknown";
}

static size_t
max_size(size_t a, size_t b)
{
	return a > b ? a : b;
}

/* TupleData.  VALUES is a slice of msg->values reserved by the caller. */
static void
rd_tuple(struct reader *r, struct pgo_tuple *t, struct pgo_value *values)
{
	t->ncols = rd_u16(r, "column count");
	t->cols = values;
	if (t->ncols > PGO_MAX_COLS) {
		rd_fail(r, "%u columns (at most %d)", t->ncols, PGO_MAX_COLS);
		t->ncols = 0;
		return;
	}
	for (uint16_t i = 0; i < t->ncols && r->error == NULL; i++) {
		struct pgo_value *v = &values[i];
		uint8_t kind = rd_u8(r, "column kind");

		v->data = NULL;
		v->len = 0;
		switch (kind) {
		case PGO_VAL_NULL:
		case PGO_VAL_UNCHANGED:
			v->kind = kind;
			break;
		case PGO_VAL_TEXT:
		case PGO_VAL_BINARY: {
			v->kind = kind;
			uint32_t n = rd_u32(r, "value length");
			if (!rd_need(r, n, "value"))
				break;
			const uint8_t *src = r->p + r->pos;
			if (kind == PGO_VAL_TEXT && memchr(src, '\0', n) != NULL) {
				rd_fail(r, "NUL byte in the text value of column %u", i + 1);
				break;
			}
			v->data = arena_copy(r->msg, src, n);
			v->len = n;
			r->pos += n;
			break;
		}
		default:
			if (r->error == NULL)
				rd_fail(r, "unknown kind 0x%02x of column %u", kind, i + 1);
			break;
		}
	}
	if (r->error != NULL)
		t->ncols = 0;
}

int
pgo_parse(const uint8_t *buf, size_t len, bool in_stream, struct pgo_msg *m, char **error_r)
{
	struct reader r = { .p = buf, .len = len, .what = "pgoutput", .msg = m };

	/* Storage: reset, and big enough for anything this input holds. */
	if (m->arena_cap < len + 1) {
		free(m->arena);
		m->arena_cap = max_size(len + 1, 256);
		m->arena = xmalloc(m->arena_cap);
	}
	m->arena_len = 0;
	memset(&m->u, 0, sizeof(m->u));
	m->has_xid = false;
	m->xid = 0;

	uint8_t kind = rd_u8(&r, "type");
	m->kind = kind;
	r.what = pgo_kind_name(kind);

	bool data_msg = kind == PGO_RELATION || kind == PGO_TYPE || kind == PGO_INSERT ||
			kind == PGO_UPDATE || kind == PGO_DELETE || kind == PGO_TRUNCATE ||
			kind == PGO_MESSAGE;
	if (in_stream && data_msg) {
		m->has_xid = true;
		m->xid = rd_u32(&r, "transaction id");
	}

	switch (kind) {
	case PGO_BEGIN:
		m->u.begin.final_lsn = rd_u64(&r, "final LSN");
		m->u.begin.commit_time = (int64_t)rd_u64(&r, "commit time");
		m->xid = rd_u32(&r, "transaction id");
		break;
	case PGO_COMMIT:
	case PGO_STREAM_COMMIT:
		if (kind == PGO_STREAM_COMMIT)
			m->xid = rd_u32(&r, "transaction id");
		m->u.commit.flags = rd_u8(&r, "flags");
		m->u.commit.commit_lsn = rd_u64(&r, "commit LSN");
		m->u.commit.end_lsn = rd_u64(&r, "end LSN");
		m->u.commit.commit_time = (int64_t)rd_u64(&r, "commit time");
		break;
	case PGO_ORIGIN:
		m->u.origin.commit_lsn = rd_u64(&r, "commit LSN");
		m->u.origin.name = rd_string(&r, "origin name");
		break;
	case PGO_RELATION: {
		m->u.relation.relid = rd_u32(&r, "relation OID");
		m->u.relation.nspname = rd_string(&r, "namespace");
		m->u.relation.relname = rd_string(&r, "relation name");
		uint8_t ident = rd_u8(&r, "replica identity");
		if (r.error == NULL && ident != PGO_IDENT_DEFAULT && ident != PGO_IDENT_NOTHING &&
		    ident != PGO_IDENT_FULL && ident != PGO_IDENT_INDEX)
			rd_fail(&r, "unknown replica identity 0x%02x", ident);
		m->u.relation.identity = ident;
		uint16_t ncols = rd_u16(&r, "column count");
		if (ncols > PGO_MAX_COLS)
			rd_fail(&r, "%u columns (at most %d)", ncols, PGO_MAX_COLS);
		if (r.error != NULL)
			break;
		m->columns = xrealloc(m->columns, max_size(ncols, 1) * sizeof(*m->columns));
		m->u.relation.cols = m->columns;
		for (uint16_t i = 0; i < ncols && r.error == NULL; i++) {
			struct pgo_column *c = &m->columns[i];
			uint8_t flags = rd_u8(&r, "column flags");
			c->key = (flags & 1) != 0;
			c->name = (char *)rd_string(&r, "column name");
			c->type_oid = rd_u32(&r, "column type");
			c->typmod = (int32_t)rd_u32(&r, "column typmod");
		}
		m->u.relation.ncols = r.error == NULL ? ncols : 0;
		break;
	}
	case PGO_TYPE:
		m->u.type.oid = rd_u32(&r, "type OID");
		m->u.type.nspname = rd_string(&r, "namespace");
		m->u.type.typname = rd_string(&r, "type name");
		break;
	case PGO_INSERT:
	case PGO_UPDATE:
	case PGO_DELETE: {
		/* Two tuples at most, each at most PGO_MAX_COLS: reserve for both. */
		if (m->values == NULL)
			m->values = xmalloc(2 * PGO_MAX_COLS * sizeof(*m->values));
		m->u.change.relid = rd_u32(&r, "relation OID");
		uint8_t tag = rd_u8(&r, "tuple tag");
		if (kind != PGO_INSERT && (tag == 'K' || tag == 'O')) {
			m->u.change.old_kind = (char)tag;
			rd_tuple(&r, &m->u.change.old_tuple, m->values + PGO_MAX_COLS);
			if (kind == PGO_UPDATE)
				tag = rd_u8(&r, "new tuple tag");
		} else if (kind == PGO_DELETE && r.error == NULL) {
			rd_fail(&r, "expected old tuple tag 'K' or 'O', got 0x%02x", tag);
		}
		if (kind != PGO_DELETE && r.error == NULL) {
			if (tag != 'N')
				rd_fail(&r, "expected new tuple tag 'N', got 0x%02x", tag);
			else
				rd_tuple(&r, &m->u.change.new_tuple, m->values);
		}
		break;
	}
	case PGO_TRUNCATE: {
		uint32_t nrels = rd_u32(&r, "relation count");
		m->u.truncate.options = rd_u8(&r, "options");
		if (r.error == NULL && (nrels == 0 || nrels > PGO_MAX_TRUNCATE ||
					nrels > (r.len - r.pos) / 4)) {
			rd_fail(&r, "bad relation count %" PRIu32, nrels);
			break;
		}
		if (r.error != NULL)
			break;
		m->relids = xrealloc(m->relids, nrels * sizeof(*m->relids));
		for (uint32_t i = 0; i < nrels; i++)
			m->relids[i] = rd_u32(&r, "relation OID");
		m->u.truncate.nrels = nrels;
		m->u.truncate.relids = m->relids;
		break;
	}
	case PGO_MESSAGE: {
		uint8_t flags = rd_u8(&r, "flags");
		m->u.message.transactional = (flags & 1) != 0;
		m->u.message.lsn = rd_u64(&r, "LSN");
		m->u.message.prefix = rd_string(&r, "prefix");
		uint32_t n = rd_u32(&r, "content length");
		if (!rd_need(&r, n, "content"))
			break;
		m->u.message.content = arena_copy(m, r.p + r.pos, n);
		m->u.message.len = n;
		r.pos += n;
		break;
	}
	case PGO_STREAM_START:
		m->xid = rd_u32(&r, "transaction id");
		m->u.stream_start.first_segment = rd_u8(&r, "first segment flag") == 1;
		break;
	case PGO_STREAM_STOP:
		break;
	case PGO_STREAM_ABORT:
		m->xid = rd_u32(&r, "transaction id");
		m->u.stream_abort.subxid = rd_u32(&r, "subtransaction id");
		break;
	default:
		if (r.error == NULL) {
			r.what = "pgoutput";
			r.pos = 0;
			rd_fail(&r, "unknown message type 0x%02x", kind);
		}
		break;
	}
	rd_end(&r);
	if (r.error != NULL) {
		free(*error_r);
		*error_r = r.error;
		return -1;
	}
	return 0;
}

void
pgo_msg_clear(struct pgo_msg *m)
{
	free(m->arena);
	free(m->values);
	free(m->columns);
	free(m->relids);
	memset(m, 0, sizeof(*m));
}
