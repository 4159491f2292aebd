/*
 * pgdiverge.c: write what only the old master had as SQL (see pgdiverge.h).
 *
 * The slot's pending changes are read with
 * pg_logical_slot_peek_binary_changes() (pgoutput, the same protocol as the
 * stream, decoded by pgoutput.c) and rendered one statement a change, values
 * as literals, each transaction between BEGIN and COMMIT with its commit LSN
 * and time, for an administrator to read and replay what should be kept.
 */
#include "config.h"

#include "replicators/pg/pgdiverge.h"

#include <jansson.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/durable.h"
#include "lib/log.h"
#include "lib/pgconn.h"
#include "replicators/pg/pgoutput.h"

static void render_ddl(struct st_buf *b, const char *content);

struct drel {
	uint32_t relid;
	char *qname;
	uint16_t ncols;
	char **qcols;
	bool *key;
};

struct render {
	struct drel *rels;
	size_t nrels;
	struct st_buf txn;		/* the transaction being read */
	unsigned txn_rows;
	struct st_buf out;		/* the report */
};

static struct drel *
find_rel(struct render *r, uint32_t relid)
{
	for (size_t i = 0; i < r->nrels; i++)
		if (r->rels[i].relid == relid)
			return &r->rels[i];
	return NULL;
}

static void
drel_clear(struct drel *d)
{
	free(d->qname);
	for (uint16_t i = 0; i < d->ncols; i++)
		free(d->qcols[i]);
	free(d->qcols);
	free(d->key);
}

static void
add_rel(struct render *r, const struct pgo_msg *m)
{
	struct drel *d = find_rel(r, m->u.relation.relid);

	if (d == NULL) {
		r->rels = xrealloc(r->rels, (r->nrels + 1) * sizeof(*r->rels));
		d = &r->rels[r->nrels++];
	} else {
		drel_clear(d);
	}
	char *ns = pgc_ident(m->u.relation.nspname[0] ? m->u.relation.nspname : "pg_catalog");
	char *rel = pgc_ident(m->u.relation.relname);
	d->relid = m->u.relation.relid;
	d->qname = xasprintf("%s.%s", ns, rel);
	free(ns);
	free(rel);
	d->ncols = m->u.relation.ncols;
	d->qcols = xcalloc(d->ncols + 1, sizeof(*d->qcols));
	d->key = xcalloc(d->ncols + 1, sizeof(*d->key));
	for (uint16_t i = 0; i < d->ncols; i++) {
		d->qcols[i] = pgc_ident(m->u.relation.cols[i].name);
		d->key[i] = m->u.relation.cols[i].key;
	}
}

static void
put_value(struct st_buf *b, const struct pgo_value *v)
{
	if (v->kind == PGO_VAL_NULL) {
		st_buf_puts(b, "NULL");
	} else if (v->kind == PGO_VAL_TEXT) {
		char *lit = pgc_literal(v->data);
		st_buf_puts(b, lit);
		free(lit);
	} else {
		st_buf_puts(b, "/* unchanged or binary value, not in the stream */ DEFAULT");
	}
}

/* WHERE: the key columns (or, with an old row of REPLICA IDENTITY FULL, every one). */
static void
put_where(struct st_buf *b, const struct drel *d, const struct pgo_tuple *t, bool full)
{
	bool first = true;

	st_buf_puts(b, " WHERE ");
	for (uint16_t i = 0; i < d->ncols && i < t->ncols; i++) {
		if ((!full && !d->key[i]) || t->cols[i].kind == PGO_VAL_UNCHANGED)
			continue;
		st_buf_printf(b, "%s%s", first ? "" : " AND ", d->qcols[i]);
		first = false;
		if (t->cols[i].kind == PGO_VAL_NULL) {
			st_buf_puts(b, " IS NULL");
		} else {
			st_buf_puts(b, " = ");
			put_value(b, &t->cols[i]);
		}
	}
	if (first)
		st_buf_puts(b, "true");
}

