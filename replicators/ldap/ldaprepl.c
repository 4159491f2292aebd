/*
 * standin-ldaprepl: keep the standby's slapd a live copy of the master's
 * directory, through RFC 4533 Content Synchronization (syncrepl) against the
 * master's syncprov overlay.
 *
 * Everything runs on the daemon's libev loop: the sync search is sent by
 * hand with the Sync Request control on a connection of its own, its
 * descriptor is watched with an ev_io and drained with ldap_result(...,
 * LDAP_MSG_ONE, zero timeout); the changes go through the ordering queue
 * (ldqueue.c) to the standby, pipelined on a second connection (ldapply.c).
 *
 * Refresh: every entry the master sends is upserted by entryUUID.  At the
 * end of the refresh the standby is reconciled: after a present phase, or
 * when there was no cookie (slapd then sends all of its content), every
 * standby entry the master did not mention is deleted; after a delete
 * phase, the entryUUIDs it named are.  Only then is the refresh's cookie
 * stored.  Persist: each change's cookie is stored once that change and all
 * before it are applied (ldq's cookie marks), at most every COOKIE_SAVE_MS.
 * Apply is idempotent (entries keyed by entryUUID), so a kill -9 replays
 * from the stored cookie with no loss and no duplicate.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ldap.h>

#include "lib/bgjob.h"
#include "lib/cstate.h"
#include "lib/ldconn.h"
#include "lib/daemon.h"
#include "lib/durable.h"
#include "lib/log.h"
#include "replicators/ldap/ldapply.h"
#include "replicators/ldap/lddiverge.h"
#include "replicators/ldap/ldentry.h"
#include "replicators/ldap/ldqueue.h"
#include "replicators/ldap/ldsync.h"

#define QUEUE_ITEMS 512
#define MAX_IN_FLIGHT 64
#define TICK_MS 100
#define COOKIE_SAVE_MS 200
#define CSTATE_CHECK_MS 2000
#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 30000
#define COOKIE_MAX 4096
#define DEFER_ROUNDS 64
/* The lag clock: the master's contextCSN read every HEARTBEAT_MS (in a
 * thread, on a connection of its own), credited once the applied cookie
 * covers it; lag = now - the newest credited read. */
#define HEARTBEAT_MS 1000
#define HEARTBEAT_SAVE_MS 10000
#define HEARTBEAT_PENDING 16
/* A refresh from a cookie is applied in entryCSN order, RBUF_MAX entries
 * at a time at most (see struct ldrepl's rbuf). */
#define RBUF_MAX 50000

enum phase {
	PH_IDLE,		/* no session */
	PH_CONNECTING,		/* connecting and binding, in a thread (connect_work) */
	PH_LISTING,		/* before a refresh from scratch: which entryUUIDs the standby has */
	PH_REFRESH,		/* receiving the refresh */
	PH_RECONCILE,		/* refresh received: finishing it on the standby */
	PH_PERSIST,		/* refreshAndPersist: changes as they happen */
	PH_POLL_WAIT,		/* refreshOnly: until the next poll */
};

enum reconcile_step {
	RC_DRAIN,		/* wait until every queued change is applied */
	RC_LIST,		/* listing the standby */
	RC_DELETE,		/* deleting what the master does not have */
};

struct ldrepl {
	struct st_daemon *d;
	ev_timer tick, retry;
	long retry_ms;

	/* the session */
	enum phase phase;
	const char *state;		/* for status */
	char source[ST_NAME_MAX + 1], target[ST_NAME_MAX + 1];
	uint64_t epoch;
	char *cookie_path;
	LDAP *src, *tgt;
	/* PH_CONNECTING: the thread's job, what it made, where the stream starts */
	struct st_bgjob *connect_job;
	LDAP *conn_src, *conn_tgt;
	char *conn_err;
	bool connect_cancelled;
	struct ldsync_cookie connect_start;
	struct st_bgjob *reverse_job;	/* "reverse NODE" reading NODE's contextCSN */
	struct st_bgjob *diverge_job;	/* the divergence report after a refresh from scratch */
	size_t snapshot_entries;	/* the connect thread's snapshot (lddiverge.h) */
	/* The lag clock (heartbeat_*): reads of the source's contextCSN. */
	struct st_bgjob *hb_job;
	long long hb_next_ms, hb_saved_ms;
	struct hb_read {
		char *csns;		/* the master's contextCSN then */
		int64_t ms;		/* when it was read (before the search) */
	} hb[HEARTBEAT_PENDING];
	size_t hb_n;
	int64_t heartbeat_ms;		/* the master's state then is all on the standby */
	char *hb_error;			/* the last read's error, or NULL */
	char hb_source[ST_NAME_MAX + 1];
	int sync_msgid;
	ev_io src_io, tgt_io;
	struct ldq q;
	struct lda *apply;
	bool src_paused;		/* queue full or reconciling: sync messages wait in libldap */
	bool started_without_cookie;
	bool present_phase;		/* a present phase was seen in this refresh */
	bool refresh_required;		/* e-syncRefreshRequired: next session... */
	bool next_without_cookie;	/* ... starts from scratch */
	bool refresh_restarted;		/* one restart at once, then the backoff */
	struct ldsync_cookie next_cookie;	/* ... or from this one */
	/*
	 * A refresh from a cookie sends the entries changed since it in the
	 * master's storage order.  They wait here and go to the queue sorted
	 * by entryCSN, with the queue's writes in order (ldq_set_ordered): an
	 * entry the standby refuses has no later change of the master applied
	 * after it.  At the end of the refresh, or when RBUF_MAX are held
	 * (then by chunks, the stream paused while one is fed).
	 */
	struct rbuf_item {
		uint8_t uuid[LDSYNC_UUID_LEN];
		struct lde_entry *e;
	} *rbuf;
	size_t rbuf_n, rbuf_cap, rbuf_fed;
	bool rbuf_feeding;		/* the stream waits until all of it is queued */
	bool rbuf_chunked;		/* this refresh outgrew RBUF_MAX (logged once) */
	struct lde_uuid_set seen, deleted;
	struct lde_uuid_set standby_had;	/* PH_LISTING's result, for the refresh */
	enum reconcile_step rc_step;
	unsigned defer_rounds;
	size_t deferred_before;
	struct ldsync_cookie stored;	/* durable */
	struct ldsync_cookie received;	/* newest seen in the stream */
	struct ldsync_cookie refresh_cookie;	/* the refresh's final cookie */
	struct st_cstate_follower follow;
	long long next_cookie_save_ms, next_cstate_ms, poll_due_ms;
	long long session_started_ms, persist_since_ms;

	/* counters */
	uint64_t refresh_entries, reconcile_deletes, sessions, refreshes;
	uint64_t rate_base, rate_ms;
	double entries_per_s;
};

static struct ldrepl G;

static void session_end(struct ldrepl *r);
static void connect_work(void *arg);
static void connect_done(void *arg);
static void src_drain(struct ldrepl *r);
static void progress(struct ldrepl *r);

/* ------------------------------------------------------------ errors */

static void
fail(struct ldrepl *r, const char *fmt, ...) ST_PRINTF(2, 3);

/* The session stops with an error (status shows it) and starts again later. */
static void
fail(struct ldrepl *r, const char *fmt, ...)
{
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	msg = xvasprintf(fmt, ap);
	va_end(ap);
	st_error("%s -> %s: %s", r->source[0] ? r->source : "?", r->target[0] ? r->target : "?",
		 st_q(msg));
	st_daemon_set_error(r->d, "%s -> %s: %s", r->source, r->target, msg);
	free(msg);
	session_end(r);
	r->state = "error";
	r->d->state = r->state;
	ev_timer_set(&r->retry, (double)r->retry_ms / 1000.0, 0.);
	ev_timer_start(r->d->loop, &r->retry);
	r->retry_ms = r->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : r->retry_ms * 2;
}

static void
set_state(struct ldrepl *r, const char *state)
{
	r->state = state;
	r->d->state = state;
}

/* ------------------------------------------------------------ cookie file */

