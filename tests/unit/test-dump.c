/*
 * test-dump: the pure parts of standinctl dump: retention over a simulated
 * month, the manifest (round trip, every kind of damage), dump names, the
 * LDIF check, and the pipelines of external commands (foreground and
 * background, failures, the deadline).
 */
#include "config.h"

#include "dumpers/dump.h"
#include "dumpers/ldif.h"
#include "dumpers/manifest.h"
#include "lib/proc.h"
#include "dumpers/retention.h"
#include "lib/durable.h"

#include <fcntl.h>
#include "tests/unit/testutil.h"

static time_t
at(int year, int mon, int day, int hour)
{
	struct tm tm = { .tm_year = year - 1900, .tm_mon = mon - 1, .tm_mday = day, .tm_hour = hour };

	return timegm(&tm);
}

/* 4 dumps a day (03, 09, 15, 21 h) from 1 to 30 March 2025 (a Sunday). */
START_TEST(test_retention_month_batch)
{
	struct dump_retention r = { .keep = 7, .daily = 7, .weekly = 4 };
	time_t times[120], expect[15];
	bool keep[120];
	size_t n = 0, e = 0, kept = 0;

	for (int d = 1; d <= 30; d++) {
		for (int h = 3; h < 24; h += 6)
			times[n++] = at(2025, 3, d, h);
	}
	dump_retention_select(times, n, &r, keep);
	/* keep 7: all of the 30th, three of the 29th */
	for (int h = 3; h < 24; h += 6)
		expect[e++] = at(2025, 3, 30, h);
	expect[e++] = at(2025, 3, 29, 9);
	expect[e++] = at(2025, 3, 29, 15);
	expect[e++] = at(2025, 3, 29, 21);
	/* daily 7: the newest of the 24th to the 30th */
	for (int d = 24; d <= 28; d++)
		expect[e++] = at(2025, 3, d, 21);
	/* weekly 4: the newest of the weeks ending on the 30th, 23rd, 16th, 9th */
	expect[e++] = at(2025, 3, 23, 21);
	expect[e++] = at(2025, 3, 16, 21);
	expect[e++] = at(2025, 3, 9, 21);
	ck_assert_uint_eq(e, 15);
	for (size_t i = 0; i < n; i++) {
		bool want = false;
		for (size_t k = 0; k < e; k++)
			want |= times[i] == expect[k];
		ck_assert_msg(keep[i] == want, "dump %zu (%ld): kept %d, expected %d", i, (long)times[i],
			      keep[i], want);
		kept += keep[i];
	}
	ck_assert_uint_eq(kept, 15);
}
END_TEST

/* A month of nightly runs, each pruning after its dump, as standinctl does:
 * the same set as one selection over all of them, and never the newest lost. */
START_TEST(test_retention_month_incremental)
{
	struct dump_retention r = { .keep = 7, .daily = 7, .weekly = 4 };
	time_t have[64], all[31];
	bool keep[64];
	size_t n = 0;

	for (int d = 1; d <= 30; d++) {
		all[d - 1] = have[n++] = at(2025, 3, d, 3);
		dump_retention_select(have, n, &r, keep);
		ck_assert(keep[n - 1]);
		size_t m = 0;
		for (size_t i = 0; i < n; i++) {
			if (keep[i])
				have[m++] = have[i];
		}
		n = m;
	}
	/* the 24th to the 30th, and the 23rd, 16th and 9th (Sundays) */
	ck_assert_uint_eq(n, 10);
	for (int d = 24; d <= 30; d++) {
		bool found = false;
		for (size_t i = 0; i < n; i++)
			found |= have[i] == at(2025, 3, d, 3);
		ck_assert_msg(found, "March %d not kept", d);
	}
	for (int d = 9; d <= 23; d += 7) {
		bool found = false;
		for (size_t i = 0; i < n; i++)
			found |= have[i] == at(2025, 3, d, 3);
		ck_assert_msg(found, "Sunday March %d not kept", d);
	}
	(void)all;
}
END_TEST

