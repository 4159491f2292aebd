/*
 * proc.c: pipelines of external commands with a deadline.
 *
 * SIGCHLD is blocked while a pipeline runs and waited for with
 * sigtimedwait(), so the deadline needs no polling and no sleep.  All
 * commands share one new process group, killed as a whole (SIGTERM, then
 * SIGKILL five seconds later) at the deadline or when the caller's consumer
 * gives up.
 */
#include "config.h"

#include "dumpers/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/log.h"

#define STDERR_KEEP 4000
#define KILL_GRACE_MS 5000

char *
dump_find_program(const char *dir, const char *program)
{
	static const char *const dirs[] = { "/usr/bin", "/usr/sbin", "/bin", "/sbin" };
	char *path;

	if (dir != NULL) {
		path = xasprintf("%s/%s", dir, program);
		if (access(path, X_OK) == 0)
			return path;
		free(path);
	}
	for (size_t i = 0; i < ST_ARRAY_SIZE(dirs); i++) {
		path = xasprintf("%s/%s", dirs[i], program);
		if (access(path, X_OK) == 0)
			return path;
		free(path);
	}
	return NULL;
}

struct child {
	pid_t pid;
	int errfd;		/* memfd holding its stderr */
	int status;
	bool done;
};

static long long
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The last lines of a child's stderr, on one line ("; " between lines). */
static char *
child_stderr(int fd)
{
	struct stat sb;
	char buf[STDERR_KEEP + 1];
	off_t off = 0;
	ssize_t n;
	struct st_buf b;

	if (fstat(fd, &sb) < 0 || sb.st_size == 0)
		return xstrdup("");
	if (sb.st_size > STDERR_KEEP)
		off = sb.st_size - STDERR_KEEP;
	n = pread(fd, buf, STDERR_KEEP, off);
	if (n <= 0)
		return xstrdup("");
	buf[n] = '\0';
	st_buf_init(&b);
	for (char *line = buf, *next; line != NULL && *line; line = next) {
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		if (*line == '\0')
			continue;
		if (b.len > 0)
			st_buf_puts(&b, "; ");
		st_buf_puts(&b, line);
	}
	char *res = st_buf_steal(&b);

	st_buf_free(&b);
	return res;
}

static void
reap(struct child *ch, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (ch[i].done || ch[i].pid <= 0)
			continue;
		pid_t r = waitpid(ch[i].pid, &ch[i].status, WNOHANG);
		if (r == ch[i].pid)
			ch[i].done = true;
	}
}

static bool
all_done(const struct child *ch, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (ch[i].pid > 0 && !ch[i].done)
			return false;
	}
	return true;
}

/* Wait for every child until DEADLINE (monotonic ms); false on timeout. */
static bool
wait_children(struct child *ch, size_t n, const sigset_t *chld, long long deadline)
{
	for (;;) {
		reap(ch, n);
		if (all_done(ch, n))
			return true;
		long long left = deadline - mono_ms();
		if (left <= 0)
			return false;
		struct timespec ts = { .tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000 };
		(void)sigtimedwait(chld, NULL, &ts);
	}
}

static void
kill_group(pid_t pgid, struct child *ch, size_t n, const sigset_t *chld)
{
	if (pgid <= 0)
		return;
	kill(-pgid, SIGTERM);
	if (!wait_children(ch, n, chld, mono_ms() + KILL_GRACE_MS)) {
		kill(-pgid, SIGKILL);
		for (size_t i = 0; i < n; i++) {
			if (ch[i].pid > 0 && !ch[i].done && waitpid(ch[i].pid, &ch[i].status, 0) == ch[i].pid)
				ch[i].done = true;
		}
	}
}

