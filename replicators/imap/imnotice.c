/*
 * imnotice.c: Dovecot's change notices, read on the master's node and
 * relayed to the standby's through etcd (see imnotice.h).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "lib/etcd.h"
#include "lib/log.h"
#include "replicators/imap/imnotice.h"
#include "replicators/imap/imstate.h"

#define NOTICES_MAX 100000	/* names waiting to be relayed, at most */
#define BATCH_MAX 2000		/* names in one etcd value, at most */
#define LINE_MAX_LEN 1024	/* a FIFO line, at most (a name is at most 255 bytes) */
#define LEASE_TTL_S 60		/* a batch stays in etcd this long */
#define LEASE_RENEW_MS 20000
#define FIFO_RETRY_S 2.0
#define WAIT_MS 1000
#define RETRY_MS 1000

struct names {
	char **v;
	size_t n, cap;
};

struct im_notices {
	const struct st_conf *conf;
	const char *node;
	const char *path;		/* [imap] dovecot_fifo of this node */
	struct ev_loop *loop;
	im_notices_cb *cb;
	void *cb_data;

	/* The FIFO (main thread). */
	int fd;
	ev_io fifo_io;
	ev_timer fifo_timer;
	char line[LINE_MAX_LEN + 1];
	size_t line_len;
	bool line_skip;			/* the rest of an over-long line */
	char *fifo_error;		/* why it is not open (status), main thread */
	dev_t dev;			/* of the FIFO opened */
	ino_t ino;
	bool said_bad;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool quit;

	/* The relay (its thread; the fields under mu). */
	pthread_t relay;
	bool relay_started;
	bool master;
	uint64_t epoch;
	struct names pending;
	bool overflow;
	bool hello;			/* became the master: an empty batch, so that a standby
					 * sees this boot of the relay (and takes a restart as a gap) */
	char boot[17];
	uint64_t seq;
	uint64_t received, relayed, batches, dropped;
	char *relay_error;

	/* The watch (its thread; the fields under mu). */
	pthread_t watch;
	bool watch_started, watch_quit;
	char *source;
	struct names inbox;		/* for the main thread */
	bool inbox_gap;
	uint64_t applied, gaps;
	char *watch_error;
	ev_async async;
};

static void
names_add(struct names *ns, const char *name)
{
	if (ns->n == ns->cap) {
		ns->cap = ns->cap ? 2 * ns->cap : 64;
		ns->v = xrealloc(ns->v, ns->cap * sizeof(*ns->v));
	}
	ns->v[ns->n++] = xstrdup(name);
}

static void
names_clear(struct names *ns)
{
	for (size_t i = 0; i < ns->n; i++)
		free(ns->v[i]);
	free(ns->v);
	memset(ns, 0, sizeof(*ns));
}

static int
cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Under mu: set *SLOT to ERR (taken); said in the log when it changes. */
static void
set_error(char **slot, char *err, const char *what)
{
	if ((*slot == NULL && err == NULL) || (*slot != NULL && err != NULL && strcmp(*slot, err) == 0)) {
		free(err);
		return;
	}
	if (err != NULL)
		st_warn("%s: %s", what, err);
	else
		st_notice("%s: working again", what);
	free(*slot);
	*slot = err;
}

/* ------------------------------------------------------------ reading the FIFO (main thread) */

static void
take_line(struct im_notices *n, const char *line, size_t len)
{
	char *user = im_notice_parse(line, len);

	if (user == NULL) {
		if (!n->said_bad)
			st_warn("[imap] dovecot_fifo %s: a line that names no user (said once)",
				st_q(n->path));
		n->said_bad = true;
		return;
	}
	pthread_mutex_lock(&n->mu);
	n->received++;
	if (n->master) {
		if (n->pending.n < NOTICES_MAX)
			names_add(&n->pending, user);
		else
			n->overflow = true;
		pthread_cond_signal(&n->cv);
	}
	pthread_mutex_unlock(&n->mu);
	free(user);
}

static void
fifo_close(struct im_notices *n)
{
	if (n->fd >= 0) {
		ev_io_stop(n->loop, &n->fifo_io);
		close(n->fd);
		n->fd = -1;
	}
}

