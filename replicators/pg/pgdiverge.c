/*
 * pgdiverge.c: write what only the old master had as SQL (see pgdiverge.h).
 *
 * The slot's pending changes are read with
 * pg_logical_slot_peek_binary_changes() (pgoutput, the same protocol as the
 * stream, decoded by pgoutput.c) and rendered one statement a change, values
 * as literals, each transaction between BEGIN and COMMIT with its commit LSN
 * and time, for an administrator to read and replay what should be kept.
 *
 * A long-diverged old master can hold more than fits in memory, and the
 * report is wanted exactly then: the changes come one row at a time and go
 * to the file as they are rendered (a buffer of PGD_FLUSH_AT bytes), a
 * transaction that turns out not to belong (the peer applied it, it changed
 * no row) is cut off the file again, and the counts of the first line are
 * written over it last.  The file is a temporary one until it is complete
 * and fsynced; the slot is dropped only after the rename.
 */
#include "config.h"

#include "replicators/pg/pgdiverge.h"

#include <jansson.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
	const char *peer;
	const char *report_dir;
	pgo_lsn peer_applied;
	struct st_buf out;		/* output not yet in the file */
	struct st_durable_file file;	/* the report, fd -1 until the first flush */
	off_t off;			/* the file's length */
	bool in_txn;
	off_t txn_off;			/* where the transaction being read starts */
	unsigned txn_rows;
	unsigned transactions, rows;	/* kept in the report */
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
	struct st_buf *b = &r->out;
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
		/* A DDL statement the new master never got is a divergence too. */
		if (strcmp(m->u.message.prefix, "standin.ddl") == 0) {
			render_ddl(b, m->u.message.content);
			r->txn_rows++;
		}
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

/* Output goes to the file once this much is pending, so memory is this, one
 * change and the relations, whatever the size of a transaction or of the
 * report. */
#define PGD_FLUSH_AT (256 * 1024)

/* The first line holds the counts, known only at the end: it is written
 * last, over spaces as wide as the widest counts, and padded to that width. */
static char *
head_line(unsigned transactions, unsigned rows)
{
	return xasprintf("-- standin divergence report: %u transactions (%u changes) that "
			 "this node committed as master", transactions, rows);
}

static void
remove_stale(const char *report_dir, const char *peer)
{
	char *prefix = xasprintf("divergence-%s-", peer);
	DIR *d = opendir(report_dir);
	struct dirent *de;

	while (d != NULL && (de = readdir(d)) != NULL) {
		if (!st_str_has_prefix(de->d_name, prefix) || strstr(de->d_name, ".sql.tmp.") == NULL)
			continue;
		char *path = xasprintf("%s/%s", report_dir, de->d_name);
		if (unlink(path) == 0)
			st_notice("removed an unfinished divergence report path=%s", st_q(path));
		free(path);
	}
	if (d != NULL)
		closedir(d);
	free(prefix);
}

/* The pending output to the file (created on the first flush). */
static int
flush_out(struct render *r, char **error_r)
{
	if (r->file.fd < 0) {
		char stamp[32];
		time_t now = time(NULL);
		struct tm tm;
		gmtime_r(&now, &tm);
		strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
		char *path = xasprintf("%s/divergence-%s-%s.sql", r->report_dir, r->peer, stamp);
		int crc = st_durable_create(&r->file, path, 0600, error_r);
		free(path);
		if (crc < 0)
			return -1;
	}
	for (size_t done = 0; done < r->out.len;) {
		ssize_t n = pwrite(r->file.fd, r->out.data + done, r->out.len - done, r->off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			st_set_error(error_r, "write %s: %s", r->file.tmp,
				     n < 0 ? strerror(errno) : "nothing written");
			return -1;
		}
		done += (size_t)n;
		r->off += n;
	}
	st_buf_reset(&r->out);
	return 0;
}

/* Take back the output from POS (an offset in file and pending output). */
static int
cut_back(struct render *r, off_t pos, char **error_r)
{
	if (pos >= r->off) {
		r->out.len = (size_t)(pos - r->off);
		r->out.data[r->out.len] = '\0';
		return 0;
	}
	st_buf_reset(&r->out);
	if (ftruncate(r->file.fd, pos) < 0) {
		st_set_error(error_r, "truncate %s: %s", r->file.tmp, strerror(errno));
		return -1;
	}
	r->off = pos;
	return 0;
}

/* One row of the slot: one pgoutput message. */
static int
take_change(struct render *r, const uint8_t *data, size_t len, struct pgo_msg *msg,
	    char **error_r)
{
	if (pgo_parse(data, len, false, msg, error_r) < 0)
		return -1;
	if (msg->kind == PGO_BEGIN) {
		time_t secs = (time_t)(pgo_ts_to_unix_ms(msg->u.begin.commit_time) / 1000);
		struct tm tm;
		char when[32];
		gmtime_r(&secs, &tm);
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
		r->in_txn = true;
		r->txn_rows = 0;
		r->txn_off = r->off + (off_t)r->out.len;
		/* Begin carries the commit's LSN and time, as Commit does. */
		st_buf_printf(&r->out, "-- committed on this node at %s, commit LSN " PGO_LSN_FMT
			      ", never applied on node %s\nBEGIN;\n", when,
			      PGO_LSN_ARGS(msg->u.begin.final_lsn), r->peer);
	} else if (msg->kind == PGO_COMMIT) {
		r->in_txn = false;
		if (msg->u.commit.end_lsn <= r->peer_applied || r->txn_rows == 0)
			/* The peer has it, or it changed nothing. */
			return cut_back(r, r->txn_off, error_r);
		st_buf_puts(&r->out, "COMMIT;\n\n");
		r->transactions++;
		r->rows += r->txn_rows;
	} else if (render_change(r, msg, error_r) < 0) {
		return -1;
	}
	return r->out.len >= PGD_FLUSH_AT ? flush_out(r, error_r) : 0;
}

