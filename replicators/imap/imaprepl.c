/*
 * standin-imaprepl: keep every mailbox of every user on the standby's IMAP
 * server equal to the master's, over IMAP (libetpan).
 *
 * Threads: the main thread runs the daemon's libev loop (status socket,
 * timers, the IDLE descriptors, the cluster state); a pool of [imap]
 * workers threads runs the blocking libetpan sessions.  Work is a queue of
 * jobs under one mutex:
 *   TREE user        mirror the folder tree and subscriptions, STATUS every
 *                    folder, queue a FOLDER job for each one that changed
 *   FOLDER user/f    one folder pass (imsync.c)
 *   IDLE user        (re)start the IDLE session on the user's INBOX
 * A user's TREE job never runs beside that user's FOLDER jobs, and a folder
 * has at most one job running; a folder asked for again while it runs is
 * queued again when it ends.  Workers tell the main thread through an
 * ev_async.
 *
 * A full pass (every full_pass_interval, at start, and on "drain") queues a
 * TREE job per user and ends when the queue is empty and no job runs.
 * Between passes, each user's INBOX is watched with IDLE: its descriptor is
 * an ev_io in the main thread; when it becomes readable a FOLDER job for
 * INBOX goes to the front of the queue and the IDLE is restarted.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <unistd.h>

#include "lib/cstate.h"
#include "lib/ldconn.h"
#include "lib/daemon.h"
#include "lib/durable.h"
#include "lib/log.h"
#include "replicators/imap/imnotice.h"
#include "replicators/imap/imsync.h"

#define TICK_MS 500
#define CSTATE_CHECK_MS 2000
#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 60000
#define IDLE_REFRESH_S (25 * 60)
/* A user with a change seen lately (an IDLE wake, a folder that changed, a
 * push session that died) gets a tree job (LIST and STATUS) every
 * ACTIVE_POLL_MS for ACTIVE_WINDOW_MS: what NOTIFY does not push (Dovecot
 * 2.3 sends nothing for a folder created or renamed) or cannot push (no
 * NOTIFY, or its session died) is found within seconds. */
#define ACTIVE_POLL_MS 3000
#define ACTIVE_WINDOW_MS (10 * 60 * 1000)
#define USERS_MAX 100000
/* Every DEEP_PASS_MS a full pass walks every user's tree on both servers
 * (no quick check): what happened to the standby behind standin's back. */
#define DEEP_PASS_MS (6LL * 3600 * 1000)
/* changes = dovecot: notices waiting to be relayed, at most. */
#define NOTICES_MAX 100000
#define NOTICE_LEASE_S 60

enum job_kind { JOB_TREE, JOB_FOLDER, JOB_IDLE };
/* OFF: none; QUEUED: an IDLE job is queued or running; READY: it ended, the
 * main thread arms it; WATCHING: the main thread watches its descriptor. */
enum idle_state { IDLE_OFF, IDLE_QUEUED, IDLE_READY, IDLE_WATCHING };

struct folder {
	char *name;
	bool queued, running, again;
	uint64_t behind;		/* source messages not on the standby (last tree job) */
	struct folder *next;
};

struct user {
	char *name;
	bool listed;			/* in the current user list */
	bool tree_queued, tree_running;
	int running;			/* FOLDER jobs running */
	uint64_t behind, messages;
	size_t n_folders;
	long long active_until_ms, next_poll_ms;	/* monotonic; see ACTIVE_POLL_MS */
	char *error;
	struct folder *folders;
	size_t folders_queued;		/* FOLDER jobs queued */
	bool tree_deep;			/* the queued tree job skips the quick check */
	/* The listing of the last tree job, saved once its folder jobs all went well. */
	char *digest;
	bool digest_ok;
	long long last_change_ms;	/* monotonic: a change seen (0 never) */
	bool idle_want;			/* changed, and not in the IDLE set: the main thread sees */
	bool idle_stop;			/* the IDLE job ends the session (evicted from the set) */
	/* IDLE; the session belongs to the main thread while WATCHING. */
	enum idle_state idle_state;
	struct im_sess *idle;
	bool idle_restart;		/* the IDLE job restarts the session it has */
	bool notify;			/* the IDLE session has NOTIFY: it wakes for any folder */
	bool idle_changed;		/* it woke for a change: a tree job once it idles again */
	ev_io idle_io;
	ev_timer idle_timer;
	long long idle_retry_ms;
	struct user *next;
	struct user *hnext;		/* in imrepl.hash */
};

struct job {
	enum job_kind kind;
	bool urgent;			/* pushed to the front; a tree job's folder jobs too */
	struct user *u;
	struct folder *f;
	struct job *next;
};

struct imrepl {
	struct st_daemon *d;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t *threads;
	size_t n_threads;
	struct job *head, *tail;
	size_t queued, running;
	bool quit;
	atomic_bool stopping;
	ev_async wake;
	ev_timer tick, pass_timer;

	struct user *users;
	size_t n_users;
	struct user **hash;		/* by name, n_hash buckets (a power of two) */
	size_t n_hash;
	size_t n_idle;			/* users whose idle_state is not IDLE_OFF */
	size_t idle_wants, idle_readies;	/* users with idle_want, with IDLE_READY */
	size_t idle_stopping;		/* IDLE jobs with idle_stop queued or running */
	int changes;			/* [imap] changes, read when the workers start */
	size_t idle_users;		/* [imap] idle_users, likewise (at most idle_room) */
	size_t idle_room;		/* IDLE sessions the descriptor limit has room for */
	long long last_deep_ms;		/* monotonic start of the last deep pass */
	bool pass_deep;

	/* changes = dovecot (imnotice.h); NULL otherwise. */
	struct im_notices *nt;
	uint64_t notices_unknown;	/* names of users not in the list */

	/* Session parameters (valid while a source is set). */
	char source[ST_NAME_MAX + 1];
	uint64_t epoch;
	struct im_endpoint src_ep, tgt_ep;
	struct im_login src_login, tgt_login;
	char *password;
	char *state_root;
	struct im_env env;
	struct im_counters c;
	bool active;			/* a source is set and workers run */

	/*
	 * Sessions between jobs (under mu), newest first, at most n_threads:
	 * the next job of the same user, on whichever worker, goes on with
	 * them instead of logging in again.
	 */
	struct spare *spares;
	size_t n_spares;
	bool notify;			/* [imap] notify, read when the workers start */

	/* Passes. */
	bool pass_active, pass_wanted;
	long long pass_started_ms, last_pass_ms, last_clean_start_ms, last_clean_end_ms;
	uint64_t passes, pass_errors_now;
	struct st_cstate_follower follow;
	long long next_cstate_ms;	/* retry of a direction that did not start */
	char *last_error;		/* of the current pass, under mu */
	long long drain_from_ms;
	uint64_t appended_base;
	long long rate_ms;
	double msgs_per_s;
};

struct spare {
	struct im_conns c;
	struct spare *next;
};

static struct imrepl G;

static void idle_arm(struct imrepl *r, struct user *u);

/* ------------------------------------------------------------ users */

static size_t
name_hash(const char *s)
{
	size_t h = 5381;

	for (; *s; s++)
		h = h * 33 + (unsigned char)*s;
	return h;
}

static struct user *
user_find(struct imrepl *r, const char *name)
{
	if (r->n_hash == 0)
		return NULL;
	for (struct user *u = r->hash[name_hash(name) & (r->n_hash - 1)]; u; u = u->hnext)
		if (strcmp(u->name, name) == 0)
			return u;
	return NULL;
}

static void
hash_insert(struct imrepl *r, struct user *u)
{
	size_t b = name_hash(u->name) & (r->n_hash - 1);

	u->hnext = r->hash[b];
	r->hash[b] = u;
}

