/*
 * cstate.c: the cluster state file.
 */
#include "config.h"

#include "lib/cstate.h"
#include "lib/durable.h"
#include "lib/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#define CSTATE_MAX_SIZE 65536
#define CHECKSUM_KEY "checksum = sha256:"

char *
st_cstate_path(const struct st_node *node)
{
	return xasprintf("%s/%s", node->state_dir, ST_CSTATE_FILE);
}

void
st_cstate_init(struct st_cstate *st, const struct st_conf *conf, const char *master)
{
	memset(st, 0, sizeof(*st));
	st->epoch = 1;
	snprintf(st->cluster, sizeof(st->cluster), "%s", conf->cluster_name);
	snprintf(st->master, sizeof(st->master), "%s", master);
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (conf->service_enabled[s])
			st_cstate_set_master_of(st, conf, s, master);
	}
	st->updated = time(NULL);
}

static void
sha256_hex(const char *data, size_t len, char out[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
		/* libcrypto failing to hash is not recoverable. */
		abort();
	}
	for (unsigned i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

void
st_cstate_format(const struct st_cstate *st, struct st_buf *out)
{
	size_t start = out->len;
	char hex[65];
	struct tm tm;
	char stamp[32];

	gmtime_r(&st->updated, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	st_buf_printf(out, "# standin cluster state: written by standin, do not edit\n");
	st_buf_printf(out, "version = %d\n", ST_CSTATE_VERSION);
	st_buf_printf(out, "cluster = %s\n", st->cluster);
	st_buf_printf(out, "epoch = %" PRIu64 "\n", st->epoch);
	st_buf_printf(out, "master = %s\n", st->master);
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		st_buf_printf(out, "%s =", st_service_name(s));
		for (size_t i = 0; i < st->n_edges[s]; i++)
			st_buf_printf(out, "%s%s>%s", i ? "," : " ", st->edges[s][i].source,
				      st->edges[s][i].target);
		st_buf_puts(out, "\n");
	}
	st_buf_printf(out, "updated = %s\n", stamp);
	sha256_hex(out->data + start, out->len - start, hex);
	st_buf_printf(out, CHECKSUM_KEY "%s\n", hex);
}

static bool
state_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > ST_NAME_MAX)
		return false;
	for (; *s != '\0'; s++) {
		if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
			return false;
	}
	return true;
}

static int
parse_edges(const char *value, struct st_cstate *st, int svc)
{
	char *copy = xstrdup(value), *save = NULL;
	int ret = 0;

	st->n_edges[svc] = 0;
	for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		char *gt = strchr(tok, '>');

		if (gt == NULL || st->n_edges[svc] == ST_MAX_NODES) {
			ret = -1;
			break;
		}
		*gt = '\0';
		if (!state_name_ok(tok) || !state_name_ok(gt + 1) || strcmp(tok, gt + 1) == 0) {
			ret = -1;
			break;
		}
		struct st_edge *e = &st->edges[svc][st->n_edges[svc]++];
		snprintf(e->source, sizeof(e->source), "%s", tok);
		snprintf(e->target, sizeof(e->target), "%s", gt + 1);
	}
	free(copy);
	return ret;
}

