/*
 * test-pgsql.c: the SQL text of standin-pgrepl's row statements
 * (replicators/pg/pgsql.c): keys and REPLICA IDENTITY FULL, unchanged TOAST
 * values left out, the counted forms, MERGE, batches, and the row
 * descriptions that errors carry.
 */
#include "replicators/pg/pgsql.h"
#include "lib/log.h"

#include "testutil.h"

/* A relation "Odd ""Schema"".t" (id int, "Na me" text, big text), keyed on
 * id, or on nothing (FULL) when NO_KEY. */
static struct pga_col cols[] = {
	{ .name = "id", .qname = "\"id\"", .key = true, .type_oid = 23 },
	{ .name = "Na me", .qname = "\"Na me\"", .type_oid = 25 },
	{ .name = "big", .qname = "\"big\"", .type_oid = 25 },
};

static struct pga_rel
rel(bool no_key)
{
	static struct pga_col plain[3];
	struct pga_rel r = {
		.relid = 16400, .qname = "\"Odd \"\"Schema\"\"\".\"t\"", .display = "Odd \"Schema\".t",
		.ncols = 3, .cols = cols, .nkeys = 1,
	};

	if (no_key) {
		memcpy(plain, cols, sizeof(cols));
		plain[0].key = false;
		r.cols = plain;
		r.nkeys = 0;
		r.identity = PGO_IDENT_FULL;
	}
	return r;
}

/* The old row (5, 'five', <unchanged TOAST>) and its values. */
static struct pgo_value old_vals[] = {
	{ .kind = PGO_VAL_TEXT, .data = "5", .len = 1 },
	{ .kind = PGO_VAL_TEXT, .data = "five", .len = 4 },
	{ .kind = PGO_VAL_UNCHANGED },
};
static const struct pgo_tuple old_row = { .ncols = 3, .cols = old_vals };

static char *
row_sql(const struct pga_rel *r, char op, const char *mask, bool full, bool merge)
{
	struct st_buf b;

	st_buf_init(&b);
	pgq_row_statement(&b, r, op, mask, full, merge, &old_row);
	char *sql = st_buf_steal(&b);
	st_buf_free(&b);
	return sql;
}

#define COUNTED(inner, n)                                                                       \
	"WITH standin_r AS (" inner " RETURNING 1) SELECT CASE pg_catalog.count(*) WHEN " #n       \
	" THEN " #n " ELSE ('" ROWS_MARK "' OPERATOR(pg_catalog.||) pg_catalog.count(*))"         \
	"::pg_catalog.int8 END FROM standin_r"

START_TEST(test_insert_names_every_column_and_overrides_identity)
{
	struct pga_rel r = rel(false);
	char *sql = row_sql(&r, 'I', NULL, false, false);

	ck_assert_str_eq(sql, "INSERT INTO \"Odd \"\"Schema\"\"\".\"t\" (\"id\", \"Na me\", \"big\") "
			      "OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3)");
	free(sql);
	r.ncols = 0;
	sql = row_sql(&r, 'I', NULL, false, false);
	ck_assert_str_eq(sql, "INSERT INTO \"Odd \"\"Schema\"\"\".\"t\" DEFAULT VALUES");
	free(sql);
}
END_TEST

START_TEST(test_update_by_key_sets_only_changed_values)
{
	struct pga_rel r = rel(false);
	/* The key column unchanged ('k'), the text set, the TOAST value left. */
	char *sql = row_sql(&r, 'U', "k.u", false, false);

	ck_assert_str_eq(sql, COUNTED("UPDATE ONLY \"Odd \"\"Schema\"\"\".\"t\" SET \"Na me\" = $1 "
				      "WHERE \"id\" = $2", 1));
	free(sql);
	/* Nothing to set: still the row must be there, once. */
	sql = row_sql(&r, 'U', "kuu", false, false);
	ck_assert_str_eq(sql, "SELECT CASE pg_catalog.count(*) WHEN 1 THEN 1 ELSE ('" ROWS_MARK
			      "' OPERATOR(pg_catalog.||) pg_catalog.count(*))::pg_catalog.int8 END "
			      "FROM (SELECT 1 FROM ONLY \"Odd \"\"Schema\"\"\".\"t\" WHERE \"id\" = $1)"
			      " AS standin_r");
	free(sql);
}
END_TEST