static void
user_add(struct imrepl *r, const char *name)
{
	struct user *u = user_find(r, name);

	if (u != NULL) {
		u->listed = true;
		return;
	}
	u = xcalloc(1, sizeof(*u));
	u->name = xstrdup(name);
	u->listed = true;
	u->idle_io.fd = -1;
	u->next = r->users;
	r->users = u;
	r->n_users++;
	if (r->n_users > r->n_hash) {
		free(r->hash);
		r->n_hash = r->n_hash ? 4 * r->n_hash : 256;
		r->hash = xcalloc(r->n_hash, sizeof(*r->hash));
		for (struct user *v = r->users; v; v = v->next)
			hash_insert(r, v);
	} else {
		hash_insert(r, u);
	}
	st_info("user %s added", st_q(name));
}

static bool
valid_user(const char *s)
{
	if (*s == '\0' || strlen(s) > 255)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= ' ' || *s == '"' || *s == '\\' || *s == 0x7f)
			return false;
	return true;
}

static int
load_users_file(struct imrepl *r, const char *path, char **error_r)
{
	char *text = NULL, *save = NULL;
	size_t len = 0, lineno = 0;

	if (st_read_file(path, 64u << 20, &text, &len, error_r) < 0)
		return -1;
	if (memchr(text, '\0', len) != NULL) {
		st_set_error(error_r, "%s: holds a NUL byte", path);
		free(text);
		return -1;
	}
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		lineno++;
		char *s = line + strspn(line, " \t"), *e = s + strlen(s);
		while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
			*--e = '\0';
		if (*s == '\0' || *s == '#')
			continue;
		if (!valid_user(s)) {
			st_set_error(error_r, "%s: line %zu: %s is not a valid IMAP user name", path, lineno, st_q(s));
			free(text);
			return -1;
		}
		if (r->n_users >= USERS_MAX) {
			st_set_error(error_r, "%s: more than %d users", path, USERS_MAX);
			free(text);
			return -1;
		}
		user_add(r, s);
	}
	free(text);
	return 0;
}

static int
load_users_ldap(struct imrepl *r, char **error_r)
{
	const struct st_conf *conf = r->d->conf;
	LDAP *ld = st_ldap_open(conf, r->source, error_r);
	LDAPMessage *res = NULL;
	char *attrs[] = { conf->imap.users_ldap_attribute, NULL };
	struct timeval tv = { conf->ldap.timeout_ms / 1000, 0 };
	int rc;

	if (ld == NULL)
		return -1;
	rc = ldap_search_ext_s(ld, conf->ldap.suffix, LDAP_SCOPE_SUBTREE, conf->imap.users_ldap_filter, attrs, 0,
			       NULL, NULL, &tv, 0, &res);
	if (rc != LDAP_SUCCESS) {
		st_set_error(error_r, "users from LDAP (node %s, base %s, filter %s): %s", r->source,
			     conf->ldap.suffix, conf->imap.users_ldap_filter, ldap_err2string(rc));
		ldap_msgfree(res);
		ldap_unbind_ext_s(ld, NULL, NULL);
		return -1;
	}
	for (LDAPMessage *e = ldap_first_entry(ld, res); e; e = ldap_next_entry(ld, e)) {
		struct berval **v = ldap_get_values_len(ld, e, conf->imap.users_ldap_attribute);
		for (size_t i = 0; v && v[i]; i++) {
			char *name = xstrndup(v[i]->bv_val, v[i]->bv_len);
			if (strlen(name) == v[i]->bv_len && valid_user(name) && r->n_users < USERS_MAX)
				user_add(r, name);
			else {
				char *dn = ldap_get_dn(ld, e);
				st_warn("users from LDAP: %s of %s is not a usable IMAP user name; skipped",
					conf->imap.users_ldap_attribute, dn ? dn : "?");
				ldap_memfree(dn);
			}
			free(name);
		}
		if (v)
			ldap_value_free_len(v);
	}
	ldap_msgfree(res);
	ldap_unbind_ext_s(ld, NULL, NULL);
	return 0;
}