int
st_cstate_parse(const char *name, const char *data, size_t len, struct st_cstate *st,
		char **error_r)
{
	const char *ck, *p, *end;
	char hex[65];
	unsigned line = 0;
	bool seen_version = false, seen_epoch = false, seen_master = false, seen_cluster = false;

	memset(st, 0, sizeof(*st));
	if (memchr(data, '\0', len) != NULL) {
		st_set_error(error_r, "%s: NUL byte in the state file (corrupt)", name);
		return -1;
	}
	/* The checksum line must be the last line and cover everything before it. */
	ck = NULL;
	for (p = data; p < data + len;) {
		const char *nl = memchr(p, '\n', (size_t)(data + len - p));
		if (nl == NULL)
			break;
		if ((size_t)(nl - p) > strlen(CHECKSUM_KEY) &&
		    strncmp(p, CHECKSUM_KEY, strlen(CHECKSUM_KEY)) == 0)
			ck = p;
		p = nl + 1;
	}
	if (ck == NULL) {
		st_set_error(error_r, "%s: no checksum line: the file is torn or was not written "
			     "by standin", name);
		return -1;
	}
	end = memchr(ck, '\n', (size_t)(data + len - ck));
	if (end + 1 != data + len || (size_t)(end - ck) != strlen(CHECKSUM_KEY) + 64) {
		st_set_error(error_r, "%s: the checksum line is not the last line or is malformed",
			     name);
		return -1;
	}
	sha256_hex(data, (size_t)(ck - data), hex);
	if (strncmp(ck + strlen(CHECKSUM_KEY), hex, 64) != 0) {
		st_set_error(error_r, "%s: checksum mismatch: the file is damaged or was edited",
			     name);
		return -1;
	}

	for (p = data; p < ck;) {
		const char *nl = memchr(p, '\n', (size_t)(ck - p));
		char *l = xstrndup(p, (size_t)(nl - p));
		char *eq, *key, *value;
		int bad = 0;

		p = nl + 1;
		line++;
		if (l[0] == '#' || l[0] == '\0') {
			free(l);
			continue;
		}
		eq = strstr(l, " = ");
		if (eq == NULL)
			eq = strstr(l, " =");
		if (eq == NULL) {
			st_set_error(error_r, "%s:%u: expected key = value", name, line);
			free(l);
			return -1;
		}
		*eq = '\0';
		key = l;
		value = eq + 2;
		while (*value == ' ')
			value++;

		enum st_service svc;
		if (strcmp(key, "version") == 0) {
			bad = strcmp(value, "1") != 0;
			seen_version = true;
		} else if (strcmp(key, "cluster") == 0) {
			bad = !state_name_ok(value);
			snprintf(st->cluster, sizeof(st->cluster), "%s", value);
			seen_cluster = true;
		} else if (strcmp(key, "epoch") == 0) {
			char *e;
			errno = 0;
			st->epoch = strtoull(value, &e, 10);
			bad = errno != 0 || *e != '\0' || !isdigit((unsigned char)value[0]) ||
			      st->epoch == 0;
			seen_epoch = true;
		} else if (strcmp(key, "master") == 0) {
			bad = !state_name_ok(value);
			snprintf(st->master, sizeof(st->master), "%s", value);
			seen_master = true;
		} else if (st_service_parse(key, &svc) == 0) {
			bad = parse_edges(value, st, (int)svc) < 0;
		} else if (strcmp(key, "updated") == 0) {
			struct tm tm = { 0 };
			const char *e = strptime(value, "%Y-%m-%dT%H:%M:%SZ", &tm);
			bad = e == NULL || *e != '\0';
			st->updated = bad ? 0 : timegm(&tm);
		} else {
			st_set_error(error_r, "%s:%u: unknown key \"%s\"", name, line, key);
			free(l);
			return -1;
		}
		if (bad) {
			st_set_error(error_r, "%s:%u: bad value for %s", name, line, key);
			free(l);
			return -1;
		}
		free(l);
	}
	if (!seen_version || !seen_epoch || !seen_master || !seen_cluster) {
		st_set_error(error_r, "%s: missing version, cluster, epoch or master", name);
		return -1;
	}
	return 0;
}

int
st_cstate_load(const char *path, struct st_cstate *st, char **error_r)
{
	char *data = NULL;
	size_t len = 0;
	int ret;

	if (access(path, F_OK) < 0 && errno == ENOENT)
		return 1;
	if (st_read_file(path, CSTATE_MAX_SIZE, &data, &len, error_r) < 0)
		return -1;
	ret = st_cstate_parse(path, data, len, st, error_r);
	free(data);
	return ret;
}

