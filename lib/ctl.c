/*
 * ctl.c: status/admin socket server on libev, and its blocking client.
 *
 * The socket's mode and group decide who may connect; the peer's uid, taken
 * from the kernel (SO_PEERCRED) when it connects, decides who may run a
 * changing command.  Both are checked here, once, for every daemon.
 */
#include "config.h"

#include "lib/ctl.h"
#include "lib/cstate.h"
#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <jansson.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_CLIENT_TIMEOUT 10.0	/* seconds a client may take to send its line */
#define CTL_MAX_CLIENTS 64

struct ctl_client {
	ev_io io;		/* first, so the watcher gives back the client */
	ev_timer timer;
	struct st_ctl_server *srv;
	struct ctl_client *next;
	char line[ST_CTL_MAX_LINE + 1];
	size_t line_len;
	struct st_buf reply;
	size_t reply_off;
	bool writing;
	bool draining;		/* reply sent early: discard input until EOF */
	struct st_ctl_held *held;	/* the reply comes later (st_ctl_hold) */
	bool cred_known;	/* SO_PEERCRED answered */
	uid_t peer_uid;
	pid_t peer_pid;
};

/* A client whose reply comes later; C is NULL once it is gone. */
struct st_ctl_held {
	struct ctl_client *c;
};

struct st_ctl_server {
	ev_io io;
	struct ev_loop *loop;
	char *path;
	const struct st_ctl_command *commands;
	void *ctx;
	struct ctl_client *clients;
	unsigned n_clients;
	struct drain_wait *drains;	/* "drain POS TIMEOUT_MS" waiting */
	char *epoch_file;		/* the node's cluster.state, for "@EPOCH COMMAND" */
	ev_timer retry;			/* accept again after running out of descriptors */
	bool starved;			/* said once per episode */
	uid_t self_uid;			/* this daemon's (effective) uid */
	char *allowed;			/* who may change, in words (allowed_text) */
};

/* A drain that waits (st_ctl_drain): checked every DRAIN_POLL_MS. */
#define DRAIN_POLL_MS 20
struct drain_wait {
	ev_timer timer;		/* first: the watcher gives back the wait */
	struct st_ctl_server *srv;
	struct drain_wait *next;
	struct st_ctl_held *held;
	st_ctl_drain_fn *check;
	void *ctx;
	char *pos;
	long long deadline;
};