static int
load_users(struct imrepl *r, char **error_r)
{
	const struct st_conf *conf = r->d->conf;

	for (struct user *u = r->users; u; u = u->next)
		u->listed = false;
	int rc = conf->imap.users_file ? load_users_file(r, conf->imap.users_file, error_r)
				       : load_users_ldap(r, error_r);
	if (rc < 0) {
		for (struct user *u = r->users; u; u = u->next)
			u->listed = true;	/* keep serving the users we had */
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ the queue (under mu) */

static void
push_job(struct imrepl *r, enum job_kind kind, struct user *u, struct folder *f, bool front)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->kind = kind;
	j->urgent = front;
	j->u = u;
	j->f = f;
	if (front) {
		j->next = r->head;
		r->head = j;
		if (r->tail == NULL)
			r->tail = j;
	} else {
		if (r->tail)
			r->tail->next = j;
		else
			r->head = j;
		r->tail = j;
	}
	r->queued++;
	if (kind == JOB_FOLDER)
		u->folders_queued++;
	pthread_cond_signal(&r->cv);
}

static struct folder *
folder_get(struct user *u, const char *name)
{
	for (struct folder *f = u->folders; f; f = f->next)
		if (strcmp(f->name, name) == 0)
			return f;
	struct folder *f = xcalloc(1, sizeof(*f));
	f->name = xstrdup(name);
	f->next = u->folders;
	u->folders = f;
	return f;
}

static void
want_folder(struct imrepl *r, struct user *u, const char *name, bool front)
{
	struct folder *f = folder_get(u, name);

	if (f->running)
		f->again = true;
	else if (!f->queued) {
		f->queued = true;
		push_job(r, JOB_FOLDER, u, f, front);
	}
}

/* Under mu: USER changed lately (see ACTIVE_POLL_MS). */
static void
user_active(struct user *u)
{
	long long now = st_monotonic_ms();

	if (u->active_until_ms <= now)
		u->next_poll_ms = now + ACTIVE_POLL_MS;
	u->active_until_ms = now + ACTIVE_WINDOW_MS;
}

/* Under mu: a tree job for U; DEEP: without the quick check. */
static void
want_tree(struct imrepl *r, struct user *u, bool front, bool deep)
{
	if (deep)
		u->tree_deep = true;
	if (!u->tree_queued) {
		u->tree_queued = true;
		push_job(r, JOB_TREE, u, NULL, front);
	}
}

static bool
runnable(const struct job *j)
{
	switch (j->kind) {
	case JOB_TREE:
		return j->u->running == 0 && !j->u->tree_running;
	case JOB_FOLDER:
		return !j->u->tree_running && !j->f->running;
	default:
		return true;
	}
}

/*
 * Under mu: the first runnable job, and first of all one of PREFER's (the
 * user whose sessions the worker holds: a tree job's folder jobs then run
 * on the sessions it logged in, not on new logins).
 */
static struct job *
take_job(struct imrepl *r, const struct user *prefer)
{
	struct job *prev = NULL;
	bool any = prefer == NULL || (prefer->folders_queued == 0 && !prefer->tree_queued);

again:
	for (struct job *j = r->head; j; prev = j, j = j->next) {
		if ((!any && (j->u != prefer || j->kind == JOB_IDLE)) || !runnable(j))
			continue;
		if (prev)
			prev->next = j->next;
		else
			r->head = j->next;
		if (r->tail == j)
			r->tail = prev;
		r->queued--;
		r->running++;
		switch (j->kind) {
		case JOB_TREE:
			j->u->tree_queued = false;
			j->u->tree_running = true;
			break;
		case JOB_FOLDER:
			j->f->queued = false;
			j->f->running = true;
			j->u->running++;
			j->u->folders_queued--;
			break;
		default:
			break;
		}
		return j;
	}
	if (!any) {
		any = true;
		prev = NULL;
		goto again;
	}
	return NULL;
}

static void
note_error(struct imrepl *r, struct user *u, const char *err)
{
	free(u->error);
	u->error = err ? xstrdup(err) : NULL;
	if (err) {
		free(r->last_error);
		r->last_error = xstrdup(err);
		r->pass_errors_now++;
	}
}

/* ------------------------------------------------------------ workers */

static void
run_idle_job(struct imrepl *r, struct user *u)
{
	struct im_sess *s = u->idle;
	char *err = NULL;
	struct im_status st;
	int notify = -1;		/* of a new session: 0 NOTIFY set, 1 not */

	u->idle = NULL;
	if (u->idle_stop) {
		/* Out of the IDLE set: another user changed more lately. */
		im_sess_close(s);
		return;
	}
	if (s != NULL && u->idle_restart) {
		if (im_idle_done(s) < 0 || im_idle_start(s) < 0) {
			/* The server ended the push session (Dovecot 2.3's imap process
			 * can die after a folder is created or renamed under NOTIFY): a
			 * change may have come with it, so the user's tree is read now
			 * and polled for a while (ACTIVE_POLL_MS). */
			st_warn("user %s: the master ended the %s session: %s; reading the user's "
				"folders now and every %d s for %d min", st_q(u->name),
				u->notify ? "IDLE/NOTIFY" : "IDLE", im_sess_error(s), ACTIVE_POLL_MS / 1000,
				ACTIVE_WINDOW_MS / 60000);
			im_sess_close(s);
			s = NULL;
			pthread_mutex_lock(&r->mu);
			user_active(u);
			u->idle_changed = true;
			want_tree(r, u, true, false);
			pthread_mutex_unlock(&r->mu);
		}
	} else if (s != NULL) {
		im_sess_close(s);
		s = NULL;
	}
	if (s == NULL) {
		s = im_sess_open(r->env.src, u->name, &err);
		if (s != NULL && !im_sess_has(s, "IDLE")) {
			free(err);
			err = xasprintf("the master's IMAP server has no IDLE; new mail waits for the next full pass");
			im_sess_close(s);
			s = NULL;
		}
		if (s != NULL && (im_select(s, "INBOX", true, &st) < 0 ||
				  (notify = r->notify ? im_notify_set(s) : 1) < 0 ||
				  im_idle_start(s) < 0)) {
			free(err);
			err = xstrdup(im_sess_error(s));
			im_sess_close(s);
			s = NULL;
		}
	}
	pthread_mutex_lock(&r->mu);
	if (notify >= 0)
		u->notify = s != NULL && notify == 0;
	u->idle = s;
	if (s == NULL)
		st_info("user %s: no IDLE session: %s", st_q(u->name), err ? err : "?");
	pthread_mutex_unlock(&r->mu);
	free(err);
}

/* Under mu: move USER's newest spare sessions (if any) into C, which is empty. */
static void
spare_take(struct imrepl *r, const char *user, struct im_conns *c)
{
	for (struct spare **pp = &r->spares; *pp; pp = &(*pp)->next) {
		struct spare *sp = *pp;
		if (strcmp(sp->c.user, user) != 0)
			continue;
		*pp = sp->next;
		r->n_spares--;
		*c = sp->c;
		free(sp);
		return;
	}
}

/*
 * Under mu: keep C's sessions (if any) as spares and empty C; returns the
 * spares to close (outside mu): the oldest beyond n_threads, and those
 * unused for IM_CONNS_IDLE_MS.
 */
static struct spare *
spare_put(struct imrepl *r, struct im_conns *c)
{
	struct spare *old = NULL;
	long long now = st_monotonic_ms();
	size_t n = 0;

	if (c->user != NULL) {
		struct spare *sp = xcalloc(1, sizeof(*sp));
		sp->c = *c;
		sp->next = r->spares;
		r->spares = sp;
		r->n_spares++;
		memset(c, 0, sizeof(*c));
	}
	for (struct spare **pp = &r->spares; *pp;) {
		struct spare *sp = *pp;
		/* Sessions held by running jobs and spares: at most n_threads to each server. */
		if (n + r->running < r->n_threads && now - sp->c.used_ms <= IM_CONNS_IDLE_MS) {
			n++;
			pp = &sp->next;
			continue;
		}
		*pp = sp->next;
		r->n_spares--;
		sp->next = old;
		old = sp;
	}
	return old;
}

/*
 * Under mu, before a job opens new sessions: the oldest spare when the
 * running jobs (this one included) and the spares would otherwise hold more
 * than n_threads sessions to a server; to be closed outside mu.
 */
static struct spare *
spare_evict(struct imrepl *r)
{
	struct spare **pp = &r->spares;

	if (r->spares == NULL || r->n_spares + r->running <= r->n_threads)
		return NULL;
	while ((*pp)->next != NULL)
		pp = &(*pp)->next;
	struct spare *sp = *pp;
	*pp = NULL;
	r->n_spares--;
	return sp;
}

/*
 * Under mu: USER changed (a tree job found folders to copy, or an IDLE
 * woke).  With changes = idle it wants a place in the IDLE set (the main
 * thread makes room: wake_cb) and its tree is polled for a while when it
 * has one (ACTIVE_POLL_MS).
 */
static void
user_changed(struct imrepl *r, struct user *u)
{
	u->last_change_ms = st_monotonic_ms();
	if (r->changes != ST_IMAP_CHANGES_IDLE || r->idle_users == 0)
		return;
	user_active(u);
	if (u->idle_state == IDLE_OFF && !u->idle_want) {
		u->idle_want = true;
		r->idle_wants++;
	}
}

/* Under mu: an IDLE session for U, while the set has room (changes = idle). */
static bool
idle_offer(struct imrepl *r, struct user *u)
{
	if (r->changes != ST_IMAP_CHANGES_IDLE || u->idle_state != IDLE_OFF || u->idle_retry_ms != 0 ||
	    r->n_idle >= r->idle_users)
		return false;
	if (u->idle_want) {
		u->idle_want = false;
		r->idle_wants--;
	}
	r->n_idle++;
	u->idle_state = IDLE_QUEUED;
	u->idle_restart = false;
	push_job(r, JOB_IDLE, u, NULL, false);
	return true;
}

static void
spares_close(struct spare *sp)
{
	while (sp) {
		struct spare *next = sp->next;
		im_conns_close(&sp->c);
		free(sp);
		sp = next;
	}
}

static void *
worker_main(void *arg)
{
	struct imrepl *r = arg;
	struct im_conns conns = { 0 };
	struct user *held = NULL;	/* between jobs: the user whose sessions conns holds */

	pthread_mutex_lock(&r->mu);
	for (;;) {
		struct job *j = NULL;
		struct spare *old = NULL;

		while (!r->quit && (j = take_job(r, held)) == NULL) {
			if (held == NULL) {
				pthread_cond_wait(&r->cv, &r->mu);
				continue;
			}
			/* Nothing more for that user now: its sessions become spares. */
			held = NULL;
			old = spare_put(r, &conns);
			if (old != NULL) {
				pthread_mutex_unlock(&r->mu);
				spares_close(old);
				pthread_mutex_lock(&r->mu);
				old = NULL;
			}
		}
		if (r->quit)
			break;
		if (held != NULL && (j->kind == JOB_IDLE || j->u != held))
			old = spare_put(r, &conns);
		held = NULL;
		pthread_mutex_unlock(&r->mu);
		spares_close(old);

		char *err = NULL;
		struct im_tree tree = { 0 };
		int rc = 0;
		long long t0 = st_monotonic_ms();

		bool deep = false;
		if (j->kind != JOB_IDLE) {
			old = NULL;
			pthread_mutex_lock(&r->mu);
			if (conns.user == NULL)
				spare_take(r, j->u->name, &conns);
			if (conns.user == NULL)
				old = spare_evict(r);
			if (j->kind == JOB_TREE) {
				deep = j->u->tree_deep;
				j->u->tree_deep = false;
			}
			pthread_mutex_unlock(&r->mu);
			spares_close(old);
		}
		switch (j->kind) {
		case JOB_TREE:
			rc = im_sync_tree(&r->env, &conns, j->u->name, !deep, &tree, &err);
			break;
		case JOB_FOLDER:
			rc = im_sync_folder(&r->env, &conns, j->u->name, j->f->name, &err);
			break;
		case JOB_IDLE:
			run_idle_job(r, j->u);
			break;
		}
		if (rc < 0 && !atomic_load(&r->stopping))
			st_error("%s", err);
		st_debug("user %s%s%s: %s job %s in %lld ms", st_q(j->u->name), j->kind == JOB_FOLDER ? " folder " : "",
			 j->kind == JOB_FOLDER ? st_q(j->f->name) : "",
			 j->kind == JOB_TREE ? "tree" : j->kind == JOB_FOLDER ? "folder" : "IDLE",
			 rc < 0 ? "failed" : "done", st_monotonic_ms() - t0);

		pthread_mutex_lock(&r->mu);
		r->running--;
		switch (j->kind) {
		case JOB_TREE:
			j->u->tree_running = false;
			if (rc == 0 && tree.unchanged) {
				j->u->behind = 0;
				j->u->messages = tree.messages;
				j->u->n_folders = tree.folders;
				note_error(r, j->u, NULL);
				idle_offer(r, j->u);
			} else if (rc == 0) {
				uint64_t behind = 0;
				bool changed = false;
				for (size_t i = 0; i < tree.n; i++) {
					behind += tree.v[i].behind;
					folder_get(j->u, tree.v[i].folder)->behind = tree.v[i].behind;
					if (tree.v[i].changed) {
						want_folder(r, j->u, tree.v[i].folder, j->urgent);
						changed = true;
					}
				}
				j->u->behind = behind;
				j->u->messages = tree.messages;
				j->u->n_folders = tree.folders;
				/*
				 * Folders refused by name: the rest goes on, the user stays
				 * in error; logged when it changes, not at every poll.
				 */
				if (tree.refused != NULL && (j->u->error == NULL || strcmp(j->u->error, tree.refused) != 0))
					st_error("%s", tree.refused);
				else if (tree.refused != NULL)
					st_debug("%s", tree.refused);
				note_error(r, j->u, tree.refused);
				free(j->u->digest);
				j->u->digest = tree.digest[0] ? xstrdup(tree.digest) : NULL;
				j->u->digest_ok = true;
				if (changed)
					user_changed(r, j->u);
				idle_offer(r, j->u);
			} else {
				note_error(r, j->u, err);
			}
			break;
		case JOB_FOLDER:
			j->f->running = false;
			j->u->running--;
			if (rc < 0) {
				note_error(r, j->u, err);
				j->u->digest_ok = false;
			} else {
				/* Copied: what the tree job counted for it is on the standby. */
				j->u->behind -= j->f->behind < j->u->behind ? j->f->behind : j->u->behind;
				j->f->behind = 0;
			}
			if (j->f->again) {
				j->f->again = false;
				j->f->queued = true;
				push_job(r, JOB_FOLDER, j->u, j->f, true);
			}
			break;
		case JOB_IDLE:
			if (j->u->idle_stop) {
				j->u->idle_stop = false;
				j->u->idle_state = IDLE_OFF;
				r->n_idle--;
				r->idle_stopping--;
			} else {
				j->u->idle_state = IDLE_READY;
				r->idle_readies++;
			}
			break;
		}
		/* Every folder job of the last tree job went well: its listing is on the standby. */
		char *digest = NULL, *digest_user = NULL;
		if (j->kind != JOB_IDLE && j->u->digest != NULL && !j->u->tree_running && j->u->running == 0 &&
		    j->u->folders_queued == 0) {
			if (j->u->digest_ok) {
				digest = j->u->digest;
				digest_user = xstrdup(j->u->name);
			} else {
				free(j->u->digest);
			}
			j->u->digest = NULL;
		}
		/* Jobs that waited for this one may run now. */
		pthread_cond_broadcast(&r->cv);
		if (j->kind != JOB_IDLE && conns.user != NULL)
			held = j->u;
		free(j);
		free(err);
		im_tree_free(&tree);
		ev_async_send(r->d->loop, &r->wake);
		if (digest != NULL) {
			pthread_mutex_unlock(&r->mu);
			if (im_listing_save(&r->env, digest_user, digest, &err) < 0) {
				st_warn("user %s: %s (the next pass walks the user's folders)", st_q(digest_user),
					err);
				free(err);
			}
			free(digest);
			free(digest_user);
			pthread_mutex_lock(&r->mu);
		}
	}
	pthread_mutex_unlock(&r->mu);
	im_conns_close(&conns);
	return NULL;
}

/* ------------------------------------------------------------ IDLE (main thread) */

static void
idle_disarm(struct imrepl *r, struct user *u)
{
	ev_io_stop(r->d->loop, &u->idle_io);
	ev_timer_stop(r->d->loop, &u->idle_timer);
}

static void
idle_kick(struct imrepl *r, struct user *u, bool changed)
{
	idle_disarm(r, u);
	pthread_mutex_lock(&r->mu);
	if (changed) {
		want_folder(r, u, "INBOX", true);
		u->idle_changed = true;
		user_changed(r, u);
	}
	u->idle_state = IDLE_QUEUED;
	u->idle_restart = true;
	push_job(r, JOB_IDLE, u, NULL, !changed);
	pthread_mutex_unlock(&r->mu);
}

static void
idle_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct user *u = w->data;

	(void)loop;
	(void)revents;
	idle_kick(&G, u, true);
}

