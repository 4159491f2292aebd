/*
 * forward.c: client connections of standin-proxy.
 *
 * A client is accepted, held while its service is paused (or has no
 * backend), connected to the backend, then forwarded byte for byte both
 * ways until both directions have ended.  Each direction ("half") moves at
 * most one buffer (16 KiB) or one pipe (64 KiB) at a time: it reads only
 * when what it read before has been written, so a slow reader stops the
 * writer's side through TCP, never through memory here.  A direction starts
 * with a buffer; once one read fills it (bulk data), it moves to splice(2)
 * through a pipe, when the kernel allows it.  Buffers and pipes are taken
 * from free lists only while data is in flight, so an idle client costs the
 * struct below and its two sockets.
 *
 * End of one direction (EOF) is passed on as shutdown(SHUT_WR) once its data
 * is written; the other direction goes on (half-close).  An error on either
 * socket closes both.
 */
#include "config.h"

#include "proxy/proxy.h"
#include "proxy/pxparse.h"
#include "lib/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUF_SIZE (16 * 1024)
#define PIPE_SIZE (64 * 1024)
#define MAX_FREE_BUFS 256
#define MAX_FREE_PIPES 64
#define ACCEPT_BATCH 64
#define PUMP_ROUNDS 8

enum conn_state {
	CONN_NEW,		/* just accepted */
	CONN_HELD,		/* paused: accepted, nothing read, nothing sent */
	CONN_CONNECTING,
	CONN_FORWARDING,
};

struct half {
	char *buf;		/* from the free list while data is in it */
	uint32_t off, len;
	int pipe[2];		/* -1 until this direction moves to splice */
	uint32_t in_pipe;
	bool eof;		/* the source ended */
	bool shut;		/* and that was passed on */
};

struct px_conn {
	ev_io cio;		/* client socket */
	ev_io bio;		/* backend socket */
	ev_timer timer;		/* pause, connect, idle and first-byte deadlines */
	struct px_service *svc;
	struct px_conn *prev, *next;
	enum conn_state state;
	int node;		/* backend node, for the drain after a switch */
	bool got_byte;		/* the client has sent something */
	struct half up;		/* client -> backend */
	struct half down;	/* backend -> client */
	unsigned long long bytes_up, bytes_down;
	ev_tstamp since;	/* accepted, or last state change */
	ev_tstamp active;	/* last byte moved */
	struct sockaddr_storage peer;
};

size_t
px_conn_size(void)
{
	return sizeof(struct px_conn);
}

static const char *
addr_str(const struct sockaddr_storage *ss, char *out, size_t len)
{
	char host[INET6_ADDRSTRLEN];
	const void *a;
	int port;

	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)ss;
		a = &s6->sin6_addr;
		port = ntohs(s6->sin6_port);
	} else if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const void *)ss;
		a = &s4->sin_addr;
		port = ntohs(s4->sin_port);
	} else {
		snprintf(out, len, "?");
		return out;
	}
	inet_ntop(ss->ss_family, a, host, sizeof(host));
	snprintf(out, len, ss->ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port);
	return out;
}

/* ------------------------------------------------------------ pools */

static char *
buf_get(struct px *px)
{
	px->bufs_out++;
	if (px->n_bufs > 0)
		return px->bufs[--px->n_bufs];
	return xmalloc(BUF_SIZE);
}

static void
buf_put(struct px *px, char **bp)
{
	if (*bp == NULL)
		return;
	px->bufs_out--;
	if (px->n_bufs < MAX_FREE_BUFS) {
		if (px->bufs == NULL)
			px->bufs = xcalloc(MAX_FREE_BUFS, sizeof(*px->bufs));
		px->bufs[px->n_bufs++] = *bp;
	} else {
		free(*bp);
	}
	*bp = NULL;
}

static int
pipe_get(struct px *px, int p[2])
{
	if (px->n_pipes > 0) {
		px->n_pipes--;
		p[0] = px->pipes[px->n_pipes][0];
		p[1] = px->pipes[px->n_pipes][1];
		return 0;
	}
	if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
		return -1;
	(void)fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE);
	px->pipes_open++;
	return 0;
}