/* The cookie file: "standin-ldaprepl cookie 1\n" then the cookie in hex. */
static int
cookie_load(const char *path, struct ldsync_cookie *c, char **error_r)
{
	char *data = NULL;
	size_t len;
	static const char head[] = "standin-ldaprepl cookie 1\n";

	ldsync_cookie_clear(c);
	if (access(path, F_OK) != 0 && errno == ENOENT)
		return 0;
	if (st_read_file(path, COOKIE_MAX * 2 + 64, &data, &len, error_r) < 0)
		return -1;
	if (len < sizeof(head) - 1 || memcmp(data, head, sizeof(head) - 1) != 0)
		goto bad;
	const char *hex = data + sizeof(head) - 1;
	size_t n = strcspn(hex, "\n");
	if (n % 2 != 0 || n / 2 > COOKIE_MAX)
		goto bad;
	uint8_t *bytes = xmalloc(n / 2 + 1);
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
			free(bytes);
			goto bad;
		}
		bytes[i] = (uint8_t)v;
	}
	ldsync_cookie_set(c, bytes, n / 2);
	free(bytes);
	free(data);
	return 0;
bad:
	free(data);
	st_set_error(error_r, "%s is not a standin-ldaprepl cookie file (remove it to refresh "
		     "the whole directory again)", path);
	return -1;
}

static int
cookie_write(const char *path, const struct ldsync_cookie *c, char **error_r)
{
	struct st_buf b;

	st_buf_init(&b);
	st_buf_puts(&b, "standin-ldaprepl cookie 1\n");
	for (size_t i = 0; i < c->len; i++)
		st_buf_printf(&b, "%02x", c->data[i]);
	st_buf_puts(&b, "\n");
	int rc = st_durable_write(path, b.data, b.len, 0600, error_r);
	st_buf_free(&b);
	return rc;
}

static int
cookie_store(struct ldrepl *r, const struct ldsync_cookie *c, char **error_r)
{
	int rc = cookie_write(r->cookie_path, c, error_r);

	if (rc == 0)
		ldsync_cookie_copy(&r->stored, c);
	return rc;
}

/* ------------------------------------------------------------ connections */

static LDAP *
connect_to(struct ldrepl *r, const char *node, char **error_r)
{
	return st_ldap_open(r->d->conf, node, error_r);
}

static int
ldap_fd(LDAP *ld)
{
	int fd = -1;

	if (ldap_get_option(ld, LDAP_OPT_DESC, &fd) != LDAP_OPT_SUCCESS)
		return -1;
	return fd;
}

/* ------------------------------------------------------------ session */

/* ------------------------------------------------------------ refresh order */

static void
rbuf_clear(struct ldrepl *r)
{
	for (size_t i = r->rbuf_fed; i < r->rbuf_n; i++)
		lde_entry_free(&r->rbuf[i].e);
	free(r->rbuf);
	r->rbuf = NULL;
	r->rbuf_n = r->rbuf_cap = r->rbuf_fed = 0;
	r->rbuf_feeding = false;
}

static int
rbuf_cmp(const void *pa, const void *pb)
{
	const struct rbuf_item *a = pa, *b = pb;
	const char *ca = a->e->csn != NULL ? a->e->csn : "", *cb = b->e->csn != NULL ? b->e->csn : "";
	int c = strcmp(ca, cb);

	return c != 0 ? c : memcmp(a->uuid, b->uuid, LDSYNC_UUID_LEN);
}

/* What is held goes to the queue in entryCSN order (rbuf_feed). */
static void
rbuf_start_feeding(struct ldrepl *r)
{
	if (r->rbuf_n == 0)
		return;
	qsort(r->rbuf, r->rbuf_n, sizeof(*r->rbuf), rbuf_cmp);
	r->rbuf_fed = 0;
	r->rbuf_feeding = true;
}

static void
rbuf_add(struct ldrepl *r, const uint8_t uuid[LDSYNC_UUID_LEN], struct lde_entry *e)
{
	if (r->rbuf_n == r->rbuf_cap) {
		r->rbuf_cap = r->rbuf_cap ? r->rbuf_cap * 2 : 256;
		r->rbuf = xrealloc(r->rbuf, r->rbuf_cap * sizeof(*r->rbuf));
	}
	memcpy(r->rbuf[r->rbuf_n].uuid, uuid, LDSYNC_UUID_LEN);
	r->rbuf[r->rbuf_n++].e = e;
	if (r->rbuf_n >= RBUF_MAX) {
		if (!r->rbuf_chunked)
			st_notice("refresh of more than %d changed entries: applied in entryCSN order "
				  "%d at a time", RBUF_MAX, RBUF_MAX);
		r->rbuf_chunked = true;
		rbuf_start_feeding(r);
	}
}

/* Into the queue as it has room; the stream goes on once all is in. */
static void
rbuf_feed(struct ldrepl *r)
{
	while (r->rbuf_fed < r->rbuf_n && !ldq_full(&r->q)) {
		struct rbuf_item *it = &r->rbuf[r->rbuf_fed++];
		ldq_push(&r->q, LDQ_UPSERT, it->uuid, it->e->dn, it->e);
		it->e = NULL;
	}
	if (r->rbuf_fed == r->rbuf_n) {
		r->rbuf_n = r->rbuf_fed = 0;
		r->rbuf_feeding = false;
	}
}

static void
session_end(struct ldrepl *r)
{
	if (r->connect_job != NULL) {
		/* Its connections are closed by connect_done(). */
		r->connect_cancelled = true;
		st_bgjob_wait(&r->connect_job);
	}
	if (r->phase == PH_IDLE && r->src == NULL && r->tgt == NULL)
		return;
	ev_io_stop(r->d->loop, &r->src_io);
	ev_io_stop(r->d->loop, &r->tgt_io);
	lda_free(&r->apply);
	ldq_clear(&r->q);
	rbuf_clear(r);
	if (r->src != NULL)
		ldap_unbind_ext_s(r->src, NULL, NULL);
	if (r->tgt != NULL)
		ldap_unbind_ext_s(r->tgt, NULL, NULL);
	r->src = r->tgt = NULL;
	lde_uuid_set_clear(&r->seen);
	lde_uuid_set_clear(&r->deleted);
	lde_uuid_set_clear(&r->standby_had);
	ldsync_cookie_clear(&r->received);
	ldsync_cookie_clear(&r->refresh_cookie);
	r->phase = PH_IDLE;
}

static int
send_sync_search(struct ldrepl *r, const struct ldsync_cookie *cookie, char **error_r)
{
	const struct st_conf *conf = r->d->conf;
	int mode = conf->ldap.sync_mode == ST_LDAP_POLL ? LDAP_SYNC_REFRESH_ONLY
							 : LDAP_SYNC_REFRESH_AND_PERSIST;
	LDAPControl ctrl = { .ldctl_oid = LDAP_CONTROL_SYNC, .ldctl_iscritical = 1 };
	LDAPControl *ctrls[] = { &ctrl, NULL };

	if (ldsync_request_value(mode, cookie, false, &ctrl.ldctl_value, error_r) < 0)
		return -1;
	int rc = ldap_search_ext(r->src, conf->ldap.suffix, LDAP_SCOPE_SUBTREE, "(objectClass=*)",
				 lde_sync_attrs, 0, ctrls, NULL, NULL, 0, &r->sync_msgid);
	ber_memfree(ctrl.ldctl_value.bv_val);
	if (rc != LDAP_SUCCESS) {
		st_set_error(error_r, "cannot send the sync search: %s", ldap_err2string(rc));
		return -1;
	}
	r->started_without_cookie = cookie == NULL || cookie->len == 0;
	r->rbuf_chunked = false;
	/* Writes in the master's order, but in a refresh from scratch (its
	 * order is not the master's, and nothing was consistent before it). */
	ldq_set_ordered(&r->q, !r->started_without_cookie);
	r->present_phase = false;
	r->refresh_entries = 0;
	r->defer_rounds = 0;
	lde_uuid_set_clear(&r->seen);
	lde_uuid_set_clear(&r->deleted);
	ldsync_cookie_clear(&r->refresh_cookie);
	lda_set_refresh(r->apply, true);
	r->phase = PH_REFRESH;
	r->refreshes++;
	set_state(r, "refreshing");
	st_notice("refresh from %s mode=%s cookie=%s", r->source,
		  mode == LDAP_SYNC_REFRESH_ONLY ? "refreshOnly" : "refreshAndPersist",
		  st_q(cookie != NULL && cookie->len > 0 ? (const char *)cookie->data : "none"));
	return 0;
}