START_TEST(test_retention_newest_always_kept)
{
	struct dump_retention r = { .keep = 0, .daily = 0, .weekly = 0 };
	time_t times[3] = { at(2025, 1, 1, 0), at(2025, 1, 3, 0), at(2025, 1, 2, 0) };
	bool keep[3];

	dump_retention_select(times, 3, &r, keep);
	ck_assert(!keep[0]);
	ck_assert(keep[1]);
	ck_assert(!keep[2]);
	dump_retention_select(times, 0, &r, keep);
}
END_TEST

START_TEST(test_retention_gaps_do_not_count)
{
	/* Dumps stopped for two weeks: daily 3 still keeps three days. */
	struct dump_retention r = { .keep = 1, .daily = 3, .weekly = 0 };
	time_t times[4] = { at(2025, 1, 1, 3), at(2025, 1, 2, 3), at(2025, 1, 3, 3),
			    at(2025, 1, 20, 3) };
	bool keep[4];

	dump_retention_select(times, 4, &r, keep);
	ck_assert(!keep[0]);
	ck_assert(keep[1] && keep[2] && keep[3]);
}
END_TEST

START_TEST(test_week_starts_monday)
{
	ck_assert_int_eq(dump_week_of(at(2025, 3, 24, 0)), dump_week_of(at(2025, 3, 30, 23)));
	ck_assert_int_ne(dump_week_of(at(2025, 3, 23, 23)), dump_week_of(at(2025, 3, 24, 0)));
}
END_TEST

/* ------------------------------------------------------------ manifest */

static const char *sha_a = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static char *
good_manifest(void)
{
	struct dump_manifest m;
	struct st_buf b;

	dump_manifest_init(&m);
	m.service = xstrdup("pg");
	m.node = xstrdup("b");
	m.role = xstrdup("standby");
	m.master = xstrdup("a");
	m.epoch = 3;
	m.created = at(2025, 1, 1, 3);
	m.format = xstrdup("custom");
	m.compress = xstrdup("zstd");
	m.lag_ms = 120;
	m.position = xstrdup("wal_lsn 0/3000148 origin standin_from_a remote_lsn 0/3000100");
	dump_manifest_add_file(&m, "globals.sql.zst", 42, sha_a);
	dump_manifest_add_file(&m, "db-groupware.dir/toc.dat", 1234, sha_a);
	st_buf_init(&b);
	dump_manifest_format(&m, &b);
	dump_manifest_free(&m);
	char *res = st_buf_steal(&b);

	st_buf_free(&b);
	return res;
}

START_TEST(test_manifest_round_trip)
{
	char *text = good_manifest(), *err = NULL;
	struct dump_manifest m;

	ck_assert_int_eq(dump_manifest_parse("m", text, strlen(text), &m, &err), 0);
	ck_assert_str_eq(m.service, "pg");
	ck_assert_str_eq(m.node, "b");
	ck_assert_str_eq(m.role, "standby");
	ck_assert_str_eq(m.master, "a");
	ck_assert_uint_eq(m.epoch, 3);
	ck_assert_int_eq(m.created, at(2025, 1, 1, 3));
	ck_assert_int_eq(m.lag_ms, 120);
	ck_assert_uint_eq(m.n_files, 2);
	ck_assert_str_eq(m.files[1].name, "db-groupware.dir/toc.dat");
	ck_assert_uint_eq(m.files[1].size, 1234);
	ck_assert_str_eq(m.files[1].sha256, sha_a);
	ck_assert_ptr_nonnull(strstr(text, "created 20250101T030000Z\n"));
	dump_manifest_free(&m);
	free(text);
}
END_TEST

static void
expect_bad(const char *text, size_t len, const char *needle)
{
	struct dump_manifest m;
	char *err = NULL;

	ck_assert_int_eq(dump_manifest_parse("m", text, len, &m, &err), -1);
	ck_assert_ptr_nonnull(err);
	ck_assert_msg(strstr(err, needle) != NULL, "expected \"%s\" in: %s", needle, err);
	free(err);
}