static int
render_change(struct render *r, const struct pgo_msg *m, char **error_r)
{
	struct st_buf *b = &r->txn;
	struct drel *d;

	switch (m->kind) {
	case PGO_RELATION:
		add_rel(r, m);
		return 0;
	case PGO_INSERT:
	case PGO_UPDATE:
	case PGO_DELETE:
		d = find_rel(r, m->u.change.relid);
		if (d == NULL) {
			st_set_error(error_r, "change for relation OID %" PRIu32 " before its Relation",
				     m->u.change.relid);
			return -1;
		}
		r->txn_rows++;
		if (m->kind == PGO_INSERT) {
			const struct pgo_tuple *t = &m->u.change.new_tuple;
			st_buf_printf(b, "INSERT INTO %s (", d->qname);
			for (uint16_t i = 0; i < d->ncols; i++)
				st_buf_printf(b, "%s%s", i ? ", " : "", d->qcols[i]);
			st_buf_puts(b, ") OVERRIDING SYSTEM VALUE VALUES (");
			for (uint16_t i = 0; i < d->ncols && i < t->ncols; i++) {
				if (i)
					st_buf_puts(b, ", ");
				put_value(b, &t->cols[i]);
			}
			st_buf_puts(b, ");\n");
		} else if (m->kind == PGO_UPDATE) {
			const struct pgo_tuple *t = &m->u.change.new_tuple;
			const struct pgo_tuple *old = m->u.change.old_kind ? &m->u.change.old_tuple : t;
			bool first = true;
			size_t start = b->len;
			st_buf_printf(b, "UPDATE %s SET ", d->qname);
			for (uint16_t i = 0; i < d->ncols && i < t->ncols; i++) {
				/* Unchanged TOAST values and an unchanged key (no old
				 * key came) are not set, as in pgapply.c. */
				if (t->cols[i].kind == PGO_VAL_UNCHANGED ||
				    (m->u.change.old_kind == 0 && d->key[i]))
					continue;
				st_buf_printf(b, "%s%s = ", first ? "" : ", ", d->qcols[i]);
				put_value(b, &t->cols[i]);
				first = false;
			}
			if (first) {
				/* Nothing to set: the row it was about. */
				b->len = start;
				st_buf_printf(b, "SELECT 1 /* UPDATE, no column changed */ FROM %s",
					      d->qname);
			}
			put_where(b, d, old, m->u.change.old_kind == 'O');
			st_buf_puts(b, ";\n");
		} else {
			st_buf_printf(b, "DELETE FROM %s", d->qname);
			put_where(b, d, &m->u.change.old_tuple, m->u.change.old_kind == 'O');
			st_buf_puts(b, ";\n");
		}
		return 0;
	case PGO_TRUNCATE:
		st_buf_puts(b, "TRUNCATE ");
		for (uint32_t i = 0; i < m->u.truncate.nrels; i++) {
			d = find_rel(r, m->u.truncate.relids[i]);
			if (d != NULL)
				st_buf_printf(b, "%s%s", i ? ", " : "", d->qname);
			else
				st_buf_printf(b, "%s/* relation OID %" PRIu32 " */", i ? ", " : "",
					      m->u.truncate.relids[i]);
		}
		st_buf_printf(b, "%s%s;\n",
			      m->u.truncate.options & PGO_TRUNCATE_RESTART_IDENTITY ? " RESTART IDENTITY" : "",
			      m->u.truncate.options & PGO_TRUNCATE_CASCADE ? " CASCADE" : "");
		r->txn_rows++;
		return 0;
	case PGO_MESSAGE:
		if (strcmp(m->u.message.prefix, "standin.ddl") == 0)
			render_ddl(b, m->u.message.content);
		return 0;
	default:
		return 0;
	}
}

/* A "standin.ddl" message (pgapply.c, apply_ddl): MAC \n JSON (format 2)
 * or MAC \n standin-ddl-1 \n role \n search_path \n statement. */
static void
render_ddl(struct st_buf *b, const char *content)
{
	const char *body = strchr(content, '\n');
	json_t *msg;

	body = body != NULL ? body + 1 : content;
	if (body[0] == '{' && (msg = json_loads(body, 0, NULL)) != NULL) {
		json_t *settings = json_object_get(msg, "settings");
		const char *tag = json_string_value(json_object_get(msg, "tag"));
		const char *role = json_string_value(json_object_get(msg, "role"));
		const char *stmt = json_string_value(json_object_get(msg, "statement"));
		const char *sp = json_string_value(json_object_get(settings, "search_path"));
		const char *scs = json_string_value(
			json_object_get(settings, "standard_conforming_strings"));

		st_buf_printf(b, "-- DDL %s, role %s, search_path %s%s:\n", tag ? tag : "?",
			      role ? role : "?", sp ? sp : "?",
			      scs != NULL && strcmp(scs, "off") == 0
				      ? ", standard_conforming_strings off" : "");
		if (stmt != NULL)
			st_buf_printf(b, "%s;\n", stmt);
		else
			st_buf_puts(b, "-- (not captured on the master: see its log)\n");
		json_decref(msg);
		return;
	}
	const char *p = body;
	for (int k = 0; k < 3 && p != NULL; k++) {
		p = strchr(p, '\n');
		if (p != NULL)
			p++;
	}
	st_buf_printf(b, "-- DDL:\n%s;\n", p != NULL ? p : body);
}

