/*
 * test-cstate: the durable writer and the cluster state file: round trip,
 * torn and altered files refused, crash safety under SIGKILL, locking.
 */
#include "config.h"

#include "lib/cstate.h"
#include "lib/durable.h"
#include "tests/unit/testutil.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

static char *tmpdir;
static struct st_conf *conf;

static void
setup(void)
{
	static const char text[] =
		"[cluster]\nname = demo\n"
		"[node a]\naddress = 127.0.0.1\n"
		"[node b]\naddress = 127.0.0.2\n"
		"[node c]\naddress = 127.0.0.3\n"
		"[pg]\nendpoint.a = h:1\nendpoint.b = i:1\nendpoint.c = j:1\ndbname = d\nuser = u\n";
	char *errors = NULL;

	tmpdir = tu_mkdtemp();
	conf = st_conf_parse("t.conf", text, sizeof(text) - 1, &errors);
	ck_assert_msg(conf != NULL, "%s", errors);
}

static void
teardown(void)
{
	st_conf_free(&conf);
	tu_rmdir(tmpdir);
	free(tmpdir);
}

START_TEST(test_round_trip)
{
	char *path = xasprintf("%s/cluster.state", tmpdir), *error = NULL;
	struct st_cstate st, back;

	st_cstate_init(&st, conf, "b");
	ck_assert_uint_eq(st.epoch, 1);
	ck_assert_uint_eq(st.n_edges[ST_SVC_PG], 2);
	ck_assert_uint_eq(st.n_edges[ST_SVC_LDAP], 0);
	ck_assert_str_eq(st.edges[ST_SVC_PG][0].source, "b");
	ck_assert_str_eq(st.edges[ST_SVC_PG][0].target, "a");
	ck_assert_str_eq(st.edges[ST_SVC_PG][1].target, "c");
	st.epoch = 12345678901ULL;
	ck_assert_int_eq(st_cstate_save(path, &st, &error), 0);
	ck_assert_int_eq(st_cstate_load(path, &back, &error), 0);
	ck_assert_uint_eq(back.epoch, st.epoch);
	ck_assert_str_eq(back.master, "b");
	ck_assert_str_eq(back.cluster, "demo");
	ck_assert_uint_eq(back.n_edges[ST_SVC_PG], 2);
	ck_assert_str_eq(back.edges[ST_SVC_PG][1].source, "b");
	ck_assert_str_eq(back.edges[ST_SVC_PG][1].target, "c");
	ck_assert_int_eq(back.updated, st.updated);
	ck_assert_int_eq(st_cstate_check(&back, conf, &error), 0);
	ck_assert_str_eq(st_cstate_role(&back, "b"), "master");
	ck_assert_str_eq(st_cstate_role(&back, "a"), "standby");

	struct stat sb;
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 0777, 0644);
	free(path);
	free(error);
}
END_TEST

START_TEST(test_missing_file)
{
	char *path = xasprintf("%s/none.state", tmpdir), *error = NULL;
	struct st_cstate st;

	ck_assert_int_eq(st_cstate_load(path, &st, &error), 1);
	ck_assert_ptr_null(error);
	free(path);
}
END_TEST

/* Every strict prefix of a good file is refused: a torn write is never read. */
START_TEST(test_every_truncation_refused)
{
	struct st_cstate st, back;
	struct st_buf b;
	char *error = NULL;

	st_cstate_init(&st, conf, "a");
	st_buf_init(&b);
	st_cstate_format(&st, &b);
	for (size_t len = 0; len < b.len; len++) {
		int rc = st_cstate_parse("s", b.data, len, &back, &error);
		ck_assert_msg(rc == -1, "a file torn at %zu of %zu bytes was accepted", len, b.len);
	}
	ck_assert_int_eq(st_cstate_parse("s", b.data, b.len, &back, &error), 0);
	st_buf_free(&b);
	free(error);
}
END_TEST

/* Any single changed byte is caught. */
START_TEST(test_every_alteration_refused)
{
	struct st_cstate st, back;
	struct st_buf b;
	char *error = NULL;

	st_cstate_init(&st, conf, "a");
	st.epoch = 7;
	st_buf_init(&b);
	st_cstate_format(&st, &b);
	for (size_t i = 0; i < b.len; i++) {
		char saved = b.data[i];
		b.data[i] = saved == '7' ? '8' : (char)(saved ^ 0x01);
		int rc = st_cstate_parse("s", b.data, b.len, &back, &error);
		ck_assert_msg(rc == -1, "a change of byte %zu was accepted", i);
		b.data[i] = saved;
	}
	ck_assert_ptr_nonnull(error);
	st_buf_free(&b);
	free(error);
}
END_TEST

