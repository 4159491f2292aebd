/*
 * fuzz-pgoutput: libFuzzer target for the logical replication stream decoder.
 *     ./configure CC=clang --enable-fuzzers && make tests/fuzz/fuzz-pgoutput
 *     tests/fuzz/fuzz-pgoutput tests/fuzz/corpus/pgoutput
 * The input is parsed as a pgoutput message (outside and inside a streamed
 * transaction) and as a replication CopyData message, whose XLogData payload
 * is parsed in turn.  Any input must decode or give an error message, never
 * a crash, a leak, undefined behaviour or a read outside the buffer; what
 * decodes must be consistent (values NUL-terminated, text without NUL).
 * One message is reused across inputs, as the replicator does, and cleared
 * now and then.
 */
#include "config.h"

#include "replicators/pg/pgoutput.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct pgo_msg msg;
static unsigned calls;
static volatile unsigned sink;

/* Read every byte the message points to, so ASan checks the pointers. */
static void
touch(const char *s, size_t n)
{
	unsigned h = 0;

	if (s == NULL)
		abort();
	for (size_t i = 0; i <= n; i++)
		h = h * 31 + (unsigned char)s[i];
	sink += h;
}

static void
touch_str(const char *s)
{
	if (s == NULL)
		abort();
	touch(s, strlen(s));
}

static void
check_tuple(const struct pgo_tuple *t)
{
	for (unsigned i = 0; i < t->ncols; i++) {
		const struct pgo_value *v = &t->cols[i];

		switch (v->kind) {
		case PGO_VAL_NULL:
		case PGO_VAL_UNCHANGED:
			if (v->data != NULL || v->len != 0)
				abort();
			break;
		case PGO_VAL_TEXT:
			touch(v->data, v->len);
			if (strlen(v->data) != v->len)
				abort();	/* text holds no NUL and ends with one */
			break;
		case PGO_VAL_BINARY:
			touch(v->data, v->len);
			if (v->data[v->len] != '\0')
				abort();
			break;
		default:
			abort();
		}
	}
}

static void
check_msg(const struct pgo_msg *m, size_t size)
{
	if (pgo_kind_name(m->kind)[0] == '\0' || m->arena_len > size + 1)
		abort();
	switch (m->kind) {
	case PGO_ORIGIN:
		touch_str(m->u.origin.name);
		break;
	case PGO_RELATION:
		touch_str(m->u.relation.nspname);
		touch_str(m->u.relation.relname);
		for (unsigned i = 0; i < m->u.relation.ncols; i++)
			touch_str(m->u.relation.cols[i].name);
		break;
	case PGO_TYPE:
		touch_str(m->u.type.nspname);
		touch_str(m->u.type.typname);
		break;
	case PGO_INSERT:
	case PGO_UPDATE:
	case PGO_DELETE:
		if (m->u.change.old_kind != 0 && m->u.change.old_kind != 'K' &&
		    m->u.change.old_kind != 'O')
			abort();
		check_tuple(&m->u.change.old_tuple);
		check_tuple(&m->u.change.new_tuple);
		break;
	case PGO_TRUNCATE:
		if (m->u.truncate.nrels == 0 || (size_t)m->u.truncate.nrels * 4 > size)
			abort();
		for (uint32_t i = 0; i < m->u.truncate.nrels; i++)
			sink += m->u.truncate.relids[i];
		break;
	case PGO_MESSAGE:
		touch_str(m->u.message.prefix);
		touch(m->u.message.content, m->u.message.len);
		break;
	default:
		break;
	}
}

static void
parse(const uint8_t *data, size_t size, bool in_stream)
{
	char *error = NULL;

	if (pgo_parse(data, size, in_stream, &msg, &error) == 0) {
		if (error != NULL)
			abort();
		check_msg(&msg, size);
	} else if (error == NULL) {
		abort();	/* failure must always say why */
	}
	free(error);
	if (++calls % 64 == 0)
		pgo_msg_clear(&msg);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Exact-size copy: the fuzzer's buffer may not end where SIZE does. */
	uint8_t *buf = malloc(size > 0 ? size : 1);
	if (buf == NULL)
		return 0;
	if (size > 0)
		memcpy(buf, data, size);

	parse(buf, size, false);
	parse(buf, size, true);

	struct pgo_copydata cd;
	char *error = NULL;
	if (pgo_parse_copydata(buf, size, &cd, &error) == 0) {
		if (error != NULL)
			abort();
		if (cd.kind == PGO_COPY_XLOGDATA) {
			if (cd.data != buf + 25 || cd.len != size - 25)
				abort();
			parse(cd.data, cd.len, false);
			parse(cd.data, cd.len, true);
		} else if (cd.kind != PGO_COPY_KEEPALIVE || size != 18) {
			abort();
		}
	} else if (error == NULL) {
		abort();
	}
	free(error);

	/* The input as an LSN: what parses prints and parses back the same. */
	if (size < 64) {
		char text[64], again[32];
		pgo_lsn lsn, back;

		memcpy(text, buf, size);
		text[size] = '\0';
		if (pgo_lsn_parse(text, &lsn) == 0) {
			snprintf(again, sizeof(again), PGO_LSN_FMT, PGO_LSN_ARGS(lsn));
			if (pgo_lsn_parse(again, &back) != 0 || back != lsn)
				abort();
		}
	}

	/* First input byte set: start the next input from a cleared message. */
	if (size > 0 && buf[0] & 0x80)
		pgo_msg_clear(&msg);
	free(buf);
	return 0;
}
