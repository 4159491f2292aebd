/*
 * standin-testd: the smallest daemon built on lib/daemon.c, for the tests of
 * the shared runtime (signals, reload, pidfile, status socket).  It has one
 * admin command, "fail TEXT", that sets its last error, and reports a fake
 * lag so standinctl's table can be checked.  Not installed.
 */
#include "config.h"

#include "lib/daemon.h"
#include "lib/log.h"

#include <stdlib.h>
#include <string.h>

struct testd {
	long counter;
};

static int
testd_start(struct st_daemon *d, char **error_r)
{
	(void)error_r;
	d->state = "idle";
	return 0;
}

static void
testd_status(struct st_daemon *d, json_t *obj)
{
	struct testd *t = d->priv;

	json_object_set_new(obj, "lag_seconds", json_real(0.25));
	json_object_set_new(obj, "lag_bytes", json_integer(42));
	json_object_set_new(obj, "counter", json_integer(t->counter));
	json_object_set_new(obj, "cluster_name_seen", json_string(d->conf->cluster_name));
}

static void
testd_metrics(struct st_daemon *d, struct st_buf *out)
{
	struct testd *t = d->priv;

	st_metric(out, "standin_testd_counter", "counter", "Commands received.", NULL,
		  (double)t->counter);
}

static void
cmd_fail(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct testd *t = d->priv;

	t->counter++;
	st_daemon_set_error(d, "%s", args);
	d->state = "failed";
	st_buf_puts(reply, "{\"ok\":true}\n");
}

static const struct st_ctl_command testd_commands[] = {
	{ "fail", ST_CTL_CHANGES, cmd_fail, "set the last error to the argument" },
	{ NULL, 0, NULL, NULL },
};

static struct st_daemon_ops testd_ops = {
	.program = "standin-testd",
	.summary = "test daemon for the shared runtime",
	.start = testd_start,
	.status = testd_status,
	.metrics = testd_metrics,
	.commands = testd_commands,
};

int
main(int argc, char **argv)
{
	struct testd t = { 0 };
	const char *as = getenv("STANDIN_TESTD_PROGRAM");

	/* Tests of standinctl status let it stand in for a real daemon's socket. */
	if (as != NULL && as[0] != '\0')
		testd_ops.program = as;
	return st_daemon_main(argc, argv, &testd_ops, &t);
}
