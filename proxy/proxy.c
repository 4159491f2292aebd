/*
 * standin-proxy: the service address that always reaches the master
 * (doc/architecture.md, section 5.4).
 *
 * One listener per configured service address of this node.  Clients are
 * forwarded (forward.c) to that service's endpoint on the master named by
 * this node's cluster state, which is watched for changes.  When the master
 * changes, new clients go to the new one and sessions still on the old one
 * are closed after [proxy] drain_time.  The status socket doubles as the
 * admin socket: pause, resume, switch and drop (see standin-proxy(8)).
 */
#include "config.h"

#include "proxy/proxy.h"
#include "proxy/pxparse.h"
#include "lib/log.h"

#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define STATE_POLL_S 1.0

static const char *
endpoint_of(const struct st_conf *conf, enum st_service svc, int node)
{
	switch (svc) {
	case ST_SVC_PG:
		return conf->pg.endpoint[node];
	case ST_SVC_LDAP:
		return conf->ldap.endpoint[node];
	default:
		return conf->imap.endpoint[node];
	}
}

bool
px_backend_ready(const struct px_service *svc)
{
	return svc->backend.node >= 0;
}

static void
backend_clear(struct px_backend *b)
{
	free(b->host);
	free(b->desc);
	memset(b, 0, sizeof(*b));
	b->node = -1;
}

/*
 * Resolve the endpoint of SVC on NODE into B.  Node addresses are normally
 * numeric; a host name is looked up here, once per routing change.
 */
static int
backend_resolve(const struct st_conf *conf, enum st_service svc, int node, struct px_backend *b,
		char **error_r)
{
	const char *ep = endpoint_of(conf, svc, node);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	char port[8];
	int rc;

	memset(b, 0, sizeof(*b));
	b->node = -1;
	if (ep == NULL) {
		st_set_error(error_r, "node %s has no %s endpoint", conf->nodes[node].name,
			     st_service_name(svc));
		return -1;
	}
	const struct st_endpoint *pe = st_conf_endpoint(conf, svc, node);
	b->host = xstrdup(pe->host);
	b->port = pe->port;
	b->tls = pe->tls;
	snprintf(port, sizeof(port), "%d", b->port);
	rc = getaddrinfo(b->host, port, &hints, &res);
	if (rc != 0) {
		st_set_error(error_r, "%s endpoint of node %s, %s: %s", st_service_name(svc),
			     conf->nodes[node].name, b->host, gai_strerror(rc));
		backend_clear(b);
		return -1;
	}
	memcpy(&b->addr, res->ai_addr, res->ai_addrlen);
	b->addr_len = res->ai_addrlen;
	freeaddrinfo(res);
	b->node = node;
	b->desc = xasprintf(strchr(b->host, ':') ? "node=%s backend=[%s]:%d" : "node=%s backend=%s:%d",
			    conf->nodes[node].name, b->host, b->port);
	return 0;
}

static void
drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct px_service *svc = w->data;

	(void)loop;
	(void)revents;
	px_conn_close_all(svc, true, "drain time over after the backend moved");
}

/* Send new clients of SVC to NODE (-1: none, hold them). */
static void
route(struct px_service *svc, int node, const char *why)
{
	struct px *px = svc->px;
	struct px_backend nb;
	char *error = NULL;
	int old = svc->backend.node;

	if (node == old && node >= 0)
		return;
	if (node < 0) {
		backend_clear(&svc->backend);
	} else if (backend_resolve(px->conf, svc->id, node, &nb, &error) < 0) {
		st_daemon_set_error(px->d, "service %s: cannot route to node %s: %s", svc->name,
				    px->conf->nodes[node].name, error);
		free(error);
		backend_clear(&svc->backend);
	} else {
		backend_clear(&svc->backend);
		svc->backend = nb;
	}
	st_notice("route service=%s %s previous=%s reason=%s", svc->name,
		  svc->backend.desc ? svc->backend.desc : "backend=none",
		  old >= 0 ? px->conf->nodes[old].name : "none", st_q(why));
	if (old >= 0 && old != svc->backend.node) {
		if (px->conf->proxy.drain_time_ms == 0) {
			px_conn_close_all(svc, true, "backend moved to another node");
		} else {
			ev_timer_stop(px->loop, &svc->drain);
			ev_timer_set(&svc->drain, px->conf->proxy.drain_time_ms / 1000.0, 0.);
			ev_timer_start(px->loop, &svc->drain);
		}
	}
	px_conn_release(svc);
}

