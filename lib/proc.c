/*
 * proc.c: pipelines of external commands with a deadline.
 *
 * SIGCHLD is blocked in the calling thread while a pipeline runs and waited
 * for with sigtimedwait(), a slice at a time: in a daemon another thread may
 * take the signal, so each slice ends with waitpid(WNOHANG) anyway.  All
 * commands share one new process group, killed as a whole (SIGTERM, then
 * SIGKILL five seconds later) at the deadline or when the caller's consumer
 * gives up.
 */
#include "config.h"

#include "lib/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
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
#define WAIT_SLICE_MS 200	/* at most this long between two waitpid() */
#define PIPE_BUF_BYTES (1 << 20)

char *
st_find_program(const char *dir, const char *program)
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
		if (left > WAIT_SLICE_MS)
			left = WAIT_SLICE_MS;
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

struct st_pipeline {
	struct child *ch;
	char **what;		/* each command's, for messages */
	size_t n;
	pid_t pgid;
	int read_fd;		/* the last command's stdout, or -1 */
	long long deadline;
	long timeout_ms;
	sigset_t chld, old;
};

static void
pipeline_free(struct st_pipeline *p)
{
	for (size_t i = 0; i < p->n; i++) {
		if (p->ch[i].errfd >= 0)
			close(p->ch[i].errfd);
		free(p->what[i]);
	}
	if (p->read_fd >= 0)
		close(p->read_fd);
	pthread_sigmask(SIG_SETMASK, &p->old, NULL);
	free(p->what);
	free(p->ch);
	free(p);
}

/* Fork and exec the commands of P; with a pipe on the last one's stdout
 * (P->read_fd) when TO_PIPE. */
static int
pipeline_spawn(struct st_pipeline *p, const struct st_cmd *cmds, int out_fd, bool to_pipe,
	       char *const envp[], char **error_r)
{
	int prev_read = -1, devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

	if (devnull < 0) {
		st_set_error(error_r, "/dev/null: %s", strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < p->n; i++) {
		int fds[2] = { -1, -1 }, in, out;
		bool last = i + 1 == p->n;

		p->ch[i].errfd = memfd_create("standin-stderr", MFD_CLOEXEC);
		if (p->ch[i].errfd < 0) {
			st_set_error(error_r, "memfd_create: %s", strerror(errno));
			goto fail;
		}
		if ((!last || to_pipe) && pipe2(fds, O_CLOEXEC) < 0) {
			st_set_error(error_r, "pipe: %s", strerror(errno));
			goto fail;
		}
		/* A dump streams hundreds of MB between two commands: a 1 MB
		 * pipe (the default limit of pipe-max-size) instead of 64 KB
		 * lets each side run longer per wake-up.  Best effort. */
		if (fds[1] >= 0)
			(void)fcntl(fds[1], F_SETPIPE_SZ, PIPE_BUF_BYTES);
		in = prev_read >= 0 ? prev_read : devnull;
		out = fds[1] >= 0 ? fds[1] : (out_fd >= 0 ? out_fd : devnull);
		pid_t pid = fork();
		if (pid < 0) {
			st_set_error(error_r, "fork: %s", strerror(errno));
			if (fds[0] >= 0) {
				close(fds[0]);
				close(fds[1]);
			}
			goto fail;
		}
		if (pid == 0) {
			setpgid(0, p->pgid);
			if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(p->ch[i].errfd, 2) < 0)
				_exit(127);
			pthread_sigmask(SIG_SETMASK, &p->old, NULL);
			signal(SIGPIPE, SIG_DFL);
			execve(cmds[i].argv[0], cmds[i].argv, envp);
			dprintf(2, "cannot execute %s: %s\n", cmds[i].argv[0], strerror(errno));
			_exit(127);
		}
		setpgid(pid, p->pgid);
		if (p->pgid == 0)
			p->pgid = pid;
		p->ch[i].pid = pid;
		if (prev_read >= 0)
			close(prev_read);
		prev_read = -1;
		if (fds[1] >= 0)
			close(fds[1]);
		if (!last)
			prev_read = fds[0];
		else if (to_pipe)
			p->read_fd = fds[0];
	}
	close(devnull);
	return 0;
fail:
	if (prev_read >= 0)
		close(prev_read);
	close(devnull);
	kill_group(p->pgid, p->ch, p->n, &p->chld);
	return -1;
}