static void
fifo_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct im_notices *n = w->data;
	char buf[8192];

	(void)loop;
	(void)revents;
	for (int rounds = 0; rounds < 64; rounds++) {
		ssize_t got = read(n->fd, buf, sizeof(buf));
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (got <= 0) {
			/* Opened read-write, a FIFO never ends; anything else is an error. */
			free(n->fifo_error);
			n->fifo_error = xasprintf("[imap] dovecot_fifo %s: read: %s", n->path,
						  got < 0 ? strerror(errno) : "end of file");
			st_warn("%s; opening it again", n->fifo_error);
			fifo_close(n);
			return;
		}
		for (ssize_t i = 0; i < got; i++) {
			char c = buf[i];
			if (c == '\n') {
				if (!n->line_skip)
					take_line(n, n->line, n->line_len);
				n->line_len = 0;
				n->line_skip = false;
			} else if (n->line_len < LINE_MAX_LEN) {
				n->line[n->line_len++] = c;
			} else {
				n->line_skip = true;
			}
		}
	}
}

/*
 * Open the FIFO, made where missing (mode 0600).  With dovecot_fifo_user
 * it is given to that user (Dovecot's mail processes write to it); an
 * existing one may instead be shared through its group (e.g. made by
 * systemd-tmpfiles, 0660 vmail:standin, for a daemon that does not run as
 * root), but never writable by everyone.
 */
static int
fifo_open(struct im_notices *n, char **error_r)
{
	const char *path = n->path, *owner = n->conf->imap.dovecot_fifo_user;
	struct stat st;
	int fd;

	if (lstat(path, &st) == 0) {
		if (!S_ISFIFO(st.st_mode)) {
			st_set_error(error_r, "[imap] dovecot_fifo %s exists and is not a FIFO", path);
			return -1;
		}
	} else if (errno != ENOENT || mkfifo(path, 0600) < 0) {
		st_set_error(error_r, "[imap] dovecot_fifo %s: cannot make it: %s (is it in Dovecot's base_dir? "
			     "a daemon that does not run as root needs it made for it, see standin-imaprepl(8))",
			     path, strerror(errno));
		return -1;
	}
	/* Read-write: the FIFO stays open when the last writer closes it. */
	fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode)) {
		st_set_error(error_r, "[imap] dovecot_fifo %s: cannot open it: %s", path,
			     fd < 0 ? strerror(errno) : "not a FIFO");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (owner != NULL) {
		struct passwd *pw = getpwnam(owner);
		if (pw == NULL) {
			st_set_error(error_r, "[imap] dovecot_fifo_user %s: no such user", owner);
			close(fd);
			return -1;
		}
		if ((st.st_uid != pw->pw_uid || st.st_gid != pw->pw_gid) && fchown(fd, pw->pw_uid, pw->pw_gid) < 0) {
			st_set_error(error_r, "[imap] dovecot_fifo %s: cannot give it to %s: %s", path, owner,
				     strerror(errno));
			close(fd);
			return -1;
		}
	}
	if ((st.st_mode & S_IWOTH) != 0) {
		st_set_error(error_r, "[imap] dovecot_fifo %s is writable by everyone (mode %04o): anyone could "
			     "name users to it", path, (unsigned)(st.st_mode & 07777));
		close(fd);
		return -1;
	}
	n->fd = fd;
	n->dev = st.st_dev;
	n->ino = st.st_ino;
	return 0;
}