static void
client_free(struct ctl_client *c)
{
	struct st_ctl_server *srv = c->srv;

	if (c->held != NULL)
		c->held->c = NULL;	/* its st_ctl_reply_later() finds nobody */

	ev_io_stop(srv->loop, &c->io);
	ev_timer_stop(srv->loop, &c->timer);
	close(c->io.fd);
	for (struct ctl_client **pp = &srv->clients; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	srv->n_clients--;
	st_buf_free(&c->reply);
	free(c);
}

bool
st_ctl_permitted(enum st_ctl_access access, uid_t peer, uid_t self)
{
	switch (access) {
	case ST_CTL_READ_ONLY:
		return true;
	case ST_CTL_CHANGES:
		return peer == 0 || peer == self;
	case ST_CTL_UNCLASSED:
		break;
	}
	return false;
}

/* "help" is the server's own, and only reports. */
static const struct st_ctl_command help_command = {
	"help", ST_CTL_READ_ONLY, NULL, "this list, each command under its class",
};

/* The commands in two groups, so whoever reads it knows what they may run. */
static void
builtin_help(struct st_ctl_server *srv, struct st_buf *reply)
{
	st_buf_puts(reply, "read-only, for every client the socket lets in:\n");
	st_buf_printf(reply, "  %s: %s\n", help_command.name, help_command.help);
	for (const struct st_ctl_command *cmd = srv->commands; cmd->name != NULL; cmd++)
		if (cmd->access == ST_CTL_READ_ONLY)
			st_buf_printf(reply, "  %s: %s\n", cmd->name, cmd->help);
	bool heading = false;
	for (const struct st_ctl_command *cmd = srv->commands; cmd->name != NULL; cmd++) {
		if (cmd->access == ST_CTL_READ_ONLY)
			continue;
		if (!heading)
			st_buf_printf(reply, "changing, only for %s:\n", srv->allowed);
		heading = true;
		st_buf_printf(reply, "  %s: %s\n", cmd->name, cmd->help);
	}
}

static const struct st_ctl_command *
find_command(const struct st_ctl_command *commands, const char *name)
{
	if (strcmp(name, help_command.name) == 0)
		return &help_command;
	for (const struct st_ctl_command *cmd = commands; cmd->name != NULL; cmd++)
		if (strcmp(cmd->name, name) == 0)
			return cmd;
	return NULL;
}

/*
 * Whether C may run CMD; if not, the refusal is its reply and the log says
 * who asked.  A changing command that is run is logged too: who switched,
 * paused or fenced is in the daemon's log.
 */
static bool
client_may(struct ctl_client *c, const struct st_ctl_command *cmd, const char *args)
{
	struct st_ctl_server *srv = c->srv;
	char uid[32];

	if (c->cred_known)
		snprintf(uid, sizeof(uid), "%u", (unsigned)c->peer_uid);
	else
		snprintf(uid, sizeof(uid), "unknown");
	if (cmd->access == ST_CTL_READ_ONLY)
		return true;
	if (c->cred_known && st_ctl_permitted(cmd->access, c->peer_uid, srv->self_uid)) {
		st_info("status socket runs a changing command command=%s args=%s peer_uid=%s "
			"peer_pid=%ld path=%s", cmd->name, st_q(args), uid, (long)c->peer_pid,
			st_q(srv->path));
		return true;
	}
	st_notice("status socket refused a changing command command=%s peer_uid=%s peer_pid=%ld "
		  "allowed=%s path=%s", cmd->name, uid, c->cred_known ? (long)c->peer_pid : -1L,
		  st_q(srv->allowed), st_q(srv->path));
	st_ctl_reply_error(&c->reply, "refused: %s is a changing command, only for %s; "
			   "this client is uid %s (read-only commands: see help)", cmd->name,
			   srv->allowed, uid);
	return false;
}

/* End LINE's first word; what follows it (spaces skipped), or "". */
static char *
split_word(char *line)
{
	char *args = strchr(line, ' ');

	if (args == NULL)
		return line + strlen(line);
	*args++ = '\0';
	while (*args == ' ')
		args++;
	return args;
}

static void
dispatch(struct ctl_client *c)
{
	struct st_ctl_server *srv = c->srv;
	char *line = c->line, *args;

	/* One line: up to the first LF, less a CR before it (telnet, socat
	 * CRLF).  A CR inside the line is data. */
	size_t len = strcspn(line, "\n");
	if (len > 0 && line[len - 1] == '\r')
		len--;
	line[len] = '\0';
	args = split_word(line);
	/* "@EPOCH COMMAND ARGS": an order of the cluster at EPOCH, refused
	 * when this node's state is at a higher one (a late or stale order). */
	bool ordered = false;
	unsigned long long epoch = 0;
	if (line[0] == '@') {
		char *end;
		epoch = strtoull(line + 1, &end, 10);
		if (line[1] < '0' || line[1] > '9' || *end != '\0' || *args == '\0') {
			st_ctl_reply_error(&c->reply, "usage: @EPOCH COMMAND [ARGS]");
			return;
		}
		ordered = true;
		line = args;
		args = split_word(line);
	}
	const struct st_ctl_command *cmd = find_command(srv->commands, line);
	if (cmd == NULL) {
		st_buf_puts(&c->reply, "{\"ok\":false,\"error\":\"unknown command; try help\"}\n");
		return;
	}
	if (!client_may(c, cmd, args))
		return;
	if (ordered) {
		struct st_cstate cs;
		char *err = NULL;
		if (srv->epoch_file != NULL && st_cstate_load(srv->epoch_file, &cs, &err) == 0 &&
		    epoch < cs.epoch) {
			st_ctl_reply_error(&c->reply, "refused: the order is for epoch %llu, this node "
					   "is at %llu", epoch, (unsigned long long)cs.epoch);
			return;
		}
		free(err);
	}
	if (cmd == &help_command)
		builtin_help(srv, &c->reply);
	else
		cmd->fn(srv->ctx, args, &c->reply);
}

static void
client_write(struct ctl_client *c)
{
	while (c->reply_off < c->reply.len) {
		ssize_t n = send(c->io.fd, c->reply.data + c->reply_off, c->reply.len - c->reply_off,
				 MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n < 0) {
			client_free(c);
			return;
		}
		c->reply_off += (size_t)n;
	}
	if (!c->draining) {
		client_free(c);
		return;
	}
	/*
	 * The client may still be sending (an over-long line): closing now
	 * would reset the connection and lose the reply.  Half-close and read
	 * what is left; the timer bounds it.
	 */
	shutdown(c->io.fd, SHUT_WR);
	c->writing = false;
	ev_io_stop(c->srv->loop, &c->io);
	ev_io_set(&c->io, c->io.fd, EV_READ);
	ev_io_start(c->srv->loop, &c->io);
}

static void
client_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ctl_client *c = (struct ctl_client *)w;
	ssize_t n;

	(void)revents;
	if (c->writing) {
		client_write(c);
		return;
	}
	if (c->draining) {
		char scratch[4096];
		n = recv(w->fd, scratch, sizeof(scratch), 0);
		if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0)
			client_free(c);
		return;
	}
	n = recv(w->fd, c->line + c->line_len, ST_CTL_MAX_LINE - c->line_len, 0);
	if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
		return;
	if (n <= 0 && c->line_len == 0) {
		client_free(c);
		return;
	}
	if (n > 0)
		c->line_len += (size_t)n;
	c->line[c->line_len] = '\0';
	if (memchr(c->line, '\n', c->line_len) == NULL && n > 0) {
		if (c->line_len < ST_CTL_MAX_LINE)
			return;
		st_buf_puts(&c->reply, "{\"ok\":false,\"error\":\"command line too long\"}\n");
		c->draining = true;
	} else if (memchr(c->line, '\0', c->line_len) != NULL) {
		st_buf_puts(&c->reply, "{\"ok\":false,\"error\":\"NUL byte in command\"}\n");
	} else {
		dispatch(c);
		if (c->held != NULL) {
			/* The handler answers later (st_ctl_reply_later). */
			ev_io_stop(loop, &c->io);
			return;
		}
	}
	/* Reply, then close. */
	c->writing = true;
	ev_io_stop(loop, &c->io);
	ev_io_set(&c->io, c->io.fd, EV_WRITE);
	ev_io_start(loop, &c->io);
	client_write(c);
}