/* An empty pipe goes back to the free list; one with data in it is closed. */
static void
pipe_put(struct px *px, int p[2], bool empty)
{
	if (p[0] < 0)
		return;
	if (empty && px->n_pipes < MAX_FREE_PIPES) {
		if (px->pipes == NULL)
			px->pipes = xcalloc(MAX_FREE_PIPES, sizeof(*px->pipes));
		px->pipes[px->n_pipes][0] = p[0];
		px->pipes[px->n_pipes][1] = p[1];
		px->n_pipes++;
	} else {
		close(p[0]);
		close(p[1]);
		px->pipes_open--;
	}
	p[0] = p[1] = -1;
}

void
px_pools_free(struct px *px)
{
	while (px->n_bufs > 0)
		free(px->bufs[--px->n_bufs]);
	free(px->bufs);
	px->bufs = NULL;
	while (px->n_pipes > 0) {
		px->n_pipes--;
		close(px->pipes[px->n_pipes][0]);
		close(px->pipes[px->n_pipes][1]);
	}
	free(px->pipes);
	px->pipes = NULL;
}

/* ------------------------------------------------------------ life */

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents);
static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void start_connect(struct px_conn *c);

static void
set_events(struct ev_loop *loop, ev_io *w, int events)
{
	if ((w->events & (EV_READ | EV_WRITE)) == events && ev_is_active(w) == (events != 0))
		return;
	ev_io_stop(loop, w);
	if (events == 0)
		return;
	ev_io_modify(w, events);
	ev_io_start(loop, w);
}

static void
conn_free(struct px_conn *c)
{
	struct px_service *svc = c->svc;
	struct px *px = svc->px;
	struct ev_loop *loop = px->loop;

	ev_io_stop(loop, &c->cio);
	ev_io_stop(loop, &c->bio);
	ev_timer_stop(loop, &c->timer);
	close(c->cio.fd);
	if (c->bio.fd >= 0)
		close(c->bio.fd);
	buf_put(px, &c->up.buf);
	buf_put(px, &c->down.buf);
	pipe_put(px, c->up.pipe, c->up.in_pipe == 0);
	pipe_put(px, c->down.pipe, c->down.in_pipe == 0);
	if (c->state == CONN_HELD)
		svc->n_held--;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		svc->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	svc->n_clients--;
	free(c);
}

/* Close with a log line at LEVEL (debug for the ordinary end of a session). */
static void
conn_close(struct px_conn *c, enum st_log_level level, const char *why)
{
	if (st_log_get_level() <= level) {
		char peer[64];
		st_log(level, "client closed service=%s client=%s node=%s bytes_up=%llu "
		       "bytes_down=%llu reason=%s", c->svc->name,
		       addr_str(&c->peer, peer, sizeof(peer)),
		       c->node >= 0 ? c->svc->px->conf->nodes[c->node].name : "none",
		       c->bytes_up, c->bytes_down, st_q(why));
	}
	conn_free(c);
}

/* ------------------------------------------------------------ moving bytes */

enum pump_result { PUMP_WAIT, PUMP_ERROR };

/*
 * Move what H has, then read more from FROM, until the source is empty or
 * the destination full.  Returns PUMP_ERROR (with *why) when the
 * connection must close.
 */
static enum pump_result
pump(struct px_conn *c, struct half *h, int from, int to, unsigned long long *bytes,
     const char **why)
{
	struct px *px = c->svc->px;
	bool short_read = false;
	ssize_t n;

	for (int round = 0; round < PUMP_ROUNDS; round++) {
		/* Write what is in flight. */
		if (h->in_pipe > 0) {
			n = splice(h->pipe[0], NULL, to, NULL, h->in_pipe,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					return PUMP_WAIT;
				*why = strerror(errno);
				return PUMP_ERROR;
			}
			h->in_pipe -= (uint32_t)n;
			*bytes += (unsigned long long)n;
			if (h->in_pipe > 0)
				continue;	/* try again: EAGAIN tells when it is full */
		} else if (h->len > h->off) {
			n = send(to, h->buf + h->off, h->len - h->off, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					return PUMP_WAIT;
				*why = strerror(errno);
				return PUMP_ERROR;
			}
			h->off += (uint32_t)n;
			*bytes += (unsigned long long)n;
			if (h->off < h->len)
				continue;
			h->off = h->len = 0;
		}
		/* All written. */
		if (h->buf != NULL)
			buf_put(px, &h->buf);
		if (h->eof) {
			if (!h->shut) {
				h->shut = true;
				if (shutdown(to, SHUT_WR) < 0 && errno != ENOTCONN) {
					*why = strerror(errno);
					return PUMP_ERROR;
				}
			}
			return PUMP_WAIT;
		}
		if (short_read)
			return PUMP_WAIT;	/* the source had no more: skip one EAGAIN */

		/* Read more. */
		if (h->pipe[0] >= 0) {
			n = splice(from, NULL, h->pipe[1], NULL, PIPE_SIZE,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					return PUMP_WAIT;
				*why = strerror(errno);
				return PUMP_ERROR;
			}
			if (n == 0)
				h->eof = true;
			h->in_pipe = (uint32_t)n;
			short_read = n < PIPE_SIZE / 2;
		} else {
			h->buf = buf_get(px);
			n = recv(from, h->buf, BUF_SIZE, 0);
			if (n < 0) {
				buf_put(px, &h->buf);
				if (errno == EAGAIN || errno == EINTR)
					return PUMP_WAIT;
				*why = strerror(errno);
				return PUMP_ERROR;
			}
			if (n == 0)
				h->eof = true;
			h->len = (uint32_t)n;
			short_read = n < BUF_SIZE;
			/* A full buffer: bulk data; move the rest with splice. */
			if (n == BUF_SIZE && px->splice_ok && pipe_get(px, h->pipe) < 0)
				h->pipe[0] = h->pipe[1] = -1;
		}
		if (n > 0) {
			c->active = ev_now(px->loop);
			if (h == &c->up)
				c->got_byte = true;
		}
	}
	return PUMP_WAIT;
}

