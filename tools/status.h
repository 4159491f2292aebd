/*
 * status.h: "standinctl status": ask every daemon of every node that can be
 * reached and print one table (or JSON).  Collecting and printing are apart,
 * so a controller can read the same figures.
 */
#ifndef STANDIN_TOOLS_STATUS_H
#define STANDIN_TOOLS_STATUS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "lib/conf.h"
#include "lib/cstate.h"

/* One daemon of one node. */
struct st_status_row {
	const char *node;		/* the configuration's name */
	char role[32];			/* as the node's cluster state says, or "unknown" */
	char epoch[24];
	const char *service;		/* "pg", "ldap", "imap"; "all" for the proxy */
	const char *daemon;		/* its program name */
	char *state;			/* its "state", or "not running", "unreachable"... */
	char *lag;			/* "1.2s/340B", or "-" */
	char *error;			/* its last_error, or why it cannot be asked; or NULL */
	json_t *detail;			/* its whole status object, or NULL */
};

struct st_status {
	struct st_status_row *rows;	/* node by node, services then the proxy */
	size_t n_rows;
	struct st_cstate states[ST_MAX_NODES];	/* each node's cluster state, */
	int state_rc[ST_MAX_NODES];		/* valid when 0 (st_cstate_load) */
	char *state_err[ST_MAX_NODES];
	char role[ST_MAX_NODES][32];		/* "master", "standby", "none", "unknown" */
	uint64_t max_epoch;			/* the highest epoch seen */
	/* With [cluster] etcd, every node but this one is seen through its
	 * member record (standin-failoverd), never its files or sockets. */
	bool from_etcd[ST_MAX_NODES];
	json_t *member[ST_MAX_NODES];		/* the record, or NULL */
};

/*
 * Ask every node's cluster state and daemons (never fails: a daemon that
 * is down is what status reports).  LOCAL is this node's name (or NULL):
 * with [cluster] etcd, the other nodes are read from their member records
 * in etcd; without it, from their state files and sockets (one machine).
 */
void st_status_collect(const struct st_conf *conf, const char *local, struct st_status *st);
void st_status_free(struct st_status *st);

/* The table (with warnings and the dumps' ages), or JSON. */
void st_status_print(const struct st_conf *conf, const struct st_status *st, bool json,
		     FILE *out);

/* The cluster state as one JSON object. */
void st_status_cstate_json(const struct st_cstate *st, struct st_buf *out);

#endif