static void
client_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ctl_client *c = (struct ctl_client *)((char *)w - offsetof(struct ctl_client, timer));

	(void)loop;
	(void)revents;
	st_debug("status socket client timed out path=%s", st_q(c->srv->path));
	client_free(c);
}

#define CTL_ACCEPT_RETRY 1.0

static void
accept_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct st_ctl_server *srv = w->data;

	(void)revents;
	ev_io_start(loop, &srv->io);
}

static void
accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct st_ctl_server *srv = (struct st_ctl_server *)w;
	struct ctl_client *c;
	int fd;

	(void)revents;
	for (;;) {
		fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			       errno == ENOMEM)) {
			/* The connection stays queued, so the socket stays readable:
			 * wait a second instead of spinning, and say it once. */
			if (!srv->starved)
				st_error("status socket: %s (this process's descriptor limit, "
					 "RLIMIT_NOFILE, or the system's): new connections wait "
					 "path=%s", strerror(errno), st_q(srv->path));
			srv->starved = true;
			ev_io_stop(loop, &srv->io);
			ev_timer_set(&srv->retry, CTL_ACCEPT_RETRY, 0.);
			ev_timer_start(loop, &srv->retry);
			return;
		}
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				st_warn("status socket accept failed path=%s error=%s", st_q(srv->path),
					st_q(strerror(errno)));
			return;
		}
		if (srv->starved) {
			st_notice("status socket accepts again path=%s", st_q(srv->path));
			srv->starved = false;
		}
		if (srv->n_clients >= CTL_MAX_CLIENTS) {
			st_warn("status socket has too many clients, closing one path=%s max=%d",
				st_q(srv->path), CTL_MAX_CLIENTS);
			close(fd);
			continue;
		}
		c = xcalloc(1, sizeof(*c));
		c->srv = srv;
		/* Who connected, as the kernel saw it at connect(): a client
		 * cannot claim another uid, and one we cannot tell gets the
		 * read-only commands only. */
		struct ucred cred;
		socklen_t cred_len = sizeof(cred);
		int rc = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len);
		if (rc == 0 && cred_len == sizeof(cred)) {
			c->cred_known = true;
			c->peer_uid = cred.uid;
			c->peer_pid = cred.pid;
		} else {
			st_warn("status socket cannot tell a client's uid (SO_PEERCRED) path=%s "
				"error=%s", st_q(srv->path),
				st_q(rc < 0 ? strerror(errno) : "short answer"));
		}
		st_buf_init(&c->reply);
		ev_io_init(&c->io, client_cb, fd, EV_READ);
		ev_timer_init(&c->timer, client_timeout_cb, CTL_CLIENT_TIMEOUT, 0.);
		ev_io_start(loop, &c->io);
		ev_timer_start(loop, &c->timer);
		c->next = srv->clients;
		srv->clients = c;
		srv->n_clients++;
	}
}