static bool
half_pending(const struct half *h)
{
	return h->in_pipe > 0 || h->len > h->off;
}

static bool
half_wants_read(const struct half *h)
{
	return !h->eof && !half_pending(h);
}

/* Move bytes in the directions an event concerns. */
static void
forward(struct px_conn *c, bool up, bool down)
{
	struct px_service *svc = c->svc;
	struct ev_loop *loop = svc->px->loop;
	unsigned long long n_up = 0, n_down = 0;
	const char *why = NULL;
	enum pump_result r = PUMP_WAIT;

	if (up)
		r = pump(c, &c->up, c->cio.fd, c->bio.fd, &n_up, &why);
	if (r != PUMP_ERROR && down)
		r = pump(c, &c->down, c->bio.fd, c->cio.fd, &n_down, &why);
	c->bytes_up += n_up;
	c->bytes_down += n_down;
	svc->bytes_up += n_up;
	svc->bytes_down += n_down;
	if (r == PUMP_ERROR) {
		svc->errors++;
		conn_close(c, ST_LOG_INFO, why);
		return;
	}
	if (c->up.shut && c->down.shut) {
		conn_close(c, ST_LOG_DEBUG, "both sides ended");
		return;
	}
	set_events(loop, &c->cio, (half_wants_read(&c->up) ? EV_READ : 0) |
				  (half_pending(&c->down) ? EV_WRITE : 0));
	set_events(loop, &c->bio, (half_wants_read(&c->down) ? EV_READ : 0) |
				  (half_pending(&c->up) ? EV_WRITE : 0));
}

/* ------------------------------------------------------------ timers */

static void
arm_forwarding_timer(struct px_conn *c)
{
	const struct st_conf_proxy *pc = &c->svc->px->conf->proxy;
	struct ev_loop *loop = c->svc->px->loop;
	ev_tstamp now = ev_now(loop), at = 0;

	ev_timer_stop(loop, &c->timer);
	if (!c->got_byte && pc->first_byte_timeout_ms > 0)
		at = c->since + pc->first_byte_timeout_ms / 1000.0;
	if (pc->idle_timeout_ms > 0) {
		ev_tstamp idle_at = c->active + pc->idle_timeout_ms / 1000.0;
		if (at == 0 || idle_at < at)
			at = idle_at;
	}
	if (at == 0)
		return;
	ev_timer_set(&c->timer, at > now ? at - now : 0.001, 0.);
	ev_timer_start(loop, &c->timer);
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct px_conn *c = (struct px_conn *)((char *)w - offsetof(struct px_conn, timer));
	const struct st_conf_proxy *pc = &c->svc->px->conf->proxy;
	ev_tstamp now = ev_now(loop);
	char peer[64], msg[160];

	(void)revents;
	switch (c->state) {
	case CONN_NEW:
		return;
	case CONN_HELD:
		c->svc->timeouts++;
		st_warn("client held too long while paused, closing service=%s client=%s "
			"pause_timeout_ms=%ld", c->svc->name, addr_str(&c->peer, peer, sizeof(peer)),
			pc->pause_timeout_ms);
		conn_free(c);
		return;
	case CONN_CONNECTING:
		c->svc->connect_errors++;
		st_warn("backend connect timed out service=%s client=%s %s connect_timeout_ms=%ld",
			c->svc->name, addr_str(&c->peer, peer, sizeof(peer)), c->svc->backend.desc,
			pc->connect_timeout_ms);
		conn_free(c);
		return;
	case CONN_FORWARDING:
		if (!c->got_byte && pc->first_byte_timeout_ms > 0 &&
		    now - c->since >= pc->first_byte_timeout_ms / 1000.0 - 0.0005) {
			c->svc->timeouts++;
			snprintf(msg, sizeof(msg), "client sent nothing in %ld ms",
				 pc->first_byte_timeout_ms);
			conn_close(c, ST_LOG_NOTICE, msg);
			return;
		}
		if (pc->idle_timeout_ms > 0 &&
		    now - c->active >= pc->idle_timeout_ms / 1000.0 - 0.0005) {
			c->svc->timeouts++;
			snprintf(msg, sizeof(msg), "idle for %ld ms", pc->idle_timeout_ms);
			conn_close(c, ST_LOG_INFO, msg);
			return;
		}
		arm_forwarding_timer(c);
		return;
	}
}