/* Every FIFO_RETRY_S: open the FIFO where it is not, again where it was removed or replaced. */
static void
fifo_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct im_notices *n = w->data;
	char *err = NULL;
	struct stat st;

	(void)revents;
	if (n->fd >= 0) {
		if (lstat(n->path, &st) == 0 && st.st_dev == n->dev && st.st_ino == n->ino)
			return;
		st_warn("[imap] dovecot_fifo %s was removed or replaced; opening it again",
			st_q(n->path));
		fifo_close(n);
	}
	if (fifo_open(n, &err) < 0) {
		if (n->fifo_error == NULL || strcmp(n->fifo_error, err) != 0)
			st_warn("%s; trying again every %.0f s (changes wait for the full pass meanwhile)", err,
				FIFO_RETRY_S);
		free(n->fifo_error);
		n->fifo_error = err;
		return;
	}
	if (n->fifo_error != NULL)
		st_notice("[imap] dovecot_fifo %s: open", st_q(n->path));
	free(n->fifo_error);
	n->fifo_error = NULL;
	ev_io_init(&n->fifo_io, fifo_read_cb, n->fd, EV_READ);
	n->fifo_io.data = n;
	ev_io_start(loop, &n->fifo_io);
}

/* ------------------------------------------------------------ the relay (its thread) */

static void
timed_wait(struct im_notices *n, long ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&n->cv, &n->mu, &ts);
}

static char *
batch_json(struct im_notices *n, char **v, size_t k, bool overflow, uint64_t epoch, uint64_t seq, size_t *len_r)
{
	json_t *users = json_array();

	for (size_t i = 0; i < k; i++)
		json_array_append_new(users, json_string(v[i]));
	json_t *o = json_pack("{s:s,s:I,s:s,s:I,s:o,s:b}", "node", n->node, "epoch", (json_int_t)epoch, "boot",
			      n->boot, "seq", (json_int_t)seq, "users", users, "overflow", overflow);
	char *text = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	*len_r = strlen(text);
	return text;
}

static void *
relay_main(void *arg)
{
	struct im_notices *n = arg;
	struct st_etcd *e = NULL;
	int64_t lease = 0;
	long long lease_ms = 0;

	pthread_mutex_lock(&n->mu);
	while (!n->quit) {
		if (!n->master) {
			names_clear(&n->pending);
			n->overflow = false;
		}
		if (n->pending.n == 0 && !n->overflow && !(n->master && n->hello)) {
			timed_wait(n, 1000);
			continue;
		}
		/* A batch: the names in order, each once. */
		struct names b = n->pending;
		bool overflow = n->overflow, empty_too = n->overflow || n->hello;
		uint64_t epoch = n->epoch, seq = n->seq + 1;
		memset(&n->pending, 0, sizeof(n->pending));
		n->overflow = false;
		n->hello = false;
		pthread_mutex_unlock(&n->mu);

		if (b.n > 1)
			qsort(b.v, b.n, sizeof(*b.v), cmp_name);
		size_t k = 0;
		for (size_t i = 0; i < b.n; i++) {
			if (k > 0 && strcmp(b.v[k - 1], b.v[i]) == 0)
				free(b.v[i]);
			else
				b.v[k++] = b.v[i];
		}
		b.n = k;

		char *err = NULL;
		size_t sent = 0;
		bool ok = true;
		long long now = st_monotonic_ms();
		if (e == NULL && (e = st_etcd_open(n->conf, &err)) == NULL)
			ok = false;
		if (ok && lease != 0 && now - lease_ms >= LEASE_RENEW_MS) {
			long ttl = 0;
			if (st_etcd_lease_keepalive(e, lease, &ttl, &err) < 0)
				ok = false;
			else if (ttl <= 0)
				lease = 0;
			else
				lease_ms = now;
		}
		if (ok && lease == 0) {
			if (st_etcd_lease_grant(e, LEASE_TTL_S, &lease, &err) < 0)
				ok = false;
			else
				lease_ms = now;
		}
		while (ok && (sent < b.n || (sent == 0 && empty_too))) {
			size_t part = b.n - sent < BATCH_MAX ? b.n - sent : BATCH_MAX;
			size_t len;
			char *value = batch_json(n, part > 0 ? b.v + sent : NULL, part, overflow, epoch, seq, &len);
			char *name = xasprintf("imap-notices/%s/%020" PRIu64, n->node, seq);
			char *key = st_etcd_key(n->conf, name);
			int rc = st_etcd_put(e, key, value, len, lease, &err);
			free(key);
			free(name);
			free(value);
			if (rc < 0) {
				ok = false;
				lease = 0;	/* gone, perhaps: granted again next time */
				break;
			}
			sent += part;
			overflow = false;
			empty_too = false;
			pthread_mutex_lock(&n->mu);
			n->seq = seq++;
			n->batches++;
			n->relayed += part;
			pthread_mutex_unlock(&n->mu);
			if (part == 0)
				break;
		}

		pthread_mutex_lock(&n->mu);
		if (!ok) {
			/* Kept for the next try, with what came meanwhile (bounded). */
			for (size_t i = sent; i < b.n; i++) {
				if (n->pending.n < NOTICES_MAX)
					names_add(&n->pending, b.v[i]);
				else
					n->overflow = true;
			}
			if (overflow)
				n->overflow = true;
			if (empty_too && sent == 0)
				n->hello = true;
			set_error(&n->relay_error, xasprintf("relaying Dovecot's notices through etcd: %s",
							     err ? err : "?"), "IMAP notices");
			free(err);
			timed_wait(n, RETRY_MS);
		} else {
			set_error(&n->relay_error, NULL, "IMAP notices (relay)");
		}
		for (size_t i = 0; i < b.n; i++)
			free(b.v[i]);
		free(b.v);
	}
	pthread_mutex_unlock(&n->mu);
	if (e != NULL && lease != 0) {
		char *err = NULL;
		if (st_etcd_lease_revoke(e, lease, &err) < 0)
			free(err);
	}
	st_etcd_close(&e);
	return NULL;
}