static void src_cb(struct ev_loop *loop, ev_io *w, int revents);
static void tgt_cb(struct ev_loop *loop, ev_io *w, int revents);

static void
session_start(struct ldrepl *r)
{
	const struct st_node *node = r->d->node;
	const struct st_cstate_follower *f = &r->follow;
	char *err = NULL;

	r->next_cstate_ms = st_monotonic_ms() + CSTATE_CHECK_MS;
	if (!f->valid) {
		set_state(r, "no cluster state");
		st_daemon_set_error(r->d, "%s", f->error);
		return;
	}
	const char *source = st_cstate_source(&f->cs, ST_SVC_LDAP, node->name);
	r->epoch = f->cs.epoch;
	if (source == NULL) {
		r->source[0] = '\0';
		set_state(r, strcmp(st_cstate_master_of(&f->cs, ST_SVC_LDAP), node->name) == 0
			     ? "idle (master)" : "idle (no source)");
		return;
	}
	snprintf(r->source, sizeof(r->source), "%s", source);
	snprintf(r->target, sizeof(r->target), "%s", node->name);
	free(r->cookie_path);
	r->cookie_path = xasprintf("%s/ldaprepl-%s.cookie", node->state_dir, r->source);
	r->sessions++;
	r->session_started_ms = st_monotonic_ms();
	set_state(r, "connecting");

	struct ldsync_cookie start = { 0 };
	if (cookie_load(r->cookie_path, &r->stored, &err) < 0)
		goto fail;
	if (r->refresh_required) {
		r->refresh_required = false;
		if (!r->next_without_cookie)
			ldsync_cookie_copy(&start, &r->next_cookie);
	} else {
		ldsync_cookie_copy(&start, &r->stored);
	}
	/* Cookies merge into the position we start from. */
	ldsync_cookie_copy(&r->received, &start);
	/* Connecting and binding can take [ldap] timeout and more: in a thread,
	 * so the status socket answers meanwhile (connect_done goes on). */
	ldsync_cookie_clear(&r->connect_start);
	ldsync_cookie_copy(&r->connect_start, &start);
	ldsync_cookie_clear(&start);
	r->connect_cancelled = false;
	r->phase = PH_CONNECTING;
	r->connect_job = st_bgjob_start(r->d->loop, connect_work, connect_done, r, &err);
	if (r->connect_job == NULL)
		goto fail;
	return;
fail:
	ldsync_cookie_clear(&start);
	fail(r, "%s", err);
	free(err);
}

static char *
snapshot_path(const struct ldrepl *r)
{
	return xasprintf("%s/ldaprepl-before-%s.json", r->d->node->state_dir, r->source);
}

/* After a refresh from scratch, in a thread: what the standby held before
 * and does not now, to the divergence report (lddiverge.h). */
struct diverge {
	struct ldrepl *r;
	char source[ST_NAME_MAX + 1];
	char *path;
	struct ldd_result res;
	char *err;
};

static void
diverge_work(void *arg)
{
	struct diverge *j = arg;
	const struct st_conf *conf = j->r->d->conf;
	LDAP *ld = st_ldap_open(conf, j->r->d->node->name, &j->err);

	if (ld == NULL)
		return;
	if (ldd_report(ld, conf->ldap.suffix, j->path, j->r->d->node->state_dir, j->source, &j->res,
		       &j->err) < 0) {
		ldap_unbind_ext_s(ld, NULL, NULL);
		return;
	}
	ldap_unbind_ext_s(ld, NULL, NULL);
}

static void
diverge_done(void *arg)
{
	struct diverge *j = arg;

	j->r->diverge_job = NULL;
	if (j->err != NULL)
		st_warn("divergence report after the refresh from %s failed (the snapshot %s stays "
			"until the next one): %s", j->source, j->path, j->err);
	else if (j->res.path != NULL)
		st_warn("divergence: this node held what %s does not; written after the refresh "
			"path=%s entries=%zu values=%zu", j->source, st_q(j->res.path),
			j->res.entries, j->res.values);
	else
		st_info("divergence check after the refresh from %s: nothing only this node had",
			j->source);
	ldd_result_clear(&j->res);
	free(j->path);
	free(j->err);
	free(j);
}

static void
diverge_start(struct ldrepl *r)
{
	struct stat sb;
	char *path = snapshot_path(r), *err = NULL;

	if (r->diverge_job != NULL || stat(path, &sb) < 0) {
		free(path);
		return;
	}
	struct diverge *j = xcalloc(1, sizeof(*j));
	j->r = r;
	j->path = path;
	snprintf(j->source, sizeof(j->source), "%s", r->source);
	r->diverge_job = st_bgjob_start(r->d->loop, diverge_work, diverge_done, j, &err);
	if (r->diverge_job == NULL) {
		st_warn("cannot start the divergence report: %s", err);
		free(err);
		free(j->path);
		free(j);
	}
}

/* In the connect thread: both connections, the standby's first.  It reads
 * the configuration, which a reload keeps until the job is done. */
static void
connect_work(void *arg)
{
	struct ldrepl *r = arg;

	r->conn_tgt = connect_to(r, r->target, &r->conn_err);
	if (r->conn_tgt == NULL)
		return;
	/* A refresh from scratch replaces what the standby holds: keep it
	 * first, for the divergence report once the refresh is through. */
	r->snapshot_entries = 0;
	if (r->connect_start.len == 0) {
		char *path = snapshot_path(r);
		int rc = ldd_snapshot(r->conn_tgt, r->d->conf->ldap.suffix, path,
				      &r->snapshot_entries, &r->conn_err);
		free(path);
		if (rc < 0) {
			ldap_unbind_ext_s(r->conn_tgt, NULL, NULL);
			r->conn_tgt = NULL;
			return;
		}
	}
	r->conn_src = connect_to(r, r->source, &r->conn_err);
	if (r->conn_src == NULL) {
		ldap_unbind_ext_s(r->conn_tgt, NULL, NULL);
		r->conn_tgt = NULL;
	}
}

/* On the loop: the connections are there (or why not); start the stream. */
static void
connect_done(void *arg)
{
	struct ldrepl *r = arg;
	const struct st_conf *conf = r->d->conf;
	struct ldsync_cookie start = r->connect_start;
	char *err = r->conn_err;

	r->connect_job = NULL;
	r->conn_err = NULL;
	memset(&r->connect_start, 0, sizeof(r->connect_start));
	if (r->connect_cancelled || r->conn_src == NULL) {
		if (r->conn_src != NULL)
			ldap_unbind_ext_s(r->conn_src, NULL, NULL);
		if (r->conn_tgt != NULL)
			ldap_unbind_ext_s(r->conn_tgt, NULL, NULL);
		r->conn_src = r->conn_tgt = NULL;
		if (!r->connect_cancelled)
			goto fail;
		ldsync_cookie_clear(&start);
		free(err);
		return;
	}
	r->src = r->conn_src;
	r->tgt = r->conn_tgt;
	r->conn_src = r->conn_tgt = NULL;
	ldq_init(&r->q, QUEUE_ITEMS);
	r->apply = lda_new(r->tgt, conf->ldap.suffix, &r->q, MAX_IN_FLIGHT);
	ev_io_init(&r->src_io, src_cb, ldap_fd(r->src), EV_READ);
	ev_io_init(&r->tgt_io, tgt_cb, ldap_fd(r->tgt), EV_READ);
	r->src_io.data = r->tgt_io.data = r;
	ev_io_start(r->d->loop, &r->tgt_io);
	if (start.len == 0) {
		/* The master will send everything: list the standby first, so
		 * that entries it does not have are added without a lookup. */
		if (lda_list_start(r->apply, &err) < 0)
			goto fail;
		r->phase = PH_LISTING;
		set_state(r, "listing the standby");
	} else {
		if (send_sync_search(r, &start, &err) < 0)
			goto fail;
		ev_io_start(r->d->loop, &r->src_io);
	}
	ldsync_cookie_clear(&start);
	r->src_paused = false;
	/* An error stays until a refresh is through (reconcile_step). */
	return;
fail:
	ldsync_cookie_clear(&start);
	fail(r, "%s", err);
	free(err);
}

/* ------------------------------------------------------------ the stream */

static const struct berval *
control_value(LDAPControl **ctrls, const char *oid)
{
	for (size_t i = 0; ctrls != NULL && ctrls[i] != NULL; i++)
		if (strcmp(ctrls[i]->ldctl_oid, oid) == 0)
			return &ctrls[i]->ldctl_value;
	return NULL;
}