/* ------------------------------------------------------------ connect */

static void
set_sockopts(int fd)
{
	int one = 1;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	(void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
}

static void
connected(struct px_conn *c)
{
	struct px_service *svc = c->svc;
	struct ev_loop *loop = svc->px->loop;

	c->state = CONN_FORWARDING;
	c->since = c->active = ev_now(loop);
	ev_io_stop(loop, &c->bio);
	ev_io_set(&c->bio, c->bio.fd, 0);
	if (svc->px->conf->proxy.proxy_protocol[svc->id]) {
		struct sockaddr_storage local;
		socklen_t len = sizeof(local);
		uint8_t hdr[PX_PROXY_V2_MAX];
		size_t n;

		if (getsockname(c->cio.fd, (struct sockaddr *)&local, &len) < 0)
			local.ss_family = AF_UNSPEC;
		n = px_proxy_v2((struct sockaddr *)&c->peer, (struct sockaddr *)&local, hdr);
		c->up.buf = buf_get(svc->px);
		memcpy(c->up.buf, hdr, n);
		c->up.len = (uint32_t)n;
		c->up.off = 0;
	}
	arm_forwarding_timer(c);
	forward(c, true, true);
}

static void
start_connect(struct px_conn *c)
{
	struct px_service *svc = c->svc;
	struct px *px = svc->px;
	struct ev_loop *loop = px->loop;
	const struct px_backend *b = &svc->backend;
	char peer[64];
	int fd;

	if (c->state == CONN_HELD)
		svc->n_held--;
	c->state = CONN_CONNECTING;
	c->since = ev_now(loop);
	c->node = b->node;
	ev_io_stop(loop, &c->cio);
	ev_timer_stop(loop, &c->timer);
	fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		svc->errors++;
		st_error("cannot create a backend socket service=%s %s error=%s", svc->name, b->desc,
			 st_q(strerror(errno)));
		conn_free(c);
		return;
	}
	set_sockopts(fd);
	ev_io_set(&c->bio, fd, EV_WRITE);
	if (connect(fd, (const struct sockaddr *)&b->addr, b->addr_len) == 0) {
		connected(c);
		return;
	}
	if (errno != EINPROGRESS) {
		svc->connect_errors++;
		st_warn("backend connect failed service=%s client=%s %s error=%s", svc->name,
			addr_str(&c->peer, peer, sizeof(peer)), b->desc, st_q(strerror(errno)));
		conn_free(c);
		return;
	}
	ev_io_start(loop, &c->bio);
	ev_timer_set(&c->timer, px->conf->proxy.connect_timeout_ms / 1000.0, 0.);
	ev_timer_start(loop, &c->timer);
}