START_TEST(test_full_identity_finds_one_row_by_its_old_values)
{
	struct pga_rel r = rel(true);
	char *sql = row_sql(&r, 'D', NULL, true, false);

	/* The unchanged TOAST column is not compared; NULLs match NULLs. */
	ck_assert_str_eq(sql, COUNTED("DELETE FROM ONLY \"Odd \"\"Schema\"\"\".\"t\" WHERE ctid = "
				      "(SELECT ctid FROM ONLY \"Odd \"\"Schema\"\"\".\"t\" WHERE "
				      "\"id\"::pg_catalog.text IS NOT DISTINCT FROM $1::pg_catalog.text"
				      " AND \"Na me\"::pg_catalog.text IS NOT DISTINCT FROM "
				      "$2::pg_catalog.text LIMIT 1)", 1));
	free(sql);
	char *mask = pgq_full_mask(&r, &old_row, true);
	ck_assert_str_eq(mask, "F..u");
	free(mask);
	ck_assert_ptr_null(pgq_full_mask(&r, &old_row, false));
	/* UPDATE: the values set are $1.., the WHERE's after them. */
	sql = row_sql(&r, 'U', ".uu", true, false);
	ck_assert_ptr_nonnull(strstr(sql, "SET \"id\" = $1 WHERE ctid = (SELECT ctid FROM ONLY "));
	ck_assert_ptr_nonnull(strstr(sql, "\"id\"::pg_catalog.text IS NOT DISTINCT FROM $2::"));
	ck_assert_ptr_nonnull(strstr(sql, "\"Na me\"::pg_catalog.text IS NOT DISTINCT FROM $3::"));
	free(sql);
}
END_TEST

START_TEST(test_master_wins_delete_counts_what_it_removed)
{
	struct pga_rel r = rel(false);
	char *sql = row_sql(&r, 'R', NULL, false, false);

	ck_assert_str_eq(sql, "WITH standin_r AS (DELETE FROM ONLY \"Odd \"\"Schema\"\"\".\"t\" "
			      "WHERE \"id\" = $1 RETURNING 1) SELECT pg_catalog.count(*) FROM "
			      "standin_r");
	free(sql);
}
END_TEST

START_TEST(test_merge_forms)
{
	struct pga_rel r = rel(false);
	char *sql = row_sql(&r, 'U', "k..", false, true);

	ck_assert_str_eq(sql, "MERGE INTO ONLY \"Odd \"\"Schema\"\"\".\"t\" AS standin_t USING "
			      "(SELECT) AS standin_v ON standin_t.\"id\" = $3 WHEN MATCHED THEN "
			      "UPDATE SET \"Na me\" = $1, \"big\" = $2" MERGE_NOT_MATCHED);
	free(sql);
	sql = row_sql(&r, 'D', NULL, false, true);
	ck_assert_str_eq(sql, "MERGE INTO ONLY \"Odd \"\"Schema\"\"\".\"t\" AS standin_t USING "
			      "(SELECT) AS standin_v ON standin_t.\"id\" = $1 WHEN MATCHED THEN "
			      "DELETE" MERGE_NOT_MATCHED);
	free(sql);
}
END_TEST