/* Read what is left of a query whose rows are no longer wanted, cancelled
 * first if it is still RUNNING. */
static void
abandon_query(PGconn *c, bool running)
{
	PGcancel *cancel = running ? PQgetCancel(c) : NULL;
	PGresult *res;
	char errbuf[256];

	if (cancel != NULL) {
		(void)PQcancel(cancel, errbuf, sizeof(errbuf));
		PQfreeCancel(cancel);
	}
	while ((res = PQgetResult(c)) != NULL)
		PQclear(res);
}

int
pgd_report(PGconn *local, const char *peer_slot, const char *publication, uint64_t peer_applied,
	   const char *report_dir, const char *peer, struct pgd_result *result, char **error_r)
{
	struct render r = { .peer = peer, .report_dir = report_dir, .peer_applied = peer_applied,
			    .file = { .fd = -1 } };
	struct pgo_msg msg = { 0 };
	char *pubs = pgc_ident(publication), *err = NULL, *line = NULL;
	const char *pv[] = { peer_slot, pubs };
	PGresult *res = NULL;
	bool sent = false, reading = false;	/* the peek, and its rows still coming */
	int rc = -1;

	memset(result, 0, sizeof(*result));
	st_buf_init(&r.out);
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
	remove_stale(report_dir, peer);
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
	res = NULL;

	/* The head, its first line blank until the counts are known. */
	line = head_line(UINT_MAX, UINT_MAX);
	size_t width = strlen(line);
	for (size_t i = 0; i < width; i++)
		st_buf_puts(&r.out, " ");
	st_buf_printf(&r.out, "\n-- and node %s never applied, read from replication slot %s "
		      "before this node's database\n-- was replaced by a copy of node %s's.  "
		      "Review; replay what must be kept on the new master.\n\n", peer, peer_slot,
		      peer);

	/* Peeked, not consumed: the slot keeps every change until the report
	 * is on disk.  The server gathers the changes (in a tuplestore, on
	 * disk past work_mem); the rows come here one at a time (single-row
	 * mode), binary: the LSN as 8 bytes, the data as the raw pgoutput
	 * message. */
	if (!PQsendQueryParams(local, "SELECT lsn, data FROM "
				      "pg_catalog.pg_logical_slot_peek_binary_changes($1, NULL, NULL, "
				      "'proto_version', '1', 'publication_names', $2, "
				      "'messages', 'true')", 2, NULL, pv, NULL, NULL, 1)) {
		err = xstrdup(pgc_errmsg(local));
		goto out;
	}
	sent = reading = true;
	if (!PQsetSingleRowMode(local)) {
		err = xstrdup("cannot read the slot's changes row by row");
		goto out;
	}
	while ((res = PQgetResult(local)) != NULL) {
		ExecStatusType st = PQresultStatus(res);
		if (st == PGRES_SINGLE_TUPLE) {
			if (take_change(&r, (const uint8_t *)PQgetvalue(res, 0, 1),
					(size_t)PQgetlength(res, 0, 1), &msg, &err) < 0)
				goto out;
		} else {
			reading = false;	/* the last result */
			if (st != PGRES_TUPLES_OK) {
				err = pgc_result_error(res);
				goto out;
			}
		}
		PQclear(res);
	}
	sent = false;
	/* A transaction cut short (never, from a peek): not in the report. */
	if (r.in_txn && cut_back(&r, r.txn_off, &err) < 0)
		goto out;

	if (r.transactions > 0) {
		char *counts = head_line(r.transactions, r.rows);
		memset(line, ' ', width);	/* as wide as the blank */
		memcpy(line, counts, strlen(counts));
		free(counts);
		if (flush_out(&r, &err) < 0)
			goto out;
		if (pwrite(r.file.fd, line, width, 0) != (ssize_t)width) {
			err = xasprintf("write %s: %s", r.file.tmp, strerror(errno));
			goto out;
		}
		result->path = xstrdup(r.file.path);
		if (st_durable_commit(&r.file, &err) < 0)
			goto out;
		result->transactions = r.transactions;
		result->rows = r.rows;
	}
	/* The slot's consumer is gone for good: keep no WAL for it. */
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
	PQclear(res);
	if (sent)
		abandon_query(local, reading);
	if (r.file.fd >= 0)
		st_durable_abort(&r.file);
	free(line);
	free(err);
	free(pubs);
	for (size_t i = 0; i < r.nrels; i++)
		drel_clear(&r.rels[i]);
	free(r.rels);
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
