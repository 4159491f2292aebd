/*
 * test-util: secret files, log quoting, the status socket server and client.
 */
#include "config.h"

#include "lib/ctl.h"
#include "lib/log.h"
#include "tests/unit/testutil.h"

#include <ev.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

static char *tmpdir;

static void
setup(void)
{
	tmpdir = tu_mkdtemp();
}

static void
teardown(void)
{
	tu_rmdir(tmpdir);
	free(tmpdir);
}

START_TEST(test_secret_read)
{
	char *path = xasprintf("%s/s", tmpdir), *secret = NULL, *error = NULL;

	tu_write(path, "pass word\n", 0600);
	ck_assert_int_eq(st_secret_read(path, &secret, &error), 0);
	ck_assert_str_eq(secret, "pass word");
	st_secret_free(&secret);
	ck_assert_ptr_null(secret);

	tu_write(path, "crlf\r\n", 0400);
	ck_assert_int_eq(st_secret_read(path, &secret, &error), 0);
	ck_assert_str_eq(secret, "crlf");
	st_secret_free(&secret);

	tu_write(path, "x", 0640);
	ck_assert_int_eq(st_secret_read(path, &secret, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "(mode 0640); run: chmod 600"));

	tu_write(path, "\n", 0600);
	ck_assert_int_eq(st_secret_read(path, &secret, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "is empty"));

	FILE *f = fopen(path, "w");
	fwrite("a\0b", 1, 3, f);
	fclose(f);
	ck_assert_int_eq(st_secret_read(path, &secret, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "contains a NUL byte"));

	ck_assert_int_eq(st_secret_read(tmpdir, &secret, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "not a regular file"));

	char *link = xasprintf("%s/link", tmpdir);
	tu_write(path, "x", 0600);
	ck_assert_int_eq(symlink(path, link), 0);
	ck_assert_int_eq(st_secret_read(link, &secret, &error), -1);	/* O_NOFOLLOW */
	ck_assert_ptr_nonnull(strstr(error, "is a symbolic link (not followed"));
	/* The configuration check says the same as the reader. */
	ck_assert_int_eq(st_secret_check(link, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "is a symbolic link (not followed"));
	ck_assert_int_eq(st_secret_check(path, &error), 0);
	free(link);
	/* A FIFO in the file's place is refused at once, not waited on for a writer. */
	char *fifo = xasprintf("%s/fifo", tmpdir);
	ck_assert_int_eq(mkfifo(fifo, 0600), 0);
	ck_assert_int_eq(st_secret_read(fifo, &secret, &error), -1);
	ck_assert_ptr_nonnull(strstr(error, "not a regular file"));
	ck_assert_int_eq(st_secret_check(fifo, &error), -1);
	unlink(fifo);
	free(fifo);
	free(error);
	free(path);
}
END_TEST

START_TEST(test_quote)
{
	ck_assert_str_eq(st_q("plain"), "plain");
	ck_assert_str_eq(st_q("two words"), "\"two words\"");
	ck_assert_str_eq(st_q("a\"b\\c"), "\"a\\\"b\\\\c\"");
	ck_assert_str_eq(st_q("line\nbreak"), "\"line\\x0abreak\"");
	ck_assert_str_eq(st_q(""), "\"\"");
	ck_assert_str_eq(st_q("k=v"), "\"k=v\"");
	ck_assert_str_eq(st_q(NULL), "(null)");
	ck_assert_str_eq(st_q("caf\xc3\xa9"), "\"caf\xc3\xa9\"");
	char big[2000];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ck_assert_uint_lt(strlen(st_q(big)), 512);
}
END_TEST

START_TEST(test_buf)
{
	struct st_buf b;

	st_buf_init(&b);
	for (int i = 0; i < 1000; i++)
		st_buf_printf(&b, "%d,", i);
	ck_assert_uint_eq(b.len, strlen(b.data));
	ck_assert(st_str_has_prefix(b.data, "0,1,2,"));
	char *s = st_buf_steal(&b);
	ck_assert_uint_eq(b.len, 0);
	free(s);
	st_buf_free(&b);
}
END_TEST

/* The status socket: a server on a libev loop, queried from another thread. */
struct ctl_test {
	struct ev_loop *loop;
	ev_async done;
	char *path;
	char *replies[6];
	char *errors[6];
};

static void
echo_cmd(void *ctx, const char *args, struct st_buf *reply)
{
	(void)ctx;
	st_buf_printf(reply, "{\"args\":\"%s\"}\n", args);
}