static void
idle_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct user *u = w->data;

	(void)loop;
	(void)revents;
	idle_kick(&G, u, false);
}

/* Called in the main thread after an IDLE job ended (under mu). */
static void
idle_arm(struct imrepl *r, struct user *u)
{
	if (u->idle == NULL) {
		u->idle_state = IDLE_OFF;
		r->n_idle--;
		u->idle_retry_ms = st_monotonic_ms() + 10000;
		return;
	}
	/*
	 * With NOTIFY the wake may have been for any folder, and libetpan drops
	 * what arrives before "+ idling": one tree job, now that the IDLE is
	 * back, finds every folder that changed since the wake (STATUS).
	 */
	if (u->idle_changed && u->notify)
		want_tree(r, u, true, false);
	u->idle_changed = false;
	u->idle_state = IDLE_WATCHING;
	ev_io_init(&u->idle_io, idle_io_cb, im_idle_fd(u->idle), EV_READ);
	u->idle_io.data = u;
	ev_timer_init(&u->idle_timer, idle_timer_cb, IDLE_REFRESH_S, 0.);
	u->idle_timer.data = u;
	ev_timer_start(r->d->loop, &u->idle_timer);
	if (im_idle_buffered(u->idle)) {
		/* Bytes already read past "+ idling": the descriptor will not tell. */
		u->idle_state = IDLE_QUEUED;
		ev_timer_stop(r->d->loop, &u->idle_timer);
		want_folder(r, u, "INBOX", true);
		u->idle_restart = true;
		u->idle_changed = true;
		push_job(r, JOB_IDLE, u, NULL, false);
		return;
	}
	ev_io_start(r->d->loop, &u->idle_io);
}