/* ------------------------------------------------------------ the watch (its thread) */

static int
cmp_mod_rev(const void *a, const void *b)
{
	const struct st_etcd_kv *x = a, *y = b;

	return x->mod_revision < y->mod_revision ? -1 : x->mod_revision > y->mod_revision;
}

/* Under mu: hand USERS (a batch) to the main thread. */
static void
inbox_put(struct im_notices *n, json_t *users, bool gap)
{
	size_t i;
	json_t *v;

	json_array_foreach(users, i, v) {
		if (json_is_string(v) && n->inbox.n < NOTICES_MAX)
			names_add(&n->inbox, json_string_value(v));
		else
			gap = true;	/* too many waiting, or not a name: a pass makes up for it */
	}
	if (gap) {
		n->inbox_gap = true;
		n->gaps++;
	}
	ev_async_send(n->loop, &n->async);
}

static void *
watch_main(void *arg)
{
	struct im_notices *n = arg;
	struct st_etcd *e = NULL;
	char *prefix = NULL, *err = NULL, *source;
	int64_t rev = 0;
	char boot[17] = "";
	uint64_t last_seq = 0;
	bool started = false;

	pthread_mutex_lock(&n->mu);
	source = xstrdup(n->source);
	pthread_mutex_unlock(&n->mu);
	char *name = xasprintf("imap-notices/%s/", source);
	prefix = st_etcd_key(n->conf, name);
	free(name);

	for (;;) {
		pthread_mutex_lock(&n->mu);
		bool quit = n->watch_quit;
		pthread_mutex_unlock(&n->mu);
		if (quit)
			break;
		int rc = 1;
		if (e == NULL && (e = st_etcd_open(n->conf, &err)) == NULL)
			rc = -1;
		if (rc > 0 && started) {
			rc = st_etcd_wait(e, prefix, true, rev, WAIT_MS, &err);
			if (rc == 0)
				continue;
		}
		/* Something changed (or the watch failed: read what is there). */
		struct st_etcd_kv *kvs = NULL;
		size_t nkv = 0;
		int64_t now_rev = 0;
		char *lerr = NULL;
		if (e != NULL && st_etcd_list_since(e, prefix, rev + 1, &kvs, &nkv, &now_rev, &lerr) < 0) {
			if (err == NULL)
				err = lerr;
			else
				free(lerr);
			rc = -1;
		} else if (e != NULL) {
			/* In the order they were written (a restarted relay reuses sequence numbers). */
			if (nkv > 1)
				qsort(kvs, nkv, sizeof(*kvs), cmp_mod_rev);
			pthread_mutex_lock(&n->mu);
			for (size_t i = 0; i < nkv; i++) {
				if (kvs[i].mod_revision <= rev)
					continue;
				json_error_t jerr;
				json_t *o = json_loadb(kvs[i].value, kvs[i].len, 0, &jerr);
				const char *b = json_string_value(json_object_get(o, "boot"));
				json_t *seqv = json_object_get(o, "seq"), *users = json_object_get(o, "users");
				if (b == NULL || !json_is_integer(seqv) || !json_is_array(users)) {
					/* Not a batch standin wrote: whatever it named is made up by a pass. */
					st_warn("IMAP notices: %s in etcd is not a batch of notices; a full pass makes "
						"up for it", st_q(kvs[i].key));
					n->inbox_gap = true;
					n->gaps++;
					ev_async_send(n->loop, &n->async);
					json_decref(o);
					continue;
				}
				uint64_t seq = (uint64_t)json_integer_value(seqv);
				bool gap = json_is_true(json_object_get(o, "overflow"));
				if (boot[0] != '\0' && strcmp(boot, b) != 0)
					gap = true;	/* the master's daemon restarted */
				else if (boot[0] != '\0' && seq != last_seq + 1)
					gap = true;
				snprintf(boot, sizeof(boot), "%s", b);
				last_seq = seq;
				/* Before the first read, the first pass covers what is there. */
				if (started) {
					n->applied += json_array_size(users);
					inbox_put(n, users, gap);
				}
				json_decref(o);
			}
			pthread_mutex_unlock(&n->mu);
			rev = now_rev;
			if (rc >= 0) {
				pthread_mutex_lock(&n->mu);
				set_error(&n->watch_error, NULL, "IMAP notices (watch)");
				if (n->inbox_gap)
					ev_async_send(n->loop, &n->async);
				pthread_mutex_unlock(&n->mu);
			}
			started = true;
		}
		st_etcd_kvs_free(kvs, nkv);
		if (rc < 0) {
			pthread_mutex_lock(&n->mu);
			set_error(&n->watch_error, xasprintf("watching node %s's notices in etcd: %s", source,
							     err ? err : "?"), "IMAP notices");
			/* Lost meanwhile, perhaps: a pass once it works again. */
			n->inbox_gap = true;
			timed_wait(n, RETRY_MS);
			pthread_mutex_unlock(&n->mu);
			free(err);
			err = NULL;
		}
	}
	free(err);
	free(prefix);
	free(source);
	st_etcd_close(&e);
	return NULL;
}