static void
update_state_name(struct px *px)
{
	bool any = false;

	for (int s = 0; s < ST_SVC_COUNT; s++)
		any |= px->svc_on[s] && px->svc[s].paused;
	if (!px->cs_valid)
		px->d->state = "no cluster state";
	else
		px->d->state = any ? "paused" : "running";
}

/* The cluster state taken changed (or became unreadable): route every
 * service to its master. */
static void
state_changed(struct st_cstate_follower *f, void *data)
{
	struct px *px = data;

	if (f->error != NULL) {
		st_daemon_set_error(px->d, "cluster state: %s%s", f->error,
				    f->valid ? " (keeping the last one taken)" : "");
		px->cs_error_shown = true;
	} else if (px->cs_error_shown) {
		st_daemon_set_error(px->d, NULL);	/* only the error this set */
		px->cs_error_shown = false;
	}
	if (!f->valid || (px->cs_valid && st_cstate_same(&f->cs, &px->cs))) {
		update_state_name(px);
		return;
	}
	const struct st_cstate *cs = &f->cs;
	int node[ST_SVC_COUNT];
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		/* Each service to its own master (a switchover may move one). */
		const char *m = st_cstate_master_of(cs, s);
		node[s] = st_conf_node_index(px->conf, m);
		if (px->svc_on[s] && node[s] < 0) {
			st_daemon_set_error(px->d, "cluster state names master %s, not a node of %s",
					    m, px->conf->path);
			px->cs_error_shown = true;
			return;
		}
	}
	bool first = !px->cs_valid;
	px->cs = *cs;
	px->cs_valid = true;
	char why[96];
	snprintf(why, sizeof(why), "%s epoch %llu", first ? "cluster state" : "cluster state changed",
		 (unsigned long long)cs->epoch);
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (!px->svc_on[s])
			continue;
		px->svc[s].switched = false;
		route(&px->svc[s], node[s], why);
	}
	update_state_name(px);
}

/* ------------------------------------------------------------ admin */


/* The command's services: one, or all the proxied ones. */
static int
services_of(struct px *px, const struct px_cmd *cmd, struct px_service **out, char **error_r)
{
	int n = 0;

	if (cmd->service != PX_ALL_SERVICES) {
		if (!px->svc_on[cmd->service]) {
			st_set_error(error_r, "service %s is not proxied on this node",
				     st_service_name(cmd->service));
			return -1;
		}
		out[n++] = &px->svc[cmd->service];
		return n;
	}
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (px->svc_on[s])
			out[n++] = &px->svc[s];
	}
	return n;
}

static void
reply_json(struct st_buf *reply, json_t *obj)
{
	char *s = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);

	st_buf_puts(reply, s != NULL ? s : "{\"error\":\"cannot encode the reply\"}");
	st_buf_puts(reply, "\n");
	free(s);
	json_decref(obj);
}

static void
reply_error(struct st_buf *reply, const char *msg)
{
	json_t *obj = json_object();

	json_object_set_new(obj, "ok", json_false());
	json_object_set_new(obj, "error", json_string(msg));
	reply_json(reply, obj);
}

