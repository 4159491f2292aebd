/*
 * health.c: periodic checks of every node's endpoint of each proxied
 * service, on their own connections (never counted against clients).
 *
 *   pg    connect, send a GSSENCRequest, expect one byte ('N' or 'G'): the
 *         postmaster answers it itself and logs nothing when we then close
 *   imap  connect, read the greeting: "* OK" or "* PREAUTH"
 *   ldap, and TLS endpoints: the connection is accepted
 *
 * A check must end within connect_timeout and 3/4 of health_interval.  A change
 * of state is logged; a dead master is an error in the log and in status,
 * but the proxy does not fail over on its own (standinctl failover does).
 */
#include "config.h"

#include "proxy/proxy.h"
#include "proxy/pxparse.h"
#include "lib/log.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const uint8_t gssenc_request[8] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30 };

static void check_start(struct px_health *h);

static void
check_end(struct px_health *h, const char *error)
{
	struct px_service *svc = h->svc;
	struct px *px = svc->px;
	const char *node = px->conf->nodes[h->node].name;
	bool was_up = h->up, was_known = h->known;

	ev_io_stop(px->loop, &h->io);
	ev_timer_stop(px->loop, &h->timer);
	if (h->fd >= 0) {
		close(h->fd);
		h->fd = -1;
	}
	h->checks++;
	h->known = true;
	h->up = error == NULL;
	if (error != NULL) {
		h->failures++;
		if (h->error == NULL || strcmp(h->error, error) != 0) {
			free(h->error);
			h->error = xstrdup(error);
		}
	} else {
		h->latency_ms = (long)(st_monotonic_ms() - h->started_ms);
		free(h->error);
		h->error = NULL;
	}
	if (h->up && (!was_known || !was_up)) {
		st_notice("backend up service=%s node=%s latency_ms=%ld", svc->name, node,
			  h->latency_ms);
	} else if (!h->up && (!was_known || was_up)) {
		if (svc->backend.node == h->node)
			st_error("backend of the master is down service=%s node=%s error=%s "
				 "(the proxy does not fail over by itself)", svc->name, node,
				 st_q(error));
		else
			st_warn("backend down service=%s node=%s error=%s", svc->name, node,
				st_q(error));
	}
}

static void
check_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct px_health *h = (struct px_health *)((char *)w - offsetof(struct px_health, timer));

	(void)loop;
	(void)revents;
	check_end(h, h->step == 0 ? "connect timed out" : "no answer in time");
}

static void
check_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct px_health *h = (struct px_health *)w;
	enum st_service id = h->svc->id;
	bool tls = false;
	char msg[128];

	(void)revents;
	if (h->step == 0) {
		int err = 0;
		socklen_t len = sizeof(err);
		if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err == EINPROGRESS)
			return;
		if (err != 0) {
			snprintf(msg, sizeof(msg), "connect: %s", strerror(err));
			check_end(h, msg);
			return;
		}
		tls = st_conf_endpoint(h->svc->px->conf, id, h->node)->tls;
		if (id == ST_SVC_LDAP || tls) {
			check_end(h, NULL);
			return;
		}
		if (id == ST_SVC_PG &&
		    send(h->fd, gssenc_request, sizeof(gssenc_request), MSG_NOSIGNAL) !=
		    (ssize_t)sizeof(gssenc_request)) {
			snprintf(msg, sizeof(msg), "send: %s", strerror(errno));
			check_end(h, msg);
			return;
		}
		h->step = 1;
		h->rlen = 0;
		ev_io_stop(loop, &h->io);
		ev_io_set(&h->io, h->fd, EV_READ);
		ev_io_start(loop, &h->io);
		return;
	}
	ssize_t n = recv(h->fd, h->rbuf + h->rlen, sizeof(h->rbuf) - 1 - h->rlen, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		snprintf(msg, sizeof(msg), "%s", n == 0 ? "closed before answering"
							 : strerror(errno));
		check_end(h, msg);
		return;
	}
	h->rlen += (size_t)n;
	h->rbuf[h->rlen] = '\0';
	if (id == ST_SVC_PG) {
		if (h->rbuf[0] == 'N' || h->rbuf[0] == 'G')
			check_end(h, NULL);
		else
			check_end(h, "unexpected answer to GSSENCRequest (not PostgreSQL?)");
		return;
	}
	/* IMAP: the greeting line. */
	if (strchr(h->rbuf, '\n') == NULL && h->rlen < sizeof(h->rbuf) - 1)
		return;
	if (st_str_has_prefix(h->rbuf, "* OK") || st_str_has_prefix(h->rbuf, "* PREAUTH"))
		check_end(h, NULL);
	else
		check_end(h, "no IMAP greeting (* OK)");
}