/*
 * Under mu, in the main thread: users that changed and have no IDLE
 * session get one while the set has room; when it is full, the member that
 * changed least lately (and before the user) gives its place up: its IDLE
 * job ends the session, and the user gets it at a later wake.  One
 * eviction at a time.
 */
static void
idle_rebalance(struct imrepl *r)
{
	for (struct user *u = r->users; u && r->idle_wants > 0; u = u->next) {
		if (!u->idle_want)
			continue;
		if (!u->listed || u->idle_state != IDLE_OFF) {
			u->idle_want = false;
			r->idle_wants--;
			continue;
		}
		if (idle_offer(r, u))
			continue;
		if (r->idle_stopping > 0)
			return;
		struct user *victim = NULL;
		for (struct user *v = r->users; v; v = v->next)
			if (v->idle_state == IDLE_WATCHING && v->last_change_ms < u->last_change_ms &&
			    (victim == NULL || v->last_change_ms < victim->last_change_ms))
				victim = v;
		if (victim == NULL) {
			u->idle_want = false;
			r->idle_wants--;
			continue;
		}
		st_debug("user %s: IDLE session ended to make room for user %s", st_q(victim->name),
			 st_q(u->name));
		idle_disarm(r, victim);
		victim->idle_state = IDLE_QUEUED;
		victim->idle_stop = true;
		r->idle_stopping++;
		push_job(r, JOB_IDLE, victim, NULL, true);
		return;
	}
}

/* ------------------------------------------------------------ passes (main thread) */

static void
set_state(struct imrepl *r, const char *state)
{
	r->d->state = state;
}

static void
start_pass(struct imrepl *r)
{
	char *err = NULL;

	if (!r->active)
		return;
	if (r->pass_active) {
		r->pass_wanted = true;
		return;
	}
	/* A list that cannot be read makes the pass an unclean one (the users
	 * known are still served): a drain must not take it for all of them. */
	if (load_users(r, &err) < 0)
		st_daemon_set_error(r->d, "%s", err);
	long long mono = st_monotonic_ms();
	r->pass_active = true;
	r->pass_wanted = false;
	r->pass_started_ms = st_now_ms();
	r->pass_deep = r->last_deep_ms == 0 || mono - r->last_deep_ms >= DEEP_PASS_MS;
	if (r->pass_deep)
		r->last_deep_ms = mono;
	pthread_mutex_lock(&r->mu);
	r->pass_errors_now = err != NULL;
	free(r->last_error);
	r->last_error = err;
	for (struct user *u = r->users; u; u = u->next)
		if (u->listed)
			want_tree(r, u, false, r->pass_deep);
	pthread_mutex_unlock(&r->mu);
	st_debug("%s pass started (%zu users)", r->pass_deep ? "deep" : "full", r->n_users);
}

static void
wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct imrepl *r = w->data;

	(void)loop;
	(void)revents;
	pthread_mutex_lock(&r->mu);
	if (r->idle_readies > 0)
		for (struct user *u = r->users; u; u = u->next)
			if (u->idle_state == IDLE_READY) {
				r->idle_readies--;
				idle_arm(r, u);
			}
	if (r->idle_wants > 0)
		idle_rebalance(r);
	bool idle_now = r->queued == 0 && r->running == 0;
	uint64_t errors = r->pass_errors_now;
	char *last = r->last_error ? xstrdup(r->last_error) : NULL;
	pthread_mutex_unlock(&r->mu);

	if (r->pass_active && idle_now) {
		long long now = st_now_ms();
		r->pass_active = false;
		r->passes++;
		r->last_pass_ms = now - r->pass_started_ms;
		if (errors == 0) {
			r->last_clean_start_ms = r->pass_started_ms;
			r->last_clean_end_ms = now;
			st_daemon_set_error(r->d, NULL);
			set_state(r, "streaming");
		} else {
			st_daemon_set_error(r->d, "%s", last ? last : "errors in the last pass");
			set_state(r, "error");
		}
		st_info("full pass done in %lld ms, %" PRIu64 " error(s)", r->last_pass_ms, errors);
		if (r->pass_wanted)
			start_pass(r);
	}
	free(last);
}

/*
 * changes = dovecot: users the master's Dovecot named (imnotice.h): a tree
 * job each, at the front of the queue (the quick check finds what changed);
 * a full pass where some notices may have been lost.
 */
static void
notices_cb(void *data, char **users, size_t n, bool gap)
{
	struct imrepl *r = data;

	if (!r->active)
		return;
	pthread_mutex_lock(&r->mu);
	for (size_t i = 0; i < n; i++) {
		struct user *u = user_find(r, users[i]);
		if (u != NULL && u->listed)
			want_tree(r, u, true, false);
		else
			r->notices_unknown++;
	}
	pthread_mutex_unlock(&r->mu);
	if (gap) {
		st_info("IMAP notices: some may have been lost; a full pass makes up for them");
		start_pass(r);
	}
}

/* ------------------------------------------------------------ direction */

static void
stop_workers(struct imrepl *r)
{
	if (r->n_threads == 0)
		return;
	atomic_store(&r->stopping, true);
	pthread_mutex_lock(&r->mu);
	r->quit = true;
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
	for (size_t i = 0; i < r->n_threads; i++)
		pthread_join(r->threads[i], NULL);
	free(r->threads);
	r->threads = NULL;
	r->n_threads = 0;
	spares_close(r->spares);
	r->spares = NULL;
	r->n_spares = 0;
	/* Drop what was queued, and every IDLE session. */
	while (r->head) {
		struct job *j = r->head;
		r->head = j->next;
		free(j);
	}
	r->tail = NULL;
	r->queued = r->running = 0;
	r->n_idle = r->idle_wants = r->idle_readies = r->idle_stopping = 0;
	for (struct user *u = r->users; u; u = u->next) {
		idle_disarm(r, u);
		im_sess_close(u->idle);
		u->idle = NULL;
		u->idle_state = IDLE_OFF;
		u->idle_want = u->idle_stop = false;
		u->idle_retry_ms = 0;
		u->tree_queued = u->tree_running = u->tree_deep = false;
		u->running = 0;
		u->folders_queued = 0;
		free(u->digest);
		u->digest = NULL;
		for (struct folder *f = u->folders; f; f = f->next)
			f->queued = f->running = f->again = false;
	}
	r->quit = false;
	atomic_store(&r->stopping, false);
	r->pass_active = false;
	r->active = false;
	if (r->nt != NULL)
		im_notices_follow(r->nt, NULL);
	im_endpoint_free(&r->src_ep);
	im_endpoint_free(&r->tgt_ep);
	st_secret_free(&r->password);
	free(r->state_root);
	r->state_root = NULL;
}