int
pgd_report(PGconn *local, const char *peer_slot, const char *publication, uint64_t peer_applied,
	   const char *report_dir, const char *peer, struct pgd_result *result, char **error_r)
{
	struct render r = { 0 };
	struct pgo_msg msg = { 0 };
	char *pubs = pgc_ident(publication), *err = NULL;
	const char *pv[] = { peer_slot, pubs };
	PGresult *res = NULL;
	int rc = -1;

	memset(result, 0, sizeof(*result));
	res = PQexecParams(local, "SELECT active_pid FROM pg_catalog.pg_replication_slots "
				  "WHERE slot_name = $1 AND plugin = 'pgoutput'", 1, NULL, pv, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		err = pgc_result_error(res);
		goto out;
	}
	if (PQntuples(res) == 0) {
		rc = 0;			/* no slot: this node fed nobody */
		goto out;
	}
	PQclear(res);
	/* Decoding reads only WAL that is flushed, and with synchronous_commit
	 * off this node's last commits may still be in its WAL buffers: a
	 * transaction of our own, committed synchronously, flushes everything
	 * before it.  It must write WAL of its own (a transactional logical
	 * message, which the report skips), or PostgreSQL commits it
	 * asynchronously too; READ ONLY allows it on a fenced node. */
	res = PQexec(local, "BEGIN READ ONLY; SET LOCAL synchronous_commit = on; "
			    "SELECT pg_catalog.pg_logical_emit_message(true, 'standin.flush', ''); "
			    "COMMIT");
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		err = pgc_result_error(res);
		goto out;
	}
	PQclear(res);
	/* Binary results: the LSN as 8 bytes, the data as the raw pgoutput message. */
	res = PQexecParams(local, "SELECT lsn, data FROM pg_catalog.pg_logical_slot_peek_binary_changes("
				  "$1, NULL, NULL, 'proto_version', '1', 'publication_names', $2, "
				  "'messages', 'true')", 2, NULL, pv, NULL, NULL, 1);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		err = pgc_result_error(res);
		goto out;
	}
	st_buf_init(&r.txn);
	st_buf_init(&r.out);
	for (int i = 0; i < PQntuples(res); i++) {
		const uint8_t *data = (const uint8_t *)PQgetvalue(res, i, 1);
		size_t len = (size_t)PQgetlength(res, i, 1);
		if (pgo_parse(data, len, false, &msg, &err) < 0)
			goto out;
		if (msg.kind == PGO_BEGIN) {
			st_buf_reset(&r.txn);
			r.txn_rows = 0;
		} else if (msg.kind == PGO_COMMIT) {
			if (msg.u.commit.end_lsn <= peer_applied || r.txn_rows == 0)
				continue;	/* the peer has it, or it changed nothing */
			time_t secs = (time_t)(pgo_ts_to_unix_ms(msg.u.commit.commit_time) / 1000);
			struct tm tm;
			char when[32];
			gmtime_r(&secs, &tm);
			strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
			st_buf_printf(&r.out, "-- committed on this node at %s, commit LSN " PGO_LSN_FMT
				      ", never applied on node %s\nBEGIN;\n%sCOMMIT;\n\n", when,
				      PGO_LSN_ARGS(msg.u.commit.commit_lsn), peer, r.txn.data);
			result->transactions++;
			result->rows += r.txn_rows;
		} else if (render_change(&r, &msg, &err) < 0) {
			goto out;
		}
	}
	if (result->transactions > 0) {
		char stamp[32];
		time_t now = time(NULL);
		struct tm tm;
		gmtime_r(&now, &tm);
		strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
		result->path = xasprintf("%s/divergence-%s-%s.sql", report_dir, peer, stamp);
		char *head = xasprintf("-- standin divergence report: %u transactions (%u changes) that "
				       "this node committed as master\n-- and node %s never applied, "
				       "read from replication slot %s before this node's database\n-- "
				       "was replaced by a copy of node %s's.  Review; replay what must "
				       "be kept on the new master.\n\n", result->transactions,
				       result->rows, peer, peer_slot, peer);
		struct st_buf file;
		st_buf_init(&file);
		st_buf_puts(&file, head);
		st_buf_append(&file, r.out.data, r.out.len);
		free(head);
		int wrc = st_durable_write(result->path, file.data, file.len, 0600, &err);
		st_buf_free(&file);
		if (wrc < 0)
			goto out;
	}
	/* The slot's consumer is gone for good: keep no WAL for it. */
	PQclear(res);
	res = PQexecParams(local, "SELECT pg_catalog.pg_drop_replication_slot($1)", 1, NULL, pv,
			   NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		err = pgc_result_error(res);
		goto out;
	}
	rc = 0;
out:
	if (rc < 0) {
		st_set_error(error_r, "divergence report from slot %s: %s", peer_slot,
			     err != NULL ? err : "unknown error");
		pgd_result_clear(result);
	}
	free(err);
	free(pubs);
	PQclear(res);
	for (size_t i = 0; i < r.nrels; i++)
		drel_clear(&r.rels[i]);
	free(r.rels);
	if (r.txn.data != NULL)
		st_buf_free(&r.txn);
	if (r.out.data != NULL)
		st_buf_free(&r.out);
	pgo_msg_clear(&msg);
	return rc;
}

void
pgd_result_clear(struct pgd_result *result)
{
	free(result->path);
	memset(result, 0, sizeof(*result));
}