static void *
client_thread(void *arg)
{
	struct ctl_test *t = arg;

	(void)!st_ctl_query(t->path, "echo  hello world", 5000, &t->replies[0], &t->errors[0]);
	(void)!st_ctl_query(t->path, "nonsense", 5000, &t->replies[1], &t->errors[1]);
	(void)!st_ctl_query(t->path, "help", 5000, &t->replies[2], &t->errors[2]);
	/* A line longer than the limit gets an error, not a crash. */
	char *huge = xmalloc(5000);
	memset(huge, 'x', 4999);
	huge[4999] = '\0';
	(void)!st_ctl_query(t->path, huge, 5000, &t->replies[3], &t->errors[3]);
	free(huge);
	/* A client that connects and says nothing does not block the others. */
	int idle = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", t->path);
	ck_assert_int_eq(connect(idle, (struct sockaddr *)&sun, sizeof(sun)), 0);
	(void)!st_ctl_query(t->path, "echo x", 5000, &t->replies[4], &t->errors[4]);
	close(idle);
	ev_async_send(t->loop, &t->done);
	return NULL;
}

static void
done_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(loop, EVBREAK_ALL);
}

START_TEST(test_ctl_server)
{
	static const struct st_ctl_command cmds[] = {
		{ "echo", ST_CTL_CHANGES, echo_cmd, "say it back" },
		{ "look", ST_CTL_READ_ONLY, echo_cmd, "say it back, read-only" },
		{ NULL, 0, NULL, NULL },
	};
	struct ctl_test t = { 0 };
	struct st_ctl_server *srv;
	char *error = NULL, *reply = NULL;
	pthread_t th;
	struct stat sb;

	t.loop = ev_loop_new(EVFLAG_AUTO);
	t.path = xasprintf("%s/d.sock", tmpdir);
	srv = st_ctl_listen(t.loop, t.path, NULL, cmds, NULL, &error);
	ck_assert_msg(srv != NULL, "%s", error);
	ck_assert_int_eq(stat(t.path, &sb), 0);
	ck_assert_int_eq(sb.st_mode & 0777, 0660);

	/* A second server on a live socket is refused. */
	struct st_ctl_server *srv2 = st_ctl_listen(t.loop, t.path, NULL, cmds, NULL, &error);
	ck_assert_ptr_null(srv2);
	ck_assert_ptr_nonnull(strstr(error, "in use by another running daemon"));

	ev_async_init(&t.done, done_cb);
	ev_async_start(t.loop, &t.done);
	pthread_create(&th, NULL, client_thread, &t);
	ev_run(t.loop, 0);
	pthread_join(th, NULL);

	ck_assert_msg(t.replies[0] != NULL, "%s", t.errors[0]);
	ck_assert_str_eq(t.replies[0], "{\"args\":\"hello world\"}\n");
	ck_assert_str_eq(t.replies[1], "{\"ok\":false,\"error\":\"unknown command; try help\"}\n");
	/* This process is root or the daemon's own user: the changing echo ran
	 * (replies[0]).  Help puts each command under its class and says who
	 * may run the changing ones. */
	const char *help = "read-only, for every client the socket lets in:\n"
			   "  help: this list, each command under its class\n"
			   "  look: say it back, read-only\n"
			   "changing, only for root";
	const char *tail = ":\n  echo: say it back\n";
	size_t len = strlen(t.replies[2]);
	ck_assert_msg(strncmp(t.replies[2], help, strlen(help)) == 0, "%s", t.replies[2]);
	ck_assert_msg(len > strlen(tail) && strcmp(t.replies[2] + len - strlen(tail), tail) == 0,
		      "%s", t.replies[2]);
	if (geteuid() == 0)
		ck_assert_int_eq(len, strlen(help) + strlen(tail));
	ck_assert_msg(t.replies[3] != NULL, "%s", t.errors[3]);
	ck_assert_str_eq(t.replies[3], "{\"ok\":false,\"error\":\"command line too long\"}\n");
	ck_assert_str_eq(t.replies[4], "{\"args\":\"x\"}\n");
	for (int i = 0; i < 6; i++) {
		free(t.replies[i]);
		free(t.errors[i]);
	}

	st_ctl_close(&srv);
	ck_assert_int_eq(stat(t.path, &sb), -1);	/* socket file removed */
	ck_assert_int_eq(st_ctl_query(t.path, "status", 1000, &reply, &error), -1);
	ck_assert_str_eq(error, "no socket");

	/* A stale socket file (nobody listening) is reported, then replaced. */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", t.path);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	close(fd);
	ck_assert_int_eq(st_ctl_query(t.path, "status", 1000, &reply, &error), -1);
	ck_assert_str_eq(error, "connection refused (stale socket)");
	srv = st_ctl_listen(t.loop, t.path, NULL, cmds, NULL, &error);
	ck_assert_msg(srv != NULL, "%s", error);
	st_ctl_close(&srv);

	/* A path that is not a socket is never removed. */
	tu_write(t.path, "precious", 0644);
	srv = st_ctl_listen(t.loop, t.path, NULL, cmds, NULL, &error);
	ck_assert_ptr_null(srv);
	ck_assert_ptr_nonnull(strstr(error, "exists and is not a socket"));
	ck_assert_int_eq(stat(t.path, &sb), 0);

	free(error);
	free(t.path);
	ev_loop_destroy(t.loop);
}
END_TEST