static int
start_direction(struct imrepl *r, const char *source, char **error_r)
{
	const struct st_conf *conf = r->d->conf;
	int si = st_conf_node_index(conf, source), ti = st_conf_node_index(conf, r->d->node->name);
	char *err = NULL;

	if (si < 0 || ti < 0) {
		st_set_error(error_r, "cluster state names node %s, which %s does not have", source,
			     r->d->config_path);
		return -1;
	}
	const struct st_endpoint *se = st_conf_endpoint(conf, ST_SVC_IMAP, si);
	const struct st_endpoint *te = st_conf_endpoint(conf, ST_SVC_IMAP, ti);
	if (se->host == NULL || te->host == NULL) {
		st_set_error(error_r, "node %s has no [imap] endpoint", se->host == NULL ? source
								  : r->d->node->name);
		return -1;
	}
	r->src_ep = (struct im_endpoint){ xstrdup(se->host), (unsigned)se->port, se->tls };
	r->tgt_ep = (struct im_endpoint){ xstrdup(te->host), (unsigned)te->port, te->tls };
	if (st_secret_read(conf->imap.password_file, &r->password, &err) < 0) {
		st_set_error(error_r, "[imap] password_file: %s", err);
		free(err);
		return -1;
	}
	r->state_root = xasprintf("%s/imaprepl-%s", r->d->node->state_dir, source);
	if (st_mkdir_p(r->state_root, 0700, error_r) < 0)
		return -1;
	struct im_login base = {
		.ca_file = conf->imap.ca_file,
		.admin_user = conf->imap.admin_user, .separator = conf->imap.master_separator,
		.login = conf->imap.login,
		.password = r->password, .timeout_ms = conf->imap.timeout_ms,
	};
	r->src_login = base;
	r->src_login.node = conf->nodes[si].name;
	r->src_login.starttls = st_conf_starttls(conf, ST_SVC_IMAP, si);
	r->src_login.ep = &r->src_ep;
	r->tgt_login = base;
	r->tgt_login.node = conf->nodes[ti].name;
	r->tgt_login.starttls = st_conf_starttls(conf, ST_SVC_IMAP, ti);
	r->tgt_login.ep = &r->tgt_ep;
	snprintf(r->source, sizeof(r->source), "%s", source);
	r->env = (struct im_env){ .src = &r->src_login, .tgt = &r->tgt_login, .state_root = r->state_root,
				  .src_node = r->source, .c = &r->c, .stopping = &r->stopping };
	r->n_threads = (size_t)conf->imap.workers;
	r->notify = conf->imap.notify;
	r->changes = conf->imap.changes;
	r->idle_users = conf->imap.changes == ST_IMAP_CHANGES_IDLE ? (size_t)conf->imap.idle_users : 0;
	if (r->idle_users > r->idle_room)
		r->idle_users = r->idle_room;
	/* A new direction's first pass walks everything: after a failover the
	 * standby may hold mail the new master never had. */
	r->last_deep_ms = 0;
	r->threads = xcalloc(r->n_threads, sizeof(*r->threads));
	for (size_t i = 0; i < r->n_threads; i++) {
		int e = pthread_create(&r->threads[i], NULL, worker_main, r);
		if (e != 0) {
			r->n_threads = i;
			st_set_error(error_r, "cannot start worker thread: %s", strerror(e));
			return -1;
		}
	}
	r->active = true;
	if (r->nt != NULL)
		im_notices_follow(r->nt, source);
	st_notice("replicating IMAP from node %s to node %s with %zu workers (changes: %s)", source,
		  r->d->node->name, r->n_threads,
		  r->changes == ST_IMAP_CHANGES_DOVECOT ? "Dovecot's notices through etcd"
							 : "IDLE on the users that changed last");
	set_state(r, "initial-sync");
	start_pass(r);
	return 0;
}

/* Follow the cluster state taken (lib/cstate.h): start, stop or move the
 * direction this node replicates from. */
static void
apply_cstate(struct imrepl *r)
{
	const struct st_cstate_follower *f = &r->follow;
	char *err = NULL;

	if (r->nt != NULL)
		im_notices_role(r->nt, f->valid && strcmp(st_cstate_master_of(&f->cs, ST_SVC_IMAP),
							  r->d->node->name) == 0, f->cs.epoch);
	if (!f->valid) {
		if (r->active) {
			st_warn("no cluster state on this node: replication stopped");
			stop_workers(r);
		}
		set_state(r, "no-cluster-state");
		return;
	}
	const char *src = st_cstate_source(&f->cs, ST_SVC_IMAP, r->d->node->name);
	if (r->active && (src == NULL || strcmp(src, r->source) != 0 || f->cs.epoch != r->epoch)) {
		st_notice("cluster state changed (epoch %" PRIu64 "): restarting replication",
			  f->cs.epoch);
		stop_workers(r);
	}
	r->epoch = f->cs.epoch;
	if (src == NULL) {
		r->source[0] = '\0';
		set_state(r, strcmp(st_cstate_master_of(&f->cs, ST_SVC_IMAP), r->d->node->name) == 0
			     ? "idle (master)" : "no-source");
		return;
	}
	if (!r->active && start_direction(r, src, &err) < 0) {
		st_daemon_set_error(r->d, "%s", err);
		free(err);
		stop_workers(r);
		set_state(r, "error");
	}
}

/* The follower calls back when its state or its error changed: the error
 * is said here, once (apply_cstate also runs at every tick with no
 * direction, to start one again). */
static void
cstate_cb(struct st_cstate_follower *f, void *data)
{
	struct imrepl *r = data;

	if (f->error != NULL)
		st_daemon_set_error(r->d, "cluster state: %s", f->error);
	apply_cstate(r);
}

static void
tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct imrepl *r = w->data;
	long long now = st_monotonic_ms();

	(void)loop;
	(void)revents;
	if (r->nt == NULL && r->d->conf->imap.changes == ST_IMAP_CHANGES_DOVECOT) {
		r->nt = im_notices_start(r->d->conf, r->d->node->name, r->d->loop, notices_cb, r);
		if (r->follow.valid)
			im_notices_role(r->nt, strcmp(st_cstate_master_of(&r->follow.cs, ST_SVC_IMAP),
						      r->d->node->name) == 0, r->follow.cs.epoch);
		if (r->active)
			im_notices_follow(r->nt, r->source);
	}
	if (!r->active && now >= r->next_cstate_ms) {
		/* A direction that could not start: try again. */
		r->next_cstate_ms = now + CSTATE_CHECK_MS;
		apply_cstate(r);
	}
	if (now - r->rate_ms >= 1000) {
		uint64_t a = atomic_load(&r->c.appended);
		r->msgs_per_s = r->rate_ms > 0 ? (double)(a - r->appended_base) * 1000.0 / (double)(now - r->rate_ms) : 0;
		r->appended_base = a;
		r->rate_ms = now;
	}
	if (!r->active)
		return;
	pthread_mutex_lock(&r->mu);
	/* Users active lately: their tree again (see ACTIVE_POLL_MS). */
	for (struct user *u = r->users; u; u = u->next)
		if (u->listed && u->idle_state != IDLE_OFF && u->active_until_ms > now && now >= u->next_poll_ms) {
			u->next_poll_ms = now + ACTIVE_POLL_MS;
			want_tree(r, u, false, false);
		}
	/* Users whose IDLE failed: try again now and then. */
	for (struct user *u = r->users; u; u = u->next)
		if (u->listed && u->idle_state == IDLE_OFF && u->idle_retry_ms > 0 &&
		    now >= u->idle_retry_ms) {
			u->idle_retry_ms = 0;
			idle_offer(r, u);
		}
	pthread_mutex_unlock(&r->mu);
}

static void
pass_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	start_pass(w->data);
}

/* ------------------------------------------------------------ daemon ops */

/*
 * Descriptors: libetpan waits with select(), which cannot take a descriptor
 * of FD_SETSIZE or more (glibc aborts the process).  The soft limit is held
 * below it, so that running out is an error ("Too many open files") and
 * never an abort.  The settings bound what is used: per worker a session
 * to each server (a socket and libetpan's pipe, 3 descriptors each), per
 * IDLE user one more session, and FD_RESERVE for the rest (logs, sockets,
 * etcd, state files).  Returns how many IDLE sessions the limit leaves room
 * for (idle_users is lowered to it, with a warning).
 */