/* A cookie from the stream: merged into what we know (a persist-stage
 * cookie carries one serverID's CSN only), then queued behind the changes
 * it follows. */
static void
note_cookie(struct ldrepl *r, const struct ldsync_cookie *c)
{
	ldsync_cookie_merge(&r->received, c);
	if (r->phase == PH_PERSIST)
		ldq_push_cookie(&r->q, &r->received);
	else
		ldsync_cookie_copy(&r->refresh_cookie, &r->received);
}

static int
on_entry(struct ldrepl *r, LDAPMessage *msg, char **error_r)
{
	LDAPControl **ctrls = NULL;
	struct ldsync_state st;
	char *dn = ldap_get_dn(r->src, msg);
	int rc = -1;

	if (ldap_get_entry_controls(r->src, msg, &ctrls) != LDAP_SUCCESS) {
		st_set_error(error_r, "cannot read the controls of the entry %s", dn ? dn : "?");
		goto out;
	}
	const struct berval *v = control_value(ctrls, LDAP_CONTROL_SYNC_STATE);
	if (v == NULL) {
		st_set_error(error_r, "the master sent the entry %s without a Sync State control",
			     dn ? dn : "?");
		goto out;
	}
	if (ldsync_parse_state(v, &st, error_r) < 0)
		goto out;
	bool refresh = r->phase != PH_PERSIST;
	switch (st.state) {
	case LDSYNC_PRESENT:
		lde_uuid_set_add(&r->seen, st.uuid);
		break;
	case LDSYNC_ADD:
	case LDSYNC_MODIFY: {
		struct lde_entry *e = lde_entry_from_message(r->src, msg, error_r);
		if (e == NULL) {
			ldsync_state_clear(&st);
			goto out;
		}
		if (refresh) {
			lde_uuid_set_add(&r->seen, st.uuid);
			lde_uuid_set_remove(&r->deleted, st.uuid);
			r->refresh_entries++;
		}
		if (refresh && !r->started_without_cookie)
			rbuf_add(r, st.uuid, e);
		else
			ldq_push(&r->q, LDQ_UPSERT, st.uuid, e->dn, e);
		break;
	}
	case LDSYNC_DELETE:
		if (refresh) {
			lde_uuid_set_add(&r->deleted, st.uuid);
			lde_uuid_set_remove(&r->seen, st.uuid);
		} else {
			ldq_push(&r->q, LDQ_DELETE, st.uuid, st_str_empty(dn) ? NULL : dn, NULL);
		}
		break;
	}
	if (st.has_cookie)
		note_cookie(r, &st.cookie);
	ldsync_state_clear(&st);
	rc = 0;
out:
	if (dn != NULL)
		ldap_memfree(dn);
	ldap_controls_free(ctrls);
	return rc;
}

static void refresh_done(struct ldrepl *r);

static int
on_intermediate(struct ldrepl *r, LDAPMessage *msg, char **error_r)
{
	char *oid = NULL;
	struct berval *data = NULL;
	struct ldsync_info info;
	int rc = -1;

	if (ldap_parse_intermediate(r->src, msg, &oid, &data, NULL, 0) != LDAP_SUCCESS) {
		st_set_error(error_r, "cannot parse an intermediate response from the master");
		goto out;
	}
	if (oid == NULL || strcmp(oid, LDAP_SYNC_INFO) != 0 || data == NULL) {
		st_warn("ignored an intermediate response from the master oid=%s",
			st_q(oid ? oid : "none"));
		rc = 0;
		goto out;
	}
	if (ldsync_parse_info(data, &info, error_r) < 0)
		goto out;
	if (info.has_cookie)
		note_cookie(r, &info.cookie);
	switch (info.kind) {
	case LDSYNC_NEW_COOKIE:
		break;
	case LDSYNC_REFRESH_PRESENT:
	case LDSYNC_REFRESH_DELETE:
		if (info.kind == LDSYNC_REFRESH_PRESENT)
			r->present_phase = true;
		if (info.refresh_done && r->phase == PH_REFRESH)
			refresh_done(r);
		break;
	case LDSYNC_ID_SET:
		for (size_t i = 0; i < info.n_uuids; i++) {
			if (r->phase == PH_PERSIST) {
				if (info.refresh_deletes)
					ldq_push(&r->q, LDQ_DELETE, info.uuids[i], NULL, NULL);
			} else if (info.refresh_deletes) {
				lde_uuid_set_add(&r->deleted, info.uuids[i]);
				lde_uuid_set_remove(&r->seen, info.uuids[i]);
			} else {
				lde_uuid_set_add(&r->seen, info.uuids[i]);
			}
		}
		break;
	}
	ldsync_info_clear(&info);
	rc = 0;
out:
	ldap_memfree(oid);
	if (data != NULL)
		ber_bvfree(data);
	return rc;
}

/* The sync search ended (refreshOnly's end, refreshRequired, or an error):
 * 0, 1 when a new session must start at once (refreshRequired), or -1. */
static int
on_search_done(struct ldrepl *r, LDAPMessage *msg, char **error_r)
{
	int code = LDAP_OTHER;
	char *diag = NULL;
	LDAPControl **ctrls = NULL;
	struct ldsync_done done = { 0 };
	int rc = -1;

	if (ldap_parse_result(r->src, msg, &code, NULL, &diag, NULL, &ctrls, 0) != LDAP_SUCCESS) {
		st_set_error(error_r, "cannot parse the end of the sync search");
		goto out;
	}
	const struct berval *v = control_value(ctrls, LDAP_CONTROL_SYNC_DONE);
	if (v != NULL && ldsync_parse_done(v, &done, error_r) < 0)
		goto out;
	if (code == LDAP_SYNC_REFRESH_REQUIRED) {
		/* RFC 4533 3.8: again, from the cookie given, or from scratch.
		 * Not an error (1: a new session at once), unless what the master
		 * refused was already a refresh from scratch or followed such a
		 * restart: then the retry waits, so it cannot loop. */
		r->refresh_required = true;
		r->next_without_cookie = !done.has_cookie;
		ldsync_cookie_clear(&r->next_cookie);
		if (done.has_cookie)
			ldsync_cookie_copy(&r->next_cookie, &done.cookie);
		if ((r->started_without_cookie && !done.has_cookie) || r->refresh_restarted) {
			st_set_error(error_r, "the master asks for a new refresh (e-syncRefreshRequired) "
				     "again, %s%s%s", r->started_without_cookie ? "of a refresh from scratch"
				     : "right after the last one", !st_str_empty(diag) ? ": " : "",
				     !st_str_empty(diag) ? diag : "");
			goto out;
		}
		r->refresh_restarted = true;
		st_notice("the master asks for a new refresh (e-syncRefreshRequired)%s: starting again %s "
			  "diagnostic=%s", done.has_cookie ? "" : " with no cookie",
			  done.has_cookie ? "from its cookie" : "from scratch (the whole directory is compared)",
			  st_q(diag != NULL ? diag : ""));
		rc = 1;
		goto out;
	}
	if (code != LDAP_SUCCESS) {
		st_set_error(error_r, "the master ended the sync search: %s (%d)%s%s",
			     ldap_err2string(code), code, !st_str_empty(diag) ? ": " : "",
			     !st_str_empty(diag) ? diag : "");
		goto out;
	}
	if (r->phase != PH_REFRESH) {
		st_set_error(error_r, "the master ended the sync search while persisting");
		goto out;
	}
	/* refreshOnly: the end of the refresh. */
	if (done.has_cookie)
		note_cookie(r, &done.cookie);
	if (!done.refresh_deletes)
		r->present_phase = true;
	r->sync_msgid = -1;
	refresh_done(r);
	rc = 0;
out:
	ldsync_done_clear(&done);
	ldap_memfree(diag);
	ldap_controls_free(ctrls);
	return rc;
}