START_TEST(test_messages)
{
	struct st_cstate back;
	char *error = NULL;
	static const char no_ck[] = "version = 1\nepoch = 1\n";

	ck_assert_int_eq(st_cstate_parse("s", no_ck, sizeof(no_ck) - 1, &back, &error), -1);
	ck_assert_str_eq(error, "s: no checksum line: the file is torn or was not written by standin");

	struct st_cstate st;
	struct st_buf b;
	st_cstate_init(&st, conf, "a");
	st_buf_init(&b);
	st_cstate_format(&st, &b);
	char *edited = xstrdup(b.data);
	*strstr(edited, "epoch = 1") = ' ';
	ck_assert_int_eq(st_cstate_parse("s", edited, strlen(edited), &back, &error), -1);
	ck_assert_str_eq(error, "s: checksum mismatch: the file is damaged or was edited");
	free(edited);
	st_buf_free(&b);

	/* A state naming a node the configuration does not know is reported. */
	st_cstate_init(&st, conf, "a");
	snprintf(st.master, sizeof(st.master), "zz");
	ck_assert_int_eq(st_cstate_check(&st, conf, &error), -1);
	ck_assert_str_eq(error, "cluster state names master \"zz\", which is not a node of t.conf");
	free(error);
}
END_TEST

/* A leftover temporary file from a crashed writer changes nothing. */
START_TEST(test_leftover_temp_file)
{
	char *path = xasprintf("%s/cluster.state", tmpdir), *error = NULL;
	char *tmp = xasprintf("%s/cluster.state.tmp.AbCdEf", tmpdir);
	struct st_cstate st, back;

	st_cstate_init(&st, conf, "a");
	st.epoch = 4;
	ck_assert_int_eq(st_cstate_save(path, &st, &error), 0);
	tu_write(tmp, "version = 1\nepoch = 5\nmas", 0644);
	ck_assert_int_eq(st_cstate_load(path, &back, &error), 0);
	ck_assert_uint_eq(back.epoch, 4);
	st.epoch = 5;
	ck_assert_int_eq(st_cstate_save(path, &st, &error), 0);
	ck_assert_int_eq(st_cstate_load(path, &back, &error), 0);
	ck_assert_uint_eq(back.epoch, 5);
	free(tmp);
	free(path);
	free(error);
}
END_TEST

/*
 * A writer killed with SIGKILL at random moments never leaves a state that
 * does not load, and the epoch read never goes backwards.
 */
START_TEST(test_kill9_during_writes)
{
	char *path = xasprintf("%s/cluster.state", tmpdir), *error = NULL;
	struct st_cstate st, back;
	uint64_t last = 1;

	st_cstate_init(&st, conf, "a");
	ck_assert_int_eq(st_cstate_save(path, &st, &error), 0);
	srand((unsigned)time(NULL));
	for (int round = 0; round < 40; round++) {
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			struct st_cstate w;
			char *err = NULL;
			if (st_cstate_load(path, &w, &err) != 0)
				_exit(3);
			for (;;) {
				w.epoch++;
				if (st_cstate_save(path, &w, &err) < 0)
					_exit(4);
			}
		}
		struct timespec ts = { 0, (rand() % 20000) * 1000L };
		nanosleep(&ts, NULL);	/* a random moment to crash at, not synchronisation */
		kill(pid, SIGKILL);
		int status;
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		ck_assert_msg(WIFSIGNALED(status), "writer exited by itself (%d)", WEXITSTATUS(status));
		ck_assert_msg(st_cstate_load(path, &back, &error) == 0, "round %d: %s", round, error);
		ck_assert_uint_ge(back.epoch, last);
		last = back.epoch;
	}
	ck_assert_uint_gt(last, 1);
	free(path);
	free(error);
}
END_TEST

START_TEST(test_lock)
{
	char *path = xasprintf("%s/cluster.state", tmpdir), *error = NULL;
	int fd1, fd2;

	fd1 = st_cstate_lock(path, false, &error);
	ck_assert_int_ge(fd1, 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* flock is per open file: another process must be refused. */
		char *err = NULL;
		int fd = st_cstate_lock(path, false, &err);
		_exit(fd < 0 && strstr(err, "another standin command") != NULL ? 0 : 1);
	}
	int status;
	waitpid(pid, &status, 0);
	ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(fd1);
	fd2 = st_cstate_lock(path, false, &error);
	ck_assert_int_ge(fd2, 0);
	close(fd2);
	free(path);
	free(error);
}
END_TEST