static void
async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct im_notices *n = w->data;

	(void)loop;
	(void)revents;
	pthread_mutex_lock(&n->mu);
	struct names in = n->inbox;
	bool gap = n->inbox_gap && n->watch_error == NULL;
	memset(&n->inbox, 0, sizeof(n->inbox));
	if (gap)
		n->inbox_gap = false;
	pthread_mutex_unlock(&n->mu);
	if (in.n > 0 || gap)
		n->cb(n->cb_data, in.v, in.n, gap);
	names_clear(&in);
}

/* ------------------------------------------------------------ interface */

struct im_notices *
im_notices_start(const struct st_conf *conf, const char *node, struct ev_loop *loop, im_notices_cb *cb,
		 void *data)
{
	struct im_notices *n = xcalloc(1, sizeof(*n));
	unsigned char rnd[8];

	n->conf = conf;
	n->node = node;
	n->path = conf->imap.dovecot_fifo[st_conf_node_index(conf, node)];
	n->loop = loop;
	n->cb = cb;
	n->cb_data = data;
	n->fd = -1;
	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		uint64_t x = (uint64_t)st_now_ms() ^ ((uint64_t)getpid() << 32);
		memcpy(rnd, &x, sizeof(rnd));
	}
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(n->boot + 2 * i, 3, "%02x", rnd[i]);
	pthread_mutex_init(&n->mu, NULL);
	pthread_cond_init(&n->cv, NULL);
	ev_async_init(&n->async, async_cb);
	n->async.data = n;
	ev_async_start(loop, &n->async);
	ev_timer_init(&n->fifo_timer, fifo_timer_cb, 0., FIFO_RETRY_S);
	n->fifo_timer.data = n;
	ev_timer_start(loop, &n->fifo_timer);
	int e = pthread_create(&n->relay, NULL, relay_main, n);
	if (e != 0)
		st_error("IMAP notices: cannot start the relay thread: %s", strerror(e));
	n->relay_started = e == 0;
	return n;
}