#define FD_RESERVE 32
static size_t
limit_descriptors(const struct st_conf *conf)
{
	struct rlimit rl;
	long workers_fds = conf->imap.workers * 2 * 3;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return (size_t)conf->imap.idle_users;
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > FD_SETSIZE) {
		rl.rlim_cur = FD_SETSIZE;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			st_warn("cannot lower the descriptor limit to %d (libetpan's select()): %s", FD_SETSIZE,
				strerror(errno));
	}
	long room = ((long)rl.rlim_cur - FD_RESERVE - workers_fds) / 3;
	if (room < 0) {
		st_warn("the descriptor limit (%ld) is below the %ld that [imap] workers = %ld needs: sessions "
			"will fail with \"Too many open files\"; raise LimitNOFILE (up to %d) or lower workers",
			(long)rl.rlim_cur, workers_fds + FD_RESERVE, conf->imap.workers, FD_SETSIZE);
		room = 0;
	}
	if (conf->imap.changes == ST_IMAP_CHANGES_IDLE && room < conf->imap.idle_users) {
		st_warn("the descriptor limit (%ld) leaves room for %ld IDLE sessions: [imap] idle_users = %ld "
			"lowered to %ld; raise LimitNOFILE (up to %d)", (long)rl.rlim_cur, room,
			conf->imap.idle_users, room, FD_SETSIZE);
		return (size_t)room;
	}
	return (size_t)conf->imap.idle_users;
}

static int
imrepl_start(struct st_daemon *d, char **error_r)
{
	struct imrepl *r = d->priv;

	if (!d->conf->service_enabled[ST_SVC_IMAP]) {
		st_set_error(error_r, "%s has no [imap] section: nothing to replicate", d->config_path);
		return -1;
	}
	r->d = d;
	r->idle_room = limit_descriptors(d->conf);
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	ev_async_init(&r->wake, wake_cb);
	r->wake.data = r;
	ev_async_start(d->loop, &r->wake);
	ev_timer_init(&r->tick, tick_cb, TICK_MS / 1000.0, TICK_MS / 1000.0);
	r->tick.data = r;
	ev_timer_start(d->loop, &r->tick);
	double every = (double)d->conf->imap.full_pass_interval_ms / 1000.0;
	ev_timer_init(&r->pass_timer, pass_timer_cb, every, every);
	r->pass_timer.data = r;
	ev_timer_start(d->loop, &r->pass_timer);
	set_state(r, "starting");
	if (d->conf->imap.changes == ST_IMAP_CHANGES_DOVECOT)
		r->nt = im_notices_start(d->conf, d->node->name, d->loop, notices_cb, r);
	st_cstate_follower_init(&r->follow, d->node);
	st_cstate_follow(&r->follow);
	cstate_cb(&r->follow, r);
	st_cstate_watch(&r->follow, d->loop, CSTATE_CHECK_MS / 1000.0, cstate_cb, r);
	return 0;
}

static void
imrepl_stop(struct st_daemon *d)
{
	struct imrepl *r = d->priv;

	stop_workers(r);
	im_notices_stop(r->nt);
	r->nt = NULL;
	st_cstate_follower_free(&r->follow);
	ev_timer_stop(d->loop, &r->tick);
	ev_timer_stop(d->loop, &r->pass_timer);
	ev_async_stop(d->loop, &r->wake);
}

/*
 * SIGHUP: the sessions hold pointers into the old configuration, so they
 * end here (workers joined) and start again on the next tick with the new
 * one.  A folder pass cut here resumes from its journal.
 */
static int
imrepl_reload(struct st_daemon *d, struct st_conf *new_conf, char **error_r)
{
	struct imrepl *r = d->priv;

	if (!new_conf->service_enabled[ST_SVC_IMAP]) {
		st_set_error(error_r, "the new configuration has no [imap] section; keeping the old one");
		return -1;
	}
	if (r->active) {
		st_notice("configuration reloaded: restarting the IMAP sessions");
		stop_workers(r);
	}
	r->idle_room = limit_descriptors(new_conf);
	/* It holds the old configuration's paths: started again at the next tick. */
	im_notices_stop(r->nt);
	r->nt = NULL;
	r->next_cstate_ms = 0;
	ev_timer_set(&r->pass_timer, (double)new_conf->imap.full_pass_interval_ms / 1000.0,
		     (double)new_conf->imap.full_pass_interval_ms / 1000.0);
	ev_timer_again(d->loop, &r->pass_timer);
	return 0;
}

static void
imrepl_status(struct st_daemon *d, json_t *obj)
{
	struct imrepl *r = d->priv;
	uint64_t behind = 0, messages = 0, folders = 0;
	size_t users = 0, idling = 0, notifying = 0, user_errors = 0, polling = 0;
	json_t *idle_names = json_array();

	pthread_mutex_lock(&r->mu);
	for (struct user *u = r->users; u; u = u->next) {
		if (!u->listed)
			continue;
		if (u->idle_state == IDLE_WATCHING)
			json_array_append_new(idle_names, json_string(u->name));
		users++;
		behind += u->behind;
		messages += u->messages;
		folders += u->n_folders;
		idling += u->idle_state == IDLE_WATCHING;
		polling += u->active_until_ms > st_monotonic_ms();
		notifying += u->idle_state == IDLE_WATCHING && u->notify;
		user_errors += u->error != NULL;
	}
	size_t queued = r->queued, running = r->running;
	pthread_mutex_unlock(&r->mu);

	json_object_set_new(obj, "source", r->source[0] ? json_string(r->source) : json_null());
	json_object_set_new(obj, "changes", json_string(d->conf->imap.changes == ST_IMAP_CHANGES_DOVECOT
							? "dovecot" : "idle"));
	if (r->nt != NULL) {
		im_notices_status(r->nt, obj);
		json_object_set_new(json_object_get(obj, "notices"), "unknown_users",
				    json_integer((json_int_t)r->notices_unknown));
	}
	json_object_set_new(obj, "epoch", json_integer((json_int_t)r->epoch));
	json_object_set_new(obj, "users", json_integer((json_int_t)users));
	json_object_set_new(obj, "folders", json_integer((json_int_t)folders));
	json_object_set_new(obj, "messages", json_integer((json_int_t)messages));
	json_object_set_new(obj, "messages_behind", json_integer((json_int_t)behind));
	json_object_set_new(obj, "users_in_error", json_integer((json_int_t)user_errors));
	json_object_set_new(obj, "idling", json_integer((json_int_t)idling));
	json_object_set_new(obj, "idling_users", idle_names);
	json_object_set_new(obj, "idle_users_max", json_integer((json_int_t)r->idle_users));
	json_object_set_new(obj, "notifying", json_integer((json_int_t)notifying));
	json_object_set_new(obj, "polling", json_integer((json_int_t)polling));
	json_object_set_new(obj, "jobs_queued", json_integer((json_int_t)queued));
	json_object_set_new(obj, "jobs_running", json_integer((json_int_t)running));
	json_object_set_new(obj, "pass_active", json_boolean(r->pass_active));
	json_object_set_new(obj, "passes", json_integer((json_int_t)r->passes));
	json_object_set_new(obj, "last_pass_ms", json_integer(r->last_pass_ms));
	json_object_set_new(obj, "last_clean_pass_start_ms", json_integer(r->last_clean_start_ms));
	json_object_set_new(obj, "appended", json_integer((json_int_t)atomic_load(&r->c.appended)));
	json_object_set_new(obj, "appended_bytes", json_integer((json_int_t)atomic_load(&r->c.appended_bytes)));
	json_object_set_new(obj, "flag_updates", json_integer((json_int_t)atomic_load(&r->c.flag_updates)));
	json_object_set_new(obj, "expunged", json_integer((json_int_t)atomic_load(&r->c.expunged)));
	json_object_set_new(obj, "folders_created", json_integer((json_int_t)atomic_load(&r->c.folders_created)));
	json_object_set_new(obj, "folders_renamed", json_integer((json_int_t)atomic_load(&r->c.folders_renamed)));
	json_object_set_new(obj, "folders_deleted", json_integer((json_int_t)atomic_load(&r->c.folders_deleted)));
	json_object_set_new(obj, "reconciled", json_integer((json_int_t)atomic_load(&r->c.reconciled)));
	json_object_set_new(obj, "recovered", json_integer((json_int_t)atomic_load(&r->c.recovered)));
	json_object_set_new(obj, "standby_extra", json_integer((json_int_t)atomic_load(&r->c.standby_extra)));
	json_object_set_new(obj, "messages_per_s", json_real(r->msgs_per_s));
	/* Lag: since the start of the last pass that ended clean, while one runs or errors remain. */
	json_t *lag = json_null();
	if (r->active && r->last_clean_end_ms > 0) {
		bool quiet = !r->pass_active && d->last_error == NULL && queued == 0 && running == 0;
		lag = json_real(quiet ? 0.0 : (double)(st_now_ms() - r->last_clean_start_ms) / 1000.0);
	}
	json_object_set_new(obj, "lag_seconds", lag);
	json_object_set_new(obj, "lag_bytes", json_null());
}