static int
fill_sockaddr(const char *path, struct sockaddr_un *sun, char **error_r)
{
	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun->sun_path)) {
		st_set_error(error_r, "socket path %s is longer than %zu bytes", path,
			     sizeof(sun->sun_path) - 1);
		return -1;
	}
	memcpy(sun->sun_path, path, strlen(path) + 1);
	return 0;
}

static void
drain_end(struct drain_wait *w, const char *text)
{
	for (struct drain_wait **pp = &w->srv->drains; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	}
	ev_timer_stop(w->srv->loop, &w->timer);
	st_ctl_reply_later(w->held, text);
	free(w->pos);
	free(w);
}

/* Run CHECK for POS: the reply line when it is final (drained, not a
 * position, or FINAL), else NULL. */
static char *
drain_answer(st_ctl_drain_fn *check, void *ctx, const char *pos, bool final)
{
	json_t *o = json_object();
	int rc = check(ctx, pos, o);
	char *line = NULL;

	if (rc < 0 || rc > 0 || final) {
		if (rc >= 0)
			json_object_set_new(o, "drained", json_boolean(rc > 0));
		else
			json_object_set_new(o, "ok", json_false());
		char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
		line = xasprintf("%s\n", text);
		free(text);
	}
	json_decref(o);
	return line;
}

static void
drain_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct drain_wait *w = (struct drain_wait *)t;
	char *line = drain_answer(w->check, w->ctx, w->pos, st_monotonic_ms() >= w->deadline);

	(void)loop;
	(void)revents;
	if (line != NULL) {
		drain_end(w, line);
		free(line);
	}
}

void
st_ctl_drain(void *ctx, const char *args, struct st_buf *reply, st_ctl_drain_fn *check)
{
	char pos[ST_CTL_MAX_LINE + 1];
	long timeout_ms = 0;
	size_t n = strcspn(args, " ");

	memcpy(pos, args, n);
	pos[n] = '\0';
	const char *rest = args + n;
	while (*rest == ' ')
		rest++;
	if (*rest != '\0') {
		char *end;
		timeout_ms = strtol(rest, &end, 10);
		if (*end != '\0' || timeout_ms < 0 || timeout_ms > 3600000) {
			st_ctl_reply_error(reply, "usage: drain POS [TIMEOUT_MS] (at most 3600000 ms), "
					   "not %s", rest);
			return;
		}
	}
	char *line = drain_answer(check, ctx, pos, timeout_ms == 0);
	if (line != NULL) {
		st_buf_puts(reply, line);
		free(line);
		return;
	}
	struct ctl_client *c = (struct ctl_client *)((char *)reply - offsetof(struct ctl_client,
									      reply));
	struct drain_wait *w = xcalloc(1, sizeof(*w));
	w->srv = c->srv;
	w->check = check;
	w->ctx = ctx;
	w->pos = xstrdup(pos);
	w->deadline = st_monotonic_ms() + timeout_ms;
	w->held = st_ctl_hold(reply, timeout_ms);
	w->next = w->srv->drains;
	w->srv->drains = w;
	ev_timer_init(&w->timer, drain_timer_cb, DRAIN_POLL_MS / 1000.0, DRAIN_POLL_MS / 1000.0);
	ev_timer_start(w->srv->loop, &w->timer);
}

void
st_ctl_reply_json(struct st_buf *reply, json_t *obj)
{
	char *text = json_dumps(obj, JSON_COMPACT);

	st_buf_printf(reply, "%s\n", text != NULL ? text : "{\"ok\":false,\"error\":\"out of memory\"}");
	free(text);
	json_decref(obj);
}