/* Sync messages, as many as the queue takes; libldap keeps the rest. */
static void
src_drain(struct ldrepl *r)
{
	struct timeval zero = { 0, 0 };
	char *err = NULL;

	while (r->src != NULL && (r->phase == PH_REFRESH || r->phase == PH_PERSIST)) {
		if (ldq_full(&r->q) || r->rbuf_feeding) {
			/* Resumed by progress() once the standby has taken some. */
			r->src_paused = true;
			ev_io_stop(r->d->loop, &r->src_io);
			break;
		}
		LDAPMessage *msg = NULL;
		int type = ldap_result(r->src, LDAP_RES_ANY, LDAP_MSG_ONE, &zero, &msg);
		if (type == 0)
			break;
		if (type < 0) {
			int code = LDAP_SERVER_DOWN;
			ldap_get_option(r->src, LDAP_OPT_RESULT_CODE, &code);
			fail(r, "lost the connection to the master: %s", ldap_err2string(code));
			return;
		}
		int rc = 0;
		if (ldap_msgid(msg) != r->sync_msgid)
			st_warn("a message from the master for no request msgid=%d", ldap_msgid(msg));
		else if (type == LDAP_RES_SEARCH_ENTRY)
			rc = on_entry(r, msg, &err);
		else if (type == LDAP_RES_INTERMEDIATE)
			rc = on_intermediate(r, msg, &err);
		else if (type == LDAP_RES_SEARCH_RESULT)
			rc = on_search_done(r, msg, &err);
		ldap_msgfree(msg);
		if (rc < 0) {
			fail(r, "%s", err);
			free(err);
			return;
		}
		if (rc > 0) {
			/* e-syncRefreshRequired: session_start() asks again. */
			session_end(r);
			set_state(r, "refresh required");
			ev_timer_set(&r->retry, 0., 0.);
			ev_timer_start(r->d->loop, &r->retry);
			return;
		}
	}
	if (r->src_paused && r->src != NULL && !ldq_full(&r->q) && !r->rbuf_feeding &&
	    (r->phase == PH_REFRESH || r->phase == PH_PERSIST)) {
		r->src_paused = false;
		ev_io_start(r->d->loop, &r->src_io);
	}
	progress(r);
}

static void
src_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	(void)revents;
	src_drain(w->data);
}

/* ------------------------------------------------------------ end of a refresh */

static void
refresh_done(struct ldrepl *r)
{
	r->phase = PH_RECONCILE;
	r->rc_step = RC_DRAIN;
	rbuf_start_feeding(r);
	r->deferred_before = 0;
	r->src_paused = true;
	ev_io_stop(r->d->loop, &r->src_io);
	set_state(r, "reconciling");
	st_info("refresh received entries=%" PRIu64 " present_phase=%s no_cookie=%s deleted=%zu",
		r->refresh_entries, r->present_phase ? "yes" : "no",
		r->started_without_cookie ? "yes" : "no", r->deleted.n);
}

/* After the standby's listing: delete what the master does not have. */
static void
queue_deletes(struct ldrepl *r)
{
	struct lda_listed *list;
	size_t n;
	bool all = r->started_without_cookie || r->present_phase;
	size_t queued = 0;

	lda_list_take(r->apply, &list, &n);
	for (size_t i = 0; i < n; i++) {
		bool go = all ? !lde_uuid_set_has(&r->seen, list[i].uuid)
			      : lde_uuid_set_has(&r->deleted, list[i].uuid);
		if (!go)
			continue;
		st_notice("deleting from the standby: not on the master dn=%s", st_q(list[i].dn));
		ldq_push(&r->q, LDQ_DELETE, list[i].uuid, list[i].dn, NULL);
		queued++;
	}
	r->reconcile_deletes += queued;
	lda_list_free(list, n);
}

static void
reconcile_step(struct ldrepl *r)
{
	char *err = NULL;

	for (;;) {
		if (r->rbuf_feeding || !ldq_idle(&r->q) || lda_in_flight(r->apply) > 0)
			return;
		switch (r->rc_step) {
		case RC_DRAIN:
			if (lda_deferred(r->apply) > 0) {
				size_t n = lda_deferred(r->apply);
				if (++r->defer_rounds > DEFER_ROUNDS ||
				    (r->deferred_before != 0 && n >= r->deferred_before)) {
					fail(r, "%zu entries of the refresh have no parent on the standby "
					     "(see the deferred lines in the log)", n);
					return;
				}
				r->deferred_before = n;
				lda_retry_deferred(r->apply);
				if (lda_pump(r->apply, &err) < 0)
					goto failed;
				continue;
			}
			if (!r->started_without_cookie && !r->present_phase && r->deleted.n == 0) {
				r->rc_step = RC_DELETE;
				continue;
			}
			if (lda_list_start(r->apply, &err) < 0)
				goto failed;
			r->rc_step = RC_LIST;
			return;
		case RC_LIST:
			if (!lda_list_done(r->apply))
				return;
			queue_deletes(r);
			r->rc_step = RC_DELETE;
			if (lda_pump(r->apply, &err) < 0)
				goto failed;
			continue;
		case RC_DELETE:
			lda_set_refresh(r->apply, false);
			if (r->refresh_cookie.data != NULL && cookie_store(r, &r->refresh_cookie, &err) < 0)
				goto failed;
			st_notice("refresh done entries=%" PRIu64 " deleted=%" PRIu64 " cookie=%s",
				  r->refresh_entries, r->reconcile_deletes,
				  st_q(r->stored.data ? (const char *)r->stored.data : "none"));
			lde_uuid_set_clear(&r->seen);
			lde_uuid_set_clear(&r->deleted);
			lde_uuid_set_clear(&r->standby_had);
			r->retry_ms = RETRY_MIN_MS;
			r->refresh_restarted = false;
			/* Whatever failed before is applied now (or the refresh failed). */
			st_daemon_set_error(r->d, NULL);
			diverge_start(r);
			if (r->d->conf->ldap.sync_mode == ST_LDAP_POLL) {
				r->phase = PH_POLL_WAIT;
				r->poll_due_ms = st_monotonic_ms() + r->d->conf->ldap.poll_interval_ms;
				set_state(r, "waiting for the next poll");
				return;
			}
			r->phase = PH_PERSIST;
			ldq_set_ordered(&r->q, true);
			r->persist_since_ms = st_monotonic_ms();
			set_state(r, "persisting");
			src_drain(r);
			return;
		}
	}
failed:
	fail(r, "%s", err);
	free(err);
}

/* ------------------------------------------------------------ apply side */

/* The standby's entryUUIDs are known: start the refresh from scratch. */
static void
listing_done(struct ldrepl *r)
{
	struct lda_listed *list;
	size_t n;
	char *err = NULL;

	lda_list_take(r->apply, &list, &n);
	lde_uuid_set_clear(&r->standby_had);
	for (size_t i = 0; i < n; i++)
		lde_uuid_set_add(&r->standby_had, list[i].uuid);
	lda_list_free(list, n);
	st_info("the standby holds %zu entries before the refresh", r->standby_had.n);
	if (send_sync_search(r, NULL, &err) < 0) {
		fail(r, "%s", err);
		free(err);
		return;
	}
	lda_set_standby_had(r->apply, &r->standby_had);
	ev_io_start(r->d->loop, &r->src_io);
}

static void
progress(struct ldrepl *r)
{
	char *err = NULL;

	if (r->apply == NULL)
		return;
	if (r->rbuf_feeding)
		rbuf_feed(r);
	if (lda_pump(r->apply, &err) < 0) {
		fail(r, "%s", err);
		free(err);
		return;
	}
	if (r->phase == PH_LISTING) {
		if (lda_list_done(r->apply))
			listing_done(r);
		return;
	}
	if (r->phase == PH_RECONCILE)
		reconcile_step(r);
	else if (r->src_paused && !ldq_full(&r->q) && !r->rbuf_feeding &&
		 (r->phase == PH_REFRESH || r->phase == PH_PERSIST))
		src_drain(r);
}

static void
tgt_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct ldrepl *r = w->data;
	char *err = NULL;

	(void)loop;
	(void)revents;
	if (lda_read(r->apply, &err) < 0) {
		fail(r, "%s", err);
		free(err);
		return;
	}
	progress(r);
}

static void
save_cookie(struct ldrepl *r, bool force)
{
	struct ldsync_cookie c = { 0 };
	char *err = NULL;

	if (r->phase != PH_PERSIST || r->apply == NULL)
		return;
	if (!force && st_monotonic_ms() < r->next_cookie_save_ms)
		return;
	if (!ldq_take_applied(&r->q, &c))
		return;
	r->next_cookie_save_ms = st_monotonic_ms() + COOKIE_SAVE_MS;
	if (cookie_store(r, &c, &err) < 0) {
		ldsync_cookie_clear(&c);
		fail(r, "%s", err);
		free(err);
		return;
	}
	ldsync_cookie_clear(&c);
}

