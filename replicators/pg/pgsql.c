/*
 * pgsql.c: the SQL text of the apply's row statements (see pgsql.h).
 */
#include "config.h"

#include "replicators/pg/pgsql.h"
#include "lib/log.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* "public.t key (id)=(5)" from the columns used to find the row. */
char *
pgq_describe_row(const struct pga_rel *r, const struct pgo_tuple *t, bool key_only)
{
	struct st_buf b;
	bool first = true;

	st_buf_init(&b);
	st_buf_printf(&b, "%s %s (", r->display, key_only ? "key" : "row");
	for (uint16_t i = 0; i < t->ncols && i < r->ncols; i++) {
		if ((key_only && !r->cols[i].key) || t->cols[i].kind == PGO_VAL_UNCHANGED)
			continue;
		st_buf_printf(&b, "%s%s", first ? "" : ", ", r->cols[i].name);
		first = false;
	}
	st_buf_puts(&b, ")=(");
	first = true;
	for (uint16_t i = 0; i < t->ncols && i < r->ncols; i++) {
		if ((key_only && !r->cols[i].key) || t->cols[i].kind == PGO_VAL_UNCHANGED)
			continue;
		if (!first)
			st_buf_puts(&b, ", ");
		first = false;
		if (t->cols[i].kind == PGO_VAL_NULL)
			st_buf_puts(&b, "NULL");
		else	/* hidden unless [cluster] log_data or debug */
			st_log_datum(&b, t->cols[i].data, t->cols[i].len, 64);
	}
	st_buf_puts(&b, ")");
	char *s = st_buf_steal(&b);
	st_buf_free(&b);
	return s;
}

/* See pgsql.h. */
void
pgq_where(struct st_buf *sql, const struct pga_rel *r, const struct pgo_tuple *t, bool full,
	  int *param_no)
{
	bool first = true;

	if (full)
		st_buf_printf(sql, " WHERE ctid = (SELECT ctid FROM ONLY %s WHERE ", r->qname);
	else
		st_buf_puts(sql, " WHERE ");
	for (uint16_t i = 0; i < r->ncols; i++) {
		if (full ? t->cols[i].kind == PGO_VAL_UNCHANGED : !r->cols[i].key)
			continue;
		if (!first)
			st_buf_puts(sql, " AND ");
		first = false;
		if (full)
			st_buf_printf(sql, "%s::pg_catalog.text IS NOT DISTINCT FROM $%d::pg_catalog.text",
				      r->cols[i].qname, ++*param_no);
		else
			st_buf_printf(sql, "%s = $%d", r->cols[i].qname, ++*param_no);
	}
	if (first)
		st_buf_puts(sql, "true");
	if (full)
		st_buf_puts(sql, " LIMIT 1)");
}

/*
 * SQL, a row statement that must touch EXPECTED rows, made a query that
 * fails on the standby when it touches another number (see ROWS_MARK): the
 * INSERT, UPDATE or DELETE with RETURNING in a WITH, a SELECT as a
 * subquery.  Its one row is the count.
 */
void
pgq_count_wrap(struct st_buf *sql, bool is_select, uint32_t expected)
{
	char *inner = st_buf_steal(sql);	/* SQL is empty again */

	if (is_select)
		st_buf_printf(sql, "SELECT ");
	else
		st_buf_printf(sql, "WITH standin_r AS (%s RETURNING 1) SELECT ", inner);
	st_buf_printf(sql, "CASE pg_catalog.count(*) WHEN %" PRIu32 " THEN %" PRIu32 " ELSE ('"
		      ROWS_MARK "' OPERATOR(pg_catalog.||) pg_catalog.count(*))::pg_catalog.int8 "
		      "END FROM ", expected, expected);
	if (is_select)
		st_buf_printf(sql, "(%s) AS standin_r", inner);
	else
		st_buf_puts(sql, "standin_r");
	free(inner);
}

/* "c = $1, d = $2": the columns MASK marks set ('.'), numbered from 1. */
void
pgq_set_list(struct st_buf *sql, const struct pga_rel *r, const char *mask)
{
	int k = 0;

	for (uint16_t i = 0; i < r->ncols; i++) {
		if (mask[i] != '.')
			continue;
		st_buf_printf(sql, "%s%s = $%d", k ? ", " : "", r->cols[i].qname, k + 1);
		k++;
	}
}

/* A batch's "c = standin_v.c1, ...": its values after the key's. */
static void
batch_set_list(struct st_buf *sql, const struct pga_rel *r, uint16_t nkeys, uint16_t nvals,
	       const uint16_t *cols)
{
	for (uint16_t j = nkeys; j < nvals; j++)
		st_buf_printf(sql, "%s%s = standin_v.c%u", j > nkeys ? ", " : "", r->cols[cols[j]].qname,
			      j);
}

/*
 * REPLICA IDENTITY FULL: which of the old row's columns the WHERE compares,
 * as part of a statement's mask ("F", then '.' or 'u' for an unchanged
 * TOAST value, left out); NULL when the row is found by its key.
 */
char *
pgq_full_mask(const struct pga_rel *r, const struct pgo_tuple *old, bool full)
{
	if (!full)
		return NULL;
	char *key = xcalloc((size_t)r->ncols + 2, 1);
	key[0] = 'F';
	for (uint16_t i = 0; i < r->ncols; i++)
		key[i + 1] = old->cols[i].kind == PGO_VAL_UNCHANGED ? 'u' : '.';
	return key;
}