int
st_cstate_save(const char *path, const struct st_cstate *st, char **error_r)
{
	struct st_buf b;
	int ret;

	st_buf_init(&b);
	st_cstate_format(st, &b);
	ret = st_durable_write(path, b.data, b.len, 0644, error_r);
	st_buf_free(&b);
	return ret;
}

int
st_cstate_check(const struct st_cstate *st, const struct st_conf *conf, char **error_r)
{
	if (strcmp(st->cluster, conf->cluster_name) != 0) {
		st_set_error(error_r, "cluster state is for cluster \"%s\", the configuration for \"%s\"",
			     st->cluster, conf->cluster_name);
		return -1;
	}
	if (st_conf_node(conf, st->master) == NULL) {
		st_set_error(error_r, "cluster state names master \"%s\", which is not a node of %s",
			     st->master, conf->path);
		return -1;
	}
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		for (size_t i = 0; i < st->n_edges[s]; i++) {
			const struct st_edge *e = &st->edges[s][i];

			if (st_conf_node(conf, e->source) == NULL || st_conf_node(conf, e->target) == NULL) {
				st_set_error(error_r, "cluster state direction %s %s>%s names a node "
					     "not in %s", st_service_name(s), e->source, e->target,
					     conf->path);
				return -1;
			}
		}
	}
	return 0;
}

const char *
st_cstate_role(const struct st_cstate *st, const char *node)
{
	if (strcmp(st->master, node) == 0)
		return "master";
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		for (size_t i = 0; i < st->n_edges[s]; i++) {
			if (strcmp(st->edges[s][i].target, node) == 0)
				return "standby";
		}
	}
	return "none";
}

int
st_cstate_lock(const char *path, bool wait, char **error_r)
{
	char *lock = xasprintf("%s.lock", path);
	int fd;

	fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		st_set_error(error_r, "%s: %s", lock, strerror(errno));
		free(lock);
		return -1;
	}
	if (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) < 0) {
		if (errno == EWOULDBLOCK)
			st_set_error(error_r, "%s: another standin command is changing the cluster "
				     "state", lock);
		else
			st_set_error(error_r, "%s: %s", lock, strerror(errno));
		close(fd);
		free(lock);
		return -1;
	}
	free(lock);
	return fd;
}

bool
st_cstate_same(const struct st_cstate *a, const struct st_cstate *b)
{
	if (a->epoch != b->epoch || strcmp(a->cluster, b->cluster) != 0 ||
	    strcmp(a->master, b->master) != 0)
		return false;
	for (int s = 0; s < ST_SVC_COUNT; s++) {
		if (a->n_edges[s] != b->n_edges[s])
			return false;
		for (size_t i = 0; i < a->n_edges[s]; i++) {
			if (strcmp(a->edges[s][i].source, b->edges[s][i].source) != 0 ||
			    strcmp(a->edges[s][i].target, b->edges[s][i].target) != 0)
				return false;
		}
	}
	return true;
}

const char *
st_cstate_master_of(const struct st_cstate *st, enum st_service svc)
{
	for (size_t i = 0; i < st->n_edges[svc]; i++) {
		const char *src = st->edges[svc][i].source;
		if (st_cstate_source(st, svc, src) == NULL)
			return src;
	}
	return st->master;
}

const char *
st_cstate_role_of(const struct st_cstate *st, enum st_service svc, const char *node)
{
	if (strcmp(st_cstate_master_of(st, svc), node) == 0)
		return "master";
	return st_cstate_source(st, svc, node) != NULL ? "standby" : "none";
}

void
st_cstate_set_master_of(struct st_cstate *st, const struct st_conf *conf, enum st_service svc,
			const char *master)
{
	st->n_edges[svc] = 0;
	for (size_t n = 0; n < conf->n_nodes; n++) {
		if (strcmp(conf->nodes[n].name, master) == 0)
			continue;
		struct st_edge *e = &st->edges[svc][st->n_edges[svc]++];
		snprintf(e->source, sizeof(e->source), "%s", master);
		snprintf(e->target, sizeof(e->target), "%s", conf->nodes[n].name);
	}
}