/* Does the cluster state taken move this node's session? */
static bool
cstate_changed(const struct ldrepl *r)
{
	const struct st_cstate_follower *f = &r->follow;
	if (!f->valid)
		return false;	/* keep going; session_start() reports it */
	const char *src = st_cstate_source(&f->cs, ST_SVC_LDAP, r->d->node->name);
	return f->cs.epoch != r->epoch || (src == NULL) != (r->source[0] == '\0') ||
	       (src != NULL && strcmp(src, r->source) != 0);
}

/* Start, end or move the session after the cluster state (or a pause). */
static void
follow_cstate(struct ldrepl *r)
{
	r->next_cstate_ms = st_monotonic_ms() + CSTATE_CHECK_MS;
	if (ev_is_active(&r->retry))
		return;		/* retry_cb starts with the state taken then */
	if (r->phase != PH_IDLE && !cstate_changed(r))
		return;
	if (r->phase != PH_IDLE) {
		st_notice("cluster state changed: ending this session");
		save_cookie(r, true);
		session_end(r);
	}
	session_start(r);
}

static void
cstate_cb(struct st_cstate_follower *f, void *data)
{
	(void)f;
	follow_cstate(data);
}

/* NODE's contextCSN, ';'-separated (in a thread: blocking calls). */
static char *
read_context_csn(const struct st_conf *conf, const char *node, char **error_r)
{
	LDAPMessage *res = NULL;
	struct berval **vals = NULL;
	char *csns = NULL;
	LDAP *ld = st_ldap_open(conf, node, error_r);

	if (ld == NULL)
		return NULL;
	static char *attrs[] = { "contextCSN", NULL };
	struct timeval tv = { conf->ldap.timeout_ms / 1000, (conf->ldap.timeout_ms % 1000) * 1000 };
	int rc = ldap_search_ext_s(ld, conf->ldap.suffix, LDAP_SCOPE_BASE, "(objectClass=*)", attrs,
				   0, NULL, NULL, &tv, 1, &res);
	LDAPMessage *e = rc == LDAP_SUCCESS ? ldap_first_entry(ld, res) : NULL;
	vals = e != NULL ? ldap_get_values_len(ld, e, "contextCSN") : NULL;
	if (vals == NULL || vals[0] == NULL) {
		st_set_error(error_r, "no contextCSN on %s's %s: %s", node, conf->ldap.suffix,
			     rc == LDAP_SUCCESS ? "is syncprov configured there?" : ldap_err2string(rc));
	} else {
		struct st_buf b;
		st_buf_init(&b);
		for (size_t i = 0; vals[i] != NULL; i++) {
			if (i > 0)
				st_buf_puts(&b, ";");
			st_buf_append(&b, vals[i]->bv_val, vals[i]->bv_len);
		}
		st_buf_puts(&b, "");
		csns = st_buf_steal(&b);
		st_buf_free(&b);
	}
	if (vals != NULL)
		ldap_value_free_len(vals);
	if (res != NULL)
		ldap_msgfree(res);
	ldap_unbind_ext_s(ld, NULL, NULL);
	return csns;
}

/* ------------------------------------------------------------ the lag clock */

struct hb_job {
	struct ldrepl *r;
	char node[ST_NAME_MAX + 1];
	int64_t ms;
	char *csns, *err;
};

static void
hb_work(void *arg)
{
	struct hb_job *j = arg;

	j->csns = read_context_csn(j->r->d->conf, j->node, &j->err);
}

static void
hb_forget(struct ldrepl *r)
{
	for (size_t i = 0; i < r->hb_n; i++)
		free(r->hb[i].csns);
	r->hb_n = 0;
}

static void
hb_done(void *arg)
{
	struct hb_job *j = arg;
	struct ldrepl *r = j->r;

	r->hb_job = NULL;
	if (j->err != NULL) {
		if (r->hb_error == NULL || strcmp(r->hb_error, j->err) != 0)
			st_warn("reading the master's contextCSN for the lag: %s (the lag shown grows "
				"until it works)", j->err);
		free(r->hb_error);
		r->hb_error = j->err;
		j->err = NULL;
	} else if (strcmp(j->node, r->source) == 0) {
		if (r->hb_error != NULL) {
			st_notice("the master's contextCSN can be read again");
			free(r->hb_error);
			r->hb_error = NULL;
		}
		struct hb_read *last = r->hb_n > 0 ? &r->hb[r->hb_n - 1] : NULL;
		if (last != NULL && strcmp(last->csns, j->csns) == 0) {
			last->ms = j->ms;	/* nothing new on the master: a later time */
			free(j->csns);
		} else {
			if (r->hb_n == HEARTBEAT_PENDING) {
				/* Far behind: keep the newest (the lag errs on the high side). */
				free(r->hb[0].csns);
				memmove(r->hb, r->hb + 1, (r->hb_n - 1) * sizeof(r->hb[0]));
				r->hb_n--;
			}
			r->hb[r->hb_n].csns = j->csns;
			r->hb[r->hb_n].ms = j->ms;
			r->hb_n++;
		}
		j->csns = NULL;
	}
	free(j->csns);
	free(j->err);
	free(j);
}

/* STATE_DIR/ldaprepl.heartbeat: heartbeat_ms across restarts. */
static void
hb_save(struct ldrepl *r, bool force)
{
	long long now = st_monotonic_ms();

	if (r->heartbeat_ms <= 0 || (!force && now - r->hb_saved_ms < HEARTBEAT_SAVE_MS))
		return;
	r->hb_saved_ms = now;
	char *path = xasprintf("%s/ldaprepl.heartbeat", r->d->node->state_dir);
	st_ms_file_save(path, r->heartbeat_ms);
	free(path);
}

static void
hb_load(struct ldrepl *r)
{
	char *path = xasprintf("%s/ldaprepl.heartbeat", r->d->node->state_dir);

	r->heartbeat_ms = st_ms_file_load(path);
	free(path);
}

/*
 * Every tick: credit the reads the applied cookie covers, and start the
 * next read when due.  Only on a standby (a source in the cluster state),
 * whatever the session's state: a stuck or failed session's lag grows.
 */
static void
hb_tick(struct ldrepl *r, long long now)
{
	if (r->source[0] == '\0') {
		hb_forget(r);
		return;
	}
	if (strcmp(r->hb_source, r->source) != 0) {
		hb_forget(r);
		snprintf(r->hb_source, sizeof(r->hb_source), "%s", r->source);
	}
	const struct ldsync_cookie *ac = r->phase == PH_PERSIST && r->q.applied.data != NULL
					 ? &r->q.applied : &r->stored;
	size_t done = 0;
	while (done < r->hb_n && ldsync_cookie_covers(ac, r->hb[done].csns)) {
		if (r->hb[done].ms > r->heartbeat_ms)
			r->heartbeat_ms = r->hb[done].ms;
		free(r->hb[done].csns);
		done++;
	}
	if (done > 0) {
		memmove(r->hb, r->hb + done, (r->hb_n - done) * sizeof(r->hb[0]));
		r->hb_n -= done;
		hb_save(r, false);
	}
	if (r->hb_job != NULL || now < r->hb_next_ms)
		return;
	r->hb_next_ms = now + HEARTBEAT_MS;
	struct hb_job *j = xcalloc(1, sizeof(*j));
	char *err = NULL;
	j->r = r;
	snprintf(j->node, sizeof(j->node), "%s", r->source);
	j->ms = st_now_ms();
	r->hb_job = st_bgjob_start(r->d->loop, hb_work, hb_done, j, &err);
	if (r->hb_job == NULL) {
		st_warn("cannot start the heartbeat's thread: %s", err);
		free(err);
		free(j);
	}
}

