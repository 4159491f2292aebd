/*
 * proc.h: run external commands (pg_dump, pg_restore, slapcat, zstd... for
 * the dumps and the initial sync) with execve and an argv, never a shell,
 * as one pipeline in a process group of its own, with a deadline after which
 * the whole group is killed.  Usable from any thread of a daemon.
 *
 * Each command's stderr is kept (in memory, the last lines) so a failure is
 * reported with the command's own words.
 */
#ifndef STANDIN_PROC_H
#define STANDIN_PROC_H

#include <stddef.h>
#include <sys/types.h>

#include "lib/util.h"

struct st_cmd {
	char **argv;		/* argv[0] is an absolute path */
	const char *what;	/* for messages, e.g. "pg_dump of groupware on node b" */
};

/* Called with the last command's output as it comes; return -1 to stop. */
typedef int st_consume_fn(void *ctx, const char *data, size_t len, char **error_r);

/*
 * Run CMDS[0] | CMDS[1] | ... with the environment ENVP.  The first reads
 * /dev/null; the last writes to OUT_FD (/dev/null when -1), or when CONSUME
 * is not NULL to a pipe read by CONSUME.  Returns 0 when every command
 * exited 0, otherwise -1 with a message naming the command that failed, how,
 * and the end of its stderr.  After TIMEOUT_MS every command is killed
 * (TIMEOUT_MS <= 0: no deadline).
 */
int st_proc_run(const struct st_cmd *cmds, size_t n, int out_fd, st_consume_fn *consume,
		  void *ctx, char *const envp[], long timeout_ms, char **error_r) ST_WARN_UNUSED;

/*
 * The same pipeline (its output to OUT_FD, or /dev/null when -1) started in
 * the background, so the dump can do something else meanwhile; NULL with a
 * message when it could not be started.  SIGCHLD stays blocked until
 * st_proc_wait(), which must be called (in the reverse order of the
 * starts when several run), waits for the end (the deadline counts from
 * the start), frees the pipeline and returns like st_proc_run().
 */
struct st_pipeline;
struct st_pipeline *st_proc_start(const struct st_cmd *cmds, size_t n, int out_fd,
				      char *const envp[], long timeout_ms, char **error_r);
int st_proc_wait(struct st_pipeline *p, char **error_r) ST_WARN_UNUSED;

/* The absolute path of PROGRAM in DIR (when not NULL), else in /usr/bin,
 * /usr/sbin, /bin, /sbin; NULL when not found. */
char *st_find_program(const char *dir, const char *program);

#endif