static void
connect_done(struct px_conn *c)
{
	struct px_service *svc = c->svc;
	int err = 0;
	socklen_t len = sizeof(err);
	char peer[64];

	if (getsockopt(c->bio.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err == EINPROGRESS)
		return;
	if (err != 0) {
		svc->connect_errors++;
		st_warn("backend connect failed service=%s client=%s %s error=%s", svc->name,
			addr_str(&c->peer, peer, sizeof(peer)), svc->backend.desc,
			st_q(strerror(err)));
		conn_free(c);
		return;
	}
	ev_timer_stop(svc->px->loop, &c->timer);
	connected(c);
}

/* ------------------------------------------------------------ events */

static void
held_readable(struct px_conn *c)
{
	char b;
	ssize_t n = recv(c->cio.fd, &b, 1, MSG_PEEK);

	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		conn_close(c, ST_LOG_DEBUG, "client left while held");
		return;
	}
	/* Data waits in the kernel until the release; stop watching. */
	ev_io_stop(c->svc->px->loop, &c->cio);
}

static void
conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct px_conn *c;

	(void)loop;
	if (w->data == NULL)
		c = (struct px_conn *)w;	/* cio is the first member */
	else
		c = (struct px_conn *)((char *)w - offsetof(struct px_conn, bio));
	switch (c->state) {
	case CONN_NEW:
		return;
	case CONN_HELD:
		held_readable(c);
		return;
	case CONN_CONNECTING:
		if (w == &c->bio)
			connect_done(c);
		return;
	case CONN_FORWARDING:
		if (w == &c->cio)
			forward(c, revents & EV_READ, revents & EV_WRITE);
		else
			forward(c, revents & EV_WRITE, revents & EV_READ);
		return;
	}
}

/* ------------------------------------------------------------ accept */

static void
hold(struct px_conn *c)
{
	struct px_service *svc = c->svc;
	struct ev_loop *loop = svc->px->loop;

	c->state = CONN_HELD;
	svc->n_held++;
	ev_io_set(&c->cio, c->cio.fd, EV_READ);
	ev_io_start(loop, &c->cio);
	ev_timer_set(&c->timer, svc->px->conf->proxy.pause_timeout_ms / 1000.0, 0.);
	ev_timer_start(loop, &c->timer);
}

static void
refuse(struct px_service *svc, int fd, const struct sockaddr_storage *peer)
{
	long long now = st_monotonic_ms();
	char buf[64];

	svc->refused++;
	svc->refused_unlogged++;
	/*
	 * One line a second at most: a flood must not flood the log too.  The
	 * line is written before the close, so whoever sees the connection end
	 * finds the reason already in the log.
	 */
	if (now - svc->refused_logged_ms >= 1000) {
		st_warn("too many clients, closing new ones service=%s max_clients=%ld client=%s "
			"closed_since_last_line=%llu", svc->name, svc->px->conf->proxy.max_clients,
			addr_str(peer, buf, sizeof(buf)), svc->refused_unlogged);
		svc->refused_logged_ms = now;
		svc->refused_unlogged = 0;
	}
	close(fd);
}

static void
accept_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct px *px = w->data;

	(void)revents;
	px->accept_paused = false;
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (!px->svc_on[s])
			continue;
		for (size_t i = 0; i < px->svc[s].n_listeners; i++)
			ev_io_start(loop, &px->svc[s].listeners[i].io);
	}
}

/* Out of descriptors: stop accepting for a moment rather than spin. */
static void
accept_pause(struct px *px, int err)
{
	if (px->accept_paused)
		return;
	st_error("cannot accept clients, pausing accept for 500 ms error=%s", st_q(strerror(err)));
	px->accept_paused = true;
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (!px->svc_on[s])
			continue;
		for (size_t i = 0; i < px->svc[s].n_listeners; i++)
			ev_io_stop(px->loop, &px->svc[s].listeners[i].io);
	}
	ev_timer_init(&px->accept_retry, accept_retry_cb, 0.5, 0.);
	px->accept_retry.data = px;
	ev_timer_start(px->loop, &px->accept_retry);
}

static void
accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct px_listener *l = (struct px_listener *)w;
	struct px_service *svc = l->svc;
	struct px *px = svc->px;

	(void)revents;
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		int fd = accept4(w->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
				accept_pause(px, errno);
			else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				st_warn("accept failed service=%s listen=%s error=%s", svc->name,
					st_q(l->addr), st_q(strerror(errno)));
			return;
		}
		if (svc->n_clients >= (unsigned long)px->conf->proxy.max_clients) {
			refuse(svc, fd, &peer);
			continue;
		}
		set_sockopts(fd);
		struct px_conn *c = xcalloc(1, sizeof(*c));
		c->svc = svc;
		c->peer = peer;
		c->node = -1;
		c->up.pipe[0] = c->up.pipe[1] = -1;
		c->down.pipe[0] = c->down.pipe[1] = -1;
		c->since = c->active = ev_now(loop);
		ev_io_init(&c->cio, conn_cb, fd, 0);
		ev_io_init(&c->bio, conn_cb, -1, 0);
		c->cio.data = NULL;
		c->bio.data = c;
		ev_init(&c->timer, timer_cb);
		c->next = svc->conns;
		if (svc->conns != NULL)
			svc->conns->prev = c;
		svc->conns = c;
		svc->n_clients++;
		svc->accepted++;
		if (svc->paused || !px_backend_ready(svc))
			hold(c);
		else
			start_connect(c);
	}
}