void
st_ctl_reply_error(struct st_buf *reply, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	st_ctl_reply_json(reply, json_pack("{s:b,s:s}", "ok", 0, "error", msg));
	free(msg);
}

/* Who may run changing commands on a daemon of uid SELF, said in words. */
static char *
allowed_text(uid_t self)
{
	if (self == 0)
		return xstrdup("root");
	struct passwd *pw = getpwuid(self);
	if (pw == NULL)
		return xasprintf("root and this daemon's uid %u", (unsigned)self);
	return xasprintf("root and this daemon's user %s (uid %u)", pw->pw_name, (unsigned)self);
}

struct st_ctl_server *
st_ctl_listen(struct ev_loop *loop, const char *path, const char *group,
	      const struct st_ctl_command *commands, void *ctx, char **error_r)
{
	struct st_ctl_server *srv;
	struct sockaddr_un sun;
	mode_t old_umask;
	int fd;

	for (const struct st_ctl_command *cmd = commands; cmd->name != NULL; cmd++) {
		if (cmd->access != ST_CTL_READ_ONLY && cmd->access != ST_CTL_CHANGES) {
			st_set_error(error_r, "admin command %s is neither read-only nor changing "
				     "(its entry in the command table lacks the class)", cmd->name);
			return NULL;
		}
		if (find_command(commands, cmd->name) != cmd) {
			st_set_error(error_r, "admin command %s is in the command table twice, or "
				     "is the built-in help", cmd->name);
			return NULL;
		}
	}
	if (fill_sockaddr(path, &sun, error_r) < 0)
		return NULL;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		st_set_error(error_r, "socket: %s", strerror(errno));
		return NULL;
	}
	/* A socket file nobody answers on is stale: replace it.  A live one is not ours. */
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0) {
		if (connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
			close(probe);
			close(fd);
			st_set_error(error_r, "%s is in use by another running daemon", path);
			return NULL;
		}
		close(probe);
	}
	struct stat sb;
	if (lstat(path, &sb) == 0) {
		if (!S_ISSOCK(sb.st_mode)) {
			close(fd);
			st_set_error(error_r, "%s exists and is not a socket", path);
			return NULL;
		}
		unlink(path);
	}
	old_umask = umask(0117);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		umask(old_umask);
		st_set_error(error_r, "bind %s: %s", path, strerror(errno));
		close(fd);
		return NULL;
	}
	umask(old_umask);
	if (chmod(path, 0660) < 0) {
		st_set_error(error_r, "chmod %s: %s", path, strerror(errno));
		goto fail;
	}
	if (group != NULL) {
		struct group *gr = getgrnam(group);
		if (gr == NULL) {
			st_set_error(error_r, "admin_group %s: no such group", group);
			goto fail;
		}
		if (chown(path, (uid_t)-1, gr->gr_gid) < 0) {
			st_set_error(error_r, "chown %s to group %s: %s", path, group, strerror(errno));
			goto fail;
		}
	}
	if (listen(fd, 16) < 0) {
		st_set_error(error_r, "listen %s: %s", path, strerror(errno));
		goto fail;
	}
	srv = xcalloc(1, sizeof(*srv));
	srv->loop = loop;
	srv->path = xstrdup(path);
	srv->commands = commands;
	srv->ctx = ctx;
	srv->self_uid = geteuid();
	srv->allowed = allowed_text(srv->self_uid);
	ev_io_init(&srv->io, accept_cb, fd, EV_READ);
	ev_io_start(loop, &srv->io);
	ev_timer_init(&srv->retry, accept_retry_cb, CTL_ACCEPT_RETRY, 0.);
	srv->retry.data = srv;
	return srv;
fail:
	close(fd);
	unlink(path);
	return NULL;
}

void
st_ctl_set_epoch_file(struct st_ctl_server *srv, const char *path)
{
	free(srv->epoch_file);
	srv->epoch_file = path != NULL ? xstrdup(path) : NULL;
}

void
st_ctl_close(struct st_ctl_server **srvp)
{
	struct st_ctl_server *srv = *srvp;

	if (srv == NULL)
		return;
	while (srv->drains != NULL)
		drain_end(srv->drains, "{\"ok\":false,\"error\":\"the daemon is stopping\"}\n");
	while (srv->clients != NULL)
		client_free(srv->clients);
	ev_io_stop(srv->loop, &srv->io);
	ev_timer_stop(srv->loop, &srv->retry);
	close(srv->io.fd);
	unlink(srv->path);
	free(srv->path);
	free(srv->epoch_file);
	free(srv->allowed);
	free(srv);
	*srvp = NULL;
}