static void
tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct ldrepl *r = w->data;
	long long now = st_monotonic_ms();

	(void)loop;
	(void)revents;
	save_cookie(r, false);
	const struct lda_stats *s = r->apply != NULL ? lda_stats(r->apply) : NULL;
	uint64_t total = s != NULL ? s->adds + s->modifies + s->renames + s->deletes + s->unchanged : 0;
	if (now - (long long)r->rate_ms >= 1000) {
		r->entries_per_s = total >= r->rate_base && r->rate_ms > 0
				   ? (double)(total - r->rate_base) * 1000.0 / (double)(now - (long long)r->rate_ms)
				   : 0.0;
		r->rate_base = total;
		r->rate_ms = (uint64_t)now;
	}
	if (r->phase == PH_POLL_WAIT && now >= r->poll_due_ms) {
		char *err = NULL;
		struct ldsync_cookie c = { 0 };
		ldsync_cookie_copy(&c, &r->stored);
		if (send_sync_search(r, &c, &err) < 0) {
			fail(r, "%s", err);
			free(err);
		} else {
			ev_io_start(loop, &r->src_io);
		}
		ldsync_cookie_clear(&c);
	}
	if (now >= r->next_cstate_ms)
		follow_cstate(r);
	hb_tick(r, now);
}

static void
retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	session_start(w->data);
}

/* ------------------------------------------------------------ daemon ops */

static int
ldrepl_start(struct st_daemon *d, char **error_r)
{
	struct ldrepl *r = d->priv;

	if (!d->conf->service_enabled[ST_SVC_LDAP]) {
		st_set_error(error_r, "%s has no [ldap] section: nothing to replicate", d->config_path);
		return -1;
	}
	r->d = d;
	r->retry_ms = RETRY_MIN_MS;
	r->sync_msgid = -1;
	ev_timer_init(&r->tick, tick_cb, TICK_MS / 1000.0, TICK_MS / 1000.0);
	r->tick.data = r;
	ev_timer_start(d->loop, &r->tick);
	ev_timer_init(&r->retry, retry_cb, 1.0, 0.);
	r->retry.data = r;
	set_state(r, "starting");
	st_cstate_follower_init(&r->follow, d->node);
	st_cstate_follow(&r->follow);
	hb_load(r);
	session_start(r);
	st_cstate_watch(&r->follow, d->loop, CSTATE_CHECK_MS / 1000.0, cstate_cb, r);
	return 0;
}

static void
ldrepl_stop(struct st_daemon *d)
{
	struct ldrepl *r = d->priv;

	save_cookie(r, true);
	ev_timer_stop(d->loop, &r->tick);
	ev_timer_stop(d->loop, &r->retry);
	session_end(r);
	st_bgjob_wait(&r->reverse_job);
	st_bgjob_wait(&r->diverge_job);
	st_bgjob_wait(&r->hb_job);
	hb_save(r, true);
	hb_forget(r);
	free(r->hb_error);
	r->hb_error = NULL;
	st_cstate_follower_free(&r->follow);
}

static void
cookie_json(json_t *obj, const char *key, const struct ldsync_cookie *c)
{
	json_object_set_new(obj, key, c->data != NULL ? json_stringn((const char *)c->data, c->len)
						       : json_null());
}

static void
ldrepl_status(struct st_daemon *d, json_t *obj)
{
	struct ldrepl *r = d->priv;
	const struct lda_stats *s = r->apply != NULL ? lda_stats(r->apply) : NULL;
	char applied[128], received[128], durable[128];
	/* Applied: every change up to it is on the standby; durable: the cookie
	 * file says so (written at most every COOKIE_SAVE_MS). */
	const struct ldsync_cookie *ac = r->apply != NULL && r->q.applied.data != NULL ? &r->q.applied
										     : &r->stored;
	bool have_a = ac->data != NULL && ldsync_cookie_csn(ac, applied, sizeof(applied)) == 0;
	bool have_d = r->stored.data != NULL && ldsync_cookie_csn(&r->stored, durable, sizeof(durable)) == 0;
	bool have_r = r->received.data != NULL &&
		      ldsync_cookie_csn(&r->received, received, sizeof(received)) == 0;

	json_object_set_new(obj, "state", json_string(r->state ? r->state : "starting"));
	json_object_set_new(obj, "source", r->source[0] ? json_string(r->source) : json_null());
	json_object_set_new(obj, "target", r->target[0] ? json_string(r->target) : json_null());
	json_object_set_new(obj, "mode", json_string(d->conf->ldap.sync_mode == ST_LDAP_POLL
						      ? "refreshOnly" : "refreshAndPersist"));
	cookie_json(obj, "cookie", &r->stored);
	json_object_set_new(obj, "applied_csn", have_a ? json_string(applied) : json_null());
	json_object_set_new(obj, "durable_csn", have_d ? json_string(durable) : json_null());
	json_object_set_new(obj, "received_csn", have_r ? json_string(received) : json_null());
	/* The lag in every state of a standby: since the newest read of the
	 * master's contextCSN the applied cookie covers (null before the first). */
	if (r->source[0] != '\0' && r->heartbeat_ms > 0) {
		double lag = (double)(st_now_ms() - r->heartbeat_ms) / 1000.0;
		json_object_set_new(obj, "lag_seconds", json_real(lag < 0 ? 0 : lag));
	} else {
		json_object_set_new(obj, "lag_seconds", json_null());
	}
	json_object_set_new(obj, "heartbeat_ms", r->heartbeat_ms > 0 ? json_integer(r->heartbeat_ms)
								 : json_null());
	json_object_set_new(obj, "heartbeat_error", r->hb_error != NULL ? json_string(r->hb_error)
								       : json_null());
	json_object_set_new(obj, "queued", json_integer(r->apply ? (json_int_t)ldq_count(&r->q) : 0));
	json_object_set_new(obj, "in_flight", json_integer(r->apply ? lda_in_flight(r->apply) : 0));
	json_object_set_new(obj, "entries_per_second", json_real(r->entries_per_s));
	json_t *c = json_object();
	json_object_set_new(c, "adds", json_integer(s ? (json_int_t)s->adds : 0));
	json_object_set_new(c, "modifies", json_integer(s ? (json_int_t)s->modifies : 0));
	json_object_set_new(c, "renames", json_integer(s ? (json_int_t)s->renames : 0));
	json_object_set_new(c, "deletes", json_integer(s ? (json_int_t)s->deletes : 0));
	json_object_set_new(c, "unchanged", json_integer(s ? (json_int_t)s->unchanged : 0));
	json_object_set_new(c, "adopted", json_integer(s ? (json_int_t)s->adopted : 0));
	json_object_set_new(obj, "session", c);
	json_object_set_new(obj, "refresh_entries", json_integer((json_int_t)r->refresh_entries));
	json_object_set_new(obj, "reconcile_deletes", json_integer((json_int_t)r->reconcile_deletes));
	json_object_set_new(obj, "refreshes", json_integer((json_int_t)r->refreshes));
}

static void
ldrepl_metrics(struct st_daemon *d, struct st_buf *out)
{
	struct ldrepl *r = d->priv;
	const struct lda_stats *s = r->apply != NULL ? lda_stats(r->apply) : NULL;
	char labels[128];

	snprintf(labels, sizeof(labels), "node=\"%s\",source=\"%s\"", d->node->name, r->source);
	st_metric(out, "standin_ldap_persisting", "gauge", "1 while changes stream live.", labels,
		  r->phase == PH_PERSIST);
	st_metric(out, "standin_ldap_entries_applied_total", "counter",
		  "Entries added, modified, renamed or deleted in this session.", labels,
		  s ? (double)(s->adds + s->modifies + s->renames + s->deletes) : 0);
	st_metric(out, "standin_ldap_queued", "gauge", "Changes received, not yet applied.", labels,
		  r->apply ? (double)ldq_count(&r->q) : 0);
}

/*
 * "drain CSN [TIMEOUT_MS]" (st_ctl_drain): is everything the master wrote up
 * to its contextCSN CSN applied here and the cookie saying so durable?
 */
static int
drain_check(void *ctx, const char *pos, json_t *out)
{
	struct st_daemon *d = ctx;
	struct ldrepl *r = d->priv;
	char applied[128];

	if (ldsync_csn_ms(pos) < 0) {
		json_object_set_new(out, "error", json_string("usage: drain CSN [TIMEOUT_MS] (the "
				    "master's contextCSN, e.g. 20261123105305.397177Z#000000#001#000000)"));
		return -1;
	}
	save_cookie(r, true);
	bool have = r->stored.data != NULL &&
		    ldsync_cookie_csn(&r->stored, applied, sizeof(applied)) == 0;
	json_object_set_new(out, "applied", have ? json_string(applied) : json_null());
	json_object_set_new(out, "applied_csn", have ? json_string(applied) : json_null());
	return r->phase == PH_PERSIST && have && strcmp(applied, pos) >= 0;
}