static void
imrepl_metrics(struct st_daemon *d, struct st_buf *out)
{
	struct imrepl *r = d->priv;
	char labels[128];

	snprintf(labels, sizeof(labels), "node=\"%s\"", d->node->name);
	st_metric(out, "standin_imap_appended_total", "counter", "Messages copied to the standby.", labels,
		  (double)atomic_load(&r->c.appended));
	st_metric(out, "standin_imap_flag_updates_total", "counter", "Flag changes applied.", labels,
		  (double)atomic_load(&r->c.flag_updates));
	st_metric(out, "standin_imap_expunged_total", "counter", "Messages expunged on the standby.", labels,
		  (double)atomic_load(&r->c.expunged));
	st_metric(out, "standin_imap_passes_total", "counter", "Full passes completed.", labels, (double)r->passes);
}

/* drain's check: a pass is started when one is needed. */
static int
drain_check(void *ctx, const char *pos, json_t *out)
{
	struct st_daemon *d = ctx;
	struct imrepl *r = d->priv;
	char *e;
	long long from = strtoll(pos, &e, 10);

	if (*pos == '\0' || *e != '\0' || from <= 0) {
		json_object_set_new(out, "error", json_string("usage: drain [MS [TIMEOUT_MS]] "
							      "(milliseconds since the epoch)"));
		return -1;
	}
	bool drained = r->active && r->last_clean_start_ms >= from;
	if (!drained && r->active && (!r->pass_active || r->pass_started_ms < from))
		start_pass(r);
	char applied[32];
	snprintf(applied, sizeof(applied), "%lld", r->last_clean_start_ms);
	json_object_set_new(out, "applied", json_string(applied));
	json_object_set_new(out, "since_ms", json_integer(from));
	json_object_set_new(out, "last_clean_pass_start_ms", json_integer(r->last_clean_start_ms));
	if (!r->active)
		json_object_set_new(out, "error",
				    json_string("not replicating (no source in the cluster state)"));
	return drained;
}

/*
 * "drain [MS [TIMEOUT_MS]]" (st_ctl_drain): is everything the master had at
 * MS (ms since the epoch; default now) on the standby?  Yes once a full pass
 * that started at or after MS ended without error.
 */
static void
cmd_drain(void *ctx, const char *args, struct st_buf *reply)
{
	while (*args == ' ')
		args++;
	if (*args == '\0') {
		char now[32];
		snprintf(now, sizeof(now), "%lld", st_now_ms());
		st_ctl_drain(ctx, now, reply, drain_check);
	} else {
		st_ctl_drain(ctx, args, reply, drain_check);
	}
}

/* "position": the newest time (ms) such that everything the master had
 * then is on the standby: the start of the last clean full pass. */
static void
cmd_position(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct imrepl *r = d->priv;
	json_t *o = json_object();
	char pos[32];

	(void)args;
	snprintf(pos, sizeof(pos), "%lld", r->last_clean_start_ms);
	json_object_set_new(o, "service", json_string("imap"));
	json_object_set_new(o, "position", r->active && r->last_clean_start_ms > 0 ? json_string(pos)
										   : json_null());
	st_ctl_reply_json(reply, o);
}

/* "sequences": IMAP has none (the same verbs in every replicator). */
static void
cmd_sequences(void *ctx, const char *args, struct st_buf *reply)
{
	(void)ctx;
	(void)args;
	st_buf_puts(reply, "{\"requested\":false,\"reason\":\"IMAP has no sequences\"}\n");
}

/*
 * "reverse NODE [TIMEOUT_MS]", on the master's daemon (or another
 * standby's) as in every replicator (doc/architecture.md, section 6.3):
 * nothing to prepare.  IMAP
 * keeps no stream position: once the cluster state makes NODE this node's
 * source, the first pass compares every folder by UID and copies only what
 * differs.
 */
static void
cmd_reverse(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct imrepl *r = d->priv;
	char node[65], extra[2];
	long timeout = 0;
	int n = sscanf(args, "%64s %ld %1s", node, &timeout, extra);

	if (n < 1 || n > 2 || (n == 2 && timeout <= 0) || st_conf_node(d->conf, node) == NULL ||
	    strcmp(node, d->node->name) == 0) {
		st_ctl_reply_error(reply, "usage: reverse NODE [TIMEOUT_MS] (NODE: the standby that "
				   "becomes the master; not this node)");
		return;
	}
	if (r->active && strcmp(r->source, node) == 0) {
		st_ctl_reply_error(reply, "this node replicates from %s already: reverse is for the "
				   "old master's daemon and the other standbys'", r->source);
		return;
	}
	st_ctl_reply_json(reply, json_pack("{s:b,s:s}", "done", 1, "note",
					   "nothing to prepare: the first pass from the new master "
					   "compares every folder"));
}

static void
cmd_pass(void *ctx, const char *args, struct st_buf *reply)
{
	struct st_daemon *d = ctx;
	struct imrepl *r = d->priv;

	(void)args;
	start_pass(r);
	st_buf_printf(reply, "{\"pass_active\":%s}\n", r->pass_active ? "true" : "false");
}

static const struct st_ctl_command imrepl_commands[] = {
	{ "drain", ST_CTL_CHANGES, cmd_drain, "drain [MS [TIMEOUT_MS]]: tell (or wait until) everything the master had at MS is on the standby" },
	{ "position", ST_CTL_READ_ONLY, cmd_position, "position: the time (ms) up to which everything is on the standby" },
	{ "sequences", ST_CTL_CHANGES, cmd_sequences, "sequences: nothing to do (IMAP has none)" },
	{ "pass", ST_CTL_CHANGES, cmd_pass, "pass: start a full pass now" },
	{ "reverse", ST_CTL_CHANGES, cmd_reverse, "reverse NODE [TIMEOUT_MS]: on the master: nothing to prepare for IMAP" },
	{ NULL, 0, NULL, NULL },
};

static const struct st_daemon_ops imrepl_ops = {
	.program = ST_PROGRAM_IMAPREPL,
	.summary = "replicate every IMAP mailbox from the master to this standby",
	.start = imrepl_start,
	.stop = imrepl_stop,
	.reload = imrepl_reload,
	.status = imrepl_status,
	.metrics = imrepl_metrics,
	.commands = imrepl_commands,
};

int
main(int argc, char **argv)
{
	int rc = st_daemon_main(argc, argv, &imrepl_ops, &G);

	for (struct user *u = G.users; u;) {
		struct user *next = u->next;
		for (struct folder *f = u->folders; f;) {
			struct folder *fn = f->next;
			free(f->name);
			free(f);
			f = fn;
		}
		im_sess_close(u->idle);
		free(u->error);
		free(u->name);
		free(u);
		u = next;
	}
	free(G.last_error);
	return rc;
}
