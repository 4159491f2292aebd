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

#include <ev.h>
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

/* The node that masters SVC: the source of its directions (a switchover of
 * one service moves only its own), or the master when it has none. */
const char *st_cstate_master_of(const struct st_cstate *st, enum st_service svc);

/* NODE's role for SVC: "master", "standby" or "none". */
const char *st_cstate_role_of(const struct st_cstate *st, enum st_service svc, const char *node);

/* SVC's directions: MASTER feeding every other node of CONF; the other
 * services' are left as they are. */
void st_cstate_set_master_of(struct st_cstate *st, const struct st_conf *conf,
			     enum st_service svc, const char *master);

/* Exclusive lock for writers (flock on PATH.lock); returns an fd or -1. */
int st_cstate_lock(const char *path, bool wait, char **error_r) ST_WARN_UNUSED;

/* Epoch, cluster, master and directions equal (the time written is not compared). */
bool st_cstate_same(const struct st_cstate *a, const struct st_cstate *b);

/* The node TARGET replicates SVC from, or NULL (a master, or a node left out). */
const char *st_cstate_source(const struct st_cstate *st, enum st_service svc, const char *target);

/*
 * A daemon's view of its node's cluster state, the same in every daemon
 * (doc/architecture.md, section 4).  One rule: the first readable state is
 * taken; after it only a higher epoch is a change.  A lower epoch, or the
 * same epoch with other content, is refused and logged once: an old or
 * forged order never moves a daemon back.  A missing or unreadable file
 * keeps the state already taken; error says why.
 *
 * st_cstate_follow() reads the file now (usable from any one thread);
 * st_cstate_watch() does it from an event loop on every change of the file
 * (ev_stat, inotify where there is one) and at least every INTERVAL seconds.
 */
struct st_cstate_follower;
typedef void st_cstate_cb(struct st_cstate_follower *f, void *data);

struct st_cstate_follower {
	char *path;
	bool valid;			/* cs holds the state taken */
	struct st_cstate cs;
	char *error;			/* why the file cannot be taken now, or NULL */
	bool refused_valid;
	struct st_cstate refused;	/* the last state refused (logged once) */
	/* st_cstate_watch() */
	struct ev_loop *loop;
	ev_stat watch;
	ev_timer poll;
	st_cstate_cb *cb;
	void *cb_data;
};

void st_cstate_follower_init(struct st_cstate_follower *f, const struct st_node *node);
void st_cstate_follower_free(struct st_cstate_follower *f);

/* Read the file and apply the rule.  Returns true when cs or error changed. */
bool st_cstate_follow(struct st_cstate_follower *f);

/* Follow from LOOP; CB runs after every st_cstate_follow() that returned true. */
void st_cstate_watch(struct st_cstate_follower *f, struct ev_loop *loop, double interval,
		     st_cstate_cb *cb, void *data);
void st_cstate_unwatch(struct st_cstate_follower *f);

#endif
