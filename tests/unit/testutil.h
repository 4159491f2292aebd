/*
 * testutil.h: helpers shared by the Check unit tests.
 */
#ifndef STANDIN_TESTUTIL_H
#define STANDIN_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/util.h"

/* A fresh private directory under $TMPDIR, removed by tu_rmdir(). */
static inline char *
tu_mkdtemp(void)
{
	const char *tmp = getenv("TMPDIR");
	char *dir = xasprintf("%s/standin-test-XXXXXX", tmp ? tmp : "/tmp");

	ck_assert_ptr_nonnull(mkdtemp(dir));
	return dir;
}

static inline void
tu_write(const char *path, const char *data, mode_t mode)
{
	FILE *f = fopen(path, "w");

	ck_assert_msg(f != NULL, "cannot write %s", path);
	fputs(data, f);
	fclose(f);
	ck_assert_int_eq(chmod(path, mode), 0);
}

static inline void
tu_rmdir(const char *dir)
{
	char *cmd[] = { "rm", "-rf", (char *)dir, NULL };
	pid_t pid = fork();

	if (pid == 0) {
		execvp("rm", cmd);
		_exit(127);
	}
	int status;
	waitpid(pid, &status, 0);
}

/* Run the suite; exit status 0 when every test passed. */
static inline int
tu_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