static struct st_pipeline *
pipeline_start(const struct st_cmd *cmds, size_t n, int out_fd, bool to_pipe, char *const envp[],
	       long timeout_ms, char **error_r)
{
	struct st_pipeline *p = xcalloc(1, sizeof(*p));

	p->ch = xcalloc(n, sizeof(*p->ch));
	p->what = xcalloc(n, sizeof(*p->what));
	p->n = n;
	p->read_fd = -1;
	p->timeout_ms = timeout_ms;
	p->deadline = timeout_ms > 0 ? mono_ms() + timeout_ms : LLONG_MAX;
	for (size_t i = 0; i < n; i++) {
		p->ch[i].errfd = -1;
		p->what[i] = xstrdup(cmds[i].what);
	}
	sigemptyset(&p->chld);
	sigaddset(&p->chld, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, &p->chld, &p->old);
	if (pipeline_spawn(p, cmds, out_fd, to_pipe, envp, error_r) < 0) {
		pipeline_free(p);
		return NULL;
	}
	return p;
}

/* Feed the last command's output to CONSUME until its end; false when the
 * deadline passed or CONSUME (or reading) failed, with *ERR set then. */
static bool
pipeline_consume(struct st_pipeline *p, st_consume_fn *consume, void *ctx, bool *timed_out,
		 char **err)
{
	char *buf = xmalloc(1 << 16);
	bool ok = true;

	for (;;) {
		long long left = p->deadline - mono_ms();
		if (left <= 0) {
			*timed_out = true;
			ok = false;
			break;
		}
		struct pollfd pfd = { .fd = p->read_fd, .events = POLLIN };
		int pr = poll(&pfd, 1, left > 1000 ? 1000 : (int)left);
		if (pr < 0 && errno != EINTR) {
			*err = xasprintf("poll: %s", strerror(errno));
			ok = false;
			break;
		}
		if (pr <= 0)
			continue;
		ssize_t r = read(p->read_fd, buf, 1 << 16);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*err = xasprintf("read: %s", strerror(errno));
			ok = false;
			break;
		}
		if (r == 0)
			break;
		if (consume(ctx, buf, (size_t)r, err) < 0) {
			ok = false;
			break;
		}
	}
	free(buf);
	if (!ok)
		kill_group(p->pgid, p->ch, p->n, &p->chld);
	else if (consume(ctx, NULL, 0, err) < 0)
		ok = false;
	close(p->read_fd);
	p->read_fd = -1;
	return ok;
}

/* Wait for the end of P (the deadline kills it) and free it; 0 when every
 * command exited 0.  CONSUMER_ERR: the consumer failed with that message. */
static int
pipeline_finish(struct st_pipeline *p, bool timed_out, bool consumer_failed,
		const char *consumer_err, char **error_r)
{
	int ret = -1;

	if (!timed_out && !wait_children(p->ch, p->n, &p->chld, p->deadline)) {
		timed_out = true;
		kill_group(p->pgid, p->ch, p->n, &p->chld);
	}
	if (timed_out) {
		st_set_error(error_r, "%s: timed out after %ld s, killed", p->what[0],
			     p->timeout_ms / 1000);
		goto out;
	}
	/* Report the first command that failed by itself.  A command killed
	 * by SIGPIPE stopped because a later one stopped reading: that one
	 * failed (and is reported), or it had read all it needed (pg_restore
	 * --list reads only the table of contents). */
	for (size_t i = 0; i < p->n; i++) {
		int st = p->ch[i].status;
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
			continue;
		if (i + 1 < p->n && WIFSIGNALED(st) && WTERMSIG(st) == SIGPIPE)
			continue;
		char *how = describe_status(st), *err = child_stderr(p->ch[i].errfd);
		st_set_error(error_r, "%s failed (%s)%s%s", p->what[i], how, *err ? ": " : "", err);
		free(how);
		free(err);
		goto out;
	}
	if (consumer_failed) {
		st_set_error(error_r, "%s: %s", p->what[p->n - 1], consumer_err ? consumer_err : "failed");
		goto out;
	}
	ret = 0;
out:
	pipeline_free(p);
	return ret;
}

struct st_pipeline *
st_proc_start(const struct st_cmd *cmds, size_t n, int out_fd, char *const envp[],
		long timeout_ms, char **error_r)
{
	return pipeline_start(cmds, n, out_fd, false, envp, timeout_ms, error_r);
}

int
st_proc_wait(struct st_pipeline *p, char **error_r)
{
	return pipeline_finish(p, false, false, NULL, error_r);
}

int
st_proc_run(const struct st_cmd *cmds, size_t n, int out_fd, st_consume_fn *consume,
	      void *ctx, char *const envp[], long timeout_ms, char **error_r)
{
	struct st_pipeline *p = pipeline_start(cmds, n, out_fd, consume != NULL, envp, timeout_ms,
						 error_r);
	char *consume_err = NULL;
	bool timed_out = false, consumer_failed = false;
	int ret;

	if (p == NULL)
		return -1;
	if (consume != NULL && !pipeline_consume(p, consume, ctx, &timed_out, &consume_err))
		consumer_failed = !timed_out;
	ret = pipeline_finish(p, timed_out, consumer_failed, consume_err, error_r);
	free(consume_err);
	return ret;
}