/* The rule of the admin socket, as a table: who may run what. */
START_TEST(test_ctl_permitted)
{
	static const struct {
		enum st_ctl_access access;
		uid_t peer, self;
		bool permitted;
	} cases[] = {
		{ ST_CTL_READ_ONLY, 1001, 998, true },	/* a monitoring user: status */
		{ ST_CTL_READ_ONLY, 0, 998, true },
		{ ST_CTL_READ_ONLY, 998, 998, true },
		{ ST_CTL_CHANGES, 1001, 998, false },	/* a monitoring user: switch */
		{ ST_CTL_CHANGES, 65534, 998, false },
		{ ST_CTL_CHANGES, 0, 998, true },	/* root */
		{ ST_CTL_CHANGES, 998, 998, true },	/* the standin user itself */
		{ ST_CTL_CHANGES, 0, 0, true },		/* a daemon run as root */
		{ ST_CTL_CHANGES, 998, 0, false },	/* ...is changed by root only */
		{ ST_CTL_CHANGES, (uid_t)-1, 998, false },
		{ ST_CTL_UNCLASSED, 0, 0, false },	/* no class: nobody */
		{ (enum st_ctl_access)7, 0, 0, false },
	};

	for (size_t i = 0; i < ST_ARRAY_SIZE(cases); i++)
		ck_assert_msg(st_ctl_permitted(cases[i].access, cases[i].peer, cases[i].self) ==
			      cases[i].permitted, "case %zu", i);
}
END_TEST

/* A command table with an entry that says no class, or a name twice, is
 * refused before anything listens. */
START_TEST(test_ctl_table_checked)
{
	static const struct st_ctl_command unclassed[] = {
		{ "status", ST_CTL_READ_ONLY, echo_cmd, "fine" },
		{ "switch", 0, echo_cmd, "forgot its class" },
		{ NULL, 0, NULL, NULL },
	};
	static const struct st_ctl_command twice[] = {
		{ "drop", ST_CTL_CHANGES, echo_cmd, "one" },
		{ "drop", ST_CTL_READ_ONLY, echo_cmd, "the same, read-only" },
		{ NULL, 0, NULL, NULL },
	};
	static const struct st_ctl_command help[] = {
		{ "help", ST_CTL_CHANGES, echo_cmd, "the built-in one's name" },
		{ NULL, 0, NULL, NULL },
	};
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	char *path = xasprintf("%s/t.sock", tmpdir), *error = NULL;
	struct stat sb;

	ck_assert_ptr_null(st_ctl_listen(loop, path, NULL, unclassed, NULL, &error));
	ck_assert_str_eq(error, "admin command switch is neither read-only nor changing "
			 "(its entry in the command table lacks the class)");
	free(error);
	error = NULL;
	ck_assert_ptr_null(st_ctl_listen(loop, path, NULL, twice, NULL, &error));
	ck_assert_ptr_nonnull(strstr(error, "drop is in the command table twice"));
	free(error);
	error = NULL;
	ck_assert_ptr_null(st_ctl_listen(loop, path, NULL, help, NULL, &error));
	ck_assert_ptr_nonnull(strstr(error, "help is in the command table twice, or is the "
				     "built-in help"));
	free(error);
	ck_assert_int_eq(stat(path, &sb), -1);	/* no socket was made */
	free(path);
	ev_loop_destroy(loop);
}
END_TEST

static Suite *
util_suite(void)
{
	Suite *s = suite_create("util");
	TCase *tc = tcase_create("util");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_secret_read);
	tcase_add_test(tc, test_quote);
	tcase_add_test(tc, test_buf);
	tcase_add_test(tc, test_ctl_server);
	tcase_add_test(tc, test_ctl_permitted);
	tcase_add_test(tc, test_ctl_table_checked);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return tu_run(util_suite());
}