static void
cmd_drain(void *ctx, const char *args, struct st_buf *reply)
{
	st_ctl_drain(ctx, args, reply, drain_check);
}

/* "position": the master's CSN up to which this standby has applied and
 * made durable everything (null when none is known). */
static void
cmd_position(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct ldrepl *r = d->priv;
	char applied[128];
	json_t *o = json_object();

	(void)args;
	save_cookie(r, true);
	bool have = r->stored.data != NULL &&
		    ldsync_cookie_csn(&r->stored, applied, sizeof(applied)) == 0;
	json_object_set_new(o, "service", json_string("ldap"));
	json_object_set_new(o, "position", have ? json_string(applied) : json_null());
	st_ctl_reply_json(reply, o);
}

/* "sequences": LDAP has none (the same verbs in every replicator). */
static void
cmd_sequences(void *ctx, const char *args, struct st_buf *reply)
{
	(void)ctx;
	(void)args;
	st_buf_puts(reply, "{\"requested\":false,\"reason\":\"LDAP has no sequences\"}\n");
}

/* "reverse NODE" in flight: NODE's contextCSN read in a thread. */
struct reverse {
	struct ldrepl *r;
	char node[65];		/* as given; checked against the nodes */
	char source[ST_NAME_MAX + 1];	/* another standby's source (the old master), or "" */
	struct st_ctl_held *held;
	char *csns;			/* ';'-separated contextCSN values */
	char *source_csns;		/* the old master's, for another standby */
	char *err;
};

static void
reverse_work(void *arg)
{
	struct reverse *rv = arg;

	if (rv->source[0] != '\0' &&
	    (rv->source_csns = read_context_csn(rv->r->d->conf, rv->source, &rv->err)) == NULL)
		return;
	rv->csns = read_context_csn(rv->r->d->conf, rv->node, &rv->err);
}

/* On the loop: write the cookie for source NODE, answer the client. */
static void
reverse_done(void *arg)
{
	struct reverse *rv = arg;
	struct ldrepl *r = rv->r;
	json_t *o = json_object();

	r->reverse_job = NULL;
	if (rv->err == NULL && rv->source[0] != '\0') {
		/* Another standby: it must hold everything the old master has
		 * (drained) before it starts from NODE's contextCSN.  Its current
		 * session goes on with its own cookie until the state changes. */
		save_cookie(r, true);
		if (!ldsync_cookie_covers(&r->stored, rv->source_csns))
			rv->err = xasprintf("this node has not applied %s's contextCSN %s yet (drain "
					    "first)", rv->source, rv->source_csns);
	}
	if (rv->err == NULL) {
		struct ldsync_cookie c = { 0 };
		ldsync_cookie_from_csn(&c, rv->csns);
		char *path = xasprintf("%s/ldaprepl-%s.cookie", r->d->node->state_dir, rv->node);
		int rc;
		if (rv->source[0] != '\0') {
			rc = cookie_write(path, &c, &rv->err);
			free(path);
		} else {
			free(r->cookie_path);
			r->cookie_path = path;
			rc = cookie_store(r, &c, &rv->err);
		}
		if (rc == 0) {
			st_notice("reverse: will replicate from %s starting at its contextCSN "
				  "cookie=%s", rv->node, st_q((const char *)c.data));
			json_object_set_new(o, "cookie", json_string((const char *)c.data));
		}
		ldsync_cookie_clear(&c);
	}
	if (rv->err != NULL) {
		json_object_set_new(o, "ok", json_false());
		json_object_set_new(o, "error", json_string(rv->err));
	} else {
		json_object_set_new(o, "done", json_true());
	}
	char *text = json_dumps(o, JSON_COMPACT);
	char *line = xasprintf("%s\n", text);
	st_ctl_reply_later(rv->held, line);
	free(line);
	free(text);
	json_decref(o);
	free(rv->csns);
	free(rv->source_csns);
	free(rv->err);
	free(rv);
}

/*
 * "reverse NODE", on the master's daemon during a switchover, once this
 * master is fenced and NODE (its standby) has drained: NODE becomes the
 * master and this node its standby.  Both directories are equal now, so
 * this node will resume from NODE's contextCSN instead of comparing the
 * whole directory: the cookie for source NODE is written here.  NODE is
 * asked in a thread (reverse_work); the reply comes when it has answered.
 * On another standby (three nodes or more) the same re-points it, once its
 * cookie covers the old master's contextCSN: it will go on from NODE's.
 */
static void
cmd_reverse(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct ldrepl *r = d->priv;
	char *err = NULL;
	struct reverse *rv = xcalloc(1, sizeof(*rv));

	char node[65], extra[2];
	long timeout = 3 * d->conf->ldap.timeout_ms;
	int n = sscanf(args, "%64s %ld %1s", node, &timeout, extra);

	rv->r = r;
	snprintf(rv->node, sizeof(rv->node), "%s", n >= 1 ? node : "");
	if (n < 1 || n > 2 || timeout <= 0 || st_conf_node(d->conf, node) == NULL ||
	    strcmp(node, d->node->name) == 0)
		err = xstrdup("usage: reverse NODE [TIMEOUT_MS] (NODE: the standby that becomes the "
			      "master; not this node)");
	else if (r->phase != PH_IDLE && r->source[0] != '\0' && strcmp(r->source, node) == 0)
		err = xasprintf("this node replicates from %s already: reverse is for the old "
				"master's daemon and the other standbys'", r->source);
	else if (r->phase != PH_IDLE && r->source[0] != '\0' && r->phase != PH_PERSIST &&
		 r->phase != PH_POLL_WAIT)
		err = xasprintf("this node is not streaming from %s (it is refreshing or "
				"retrying): reverse needs it caught up", r->source);
	else if (r->reverse_job != NULL)
		err = xstrdup("a reverse is running already");
	else {
		if (r->phase != PH_IDLE && r->source[0] != '\0')
			snprintf(rv->source, sizeof(rv->source), "%s", r->source);
		r->reverse_job = st_bgjob_start(d->loop, reverse_work, reverse_done, rv, &err);
	}
	if (err != NULL) {
		st_ctl_reply_error(reply, "%s", err);
		free(err);
		free(rv);
		return;
	}
	/* Connect, bind and search: each within [ldap] timeout (3 x by default). */
	rv->held = st_ctl_hold(reply, timeout);
}

/* A reload frees the configuration the threads read: let them finish. */
static int
ldrepl_reload(struct st_daemon *d, struct st_conf *conf, char **error_r)
{
	struct ldrepl *r = d->priv;

	(void)conf;
	(void)error_r;
	st_bgjob_wait(&r->connect_job);
	st_bgjob_wait(&r->reverse_job);
	st_bgjob_wait(&r->diverge_job);
	st_bgjob_wait(&r->hb_job);
	return 0;
}

static const struct st_ctl_command ldrepl_commands[] = {
	{ "drain", ST_CTL_CHANGES, cmd_drain, "drain CSN [TIMEOUT_MS]: tell (or wait until) the master's contextCSN CSN is applied here" },
	{ "position", ST_CTL_READ_ONLY, cmd_position, "position: the master's CSN applied and durable here" },
	{ "sequences", ST_CTL_CHANGES, cmd_sequences, "sequences: nothing to do (LDAP has none)" },
	{ "reverse", ST_CTL_CHANGES, cmd_reverse, "reverse NODE [TIMEOUT_MS]: on the master, start the reverse direction from NODE's contextCSN" },
	{ NULL, 0, NULL, NULL },
};

static const struct st_daemon_ops ldrepl_ops = {
	.program = ST_PROGRAM_LDAPREPL,
	.summary = "replicate the LDAP directory from the master to this standby (RFC 4533)",
	.start = ldrepl_start,
	.stop = ldrepl_stop,
	.reload = ldrepl_reload,
	.status = ldrepl_status,
	.metrics = ldrepl_metrics,
	.commands = ldrepl_commands,
};

int
main(int argc, char **argv)
{
	int rc = st_daemon_main(argc, argv, &ldrepl_ops, &G);

	session_end(&G);
	ldsync_cookie_clear(&G.stored);
	ldsync_cookie_clear(&G.next_cookie);
	free(G.cookie_path);
	return rc;
}