START_TEST(test_batches)
{
	struct pga_rel r = rel(false);
	struct st_buf b;
	const uint16_t all[] = { 0, 1, 2 }, key_text[] = { 0, 1 };

	st_buf_init(&b);
	ck_assert_int_eq(pgq_batch_statement(&b, &r, 'I', false, 0, 3, all, 2), 6);
	ck_assert_str_eq(b.data, COUNTED("INSERT INTO \"Odd \"\"Schema\"\"\".\"t\" (\"id\", "
					 "\"Na me\", \"big\") OVERRIDING SYSTEM VALUE VALUES "
					 "($1, $2, $3), ($4, $5, $6)", 2));
	st_buf_free(&b);

	st_buf_init(&b);
	ck_assert_int_eq(pgq_batch_statement(&b, &r, 'U', false, 1, 2, key_text, 2), 4);
	ck_assert_str_eq(b.data, COUNTED("UPDATE ONLY \"Odd \"\"Schema\"\"\".\"t\" AS standin_t SET "
					 "\"Na me\" = standin_v.c1 FROM (VALUES ($1, $2), ($3, $4))"
					 " AS standin_v (c0, c1) WHERE standin_t.\"id\" = "
					 "standin_v.c0", 2));
	st_buf_free(&b);

	st_buf_init(&b);
	ck_assert_int_eq(pgq_batch_statement(&b, &r, 'D', true, 1, 1, all, 3), 3);
	ck_assert_str_eq(b.data, "MERGE INTO ONLY \"Odd \"\"Schema\"\"\".\"t\" AS standin_t USING "
				 "(VALUES ($1), ($2), ($3)) AS standin_v (c0) ON standin_t.\"id\" = "
				 "standin_v.c0 WHEN MATCHED THEN DELETE" MERGE_NOT_MATCHED);
	st_buf_free(&b);
}
END_TEST

START_TEST(test_row_descriptions)
{
	struct pga_rel r = rel(false);
	char big[100];
	struct pgo_value v[] = {
		{ .kind = PGO_VAL_TEXT, .data = "7", .len = 1 },
		{ .kind = PGO_VAL_NULL },
		{ .kind = PGO_VAL_TEXT, .data = big, .len = sizeof(big) - 1 },
	};
	struct pgo_tuple t = { .ncols = 3, .cols = v };

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	/* By default ([cluster] log_data = no) a value is a hash: SHA-256("7") starts 7902699b. */
	st_log_set_data(false);
	char *d = pgq_describe_row(&r, &t, true);
	ck_assert_str_eq(d, "Odd \"Schema\".t key (id)=(#7902699b)");
	free(d);
	d = pgq_describe_row(&r, &t, false);
	ck_assert_ptr_null(strstr(d, "xxxx"));
	ck_assert_ptr_nonnull(strstr(d, "(#7902699b, NULL, #"));
	free(d);
	st_log_set_data(true);
	d = pgq_describe_row(&r, &t, true);
	ck_assert_str_eq(d, "Odd \"Schema\".t key (id)=(7)");
	free(d);
	d = pgq_describe_row(&r, &t, false);
	ck_assert_uint_eq(strlen(d), strlen("Odd \"Schema\".t row (id, Na me, big)=(7, NULL, ...)") + 64);
	ck_assert_ptr_nonnull(strstr(d, "(7, NULL, xxxx"));
	ck_assert_ptr_nonnull(strstr(d, "x...)"));
	free(d);
	/* An unchanged TOAST value is not shown. */
	d = pgq_describe_row(&r, &old_row, false);
	ck_assert_str_eq(d, "Odd \"Schema\".t row (id, Na me)=(5, five)");
	free(d);
}
END_TEST

static Suite *
pgsql_suite(void)
{
	Suite *s = suite_create("pgsql");
	TCase *tc = tcase_create("pgsql");

	tcase_add_test(tc, test_insert_names_every_column_and_overrides_identity);
	tcase_add_test(tc, test_update_by_key_sets_only_changed_values);
	tcase_add_test(tc, test_full_identity_finds_one_row_by_its_old_values);
	tcase_add_test(tc, test_master_wins_delete_counts_what_it_removed);
	tcase_add_test(tc, test_merge_forms);
	tcase_add_test(tc, test_batches);
	tcase_add_test(tc, test_row_descriptions);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(pgsql_suite());
}