static void
admin(struct px *px, const char *verb, const char *args, struct st_buf *reply)
{
	char *line = xasprintf("%s %s", verb, args), *error = NULL;
	struct px_service *svcs[ST_SVC_COUNT];
	struct px_cmd cmd;
	json_t *obj, *arr;
	int n;

	if (px_cmd_parse(line, &cmd, &error) < 0 ||
	    (n = services_of(px, &cmd, svcs, &error)) < 0) {
		reply_error(reply, error);
		goto out;
	}
	obj = json_object();
	json_object_set_new(obj, "ok", json_true());
	arr = json_array();
	for (int i = 0; i < n; i++) {
		struct px_service *svc = svcs[i];
		json_t *o = json_object();

		json_object_set_new(o, "service", json_string(svc->name));
		switch (cmd.verb) {
		case PX_CMD_PAUSE:
			if (!svc->paused) {
				svc->paused = true;
				svc->paused_ms = st_monotonic_ms();
				st_notice("paused service=%s: new clients are held", svc->name);
			}
			break;
		case PX_CMD_RESUME:
			if (svc->paused) {
				svc->paused = false;
				st_notice("resumed service=%s held=%u paused_ms=%lld", svc->name,
					  svc->n_held, st_monotonic_ms() - svc->paused_ms);
				px_conn_release(svc);
			}
			break;
		case PX_CMD_SWITCH: {
			int node = st_conf_node_index(px->conf, cmd.node);
			if (node < 0) {
				json_decref(o);
				json_decref(arr);
				json_decref(obj);
				error = xasprintf("no node %s in %s", cmd.node, px->conf->path);
				reply_error(reply, error);
				goto out;
			}
			svc->switched = true;
			route(svc, node, "switch command");
			if (svc->backend.node != node) {
				json_decref(o);
				json_decref(arr);
				json_decref(obj);
				reply_error(reply, px->d->last_error ? px->d->last_error : "switch failed");
				goto out;
			}
			break;
		}
		case PX_CMD_DROP: {
			unsigned long long before = svc->dropped;
			px_conn_close_all(svc, false, "drop command");
			json_object_set_new(o, "closed", json_integer((json_int_t)(svc->dropped - before)));
			break;
		}
		case PX_CMD_STATUS:
			break;
		}
		json_object_set_new(o, "paused", json_boolean(svc->paused));
		json_object_set_new(o, "backend", svc->backend.node >= 0 ?
				    json_string(px->conf->nodes[svc->backend.node].name) : json_null());
		json_array_append_new(arr, o);
	}
	json_object_set_new(obj, "services", arr);
	update_state_name(px);
	reply_json(reply, obj);
out:
	free(error);
	free(line);
}

static void
cmd_pause(void *ctx, const char *args, struct st_buf *reply)
{
	admin(((struct st_daemon *)ctx)->priv, "pause", args, reply);
}

static void
cmd_resume(void *ctx, const char *args, struct st_buf *reply)
{
	admin(((struct st_daemon *)ctx)->priv, "resume", args, reply);
}

static void
cmd_switch(void *ctx, const char *args, struct st_buf *reply)
{
	admin(((struct st_daemon *)ctx)->priv, "switch", args, reply);
}

static void
cmd_drop(void *ctx, const char *args, struct st_buf *reply)
{
	admin(((struct st_daemon *)ctx)->priv, "drop", args, reply);
}

static const struct st_ctl_command commands[] = {
	{ "pause", ST_CTL_CHANGES, cmd_pause, "pause SERVICE|all: hold new clients until resume" },
	{ "resume", ST_CTL_CHANGES, cmd_resume, "resume SERVICE|all: forward held and new clients" },
	{ "switch", ST_CTL_CHANGES, cmd_switch, "switch SERVICE NODE: send clients to NODE (until the state changes)" },
	{ "drop", ST_CTL_CHANGES, cmd_drop, "drop SERVICE|all: close every client session of the service" },
	{ NULL, 0, NULL, NULL },
};

/* ------------------------------------------------------------ status */