START_TEST(test_durable_write_errors)
{
	char *error = NULL;

	ck_assert_int_eq(st_durable_write("/nonexistent/dir/file", "x", 1, 0600, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "cannot create temporary file for /nonexistent/dir/file"));
	free(error);
	error = NULL;

	char *path = xasprintf("%s/f", tmpdir), *data = NULL;
	size_t len;
	ck_assert_int_eq(st_durable_write(path, "hello", 5, 0600, &error), 0);
	ck_assert_int_eq(st_read_file(path, 100, &data, &len, &error), 0);
	ck_assert_str_eq(data, "hello");
	free(data);
	ck_assert_int_eq(st_read_file(path, 3, &data, &len, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "larger than 3 bytes"));
	/* Nothing but the file itself is left in the directory. */
	DIR *d = opendir(tmpdir);
	struct dirent *de;
	int n = 0;
	while ((de = readdir(d)) != NULL)
		n += de->d_name[0] != '.';
	closedir(d);
	ck_assert_int_eq(n, 1);
	free(path);
	free(error);
}
END_TEST

/* A file written in pieces: nothing at PATH until the commit, no
 * temporary file left after an abort or a commit. */
START_TEST(test_durable_pieces)
{
	struct st_durable_file f;
	char *error = NULL, *path = xasprintf("%s/pieces", tmpdir), *data = NULL;
	size_t len;

	ck_assert_int_eq(st_durable_create(&f, "/nonexistent/dir/file", 0600, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "cannot create temporary file for /nonexistent/dir/file"));
	ck_assert_int_eq(st_durable_create(&f, path, 0640, &error), 0);
	ck_assert_int_eq(write(f.fd, "discarded", 9), 9);
	st_durable_abort(&f);
	ck_assert_int_eq(f.fd, -1);
	ck_assert_int_eq(access(path, F_OK), -1);

	ck_assert_int_eq(st_durable_create(&f, path, 0640, &error), 0);
	ck_assert_int_eq(write(f.fd, "hello, world", 12), 12);
	ck_assert_int_eq(ftruncate(f.fd, 5), 0);
	ck_assert_int_eq(pwrite(f.fd, "J", 1, 0), 1);
	ck_assert_int_eq(access(path, F_OK), -1);
	ck_assert_int_eq(st_durable_commit(&f, &error), 0);
	ck_assert_int_eq(st_read_file(path, 100, &data, &len, &error), 0);
	ck_assert_str_eq(data, "Jello");
	struct stat sb;
	ck_assert_int_eq(stat(path, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 0777, 0640);
	DIR *d = opendir(tmpdir);
	struct dirent *de;
	while ((de = readdir(d)) != NULL)
		ck_assert_ptr_null(strstr(de->d_name, "pieces.tmp"));
	closedir(d);
	unlink(path);
	free(data);
	free(path);
	free(error);
}
END_TEST

/* The follower's one rule: first state taken, then only a higher epoch. */
START_TEST(test_follower_rule)
{
	struct st_node node = { .name = "a", .state_dir = tmpdir };
	struct st_cstate_follower f;
	struct st_cstate st;
	char *error = NULL;

	st_cstate_follower_init(&f, &node);
	/* No file yet: nothing taken, an error naming the file. */
	ck_assert(st_cstate_follow(&f));
	ck_assert(!f.valid);
	ck_assert_ptr_nonnull(strstr(f.error, "cluster.state does not exist"));
	ck_assert(!st_cstate_follow(&f));	/* the same error is no change */

	/* The first state is taken whatever its epoch. */
	st_cstate_init(&st, conf, "a");
	st.epoch = 5;
	ck_assert_int_eq(st_cstate_save(f.path, &st, &error), 0);
	ck_assert(st_cstate_follow(&f));
	ck_assert(f.valid && f.error == NULL && f.cs.epoch == 5);
	ck_assert_str_eq(st_cstate_source(&f.cs, ST_SVC_PG, "b"), "a");
	ck_assert_ptr_null(st_cstate_source(&f.cs, ST_SVC_PG, "a"));
	ck_assert_ptr_null(st_cstate_source(&f.cs, ST_SVC_LDAP, "b"));
	ck_assert(!st_cstate_follow(&f));

	/* Rewritten unchanged (a new time only): no change. */
	st.updated += 100;
	ck_assert_int_eq(st_cstate_save(f.path, &st, &error), 0);
	ck_assert(!st_cstate_follow(&f));

	/* An older epoch is refused, and so is the same epoch saying otherwise. */
	st_cstate_init(&st, conf, "b");
	st.epoch = 4;
	ck_assert_int_eq(st_cstate_save(f.path, &st, &error), 0);
	ck_assert(!st_cstate_follow(&f));
	ck_assert_str_eq(f.cs.master, "a");
	ck_assert(f.refused_valid && f.refused.epoch == 4);
	st.epoch = 5;
	ck_assert_int_eq(st_cstate_save(f.path, &st, &error), 0);
	ck_assert(!st_cstate_follow(&f));
	ck_assert_str_eq(f.cs.master, "a");
	ck_assert(f.refused.epoch == 5);

	/* A torn file or none at all keeps the state taken and says why. */
	ck_assert_int_eq(truncate(f.path, 10), 0);
	ck_assert(st_cstate_follow(&f));
	ck_assert(f.valid && f.cs.epoch == 5 && f.error != NULL);
	ck_assert_int_eq(unlink(f.path), 0);
	ck_assert(st_cstate_follow(&f));
	ck_assert(f.valid && f.cs.epoch == 5);
	ck_assert_ptr_nonnull(strstr(f.error, "does not exist"));

	/* A higher epoch is a change, and clears the error. */
	st.epoch = 6;
	ck_assert_int_eq(st_cstate_save(f.path, &st, &error), 0);
	ck_assert(st_cstate_follow(&f));
	ck_assert(f.valid && f.error == NULL && f.cs.epoch == 6 && !f.refused_valid);
	ck_assert_str_eq(f.cs.master, "b");
	ck_assert_str_eq(st_cstate_source(&f.cs, ST_SVC_PG, "c"), "b");
	st_cstate_follower_free(&f);
}
END_TEST

static void
watch_cb(struct st_cstate_follower *f, void *data)
{
	(void)f;
	ev_break((struct ev_loop *)data, EVBREAK_ALL);
}

static void
write_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct st_cstate *st = w->data;
	char *error = NULL;

	(void)loop;
	(void)revents;
	ck_assert_int_eq(st_cstate_save(getenv("CSTATE_TEST_PATH"), st, &error), 0);
}