/* ------------------------------------------------------------ service-wide */

void
px_conn_release(struct px_service *svc)
{
	struct px_conn *c, *next;

	if (svc->paused || !px_backend_ready(svc))
		return;
	for (c = svc->conns; c != NULL; c = next) {
		next = c->next;
		if (c->state == CONN_HELD)
			start_connect(c);
	}
}

void
px_conn_close_all(struct px_service *svc, bool only_stale, const char *why)
{
	struct px_conn *c, *next;
	unsigned n = 0;

	for (c = svc->conns; c != NULL; c = next) {
		next = c->next;
		if (only_stale && (c->state == CONN_HELD || c->node == svc->backend.node))
			continue;
		conn_free(c);
		n++;
	}
	svc->dropped += n;
	if (n > 0 || !only_stale)
		st_notice("closed client sessions service=%s count=%u reason=%s", svc->name, n,
			  st_q(why));
}

/* ------------------------------------------------------------ listeners */

static int
listen_one(struct px_service *svc, const char *text, struct px_listener *l, char **error_r)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	char *host = NULL, *why = NULL, port[8];
	int p, fd = -1, one = 1, rc;

	if (st_parse_hostport(text, &host, &p, &why) < 0) {
		st_set_error(error_r, "[proxy] %s_listen %s: %s", svc->name, text, why);
		free(why);
		return -1;
	}
	snprintf(port, sizeof(port), "%d", p);
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		st_set_error(error_r, "[proxy] %s_listen %s: %s", svc->name, text, gai_strerror(rc));
		free(host);
		return -1;
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		st_set_error(error_r, "[proxy] %s_listen %s: socket: %s", svc->name, text,
			     strerror(errno));
		goto fail;
	}
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (res->ai_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
		st_set_error(error_r, "[proxy] %s_listen %s: bind: %s", svc->name, text,
			     strerror(errno));
		goto fail;
	}
	if (listen(fd, 4096) < 0) {
		st_set_error(error_r, "[proxy] %s_listen %s: listen: %s", svc->name, text,
			     strerror(errno));
		goto fail;
	}
	l->svc = svc;
	l->addr = xstrdup(text);
	ev_io_init(&l->io, accept_cb, fd, EV_READ);
	ev_io_start(svc->px->loop, &l->io);
	freeaddrinfo(res);
	free(host);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	freeaddrinfo(res);
	free(host);
	return -1;
}

int
px_listen(struct px_service *svc, char **error_r)
{
	const struct st_conf *conf = svc->px->conf;
	int ni = st_conf_node_index(conf, svc->px->d->node->name);
	const char *spec = conf->proxy.listen[svc->id][ni];
	char *copy, *save = NULL;

	if (spec == NULL)
		return 0;
	/* Allocated once: libev keeps pointers to the watchers inside. */
	size_t n = 1;
	for (const char *p = spec; *p != '\0'; p++)
		n += *p == ',' || *p == ' ';
	svc->listeners = xcalloc(n, sizeof(*svc->listeners));
	copy = xstrdup(spec);
	for (char *tok = strtok_r(copy, ", ", &save); tok != NULL; tok = strtok_r(NULL, ", ", &save)) {
		if (listen_one(svc, tok, &svc->listeners[svc->n_listeners], error_r) < 0) {
			free(copy);
			return -1;
		}
		st_info("listening service=%s listen=%s", svc->name, st_q(tok));
		svc->n_listeners++;
	}
	free(copy);
	return 0;
}

void
px_unlisten(struct px_service *svc)
{
	for (size_t i = 0; i < svc->n_listeners; i++) {
		ev_io_stop(svc->px->loop, &svc->listeners[i].io);
		close(svc->listeners[i].io.fd);
		free(svc->listeners[i].addr);
	}
	free(svc->listeners);
	svc->listeners = NULL;
	svc->n_listeners = 0;
}