static void
status(struct st_daemon *d, json_t *obj)
{
	struct px *px = d->priv;
	json_t *svcs = json_object();

	json_object_set_new(obj, "epoch", px->cs_valid ? json_integer((json_int_t)px->cs.epoch)
						       : json_null());
	json_object_set_new(obj, "master", px->cs_valid ? json_string(px->cs.master) : json_null());
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		struct px_service *svc = &px->svc[s];
		json_t *o, *l, *h;

		if (!px->svc_on[s])
			continue;
		o = json_object();
		l = json_array();
		for (size_t i = 0; i < svc->n_listeners; i++)
			json_array_append_new(l, json_string(svc->listeners[i].addr));
		json_object_set_new(o, "listen", l);
		if (svc->backend.node >= 0) {
			json_t *b = json_object();
			char addr[300];
			snprintf(addr, sizeof(addr), strchr(svc->backend.host, ':') ? "[%s]:%d" : "%s:%d",
				 svc->backend.host, svc->backend.port);
			json_object_set_new(b, "node", json_string(px->conf->nodes[svc->backend.node].name));
			json_object_set_new(b, "address", json_string(addr));
			json_object_set_new(b, "up", svc->health[svc->backend.node].known ?
					    json_boolean(svc->health[svc->backend.node].up) : json_null());
			json_object_set_new(o, "backend", b);
		} else {
			json_object_set_new(o, "backend", json_null());
		}
		json_object_set_new(o, "switched", json_boolean(svc->switched));
		json_object_set_new(o, "paused", json_boolean(svc->paused));
		json_object_set_new(o, "paused_ms", svc->paused ?
				    json_integer(st_monotonic_ms() - svc->paused_ms) : json_null());
		json_object_set_new(o, "clients", json_integer(svc->n_clients));
		json_object_set_new(o, "held", json_integer(svc->n_held));
		json_object_set_new(o, "accepted", json_integer((json_int_t)svc->accepted));
		json_object_set_new(o, "refused", json_integer((json_int_t)svc->refused));
		json_object_set_new(o, "connect_errors", json_integer((json_int_t)svc->connect_errors));
		json_object_set_new(o, "timeouts", json_integer((json_int_t)svc->timeouts));
		json_object_set_new(o, "errors", json_integer((json_int_t)svc->errors));
		json_object_set_new(o, "dropped", json_integer((json_int_t)svc->dropped));
		json_object_set_new(o, "bytes_up", json_integer((json_int_t)svc->bytes_up));
		json_object_set_new(o, "bytes_down", json_integer((json_int_t)svc->bytes_down));
		h = json_object();
		for (size_t n = 0; n < px->conf->n_nodes; n++) {
			struct px_health *ph = &svc->health[n];
			json_t *ho = json_object();
			json_object_set_new(ho, "up", ph->known ? json_boolean(ph->up) : json_null());
			json_object_set_new(ho, "latency_ms", ph->known && ph->up ?
					    json_integer(ph->latency_ms) : json_null());
			json_object_set_new(ho, "checks", json_integer((json_int_t)ph->checks));
			json_object_set_new(ho, "failures", json_integer((json_int_t)ph->failures));
			json_object_set_new(ho, "error", ph->error ? json_string(ph->error) : json_null());
			json_object_set_new(h, px->conf->nodes[n].name, ho);
		}
		json_object_set_new(o, "health", h);
		json_object_set_new(svcs, svc->name, o);
	}
	json_object_set_new(obj, "services", svcs);
	json_object_set_new(obj, "pipes_open", json_integer((json_int_t)px->pipes_open));
	json_object_set_new(obj, "buffers_in_use", json_integer((json_int_t)px->bufs_out));
}

static void
metrics(struct st_daemon *d, struct st_buf *out)
{
	struct px *px = d->priv;
	char labels[128];

	for (int s = 0; s < ST_SVC_COUNT; s++) {
		struct px_service *svc = &px->svc[s];
		if (!px->svc_on[s])
			continue;
		snprintf(labels, sizeof(labels), "node=\"%s\",service=\"%s\"", d->node->name, svc->name);
		st_metric(out, "standin_proxy_clients", "gauge", "Client connections now.", labels,
			  svc->n_clients);
		st_metric(out, "standin_proxy_held_clients", "gauge", "Clients held by a pause.",
			  labels, svc->n_held);
		st_metric(out, "standin_proxy_paused", "gauge", "1 while the service is paused.",
			  labels, svc->paused);
		st_metric(out, "standin_proxy_accepted_total", "counter", "Clients accepted.", labels,
			  (double)svc->accepted);
		st_metric(out, "standin_proxy_refused_total", "counter",
			  "Clients closed at once over max_clients.", labels, (double)svc->refused);
		st_metric(out, "standin_proxy_connect_errors_total", "counter",
			  "Backend connections that failed or timed out.", labels,
			  (double)svc->connect_errors);
		st_metric(out, "standin_proxy_bytes_up_total", "counter",
			  "Bytes from clients to the backend.", labels, (double)svc->bytes_up);
		st_metric(out, "standin_proxy_bytes_down_total", "counter",
			  "Bytes from the backend to clients.", labels, (double)svc->bytes_down);
		if (svc->backend.node >= 0 && svc->health[svc->backend.node].known)
			st_metric(out, "standin_proxy_backend_up", "gauge",
				  "1 when the last health check of the backend passed.", labels,
				  svc->health[svc->backend.node].up);
	}
}

/* ------------------------------------------------------------ life */

/* Many clients need many descriptors: take the hard limit. */
static void
raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		st_info("descriptor limit nofile=%llu", (unsigned long long)rl.rlim_cur);
}