void
im_notices_follow(struct im_notices *n, const char *source)
{
	if (n->watch_started) {
		pthread_mutex_lock(&n->mu);
		n->watch_quit = true;
		pthread_cond_broadcast(&n->cv);
		pthread_mutex_unlock(&n->mu);
		pthread_join(n->watch, NULL);
		n->watch_started = false;
	}
	pthread_mutex_lock(&n->mu);
	free(n->source);
	n->source = source ? xstrdup(source) : NULL;
	n->watch_quit = false;
	free(n->watch_error);
	n->watch_error = NULL;
	names_clear(&n->inbox);
	n->inbox_gap = false;
	pthread_mutex_unlock(&n->mu);
	if (source == NULL)
		return;
	int e = pthread_create(&n->watch, NULL, watch_main, n);
	if (e != 0) {
		pthread_mutex_lock(&n->mu);
		set_error(&n->watch_error, xasprintf("cannot start the watch thread: %s", strerror(e)),
			  "IMAP notices");
		pthread_mutex_unlock(&n->mu);
	}
	n->watch_started = e == 0;
}

void
im_notices_role(struct im_notices *n, bool master, uint64_t epoch)
{
	pthread_mutex_lock(&n->mu);
	if (master && !n->master)
		n->hello = true;
	if (master != n->master)
		st_info("IMAP notices: %s", master ? "this node is the master: Dovecot's notices go to etcd"
						   : "this node is not the master: Dovecot's notices are dropped");
	n->master = master;
	n->epoch = epoch;
	pthread_cond_signal(&n->cv);
	pthread_mutex_unlock(&n->mu);
}

void
im_notices_stop(struct im_notices *n)
{
	if (n == NULL)
		return;
	im_notices_follow(n, NULL);
	pthread_mutex_lock(&n->mu);
	n->quit = true;
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->mu);
	if (n->relay_started)
		pthread_join(n->relay, NULL);
	fifo_close(n);
	ev_timer_stop(n->loop, &n->fifo_timer);
	ev_async_stop(n->loop, &n->async);
	names_clear(&n->pending);
	names_clear(&n->inbox);
	free(n->fifo_error);
	free(n->relay_error);
	free(n->watch_error);
	free(n->source);
	pthread_cond_destroy(&n->cv);
	pthread_mutex_destroy(&n->mu);
	free(n);
}

void
im_notices_status(struct im_notices *n, json_t *obj)
{
	json_t *o = json_object();

	pthread_mutex_lock(&n->mu);
	json_object_set_new(o, "fifo", json_string(n->fd >= 0 ? "open" : "closed"));
	json_object_set_new(o, "fifo_error", n->fifo_error ? json_string(n->fifo_error) : json_null());
	json_object_set_new(o, "relaying", json_boolean(n->master));
	json_object_set_new(o, "received", json_integer((json_int_t)n->received));
	json_object_set_new(o, "relayed", json_integer((json_int_t)n->relayed));
	json_object_set_new(o, "batches", json_integer((json_int_t)n->batches));
	json_object_set_new(o, "waiting", json_integer((json_int_t)n->pending.n));
	json_object_set_new(o, "relay_error", n->relay_error ? json_string(n->relay_error) : json_null());
	json_object_set_new(o, "following", n->source ? json_string(n->source) : json_null());
	json_object_set_new(o, "applied", json_integer((json_int_t)n->applied));
	json_object_set_new(o, "gaps", json_integer((json_int_t)n->gaps));
	json_object_set_new(o, "watch_error", n->watch_error ? json_string(n->watch_error) : json_null());
	pthread_mutex_unlock(&n->mu);
	json_object_set_new(obj, "notices", o);
}
