/*
 * test-pgspool: the spool of transactions streamed while in progress.
 * Messages are opaque to the spool, so they are short strings here that name
 * their subtransaction and their place ("s7:3"); a replay is checked against
 * the list the transaction should hold after its aborts.
 */
#include "config.h"

#include "replicators/pg/pgspool.h"
#include "tests/unit/testutil.h"

#include <dirent.h>

struct seen {
	char text[8192];
	unsigned n;
	int fail_at;		/* make the callback fail at this message (1-based), 0 never */
};

static int
collect(void *ctx, const uint8_t *msg, size_t len, char **error_r)
{
	struct seen *s = ctx;

	s->n++;
	if (s->fail_at != 0 && (int)s->n == s->fail_at) {
		st_set_error(error_r, "refused message %u", s->n);
		return -1;
	}
	size_t used = strlen(s->text);
	ck_assert_uint_lt(used + len + 2, sizeof(s->text));
	if (used > 0)
		s->text[used++] = ' ';
	memcpy(s->text + used, msg, len);
	s->text[used + len] = '\0';
	return 0;
}

static void
put(struct pgsp *sp, uint32_t sub, const char *text)
{
	char *err = NULL;

	ck_assert_msg(pgsp_write(sp, sub, (const uint8_t *)text, strlen(text), &err) == 0, "%s",
		      err ? err : "");
}

static void
block(struct pgsp *sp, uint32_t xid, bool first)
{
	char *err = NULL;

	ck_assert_msg(pgsp_block_start(sp, xid, first, &err) == 0, "%s", err ? err : "");
	ck_assert(pgsp_in_block(sp));
}

static void
stop(struct pgsp *sp)
{
	char *err = NULL;

	ck_assert_msg(pgsp_block_stop(sp, &err) == 0, "%s", err ? err : "");
	ck_assert(!pgsp_in_block(sp));
}

static void
replay_expect(struct pgsp *sp, uint32_t xid, const char *want)
{
	struct seen s = { .text = "" };
	char *err = NULL;

	ck_assert_msg(pgsp_replay(sp, xid, collect, &s, &err) == 0, "%s", err ? err : "");
	ck_assert_str_eq(s.text, want);
}

static unsigned
spool_files(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	unsigned n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)) != NULL)
		if (strstr(e->d_name, ".spool") != NULL)
			n++;
	closedir(d);
	return n;
}