START_TEST(test_manifest_damage)
{
	char *text = good_manifest();
	size_t len = strlen(text);
	char *cut = strstr(text, "end ");
	char *copy;

	/* truncated before the end line, or in the middle of a line */
	expect_bad(text, (size_t)(cut - text), "no end line");
	expect_bad(text, len - 3, "does not end with a newline");
	/* wrong count */
	copy = xstrdup(text);
	copy[len - 2] = '5';
	expect_bad(copy, len, "end: 5 files announced, 2 listed");
	free(copy);
	/* bad sha, bad size, unsafe names, unknown key, duplicate key */
	expect_bad("standin-dump-manifest 1\nfile 12 abc x\nend 1\n", 41, "bad SHA-256");
	copy = xasprintf("standin-dump-manifest 1\nfile 1x %s x\nend 1\n", sha_a);
	expect_bad(copy, strlen(copy), "bad size");
	free(copy);
	copy = xasprintf("standin-dump-manifest 1\nfile 1 %s ../etc/passwd\nend 1\n", sha_a);
	expect_bad(copy, strlen(copy), "unsafe name");
	free(copy);
	copy = xasprintf("standin-dump-manifest 1\nfile 1 %s /abs\nend 1\n", sha_a);
	expect_bad(copy, strlen(copy), "unsafe name");
	free(copy);
	expect_bad("standin-dump-manifest 1\nbogus 1\nend 0\n", 37, "m:2: unknown key \"bogus\"");
	expect_bad("standin-dump-manifest 1\nnode a\nnode b\nend 0\n", 44, "m:3: node given twice");
	expect_bad("standin-dump-manifest 2\nend 0\n", 30, "unsupported manifest version");
	expect_bad("something else\n", 15, "not a standin dump manifest");
	expect_bad("", 0, "empty");
	expect_bad("standin-dump-manifest 1\n\0\n", 26, "NUL");
	copy = xasprintf("standin-dump-manifest 1\nservice pg\nnode b\nrole master\nformat custom\n"
			 "compress zstd\nend 0\n");
	expect_bad(copy, strlen(copy), "missing created");
	free(copy);
	free(text);
}
END_TEST

START_TEST(test_time_and_names)
{
	time_t t;
	char buf[17], *node = NULL;

	ck_assert_int_eq(dump_parse_time("20250301T031500Z", &t), 0);
	dump_format_time(t, buf);
	ck_assert_str_eq(buf, "20250301T031500Z");
	ck_assert_int_eq(dump_parse_time("20251301T031500Z", &t), -1);
	ck_assert_int_eq(dump_parse_time("20250301 031500Z", &t), -1);
	ck_assert_int_eq(dump_parse_time("2025030", &t), -1);
	ck_assert_int_eq(dump_parse_name("node-b-pg-20250301T031500Z.pgdump", "pg", &node, &t), 0);
	ck_assert_str_eq(node, "node-b");
	ck_assert_int_eq(t, at(2025, 3, 1, 3) + 15 * 60);
	free(node);
	ck_assert_int_eq(dump_parse_name("b-ldap-20250301T031500Z.ldif.zst", "ldap", NULL, &t), 0);
	ck_assert_int_eq(dump_parse_name("b-ldap-20250301T031500Z.ldif.zst", "pg", NULL, &t), -1);
	ck_assert_int_eq(dump_parse_name("-pg-20250301T031500Z.pgdump", "pg", NULL, &t), -1);
	ck_assert_int_eq(dump_parse_name("b-pg-20250301T031500Z", "pg", NULL, &t), -1);
	ck_assert(dump_safe_relpath("a/b.dat"));
	ck_assert(!dump_safe_relpath("a//b"));
	ck_assert(!dump_safe_relpath("a/./b"));
	ck_assert(!dump_safe_relpath("a/"));
	ck_assert(!dump_safe_relpath(""));
}
END_TEST