static void
deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

/* st_cstate_watch() calls back when the file gets a higher epoch. */
START_TEST(test_follower_watch)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct st_node node = { .name = "b", .state_dir = tmpdir };
	struct st_cstate_follower f;
	struct st_cstate st;
	ev_timer writer, deadline;
	char *error = NULL;

	st_cstate_follower_init(&f, &node);
	st_cstate_init(&st, conf, "a");
	ck_assert_int_eq(st_cstate_save(f.path, &st, &error), 0);
	ck_assert(st_cstate_follow(&f) && f.cs.epoch == 1);
	setenv("CSTATE_TEST_PATH", f.path, 1);
	st_cstate_init(&st, conf, "c");
	st.epoch = 2;
	st_cstate_watch(&f, loop, 0.2, watch_cb, loop);
	ev_timer_init(&writer, write_cb, 0.05, 0.);
	writer.data = &st;
	ev_timer_start(loop, &writer);
	ev_timer_init(&deadline, deadline_cb, 10., 0.);
	ev_timer_start(loop, &deadline);
	ev_run(loop, 0);
	ck_assert_uint_eq(f.cs.epoch, 2);
	ck_assert_str_eq(f.cs.master, "c");
	ck_assert_str_eq(st_cstate_source(&f.cs, ST_SVC_PG, "b"), "c");
	st_cstate_follower_free(&f);
	ev_timer_stop(loop, &deadline);
	ev_loop_destroy(loop);
}
END_TEST

static Suite *
cstate_suite(void)
{
	Suite *s = suite_create("cstate");
	TCase *tc = tcase_create("cstate");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_missing_file);
	tcase_add_test(tc, test_every_truncation_refused);
	tcase_add_test(tc, test_every_alteration_refused);
	tcase_add_test(tc, test_messages);
	tcase_add_test(tc, test_leftover_temp_file);
	tcase_add_test(tc, test_kill9_during_writes);
	tcase_add_test(tc, test_lock);
	tcase_add_test(tc, test_durable_write_errors);
	tcase_add_test(tc, test_durable_pieces);
	tcase_add_test(tc, test_follower_rule);
	tcase_add_test(tc, test_follower_watch);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(cstate_suite());
}
