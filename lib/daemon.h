/*
 * daemon.h: the runtime every standin daemon shares.
 *
 * st_daemon_main() parses the common options, loads and validates the
 * configuration, finds this node, opens the log, writes the pidfile (locked,
 * so a second instance refuses to start), opens the status socket
 * RUN_DIR/PROGRAM.sock, installs the signal watchers (SIGTERM and SIGINT
 * stop cleanly, SIGHUP reloads the configuration), tells systemd READY=1
 * (Type=notify) and runs the libev loop.  Daemons stay in the foreground
 * unless given -D.
 *
 * Status contract: "status" answers one JSON object with at least
 *   program, version, node, pid, uptime_s, state, last_error
 * and, for replicators, lag_seconds and lag_bytes (null when unknown).
 * standinctl status reads these names.
 */
#ifndef STANDIN_DAEMON_H
#define STANDIN_DAEMON_H

#include <ev.h>
#include <jansson.h>
#include <stdbool.h>

#include "lib/conf.h"
#include "lib/ctl.h"
#include "lib/util.h"

struct st_daemon;

struct st_daemon_ops {
	const char *program;	/* "standin-pgrepl" */
	const char *summary;	/* one line for --help */

	/* After the loop, config and socket exist; -1 with *error_r stops (exit 1). */
	int (*start)(struct st_daemon *d, char **error_r);
	/* On SIGTERM/SIGINT, before the loop ends. */
	void (*stop)(struct st_daemon *d);
	/*
	 * SIGHUP with a valid new configuration.  Return 0 to take it (the
	 * runtime then frees the old one) or -1 with *error_r to keep the old.
	 * NULL: changes are taken as they are.
	 */
	int (*reload)(struct st_daemon *d, struct st_conf *new_conf, char **error_r);
	/* Add the daemon's fields (state, lag, ...) to the status object. */
	void (*status)(struct st_daemon *d, json_t *obj);
	/* Append Prometheus lines. */
	void (*metrics)(struct st_daemon *d, struct st_buf *out);
	/* Extra admin commands, {NULL}-terminated; may be NULL. */
	const struct st_ctl_command *commands;
};

struct st_daemon {
	const struct st_daemon_ops *ops;
	void *priv;			/* the daemon's own state */
	struct ev_loop *loop;
	struct st_conf *conf;
	const struct st_node *node;	/* this node, inside conf */
	char *node_name;
	char *config_path;
	char *pidfile;
	char *socket_path;
	long long started_ms;
	unsigned reloads, reload_errors;
	int exit_code;

	/* Set by the daemon: what "status" shows. */
	const char *state;		/* static string, e.g. "streaming" */
	char *last_error;		/* owned; set with st_daemon_set_error() */
};

int st_daemon_main(int argc, char **argv, const struct st_daemon_ops *ops, void *priv);

/* End the loop; main returns EXIT_CODE. */
void st_daemon_exit(struct st_daemon *d, int exit_code);

/* Record (and log) the last error shown by status; NULL clears it. */
void st_daemon_set_error(struct st_daemon *d, const char *fmt, ...) ST_PRINTF(2, 3);

/* Append a Prometheus metric with HELP and TYPE lines. */
void st_metric(struct st_buf *out, const char *name, const char *type, const char *help,
	       const char *labels, double value);
/* The same in two parts, for a metric with several label sets: the head once. */
void st_metric_head(struct st_buf *out, const char *name, const char *type, const char *help);
void st_metric_sample(struct st_buf *out, const char *name, const char *labels, double value);

#endif
