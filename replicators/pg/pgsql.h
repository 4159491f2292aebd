/*
 * pgsql.h: the SQL text that standin-pgrepl's apply sends for rows (pure
 * functions of a relation's description and a row, unit-tested in
 * tests/unit/test-pgsql.c): INSERT, UPDATE and DELETE of one row by its key
 * or (REPLICA IDENTITY FULL) by its old values, the MERGE forms, the
 * statements of a batch of rows, and the count that makes a statement fail
 * when it touches another number of rows than it must.
 *
 * Identifiers arrive quoted (pga_rel.qname, pga_col.qname: lib/pgconn.h,
 * pgc_ident); values never appear in the text, only $n parameters.
 */
#ifndef STANDIN_PGSQL_H
#define STANDIN_PGSQL_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/util.h"
#include "replicators/pg/pgoutput.h"

/* The mark of the number a counted statement's failure carries (see
 * pgq_count_wrap: "standin-row-count:N" cast to a number fails with N). */
#define ROWS_MARK "standin-row-count:"

#define MERGE_NOT_MATCHED " WHEN NOT MATCHED AND ('" ROWS_MARK "0 ' OPERATOR(pg_catalog.||) " \
	"pg_catalog.now())::pg_catalog.int8 IS NULL THEN INSERT DEFAULT VALUES"

struct pga_col {
	char *name;
	char *qname;
	bool key;
	uint32_t type_oid;	/* the master's: only built-in ones are used */
};

struct stmt;
struct batch;

/* What the apply knows of a relation (from its Relation message). */
struct pga_rel {
	uint32_t relid;			/* 0: free slot */
	char *nspname, *relname;
	char *qname;			/* "ns"."rel", quoted */
	char *display;			/* ns.rel for messages */
	enum pgo_identity identity;
	uint16_t ncols;
	struct pga_col *cols;
	uint16_t nkeys;
	/* UPDATE and DELETE may go as MERGE (pgapply.c, "MERGE"): 1 yes, -1 no,
	 * 0 not known yet (the standby's answer to merge_check() is on its
	 * way; until then the pgq_count_wrap() form). */
	int merge_ok;
	unsigned merge_check;		/* which check's answer counts */
	struct stmt *stmts;		/* prepared in this session */
	struct batch *batch;		/* rows waiting to go as one statement */
};

/* "public.t key (id)=(5)" from the columns used to find the row (values cut
 * at 64 bytes); the caller frees it. */
char *pgq_describe_row(const struct pga_rel *r, const struct pgo_tuple *t, bool key_only);

/* " WHERE ..." finding one row: by key columns, or (FULL) by every column of
 * T that is not an unchanged TOAST value; parameters from *PARAM_NO + 1. */
void pgq_where(struct st_buf *sql, const struct pga_rel *r, const struct pgo_tuple *t, bool full,
	       int *param_no);

/* SQL, a statement that must touch EXPECTED rows, made a query whose one row
 * is the count and that fails on the standby when it is another number. */
void pgq_count_wrap(struct st_buf *sql, bool is_select, uint32_t expected);

/* "c = $1, d = $2": the columns MASK marks set ('.'), numbered from 1. */
void pgq_set_list(struct st_buf *sql, const struct pga_rel *r, const char *mask);

/* REPLICA IDENTITY FULL: "F" then '.' or 'u' (an unchanged TOAST value, left
 * out of the WHERE) per column of OLD; NULL when the row is found by key. */
char *pgq_full_mask(const struct pga_rel *r, const struct pgo_tuple *old, bool full);

/*
 * The statement of one row: OP 'I' (insert), 'U' (update: MASK marks the new
 * values set), 'D' (delete), 'R' (master-wins: delete the standby's row,
 * counted); by key or FULL (OLD's values); MERGE when MERGE (U, D by key).
 * Parameters: the values set, then the WHERE's.
 */
void pgq_row_statement(struct st_buf *sql, const struct pga_rel *r, char op, const char *mask,
		       bool full, bool merge, const struct pgo_tuple *old);

/*
 * The statement of ROWS rows of OP ('I', 'U', 'D') at once: each row's
 * NVALS values are the columns COLS (for U and D, the NKEYS key columns
 * first).  MERGE for U and D where the standby allows it.  Returns the
 * number of parameters.
 */
int pgq_batch_statement(struct st_buf *sql, const struct pga_rel *r, char op, bool merge,
			uint16_t nkeys, uint16_t nvals, const uint16_t *cols, uint32_t rows);

#endif