static int
start(struct st_daemon *d, char **error_r)
{
	struct px *px = d->priv;
	int ni = st_conf_node_index(d->conf, d->node->name);
	bool any = false;

	px->d = d;
	px->loop = d->loop;
	px->conf = d->conf;
	if (!d->conf->proxy_present) {
		st_set_error(error_r, "%s has no [proxy] section", d->conf->path);
		return -1;
	}
	raise_nofile();
	px->splice_ok = d->conf->proxy.splice;
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		struct px_service *svc = &px->svc[s];
		svc->px = px;
		svc->id = (enum st_service)s;
		svc->name = st_service_name(s);
		svc->backend.node = -1;
		ev_init(&svc->drain, drain_cb);
		svc->drain.data = svc;
		px->svc_on[s] = d->conf->proxy.listen[s][ni] != NULL;
		if (!px->svc_on[s])
			continue;
		any = true;
		if (px_listen(svc, error_r) < 0)
			return -1;
	}
	if (!any) {
		st_set_error(error_r, "[proxy] sets no pg_listen, ldap_listen or imap_listen for node %s",
			     d->node->name);
		return -1;
	}
	st_cstate_follower_init(&px->follow, d->node);
	st_cstate_follow(&px->follow);
	state_changed(&px->follow, px);
	st_cstate_watch(&px->follow, d->loop, STATE_POLL_S, state_changed, px);
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (px->svc_on[s])
			px_health_start(&px->svc[s]);
	}
	update_state_name(px);
	return 0;
}

static void
stop(struct st_daemon *d)
{
	struct px *px = d->priv;

	for (int s = 0; s < ST_SVC_COUNT; s++) {
		struct px_service *svc = &px->svc[s];
		if (!px->svc_on[s])
			continue;
		px_unlisten(svc);
		px_health_stop(svc);
		ev_timer_stop(px->loop, &svc->drain);
		while (svc->conns != NULL)
			px_conn_close_all(svc, false, "stopping");
		backend_clear(&svc->backend);
	}
	st_cstate_follower_free(&px->follow);
	ev_timer_stop(px->loop, &px->accept_retry);
	px_pools_free(px);
	px->svc_on[0] = px->svc_on[1] = px->svc_on[2] = false;
}

static bool
same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/*
 * SIGHUP: timeouts, limits and endpoints are taken; the node list and this
 * node's listen addresses need a restart.
 */
static int
reload(struct st_daemon *d, struct st_conf *nc, char **error_r)
{
	struct px *px = d->priv;
	const struct st_conf *oc = d->conf;
	int ni = st_conf_node_index(oc, d->node->name);

	if (!nc->proxy_present) {
		st_set_error(error_r, "the [proxy] section is gone");
		return -1;
	}
	if (nc->n_nodes != oc->n_nodes) {
		st_set_error(error_r, "the list of nodes changed: restart standin-proxy");
		return -1;
	}
	for (size_t n = 0; n < oc->n_nodes; n++) {
		if (strcmp(nc->nodes[n].name, oc->nodes[n].name) != 0) {
			st_set_error(error_r, "the list of nodes changed: restart standin-proxy");
			return -1;
		}
	}
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (!same_str(nc->proxy.listen[s][ni], oc->proxy.listen[s][ni])) {
			st_set_error(error_r, "[proxy] %s_listen changed: restart standin-proxy",
				     st_service_name(s));
			return -1;
		}
	}
	px->conf = nc;
	px->splice_ok = nc->proxy.splice;
	/* Endpoints may have changed: resolve every backend again. */
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		struct px_service *svc = &px->svc[s];
		int node = svc->backend.node;
		if (!px->svc_on[s] || node < 0)
			continue;
		if (!same_str(endpoint_of(nc, s, node), endpoint_of(oc, s, node))) {
			svc->backend.node = -1;
			route(svc, node, "endpoint changed by reload");
		}
		px_health_stop(svc);
		px_health_start(svc);
	}
	return 0;
}

static const struct st_daemon_ops ops = {
	.program = ST_PROGRAM_PROXY,
	.summary = "route PostgreSQL, LDAP and IMAP clients to the cluster's master",
	.start = start,
	.stop = stop,
	.reload = reload,
	.status = status,
	.metrics = metrics,
	.commands = commands,
};

int
main(int argc, char **argv)
{
	static struct px px;

	return st_daemon_main(argc, argv, &ops, &px);
}