static void
check_start(struct px_health *h)
{
	struct px_service *svc = h->svc;
	struct px *px = svc->px;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	char port[8], msg[160];
	int rc;
	const struct st_endpoint *ep = st_conf_endpoint(px->conf, svc->id, h->node);

	if (h->fd >= 0)
		check_end(h, "no answer within health_interval");
	if (ep->host == NULL)
		return;
	h->started_ms = st_monotonic_ms();
	h->step = 0;
	snprintf(port, sizeof(port), "%d", ep->port);
	rc = getaddrinfo(ep->host, port, &hints, &res);
	if (rc != 0) {
		snprintf(msg, sizeof(msg), "resolve: %s", gai_strerror(rc));
		check_end(h, msg);
		return;
	}
	h->fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (h->fd < 0) {
		freeaddrinfo(res);
		snprintf(msg, sizeof(msg), "socket: %s", strerror(errno));
		check_end(h, msg);
		return;
	}
	if (connect(h->fd, res->ai_addr, res->ai_addrlen) < 0 && errno != EINPROGRESS) {
		freeaddrinfo(res);
		snprintf(msg, sizeof(msg), "connect: %s", strerror(errno));
		check_end(h, msg);
		return;
	}
	freeaddrinfo(res);
	long limit = px->conf->proxy.connect_timeout_ms;
	/* Ends before the next round starts. */
	if (px->conf->proxy.health_interval_ms * 3 / 4 < limit)
		limit = px->conf->proxy.health_interval_ms * 3 / 4;
	ev_io_set(&h->io, h->fd, EV_WRITE);
	ev_io_start(px->loop, &h->io);
	ev_timer_set(&h->timer, limit / 1000.0, 0.);
	ev_timer_start(px->loop, &h->timer);
}

static void
round_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct px_service *svc = w->data;

	(void)loop;
	(void)revents;
	for (size_t n = 0; n < svc->px->conf->n_nodes; n++)
		check_start(&svc->health[n]);
}

void
px_health_start(struct px_service *svc)
{
	for (size_t n = 0; n < svc->px->conf->n_nodes; n++) {
		struct px_health *h = &svc->health[n];
		h->svc = svc;
		h->node = (int)n;
		h->fd = -1;
		ev_init(&h->io, check_io_cb);
		ev_init(&h->timer, check_timeout_cb);
	}
	ev_timer_init(&svc->health_timer, round_cb, 0., svc->px->conf->proxy.health_interval_ms / 1000.0);
	svc->health_timer.data = svc;
	ev_timer_start(svc->px->loop, &svc->health_timer);
}

void
px_health_stop(struct px_service *svc)
{
	ev_timer_stop(svc->px->loop, &svc->health_timer);
	for (size_t n = 0; n < svc->px->conf->n_nodes; n++) {
		struct px_health *h = &svc->health[n];
		ev_io_stop(svc->px->loop, &h->io);
		ev_timer_stop(svc->px->loop, &h->timer);
		if (h->fd >= 0)
			close(h->fd);
		h->fd = -1;
		free(h->error);
		h->error = NULL;
	}
}