static char *
describe_status(int status)
{
	if (WIFEXITED(status))
		return xasprintf("exit %d", WEXITSTATUS(status));
	if (WIFSIGNALED(status))
		return xasprintf("killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
	return xstrdup("unknown status");
}

int
dump_proc_run(const struct dump_cmd *cmds, size_t n, int out_fd, dump_consume_fn *consume,
	      void *ctx, char *const envp[], long timeout_ms, char **error_r)
{
	struct child *ch = xcalloc(n, sizeof(*ch));
	sigset_t chld, old;
	pid_t pgid = 0;
	int prev_read = -1, read_fd = -1, devnull = -1, ret = -1;
	long long deadline = mono_ms() + timeout_ms;
	char *consume_err = NULL;
	bool timed_out = false, consumer_failed = false;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &old);
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (devnull < 0) {
		st_set_error(error_r, "/dev/null: %s", strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		ch[i].errfd = -1;
	for (size_t i = 0; i < n; i++) {
		int p[2] = { -1, -1 }, in, out;
		bool last = i + 1 == n;

		ch[i].errfd = memfd_create("standin-dump-stderr", MFD_CLOEXEC);
		if (ch[i].errfd < 0) {
			st_set_error(error_r, "memfd_create: %s", strerror(errno));
			goto fail;
		}
		if (!last || consume != NULL) {
			if (pipe2(p, O_CLOEXEC) < 0) {
				st_set_error(error_r, "pipe: %s", strerror(errno));
				goto fail;
			}
		}
		in = prev_read >= 0 ? prev_read : devnull;
		out = p[1] >= 0 ? p[1] : (out_fd >= 0 ? out_fd : devnull);
		pid_t pid = fork();
		if (pid < 0) {
			st_set_error(error_r, "fork: %s", strerror(errno));
			if (p[0] >= 0) {
				close(p[0]);
				close(p[1]);
			}
			goto fail;
		}
		if (pid == 0) {
			setpgid(0, pgid);
			if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(ch[i].errfd, 2) < 0)
				_exit(127);
			sigprocmask(SIG_SETMASK, &old, NULL);
			signal(SIGPIPE, SIG_DFL);
			execve(cmds[i].argv[0], cmds[i].argv, envp);
			dprintf(2, "cannot execute %s: %s\n", cmds[i].argv[0], strerror(errno));
			_exit(127);
		}
		setpgid(pid, pgid);
		if (pgid == 0)
			pgid = pid;
		ch[i].pid = pid;
		if (prev_read >= 0)
			close(prev_read);
		prev_read = -1;
		if (p[1] >= 0)
			close(p[1]);
		if (!last)
			prev_read = p[0];
		else if (consume != NULL)
			read_fd = p[0];
	}

	if (read_fd >= 0) {
		char *buf = xmalloc(1 << 16);
		for (;;) {
			long long left = deadline - mono_ms();
			if (left <= 0) {
				timed_out = true;
				break;
			}
			struct pollfd pfd = { .fd = read_fd, .events = POLLIN };
			int pr = poll(&pfd, 1, left > 1000 ? 1000 : (int)left);
			if (pr < 0 && errno != EINTR) {
				consume_err = xasprintf("poll: %s", strerror(errno));
				consumer_failed = true;
				break;
			}
			if (pr <= 0)
				continue;
			ssize_t r = read(read_fd, buf, 1 << 16);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0) {
				consume_err = xasprintf("read: %s", strerror(errno));
				consumer_failed = true;
				break;
			}
			if (r == 0)
				break;
			if (consume(ctx, buf, (size_t)r, &consume_err) < 0) {
				consumer_failed = true;
				break;
			}
		}
		free(buf);
		if (timed_out || consumer_failed) {
			kill_group(pgid, ch, n, &chld);
		} else if (consume(ctx, NULL, 0, &consume_err) < 0) {
			consumer_failed = true;
		}
		close(read_fd);
		read_fd = -1;
	}
	if (!timed_out && !wait_children(ch, n, &chld, deadline)) {
		timed_out = true;
		kill_group(pgid, ch, n, &chld);
	}

	if (timed_out) {
		st_set_error(error_r, "%s: timed out after %ld s (dump timeout), killed", cmds[0].what,
			     timeout_ms / 1000);
		goto out;
	}
	/* Report the first command that failed by itself.  A command killed
	 * by SIGPIPE stopped because a later one stopped reading: that one
	 * failed (and is reported), or it had read all it needed (pg_restore
	 * --list reads only the table of contents). */
	for (int pass = 0; pass < 1; pass++) {
		for (size_t i = 0; i < n; i++) {
			int st = ch[i].status;
			if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
				continue;
			if (i + 1 < n && WIFSIGNALED(st) && WTERMSIG(st) == SIGPIPE)
				continue;
			char *how = describe_status(st), *err = child_stderr(ch[i].errfd);
			st_set_error(error_r, "%s failed (%s)%s%s", cmds[i].what, how,
				     *err ? ": " : "", err);
			free(how);
			free(err);
			goto out;
		}
	}
	if (consumer_failed) {
		st_set_error(error_r, "%s: %s", cmds[n - 1].what, consume_err ? consume_err : "failed");
		goto out;
	}
	ret = 0;
	goto out;
fail:
	if (prev_read >= 0)
		close(prev_read);
	if (read_fd >= 0)
		close(read_fd);
	kill_group(pgid, ch, n, &chld);
out:
	for (size_t i = 0; i < n; i++) {
		if (ch[i].errfd >= 0)
			close(ch[i].errfd);
	}
	if (devnull >= 0)
		close(devnull);
	free(consume_err);
	free(ch);
	sigprocmask(SIG_SETMASK, &old, NULL);
	return ret;
}