void
pgq_row_statement(struct st_buf *sql, const struct pga_rel *r, char op, const char *mask,
		  bool full, bool merge, const struct pgo_tuple *old)
{
	int nset = 0, n = 0;

	for (uint16_t i = 0; op == 'U' && i < r->ncols; i++)
		nset += mask[i] == '.';
	if (merge) {
		/* The values set first, then the key, as in the UPDATE below. */
		n = nset;
		st_buf_printf(sql, "MERGE INTO ONLY %s AS standin_t USING (SELECT) AS standin_v ON ",
			      r->qname);
		bool first = true;
		for (uint16_t i = 0; i < r->ncols; i++) {
			if (!r->cols[i].key)
				continue;
			st_buf_printf(sql, "%sstandin_t.%s = $%d", first ? "" : " AND ",
				      r->cols[i].qname, ++n);
			first = false;
		}
		if (op == 'U') {
			st_buf_puts(sql, " WHEN MATCHED THEN UPDATE SET ");
			pgq_set_list(sql, r, mask);
		} else {
			st_buf_puts(sql, " WHEN MATCHED THEN DELETE");
		}
		st_buf_puts(sql, MERGE_NOT_MATCHED);
		return;
	}
	switch (op) {
	case 'I':
		if (r->ncols == 0) {
			st_buf_printf(sql, "INSERT INTO %s DEFAULT VALUES", r->qname);
			break;
		}
		st_buf_printf(sql, "INSERT INTO %s (", r->qname);
		for (uint16_t i = 0; i < r->ncols; i++)
			st_buf_printf(sql, "%s%s", i ? ", " : "", r->cols[i].qname);
		/* Identity columns GENERATED ALWAYS take the master's values. */
		st_buf_puts(sql, ") OVERRIDING SYSTEM VALUE VALUES (");
		for (uint16_t i = 0; i < r->ncols; i++)
			st_buf_printf(sql, "%s$%d", i ? ", " : "", ++n);
		st_buf_puts(sql, ")");
		break;
	case 'U':
		if (nset == 0) {
			/* Nothing to set (no column, or only unchanged TOAST values
			 * and key columns): the row must still be there, one row, as
			 * for any UPDATE. */
			st_buf_printf(sql, "SELECT 1 FROM ONLY %s", r->qname);
			pgq_where(sql, r, old, full, &n);
			pgq_count_wrap(sql, true, 1);
			break;
		}
		st_buf_printf(sql, "UPDATE ONLY %s SET ", r->qname);
		pgq_set_list(sql, r, mask);
		n = nset;
		pgq_where(sql, r, old, full, &n);
		pgq_count_wrap(sql, false, 1);
		break;
	case 'D':
		st_buf_printf(sql, "DELETE FROM ONLY %s", r->qname);
		pgq_where(sql, r, old, full, &n);
		pgq_count_wrap(sql, false, 1);
		break;
	case 'R': {
		/* master-wins: the standby's row goes if it is there, and the
		 * count says whether it was. */
		st_buf_printf(sql, "DELETE FROM ONLY %s", r->qname);
		pgq_where(sql, r, old, full, &n);
		char *inner = st_buf_steal(sql);
		st_buf_printf(sql, "WITH standin_r AS (%s RETURNING 1) "
			      "SELECT pg_catalog.count(*) FROM standin_r", inner);
		free(inner);
		break;
	}
	}
}

int
pgq_batch_statement(struct st_buf *sql, const struct pga_rel *r, char op, bool merge,
		    uint16_t nkeys, uint16_t nvals, const uint16_t *cols, uint32_t rows)
{
	int k = 0;

	if (merge) {
		st_buf_printf(sql, "MERGE INTO ONLY %s AS standin_t USING (VALUES ", r->qname);
	} else if (op == 'I') {
		st_buf_printf(sql, "INSERT INTO %s (", r->qname);
		for (uint16_t j = 0; j < nvals; j++)
			st_buf_printf(sql, "%s%s", j ? ", " : "", r->cols[cols[j]].qname);
		st_buf_puts(sql, ") OVERRIDING SYSTEM VALUE VALUES ");
	} else if (op == 'U') {
		st_buf_printf(sql, "UPDATE ONLY %s AS standin_t SET ", r->qname);
		batch_set_list(sql, r, nkeys, nvals, cols);
		st_buf_puts(sql, " FROM (VALUES ");
	} else {
		st_buf_printf(sql, "DELETE FROM ONLY %s AS standin_t USING (VALUES ", r->qname);
	}
	for (uint32_t i = 0; i < rows; i++) {
		st_buf_puts(sql, i ? ", (" : "(");
		for (uint16_t j = 0; j < nvals; j++)
			st_buf_printf(sql, "%s$%d", j ? ", " : "", ++k);
		st_buf_puts(sql, ")");
	}
	if (op != 'I') {
		st_buf_puts(sql, ") AS standin_v (");
		for (uint16_t j = 0; j < nvals; j++)
			st_buf_printf(sql, "%sc%u", j ? ", " : "", j);
		st_buf_puts(sql, merge ? ") ON " : ") WHERE ");
		for (uint16_t j = 0; j < nkeys; j++)
			st_buf_printf(sql, "%sstandin_t.%s = standin_v.c%u", j ? " AND " : "",
				      r->cols[cols[j]].qname, j);
		if (merge && op == 'U') {
			st_buf_puts(sql, " WHEN MATCHED THEN UPDATE SET ");
			batch_set_list(sql, r, nkeys, nvals, cols);
		} else if (merge) {
			st_buf_puts(sql, " WHEN MATCHED THEN DELETE");
		}
		if (merge)
			st_buf_puts(sql, MERGE_NOT_MATCHED);
	}
	if (!merge)
		pgq_count_wrap(sql, false, rows);
	return k;
}
