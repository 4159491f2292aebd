/*
 * cstate.h: the cluster state (doc/architecture.md, section 4): the epoch, the master
 * node and, per service, the replication directions (source -> target).
 *
 * Stored per node in STATE_DIR/cluster.state as "key = value" lines ending
 * with a SHA-256 checksum of everything before it, written with
 * st_durable_write().  A torn or altered file is refused, never half read.
 * Writers hold st_cstate_lock() so two state changes never interleave.
 */
#ifndef STANDIN_CSTATE_H
#define STANDIN_CSTATE_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "lib/conf.h"

#define ST_CSTATE_FILE "cluster.state"
#define ST_CSTATE_VERSION 1

struct st_edge {
	char source[ST_NAME_MAX + 1];
	char target[ST_NAME_MAX + 1];
};

struct st_cstate {
	uint64_t epoch;
	char cluster[ST_NAME_MAX + 1];
	char master[ST_NAME_MAX + 1];
	size_t n_edges[ST_SVC_COUNT];
	struct st_edge edges[ST_SVC_COUNT][ST_MAX_NODES];
	time_t updated;
};

/* STATE_DIR/cluster.state of NODE; the caller frees it. */
char *st_cstate_path(const struct st_node *node);

/* Epoch 1, MASTER, and for every configured service MASTER -> each other node. */
void st_cstate_init(struct st_cstate *st, const struct st_conf *conf, const char *master);

/*
 * Returns 0 when loaded, 1 when the file does not exist, -1 on any other
 * problem (unreadable, torn, checksum mismatch, bad line) with a message
 * naming path and line.
 */
int st_cstate_load(const char *path, struct st_cstate *st, char **error_r) ST_WARN_UNUSED;
int st_cstate_parse(const char *name, const char *data, size_t len, struct st_cstate *st,
		    char **error_r) ST_WARN_UNUSED;

/* Serialise (with the checksum line) into OUT. */
void st_cstate_format(const struct st_cstate *st, struct st_buf *out);

int st_cstate_save(const char *path, const struct st_cstate *st, char **error_r) ST_WARN_UNUSED;

/* Check that the state names nodes and services of CONF. */
int st_cstate_check(const struct st_cstate *st, const struct st_conf *conf,
		    char **error_r) ST_WARN_UNUSED;

/* "master", "standby" or "none" (a node neither master nor target). */
const char *st_cstate_role(const struct st_cstate *st, const char *node);

/* Exclusive lock for writers (flock on PATH.lock); returns an fd or -1. */
int st_cstate_lock(const char *path, bool wait, char **error_r) ST_WARN_UNUSED;

#endif
