/*
 * ctl.h: the status and admin socket of every daemon.
 *
 * A unix stream socket (mode 0660, optionally group-owned by admin_group).
 * A client sends one command line ("status", "metrics", "help", or a
 * command the daemon adds, with arguments after a space); the daemon writes
 * the reply and closes the connection.  "status" answers one JSON line;
 * "metrics" answers Prometheus text format.  Usable by hand:
 *     echo status | socat - UNIX-CONNECT:/run/standin/standin-pgrepl.sock
 *
 * Whoever may open the socket may monitor; not everyone who monitors may
 * split the cluster.  Each command says in its table entry whether it only
 * reports or changes something, and a changing command is run only for a
 * client whose uid (SO_PEERCRED) is root's or the daemon's own (the standin
 * user under systemd).  Anyone else is refused, and the refusal logged.
 */
#ifndef STANDIN_CTL_H
#define STANDIN_CTL_H

#include <ev.h>
#include <jansson.h>
#include <sys/types.h>

#include "lib/conf.h"
#include "lib/util.h"

#define ST_CTL_MAX_LINE 1024

/* The daemons' program names: the replicator of each service, the proxy,
 * the node's agent. */
#define ST_PROGRAM_PGREPL "standin-pgrepl"
#define ST_PROGRAM_LDAPREPL "standin-ldaprepl"
#define ST_PROGRAM_IMAPREPL "standin-imaprepl"
#define ST_PROGRAM_PROXY "standin-proxy"
#define ST_PROGRAM_FAILOVERD "standin-failoverd"

/* The program that replicates SVC (ST_PROGRAM_PGREPL...). */
const char *st_replicator_program(enum st_service svc);

/* NODE's RUN_DIR/PROGRAM.sock: the one place a daemon's socket is named. */
char *st_ctl_socket_path(const struct st_node *node, const char *program);

/* Fill REPLY (the handler adds the final newline).  ARGS is "" when none. */
typedef void st_ctl_fn(void *ctx, const char *args, struct st_buf *reply);

/*
 * What a command may do, written beside it in the command table.  A
 * read-only command reports and changes nothing (status, metrics, help,
 * position): open to every client the socket lets in (its group).  A
 * changing command acts on the cluster or starts work (switch, pause, fence,
 * drain, reverse, pass...): root and the daemon's own user only.  Zero is no
 * class at all, and st_ctl_listen() refuses a table with such an entry, so a
 * new command cannot be added without saying which it is.
 */
enum st_ctl_access {
	ST_CTL_UNCLASSED = 0,
	ST_CTL_READ_ONLY,
	ST_CTL_CHANGES,
};

struct st_ctl_command {
	const char *name;
	enum st_ctl_access access;
	st_ctl_fn *fn;
	const char *help;
};

/*
 * Whether a client of uid PEER may run a command of class ACCESS on a daemon
 * that runs as uid SELF: a read-only command always; a changing one when PEER
 * is 0 or SELF.  Anything but the two classes is refused.
 */
bool st_ctl_permitted(enum st_ctl_access access, uid_t peer, uid_t self);

struct st_ctl_server;

/*
 * A handler that cannot answer at once (it waits for a thread, a position)
 * holds its client: st_ctl_hold(REPLY, TIMEOUT_MS) in the handler, and later,
 * on the loop, st_ctl_reply_later() with the whole reply (never from within
 * the handler that held it: answer such a client directly).  The client is
 * closed without a reply if it is not answered within TIMEOUT_MS (and ten
 * seconds); st_ctl_reply_later() is still called, and frees the handle.
 */
struct st_ctl_held;
struct st_ctl_held *st_ctl_hold(struct st_buf *reply, long timeout_ms);
void st_ctl_reply_later(struct st_ctl_held *held, const char *text);

/*
 * Listen on PATH.  A stale socket file (nobody listening) is replaced; a
 * live one is an error (another daemon has it).  COMMANDS ends with a
 * {NULL} entry, each command with its class; CTX is passed to every handler.
 * Changing commands are allowed to root and to this process's effective uid.
 */
struct st_ctl_server *st_ctl_listen(struct ev_loop *loop, const char *path, const char *group,
				    const struct st_ctl_command *commands, void *ctx,
				    char **error_r) ST_WARN_UNUSED;
/*
 * Commands may come as "@EPOCH COMMAND ARGS" (standin-failoverd's, for a
 * switchover at EPOCH): refused when the state at PATH (the node's
 * cluster.state) is at a higher epoch.  Without a file, never refused.
 */
void st_ctl_set_epoch_file(struct st_ctl_server *srv, const char *path);

/* Stop listening, close client connections, remove the socket file. */
void st_ctl_close(struct st_ctl_server **srv);

/* One JSON line as the reply (OBJ is consumed); or {"error":"..."}. */
void st_ctl_reply_json(struct st_buf *reply, json_t *obj);
void st_ctl_reply_error(struct st_buf *reply, const char *fmt, ...) ST_PRINTF(2, 3);

/*
 * "drain POS [TIMEOUT_MS]", the same in every replicator (doc/architecture.md,
 * section 6).  CHECK puts into OUT at least "applied" (this daemon's position,
 * in the form of POS) and returns 1 when everything the master had at POS is
 * applied and durable here, 0 when not yet, or -1 (with "error" in OUT) when
 * POS is not a position.  The reply is OUT with "drained": at once without
 * TIMEOUT_MS, else when drained or once TIMEOUT_MS has passed (CHECK is
 * called on the loop every 20 ms meanwhile).
 */
typedef int st_ctl_drain_fn(void *ctx, const char *pos, json_t *out);
void st_ctl_drain(void *ctx, const char *args, struct st_buf *reply, st_ctl_drain_fn *check);

/*
 * Client: send COMMAND to the socket at PATH and read the whole reply, with
 * one deadline of TIMEOUT_MS for everything.  Returns 0, or -1 with a short
 * reason ("no socket", "connection refused", "timeout", ...).
 */
int st_ctl_query(const char *path, const char *command, int timeout_ms, char **reply_r,
		 char **error_r) ST_WARN_UNUSED;

#endif