START_TEST(test_blocks_interleaved)
{
	char *dir = tu_mkdtemp(), *err = NULL;
	char *sdir = xasprintf("%s/spool", dir);
	struct pgsp *sp = pgsp_new(sdir, &err);

	ck_assert_msg(sp != NULL, "%s", err ? err : "");
	struct stat st;
	ck_assert_int_eq(stat(sdir, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0700);

	/* Two transactions, their blocks interleaved. */
	block(sp, 100, true);
	put(sp, 100, "a1");
	put(sp, 100, "a2");
	stop(sp);
	block(sp, 200, true);
	put(sp, 200, "b1");
	stop(sp);
	block(sp, 100, false);
	put(sp, 100, "a3");
	stop(sp);
	ck_assert_uint_eq(pgsp_open_txns(sp), 2);
	ck_assert_uint_eq(pgsp_open_bytes(sp), 4 * (4 + 2));
	ck_assert_uint_eq(spool_files(sdir), 2);
	char *path = xasprintf("%s/100.spool", sdir);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 0777, 0600);
	free(path);

	replay_expect(sp, 200, "b1");
	replay_expect(sp, 100, "a1 a2 a3");
	ck_assert_uint_eq(pgsp_open_txns(sp), 0);
	ck_assert_uint_eq(pgsp_replayed(sp), 2);
	ck_assert_uint_eq(spool_files(sdir), 0);

	/* Committed once: a second commit is an error. */
	struct seen s = { .text = "" };
	ck_assert_int_eq(pgsp_replay(sp, 100, collect, &s, &err), -1);
	ck_assert_ptr_nonnull(strstr(err, "never received"));
	free(err);
	pgsp_free(&sp);
	ck_assert_ptr_null(sp);
	free(sdir);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

START_TEST(test_subtransaction_aborts)
{
	char *dir = tu_mkdtemp(), *err = NULL;
	struct pgsp *sp = pgsp_new(dir, &err);

	ck_assert_ptr_nonnull(sp);
	/* top 10: t1, sub 11 (s11a), sub 12 inside 11 (s12a), back in 11, then
	 * ROLLBACK TO 11 (11 and 12 gone), then sub 13 kept, sub 14 aborted. */
	block(sp, 10, true);
	put(sp, 0, "origin");		/* no xid: the transaction's own */
	put(sp, 10, "t1");
	put(sp, 11, "s11a");
	stop(sp);
	block(sp, 10, false);
	put(sp, 12, "s12a");
	put(sp, 11, "s11b");
	stop(sp);
	ck_assert_int_eq(pgsp_abort(sp, 10, 12, &err), 0);	/* cuts s12a and s11b */
	ck_assert_int_eq(pgsp_abort(sp, 10, 11, &err), 0);	/* cuts s11a */
	block(sp, 10, false);
	put(sp, 10, "t2");
	put(sp, 13, "s13a");
	put(sp, 14, "s14a");
	put(sp, 14, "s14b");
	stop(sp);
	ck_assert_int_eq(pgsp_abort(sp, 10, 14, &err), 0);
	/* An empty subtransaction, and one of another transaction. */
	ck_assert_int_eq(pgsp_abort(sp, 10, 99, &err), 0);
	ck_assert_int_eq(pgsp_abort(sp, 77, 78, &err), 0);
	block(sp, 10, false);
	put(sp, 13, "s13b");
	put(sp, 10, "t3");
	stop(sp);
	ck_assert_int_eq(pgsp_abort(sp, 10, 0, &err), 0);	/* no subtransaction 0 */
	replay_expect(sp, 10, "origin t1 t2 s13a s13b t3");

	/* A subtransaction whose xid is smaller than one already seen (its
	 * first change came after its child's). */
	block(sp, 20, true);
	put(sp, 20, "t1");
	put(sp, 22, "s22a");
	put(sp, 21, "s21a");
	put(sp, 22, "s22b");
	stop(sp);
	ck_assert_int_eq(pgsp_abort(sp, 20, 21, &err), 0);	/* cuts s21a, s22b */
	replay_expect(sp, 20, "t1 s22a");
	pgsp_free(&sp);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

START_TEST(test_whole_abort_and_leftovers)
{
	char *dir = tu_mkdtemp(), *err = NULL;
	struct pgsp *sp = pgsp_new(dir, &err);

	block(sp, 5, true);
	put(sp, 5, "x");
	stop(sp);
	block(sp, 6, true);
	put(sp, 6, "y");
	stop(sp);
	ck_assert_int_eq(pgsp_abort(sp, 5, 5, &err), 0);
	ck_assert_uint_eq(pgsp_open_txns(sp), 1);
	ck_assert_uint_eq(spool_files(dir), 1);
	/* A session that ends (crash, error) leaves 6.spool... */
	char *six = xasprintf("%s/6.spool", dir);
	ck_assert_int_eq(access(six, F_OK), 0);
	pgsp_free(&sp);
	/* ...pgsp_free removes it; a crash would not: the next session does. */
	ck_assert_uint_eq(spool_files(dir), 0);
	tu_write(six, "junk", 0600);
	free(six);
	char *keep = xasprintf("%s/keep.txt", dir);
	tu_write(keep, "other", 0600);
	sp = pgsp_new(dir, &err);
	ck_assert_ptr_nonnull(sp);
	ck_assert_uint_eq(spool_files(dir), 0);
	ck_assert_int_eq(access(keep, F_OK), 0);
	unlink(keep);
	free(keep);
	pgsp_free(&sp);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

/* RC is -1 and *ERR names WANT; *ERR is freed. */
static void
expect_error(int rc, char **err, const char *want)
{
	ck_assert_int_eq(rc, -1);
	ck_assert_ptr_nonnull(*err);
	ck_assert_msg(strstr(*err, want) != NULL, "\"%s\" does not say \"%s\"", *err, want);
	free(*err);
	*err = NULL;
}

START_TEST(test_protocol_errors)
{
	char *dir = tu_mkdtemp(), *err = NULL;
	struct pgsp *sp = pgsp_new(dir, &err);
	struct seen s = { .text = "" };

	expect_error(pgsp_write(sp, 1, (const uint8_t *)"x", 1, &err), &err,
		     "a change of transaction 1 outside a Stream Start block");
	expect_error(pgsp_block_stop(sp, &err), &err, "Stream Stop outside");
	/* A later block of a transaction never started here (after a restart). */
	expect_error(pgsp_block_start(sp, 3, false, &err), &err,
		     "Stream Start of transaction 3, whose first block this session never received");
	block(sp, 3, true);
	/* Nested blocks, aborts and commits inside a block. */
	expect_error(pgsp_block_start(sp, 4, true, &err), &err,
		     "Stream Start of transaction 4 inside the block of 3");
	expect_error(pgsp_abort(sp, 3, 3, &err), &err, "Stream Abort of transaction 3 inside");
	expect_error(pgsp_replay(sp, 3, collect, &s, &err), &err,
		     "Stream Commit of transaction 3 inside");
	stop(sp);
	/* A second first block of the same transaction. */
	expect_error(pgsp_block_start(sp, 3, true, &err), &err, "has a first block already");
	pgsp_free(&sp);

	/* The directory cannot be made. */
	char *bad = xasprintf("%s/no/such/dir", dir);
	ck_assert_ptr_null(pgsp_new(bad, &err));
	expect_error(-1, &err, bad);
	free(bad);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

START_TEST(test_replay_failures)
{
	char *dir = tu_mkdtemp(), *err = NULL;
	struct pgsp *sp = pgsp_new(dir, &err);

	/* The callback refuses the second message: the replay stops there. */
	block(sp, 8, true);
	put(sp, 8, "m1");
	put(sp, 8, "m2");
	put(sp, 8, "m3");
	stop(sp);
	struct seen s = { .text = "", .fail_at = 2 };
	ck_assert_int_eq(pgsp_replay(sp, 8, collect, &s, &err), -1);
	ck_assert_str_eq(err, "refused message 2");
	ck_assert_str_eq(s.text, "m1");
	free(err);
	err = NULL;
	ck_assert_uint_eq(spool_files(dir), 0);

	/* The file was cut behind the spool's back: refused, not half-applied
	 * silently. */
	block(sp, 9, true);
	put(sp, 9, "abcdef");
	put(sp, 9, "ghijkl");
	stop(sp);
	char *path = xasprintf("%s/9.spool", dir);
	ck_assert_int_eq(truncate(path, 13), 0);
	struct seen s2 = { .text = "" };
	ck_assert_int_eq(pgsp_replay(sp, 9, collect, &s2, &err), -1);
	ck_assert_ptr_nonnull(strstr(err, "ends inside a record"));
	free(err);
	free(path);
	pgsp_free(&sp);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

struct big_check {
	const uint8_t *big;
	size_t big_len;
	unsigned n, n_big, n_empty;
};

static int
check_big(void *ctx, const uint8_t *m, size_t len, char **error_r)
{
	struct big_check *c = ctx;

	(void)error_r;
	c->n++;
	if (len == c->big_len) {
		ck_assert(memcmp(m, c->big, len) == 0);
		c->n_big++;
	} else if (len == 0) {
		c->n_empty++;
	} else {
		ck_assert_uint_eq(len, 41);
		ck_assert(memcmp(m, "small message that fills the write buffer", 41) == 0);
	}
	return 0;
}

START_TEST(test_big_messages)
{
	char *dir = tu_mkdtemp(), *err = NULL;
	struct pgsp *sp = pgsp_new(dir, &err);
	size_t big = 3 * 1024 * 1024 + 7;
	uint8_t *msg = xmalloc(big);

	for (size_t i = 0; i < big; i++)
		msg[i] = (uint8_t)(i * 31 + 7);
	/* Small ones that overflow the write buffer many times, one bigger than
	 * the buffer, an empty one, small ones again. */
	block(sp, 1, true);
	for (int i = 0; i < 5000; i++)
		put(sp, 1, "small message that fills the write buffer");
	ck_assert_int_eq(pgsp_write(sp, 1, msg, big, &err), 0);
	ck_assert_int_eq(pgsp_write(sp, 1, (const uint8_t *)"", 0, &err), 0);
	stop(sp);
	block(sp, 1, false);
	for (int i = 0; i < 100; i++)
		put(sp, 1, "small message that fills the write buffer");
	stop(sp);
	ck_assert_uint_eq(pgsp_open_bytes(sp), 5100 * (4 + 41) + 4 + big + 4);

	struct big_check c = { .big = msg, .big_len = big };
	ck_assert_int_eq(pgsp_replay(sp, 1, check_big, &c, &err), 0);
	ck_assert_uint_eq(c.n, 5102);
	ck_assert_uint_eq(c.n_big, 1);
	ck_assert_uint_eq(c.n_empty, 1);
	pgsp_free(&sp);
	free(msg);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

static Suite *
pgspool_suite(void)
{
	Suite *s = suite_create("pgspool");
	TCase *tc = tcase_create("pgspool");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_blocks_interleaved);
	tcase_add_test(tc, test_subtransaction_aborts);
	tcase_add_test(tc, test_whole_abort_and_leftovers);
	tcase_add_test(tc, test_protocol_errors);
	tcase_add_test(tc, test_replay_failures);
	tcase_add_test(tc, test_big_messages);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(pgspool_suite());
}