static int
wait_fd(int fd, short events, long long deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	long long left;
	int n;

	for (;;) {
		left = deadline - st_monotonic_ms();
		if (left <= 0)
			return 0;
		n = poll(&pfd, 1, (int)left);
		if (n < 0 && errno == EINTR)
			continue;
		return n;
	}
}

int
st_ctl_query(const char *path, const char *command, int timeout_ms, char **reply_r,
	     char **error_r)
{
	long long deadline = st_monotonic_ms() + timeout_ms;
	struct sockaddr_un sun;
	struct st_buf reply;
	char *line;
	size_t off = 0;
	int fd, ret = -1;

	*reply_r = NULL;
	if (fill_sockaddr(path, &sun, error_r) < 0)
		return -1;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		st_set_error(error_r, "socket: %s", strerror(errno));
		return -1;
	}
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 && errno != EINPROGRESS) {
		if (errno == ENOENT)
			st_set_error(error_r, "no socket");
		else if (errno == ECONNREFUSED)
			st_set_error(error_r, "connection refused (stale socket)");
		else
			st_set_error(error_r, "%s", strerror(errno));
		close(fd);
		return -1;
	}
	line = xasprintf("%s\n", command);
	st_buf_init(&reply);
	while (line[off] != '\0') {
		if (wait_fd(fd, POLLOUT, deadline) <= 0) {
			st_set_error(error_r, "timeout");
			goto out;
		}
		ssize_t n = send(fd, line + off, strlen(line + off), MSG_NOSIGNAL);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n < 0 && errno == EPIPE)
			break;	/* the daemon answered early (an error): read it */
		if (n < 0) {
			st_set_error(error_r, "send: %s", strerror(errno));
			goto out;
		}
		off += (size_t)n;
	}
	for (;;) {
		char buf[4096];
		int w = wait_fd(fd, POLLIN, deadline);

		if (w <= 0) {
			st_set_error(error_r, "timeout");
			goto out;
		}
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n < 0) {
			st_set_error(error_r, "recv: %s", strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		if (reply.len + (size_t)n > 16 * 1024 * 1024) {
			st_set_error(error_r, "reply larger than 16 MiB");
			goto out;
		}
		st_buf_append(&reply, buf, (size_t)n);
	}
	*reply_r = st_buf_steal(&reply);
	ret = 0;
out:
	st_buf_free(&reply);
	free(line);
	close(fd);
	return ret;
}

const char *
st_replicator_program(enum st_service svc)
{
	static const char *const names[ST_SVC_COUNT] = {
		[ST_SVC_PG] = ST_PROGRAM_PGREPL,
		[ST_SVC_LDAP] = ST_PROGRAM_LDAPREPL,
		[ST_SVC_IMAP] = ST_PROGRAM_IMAPREPL,
	};

	return names[svc];
}

char *
st_ctl_socket_path(const struct st_node *node, const char *program)
{
	return xasprintf("%s/%s.sock", node->run_dir, program);
}

struct st_ctl_held *
st_ctl_hold(struct st_buf *reply, long timeout_ms)
{
	struct ctl_client *c = (struct ctl_client *)((char *)reply - offsetof(struct ctl_client,
									      reply));
	struct st_ctl_held *h = xcalloc(1, sizeof(*h));

	h->c = c;
	c->held = h;
	ev_timer_stop(c->srv->loop, &c->timer);
	ev_timer_set(&c->timer, (double)timeout_ms / 1000.0 + CTL_CLIENT_TIMEOUT, 0.);
	ev_timer_start(c->srv->loop, &c->timer);
	return h;
}

void
st_ctl_reply_later(struct st_ctl_held *h, const char *text)
{
	struct ctl_client *c = h->c;

	free(h);
	if (c == NULL)
		return;		/* the client left, or timed out */
	c->held = NULL;
	st_buf_puts(&c->reply, text);
	c->writing = true;
	ev_io_stop(c->srv->loop, &c->io);
	ev_io_set(&c->io, c->io.fd, EV_WRITE);
	ev_io_start(c->srv->loop, &c->io);
	client_write(c);
}