START_TEST(test_sha256_file)
{
	char *dir = tu_mkdtemp(), *path = xasprintf("%s/f", dir), hex[65], *err = NULL;
	uint64_t size;

	tu_write(path, "abc", 0600);
	ck_assert_int_eq(dump_sha256_file(path, hex, &size, &err), 0);
	ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	ck_assert_uint_eq(size, 3);
	unlink(path);
	ck_assert_int_eq(dump_sha256_file(path, hex, &size, &err), -1);
	ck_assert_ptr_nonnull(strstr(err, "No such file"));
	free(err);
	free(path);
	tu_rmdir(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ LDIF */

static int
ldif_check(const char *text, size_t chunk, unsigned long *entries, char **error)
{
	struct dump_ldif p;
	size_t len = strlen(text);
	int rc = 0;

	dump_ldif_init(&p);
	for (size_t i = 0; i < len && rc == 0; i += chunk)
		rc = dump_ldif_feed(&p, text + i, len - i < chunk ? len - i : chunk);
	if (rc == 0)
		rc = dump_ldif_finish(&p);
	*entries = p.entries;
	*error = p.error ? xstrdup(p.error) : NULL;
	dump_ldif_free(&p);
	return rc;
}

START_TEST(test_ldif_good)
{
	const char *text = "version: 1\n\n"
			   "# comment\n"
			   "dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\n"
			   "dc: example\no: example\nentryCSN: 20250101000000.000000Z#000000#001#000000\n\n"
			   "dn: cn=J\xc3\xa9r\xc3\xb4me,ou=people,dc=example,dc=com\n"
			   "objectClass: inetOrgPerson\ncn:: SsOpcsO0bWU=\nsn: very long\n"
			   "  folded value\r\ndescription:< file:///dev/null\n";
	unsigned long n;
	char *err;

	for (size_t chunk = 1; chunk < 40; chunk += 7) {
		ck_assert_msg(ldif_check(text, chunk, &n, &err) == 0, "chunk %zu: %s", chunk, err);
		ck_assert_uint_eq(n, 2);
	}
}
END_TEST

START_TEST(test_ldif_bad)
{
	static const struct {
		const char *text, *needle;
	} cases[] = {
		{ "objectClass: top\n", "line 1: an entry must start with dn:" },
		{ "dn: dc=x\nobjectClass: top\nno colon here\n", "line 3: expected" },
		{ "dn: dc=x\ncn: a\n", "line 1: entry has no objectClass" },
		{ "dn: not a dn\nobjectClass: top\n", "bad DN" },
		{ "dn: dc=x\nobjectClass: top\ncn:: ***\n", "bad base64" },
		{ " continued\n", "continuation line" },
		{ "dn: dc=x\nobjectClass: top\ndn: dc=y\n", "second dn:" },
		{ "dn: dc=x\nobject_Class: top\n", "bad attribute description" },
	};
	unsigned long n;
	char *err;

	for (size_t i = 0; i < ST_ARRAY_SIZE(cases); i++) {
		ck_assert_int_eq(ldif_check(cases[i].text, 5, &n, &err), -1);
		ck_assert_msg(err && strstr(err, cases[i].needle), "case %zu: expected \"%s\", got %s",
			      i, cases[i].needle, err ? err : "(none)");
		free(err);
	}
}
END_TEST

/* ------------------------------------------------------------ pipelines */

static char *const no_env[] = { "PATH=/usr/bin:/bin", NULL };

/* The whole file at PATH (lib/durable's reader). */
static char *
slurp(const char *path)
{
	char *data = NULL, *err = NULL;

	ck_assert_msg(st_read_file(path, 1 << 20, &data, NULL, &err) == 0, "%s", err);
	return data;
}

/* A pipeline in the background while another runs in the foreground: both
 * outputs complete, both exit statuses seen. */
START_TEST(test_pipeline_background_and_foreground)
{
	char *dir = tu_mkdtemp(), *p1 = xasprintf("%s/bg", dir), *p2 = xasprintf("%s/fg", dir);
	char *err = NULL;
	char *echo_argv[] = { "/bin/echo", "roles and tablespaces", NULL };
	char *tr_argv[] = { "/usr/bin/tr", "a-z", "A-Z", NULL };
	char *seq_argv[] = { "/usr/bin/seq", "1", "100000", NULL };
	char *wc_argv[] = { "/usr/bin/wc", "-l", NULL };
	struct st_cmd bg[] = { { echo_argv, "echo" }, { tr_argv, "tr" } };
	struct st_cmd fg[] = { { seq_argv, "seq" }, { wc_argv, "wc" } };
	int fd1 = open(p1, O_WRONLY | O_CREAT | O_EXCL, 0600);
	int fd2 = open(p2, O_WRONLY | O_CREAT | O_EXCL, 0600);

	struct st_pipeline *p = st_proc_start(bg, 2, fd1, no_env, 10000, &err);
	ck_assert_ptr_nonnull(p);
	close(fd1);
	ck_assert_int_eq(st_proc_run(fg, 2, fd2, NULL, NULL, no_env, 10000, &err), 0);
	close(fd2);
	ck_assert_int_eq(st_proc_wait(p, &err), 0);
	ck_assert_ptr_null(err);
	char *t1 = slurp(p1), *t2 = slurp(p2);
	ck_assert_str_eq(t1, "ROLES AND TABLESPACES\n");
	ck_assert_str_eq(t2, "100000\n");
	free(t1);
	free(t2);
	unlink(p1);
	unlink(p2);
	tu_rmdir(dir);
	free(dir);
	free(p1);
	free(p2);
}
END_TEST

/* ARGV started in the background and waited for: it must fail; the message. */
static char *
background_error(char **argv, const char *what)
{
	struct st_cmd cmd = { argv, what };
	char *err = NULL;
	struct st_pipeline *p = st_proc_start(&cmd, 1, -1, no_env, 10000, &err);

	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(st_proc_wait(p, &err), -1);
	ck_assert_ptr_nonnull(err);
	return err;
}

/* A background command that fails is reported by st_proc_wait, named,
 * with its status and the end of its stderr. */
START_TEST(test_pipeline_background_failure)
{
	char *ls_argv[] = { "/bin/ls", "/nonexistent-standin-test", NULL };
	char *missing_argv[] = { "/nonexistent/program", NULL };
	char *err = background_error(ls_argv, "ls of nothing");

	ck_assert_msg(strstr(err, "ls of nothing failed (exit 2)") != NULL, "%s", err);
	ck_assert_msg(strstr(err, "nonexistent-standin-test") != NULL, "%s", err);
	free(err);
	err = background_error(missing_argv, "a missing program");
	ck_assert_msg(strstr(err, "a missing program failed (exit 127): cannot execute") != NULL,
		      "%s", err);
	free(err);
}
END_TEST

/* The deadline counts from the start: a background command still running
 * when it passes is killed, and the wait says so. */
START_TEST(test_pipeline_background_deadline)
{
	char *err = NULL;
	char *sleep_argv[] = { "/bin/sleep", "30", NULL };
	struct st_cmd cmd = { sleep_argv, "a slow command" };
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct st_pipeline *p = st_proc_start(&cmd, 1, -1, no_env, 300, &err);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(st_proc_wait(p, &err), -1);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ck_assert_msg(strstr(err, "a slow command: timed out") != NULL, "%s", err);
	ck_assert_int_lt(t1.tv_sec - t0.tv_sec, 20);
	free(err);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("dump");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_retention_month_batch);
	tcase_add_test(tc, test_retention_month_incremental);
	tcase_add_test(tc, test_retention_newest_always_kept);
	tcase_add_test(tc, test_retention_gaps_do_not_count);
	tcase_add_test(tc, test_week_starts_monday);
	tcase_add_test(tc, test_manifest_round_trip);
	tcase_add_test(tc, test_manifest_damage);
	tcase_add_test(tc, test_time_and_names);
	tcase_add_test(tc, test_sha256_file);
	tcase_add_test(tc, test_ldif_good);
	tcase_add_test(tc, test_ldif_bad);
	tcase_add_test(tc, test_pipeline_background_and_foreground);
	tcase_add_test(tc, test_pipeline_background_failure);
	tcase_add_test(tc, test_pipeline_background_deadline);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(suite());
}