const char *
st_cstate_source(const struct st_cstate *st, enum st_service svc, const char *target)
{
	for (size_t i = 0; i < st->n_edges[svc]; i++) {
		if (strcmp(st->edges[svc][i].target, target) == 0)
			return st->edges[svc][i].source;
	}
	return NULL;
}

/* ------------------------------------------------------------ follower */

void
st_cstate_follower_init(struct st_cstate_follower *f, const struct st_node *node)
{
	memset(f, 0, sizeof(*f));
	f->path = st_cstate_path(node);
}

void
st_cstate_follower_free(struct st_cstate_follower *f)
{
	st_cstate_unwatch(f);
	free(f->path);
	free(f->error);
	memset(f, 0, sizeof(*f));
}

/* Set f->error to ERR (taken); true when it differs from the one before. */
static bool
follower_error(struct st_cstate_follower *f, char *err)
{
	bool same = (f->error == NULL && err == NULL) ||
		    (f->error != NULL && err != NULL && strcmp(f->error, err) == 0);

	if (same) {
		free(err);
		return false;
	}
	if (err != NULL)
		st_warn("cluster state: %s%s", err, f->valid ? " (keeping the last one taken)" : "");
	else
		st_notice("cluster state readable again path=%s", st_q(f->path));
	free(f->error);
	f->error = err;
	return true;
}

bool
st_cstate_follow(struct st_cstate_follower *f)
{
	struct st_cstate cs;
	char *err = NULL;
	int rc = st_cstate_load(f->path, &cs, &err);

	if (rc != 0) {
		if (rc > 0)
			err = xasprintf("%s does not exist (standinctl state init)", f->path);
		return follower_error(f, err);
	}
	bool changed = follower_error(f, NULL);
	if (f->valid && cs.epoch <= f->cs.epoch) {
		if (st_cstate_same(&cs, &f->cs))
			return changed;
		if (!f->refused_valid || !st_cstate_same(&cs, &f->refused)) {
			st_warn("cluster state refused: epoch %" PRIu64 " master %s %s epoch %" PRIu64
				" master %s path=%s", cs.epoch, cs.master,
				cs.epoch < f->cs.epoch ? "is older than the one taken,"
						       : "differs from the one taken with the same",
				f->cs.epoch, f->cs.master, st_q(f->path));
			f->refused = cs;
			f->refused_valid = true;
		}
		return changed;
	}
	st_notice("cluster state epoch=%" PRIu64 " master=%s%s", cs.epoch, cs.master,
		  f->valid ? "" : " (first read)");
	f->cs = cs;
	f->valid = true;
	f->refused_valid = false;
	return true;
}

static void
follower_run(struct st_cstate_follower *f)
{
	if (st_cstate_follow(f) && f->cb != NULL)
		f->cb(f, f->cb_data);
}

static void
follower_stat_cb(struct ev_loop *loop, ev_stat *w, int revents)
{
	(void)loop;
	(void)revents;
	follower_run(w->data);
}

static void
follower_poll_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	follower_run(w->data);
}

void
st_cstate_watch(struct st_cstate_follower *f, struct ev_loop *loop, double interval,
		st_cstate_cb *cb, void *data)
{
	st_cstate_unwatch(f);
	f->loop = loop;
	f->cb = cb;
	f->cb_data = data;
	ev_stat_init(&f->watch, follower_stat_cb, f->path, interval);
	f->watch.data = f;
	ev_stat_start(loop, &f->watch);
	ev_timer_init(&f->poll, follower_poll_cb, interval, interval);
	f->poll.data = f;
	ev_timer_start(loop, &f->poll);
}

void
st_cstate_unwatch(struct st_cstate_follower *f)
{
	if (f->loop == NULL)
		return;
	ev_stat_stop(f->loop, &f->watch);
	ev_timer_stop(f->loop, &f->poll);
	f->loop = NULL;
}
