/*
 * proxy.h: the types standin-proxy's modules share.
 *
 *   proxy.c    the daemon: services, routing from the cluster state, admin
 *              commands, status
 *   forward.c  client connections: accept, hold while paused, connect,
 *              move bytes both ways (splice or a buffer), close
 *   health.c   periodic checks of every node's endpoint of every service
 *   pxparse.c  pure parsers (admin commands, endpoints, PROXY v2 header)
 *
 * Everything runs on the daemon's one libev loop; nothing blocks it.
 */
#ifndef STANDIN_PROXY_H
#define STANDIN_PROXY_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/conf.h"
#include "lib/cstate.h"
#include "lib/daemon.h"

struct px;
struct px_conn;

struct px_listener {
	ev_io io;			/* first: the watcher gives back the listener */
	struct px_service *svc;
	char *addr;			/* as configured, for logs */
};

/* What the health check last saw of one node's endpoint of a service. */
struct px_health {
	ev_io io;
	ev_timer timer;
	struct px_service *svc;
	int node;
	int fd;
	bool up, known;
	int step;			/* 0 connecting, 1 waiting for the answer */
	long long started_ms;
	long latency_ms;
	unsigned long long checks, failures;
	char *error;			/* last failure, owned */
	char rbuf[64];
	size_t rlen;
};

struct px_backend {
	int node;			/* index in conf->nodes, -1 when none */
	char *host;
	int port;
	bool tls;
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char *desc;			/* "node=a addr=127.0.0.1:5432" */
};

struct px_service {
	struct px *px;
	enum st_service id;
	const char *name;
	struct px_listener *listeners;
	size_t n_listeners;

	struct px_backend backend;
	bool switched;			/* backend set by "switch", not the state */
	bool paused;
	long long paused_ms;		/* when it was paused (monotonic) */
	ev_timer drain;			/* closes sessions to an old backend */

	struct px_conn *conns;		/* every client of this service */
	unsigned n_clients, n_held;

	/* counters */
	unsigned long long accepted, refused, connect_errors, timeouts, errors, dropped;
	unsigned long long bytes_up, bytes_down;
	long long refused_logged_ms;
	unsigned long long refused_unlogged;

	struct px_health health[ST_MAX_NODES];
	ev_timer health_timer;
};

struct px {
	struct st_daemon *d;
	struct ev_loop *loop;
	const struct st_conf *conf;	/* the daemon's current one */
	struct px_service svc[ST_SVC_COUNT];
	bool svc_on[ST_SVC_COUNT];

	struct st_cstate_follower follow;	/* the state taken (lib/cstate.h) */
	struct st_cstate cs;		/* the state routed by */
	bool cs_valid;
	bool cs_error_shown;		/* last_error is about the cluster state */

	ev_timer accept_retry;		/* listeners stopped after EMFILE */
	bool accept_paused;

	/* free lists, so idle clients hold neither buffers nor pipes */
	char **bufs;
	size_t n_bufs;
	int (*pipes)[2];
	size_t n_pipes;
	unsigned long long pipes_open, bufs_out;
	bool splice_ok;
};

/* forward.c */
int px_listen(struct px_service *svc, char **error_r) ST_WARN_UNUSED;
void px_unlisten(struct px_service *svc);
void px_conn_release(struct px_service *svc);	/* resume: connect every held client */
/* Close clients of SVC: all of them, or those on another node than the backend. */
void px_conn_close_all(struct px_service *svc, bool only_stale, const char *why);
void px_pools_free(struct px *px);
size_t px_conn_size(void);

/* proxy.c */
bool px_backend_ready(const struct px_service *svc);

/* health.c */
void px_health_start(struct px_service *svc);
void px_health_stop(struct px_service *svc);

#endif
