/*
 * dump.c: standinctl dump: choose the node, check its lag, run the dump
 * commands into a temporary name, sync, rename, write the manifest, prune.
 */
#include "config.h"

#include "dumpers/dump.h"

#include "dumpers/ldapsrc.h"
#include "dumpers/manifest.h"
#include "dumpers/retention.h"
#include "lib/cstate.h"
#include "lib/ctl.h"
#include "lib/durable.h"
#include "lib/log.h"
#include "lib/pgconn.h"
#include "lib/proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define TMP_PREFIX ".tmp-"
#define LOCK_NAME ".lock"
#define PGREPL_STATUS_TIMEOUT_MS 3000
#define FULL_DISK_BYTES (1024 * 1024)

/* ------------------------------------------------------------ files */

static int
rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)ftw;
	if (type == FTW_DP || type == FTW_D)
		return rmdir(path) < 0 && errno != ENOENT ? -1 : 0;
	return unlink(path) < 0 && errno != ENOENT ? -1 : 0;
}

/* rm -rf PATH. */
static int
remove_tree(const char *path)
{
	struct stat sb;

	if (lstat(path, &sb) < 0)
		return errno == ENOENT ? 0 : -1;
	if (!S_ISDIR(sb.st_mode))
		return unlink(path);
	return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int fsync_errno;

static int
fsync_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)ftw;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | (type == FTW_DP ? O_DIRECTORY : 0));

	if (fd < 0 || fsync(fd) < 0) {
		fsync_errno = errno;
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* fsync every file and directory under PATH (or PATH itself). */
static int
fsync_tree(const char *path, char **error_r)
{
	fsync_errno = 0;
	if (nftw(path, fsync_one, 16, FTW_DEPTH | FTW_PHYS) != 0) {
		st_set_error(error_r, "fsync under %s: %s", path,
			     strerror(fsync_errno ? fsync_errno : errno));
		return -1;
	}
	return 0;
}

struct walk {
	const char *root;
	size_t rootlen;
	char **names;
	size_t n;
	int err;
};
static struct walk *walk_cur;

static int
walk_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)ftw;
	struct walk *w = walk_cur;

	if (type == FTW_F) {
		const char *rel = path + w->rootlen;
		if (*rel == '/')
			rel++;
		w->names = xrealloc(w->names, (w->n + 1) * sizeof(*w->names));
		w->names[w->n++] = xstrdup(rel);
	} else if (type != FTW_D && type != FTW_DP) {
		w->err = EINVAL;	/* a symlink or a special file has no place in a dump */
		return -1;
	}
	return 0;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The regular files under directory ROOT, relative, sorted. */
static int
list_tree(const char *root, char ***names_r, size_t *n_r, char **error_r)
{
	struct walk w = { .root = root, .rootlen = strlen(root) };

	walk_cur = &w;
	if (nftw(root, walk_one, 16, FTW_PHYS) != 0) {
		st_set_error(error_r, "%s: %s", root,
			     w.err == EINVAL ? "holds something that is not a regular file or directory"
					     : strerror(errno));
		for (size_t i = 0; i < w.n; i++)
			free(w.names[i]);
		free(w.names);
		return -1;
	}
	qsort(w.names, w.n, sizeof(*w.names), cmp_str);
	*names_r = w.names;
	*n_r = w.n;
	return 0;
}

static void
free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* Fill M's file list from the dump at PATH (a file or a directory). */
static int
manifest_files(struct dump_manifest *m, const char *path, const char *name, char **error_r)
{
	char hex[DUMP_SHA256_HEX + 1], **names = NULL;
	struct stat sb;
	uint64_t size;
	size_t n = 0;

	if (lstat(path, &sb) < 0) {
		st_set_error(error_r, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (S_ISREG(sb.st_mode)) {
		if (dump_sha256_file(path, hex, &size, error_r) < 0)
			return -1;
		dump_manifest_add_file(m, name, size, hex);
		return 0;
	}
	if (list_tree(path, &names, &n, error_r) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		char *full = xasprintf("%s/%s", path, names[i]);
		int rc = dump_sha256_file(full, hex, &size, error_r);
		free(full);
		if (rc < 0) {
			free_names(names, n);
			return -1;
		}
		dump_manifest_add_file(m, names[i], size, hex);
	}
	free_names(names, n);
	return 0;
}

/* " (the file system of DIR is full: N bytes free)" when it is, else "". */
static char *
disk_note(const char *dir, const char *error)
{
	struct statvfs vfs;

	if (statvfs(dir, &vfs) == 0) {
		unsigned long long avail = (unsigned long long)vfs.f_bavail * vfs.f_frsize;
		if (avail < FULL_DISK_BYTES || (error && strstr(error, "No space left") != NULL))
			return xasprintf("; the file system of %s is full (%llu bytes free)", dir, avail);
	} else if (error && strstr(error, "No space left") != NULL) {
		return xasprintf("; the file system of %s is full", dir);
	}
	return xstrdup("");
}

/* ------------------------------------------------------------ names */

int
dump_parse_name(const char *name, const char *service, char **node_r, time_t *created_r)
{
	char *pat = xasprintf("-%s-", service);
	const char *p = NULL, *q;
	int ret = -1;

	/* The last "-SERVICE-" followed by a time stamp and a dot. */
	for (q = strstr(name, pat); q != NULL; q = strstr(q + 1, pat))
		p = q;
	if (p == NULL || p == name)
		goto out;
	q = p + strlen(pat);
	if (strlen(q) < 18 || q[16] != '.')
		goto out;
	char ts[17];
	memcpy(ts, q, 16);
	ts[16] = '\0';
	if (dump_parse_time(ts, created_r) < 0)
		goto out;
	if (node_r != NULL)
		*node_r = xstrndup(name, (size_t)(p - name));
	ret = 0;
out:
	free(pat);
	return ret;
}

struct found {
	char *name;		/* dump name, without .manifest */
	char *node;
	time_t created;
};

static int
cmp_found(const void *a, const void *b)
{
	const struct found *x = a, *y = b;

	if (x->created != y->created)
		return x->created > y->created ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* The dumps of DIR that have a manifest, newest first. */
static int
list_good(const char *dir, const char *service, struct found **r, size_t *n_r, char **error_r)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t n = 0, sl = strlen(DUMP_MANIFEST_SUFFIX);

	*r = NULL;
	*n_r = 0;
	if (d == NULL) {
		if (errno == ENOENT)
			return 0;
		st_set_error(error_r, "%s: %s", dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		char *name, *node;
		time_t t;

		if (de->d_name[0] == '.' || len <= sl ||
		    strcmp(de->d_name + len - sl, DUMP_MANIFEST_SUFFIX) != 0)
			continue;
		name = xstrndup(de->d_name, len - sl);
		if (dump_parse_name(name, service, &node, &t) < 0) {
			free(name);
			continue;
		}
		*r = xrealloc(*r, (n + 1) * sizeof(**r));
		(*r)[n].name = name;
		(*r)[n].node = node;
		(*r)[n].created = t;
		n++;
	}
	closedir(d);
	qsort(*r, n, sizeof(**r), cmp_found);
	*n_r = n;
	return 0;
}

static void
free_found(struct found *f, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(f[i].name);
		free(f[i].node);
	}
	free(f);
}

/* Remove what a crashed or killed run left: temporary names, and dumps
 * whose manifest was never written.  Called under the lock. */
static void
remove_leftovers(const char *dir, const char *service)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	size_t sl = strlen(DUMP_MANIFEST_SUFFIX);

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		const char *nm = de->d_name;
		size_t len = strlen(nm);
		char *path = xasprintf("%s/%s", dir, nm), *mpath = NULL;
		time_t t;
		bool drop = false;

		if (strncmp(nm, TMP_PREFIX, strlen(TMP_PREFIX)) == 0) {
			drop = true;
		} else if (nm[0] != '.' && !(len > sl && strcmp(nm + len - sl, DUMP_MANIFEST_SUFFIX) == 0) &&
			   dump_parse_name(nm, service, NULL, &t) == 0) {
			mpath = xasprintf("%s%s", path, DUMP_MANIFEST_SUFFIX);
			drop = access(mpath, F_OK) != 0;
		}
		if (drop) {
			st_warn("removing %s, left by a dump that did not finish", path);
			if (remove_tree(path) < 0)
				st_warn("cannot remove %s: %s", path, strerror(errno));
		}
		free(mpath);
		free(path);
	}
	closedir(d);
}

/* Delete the dumps the retention rule does not keep (after a success). */
static int
prune(const struct st_conf *conf, const char *dir, const char *service, char **error_r)
{
	struct dump_retention r = { conf->dump.keep, conf->dump.daily, conf->dump.weekly };
	struct found *f;
	size_t n;
	time_t *times;
	bool *keep;
	int ret = 0;

	if (list_good(dir, service, &f, &n, error_r) < 0)
		return -1;
	times = xcalloc(n ? n : 1, sizeof(*times));
	keep = xcalloc(n ? n : 1, sizeof(*keep));
	for (size_t i = 0; i < n; i++)
		times[i] = f[i].created;
	dump_retention_select(times, n, &r, keep);
	for (size_t i = 0; i < n; i++) {
		if (keep[i])
			continue;
		char *path = xasprintf("%s/%s", dir, f[i].name);
		char *mpath = xasprintf("%s%s", path, DUMP_MANIFEST_SUFFIX);
		/* The manifest first: a half-deleted dump never looks good. */
		if (unlink(mpath) < 0 && errno != ENOENT) {
			st_set_error(error_r, "cannot delete %s: %s", mpath, strerror(errno));
			ret = -1;
		} else if (remove_tree(path) < 0) {
			st_set_error(error_r, "cannot delete %s: %s", path, strerror(errno));
			ret = -1;
		}
		free(mpath);
		free(path);
	}
	free(times);
	free(keep);
	free_found(f, n);
	return ret;
}

/* ------------------------------------------------------------ lock */

int
dump_lock(const struct st_conf *conf, char **error_r)
{
	char *err = NULL, *path;
	int fd;

	if (st_mkdir_p(conf->dump.dir, 0700, &err) < 0) {
		st_set_error(error_r, "%s", err);
		free(err);
		return -1;
	}
	path = xasprintf("%s/%s", conf->dump.dir, LOCK_NAME);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		st_set_error(error_r, "%s: %s", path, strerror(errno));
		free(path);
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		char buf[32] = "";
		ssize_t r = pread(fd, buf, sizeof(buf) - 1, 0);
		if (r > 0)
			buf[r] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		if (errno == EWOULDBLOCK)
			st_set_error(error_r, "another standinctl dump is running (pid %s, lock %s); "
				     "this run did nothing", buf[0] ? buf : "?", path);
		else
			st_set_error(error_r, "%s: lock: %s", path, strerror(errno));
		close(fd);
		free(path);
		return -1;
	}
	char pid[24];
	int len = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)len, 0) != len)
		st_warn("%s: cannot record the pid", path);
	free(path);
	return fd;
}

/* ------------------------------------------------------------ context */

struct dump_ctx {
	const struct st_conf *conf;
	const struct st_node *local;
	enum st_service svc;
	int node;		/* index of the node dumped */
	struct dump_manifest m;
	char *envp[12];
	size_t n_env;
	char *zstd;
};

static void ST_PRINTF(2, 3)
ctx_env(struct dump_ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (c->n_env + 1 < ST_ARRAY_SIZE(c->envp))
		c->envp[c->n_env++] = xvasprintf(fmt, ap);
	va_end(ap);
}

static void
ctx_init(struct dump_ctx *c, const struct st_conf *conf, const struct st_node *local,
	 enum st_service svc)
{
	const char *home = getenv("HOME");

	memset(c, 0, sizeof(*c));
	c->conf = conf;
	c->local = local;
	c->svc = svc;
	dump_manifest_init(&c->m);
	ctx_env(c, "%s", "PATH=/usr/bin:/bin:/usr/sbin:/sbin");
	ctx_env(c, "%s", "LC_ALL=C");
	ctx_env(c, "%s", "TZ=UTC");
	ctx_env(c, "HOME=%s", home ? home : "/");
	ctx_env(c, "%s", "PGAPPNAME=standin-dump");
	if (conf->pg.passfile != NULL)
		ctx_env(c, "PGPASSFILE=%s", conf->pg.passfile);
	c->envp[c->n_env] = NULL;
	c->zstd = st_find_program(NULL, "zstd");
}

static void
ctx_free(struct dump_ctx *c)
{
	for (size_t i = 0; i < c->n_env; i++)
		free(c->envp[i]);
	dump_manifest_free(&c->m);
	free(c->zstd);
}

static bool
use_zstd(const struct dump_ctx *c)
{
	return c->conf->dump.compress == ST_COMPRESS_ZSTD && c->zstd != NULL;
}

/* ------------------------------------------------------------ PostgreSQL */

static void
conn_append(struct st_buf *b, const char *k, const char *v)
{
	if (b->len > 0)
		st_buf_puts(b, " ");
	st_buf_printf(b, "%s='", k);
	for (; *v; v++) {
		if (*v == '\'' || *v == '\\')
			st_buf_puts(b, "\\");
		st_buf_append(b, v, 1);
	}
	st_buf_puts(b, "'");
}

/* A libpq connection string for node IDX and DBNAME (no password: the
 * passfile is in the environment), each value quoted. */
char *
dump_pg_connstr(const struct st_conf *conf, int idx, const char *dbname)
{
	const struct st_endpoint *ep = st_conf_endpoint(conf, ST_SVC_PG, idx);
	char port[16], timeout[24];
	struct st_buf b;

	snprintf(port, sizeof(port), "%d", ep->port);
	snprintf(timeout, sizeof(timeout), "%ld", (conf->pg.connect_timeout_ms + 999) / 1000);
	st_buf_init(&b);
	conn_append(&b, "host", ep->host != NULL ? ep->host : "");
	conn_append(&b, "port", port);
	conn_append(&b, "user", conf->pg.user);
	conn_append(&b, "dbname", dbname);
	conn_append(&b, "sslmode", st_conf_pg_sslmode(conf, idx));
	if (conf->pg.sslrootcert != NULL)
		conn_append(&b, "sslrootcert", conf->pg.sslrootcert);
	if (conf->pg.passfile != NULL)
		conn_append(&b, "passfile", conf->pg.passfile);
	conn_append(&b, "connect_timeout", timeout);
	conn_append(&b, "application_name", "standin-dump");
	char *res = st_buf_steal(&b);

	st_buf_free(&b);
	return res;
}

static PGconn *
pg_connect(const struct st_conf *conf, int idx, const char *dbname, char **error_r)
{
	return pgc_connect_db(conf, conf->nodes[idx].name, dbname, PGC_NORMAL, "standin-dump",
			      error_r);
}

/* Run a query; the result or NULL with a message. */
static PGresult *
pg_query(PGconn *c, const struct st_conf *conf, int idx, const char *sql, char **error_r)
{
	PGresult *r = PQexec(c, sql);

	if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
		char *msg = xstrdup(PQresultErrorMessage(r));
		msg[strcspn(msg, "\n")] = '\0';
		st_set_error(error_r, "PostgreSQL %s (node %s): %s", conf->pg.endpoint[idx],
			     conf->nodes[idx].name, msg);
		free(msg);
		PQclear(r);
		return NULL;
	}
	return r;
}

/* The databases to dump: [dump] pg_databases, or every one that accepts
 * connections. */
static int
pg_databases(const struct dump_ctx *c, char ***dbs_r, size_t *n_r, char **error_r)
{
	char **dbs = NULL;
	size_t n = 0;

	if (c->conf->dump.pg_databases != NULL) {
		char *copy = xstrdup(c->conf->dump.pg_databases), *save = NULL;
		for (char *t = strtok_r(copy, " ,\t", &save); t; t = strtok_r(NULL, " ,\t", &save)) {
			dbs = xrealloc(dbs, (n + 1) * sizeof(*dbs));
			dbs[n++] = xstrdup(t);
		}
		free(copy);
	} else {
		PGconn *pc = pg_connect(c->conf, c->node, c->conf->pg.dbname, error_r);
		PGresult *r;
		if (pc == NULL)
			return -1;
		r = pg_query(pc, c->conf, c->node, "SELECT datname FROM pg_database WHERE datallowconn "
			     "AND NOT datistemplate ORDER BY datname", error_r);
		PQfinish(pc);
		if (r == NULL)
			return -1;
		for (int i = 0; i < PQntuples(r); i++) {
			dbs = xrealloc(dbs, (n + 1) * sizeof(*dbs));
			dbs[n++] = xstrdup(PQgetvalue(r, i, 0));
		}
		PQclear(r);
	}
	if (n == 0) {
		st_set_error(error_r, "[dump] pg_databases names no database");
		free(dbs);
		return -1;
	}
	*dbs_r = dbs;
	*n_r = n;
	return 0;
}

/* A database name as a file name: [A-Za-z0-9_-] kept, the rest %XX. */
static char *
db_file_part(const char *db)
{
	struct st_buf b;

	st_buf_init(&b);
	for (const unsigned char *p = (const unsigned char *)db; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    *p == '_' || *p == '-')
			st_buf_append(&b, p, 1);
		else
			st_buf_printf(&b, "%%%02X", *p);
	}
	char *res = st_buf_steal(&b);

	st_buf_free(&b);
	return res;
}

/* Run CMDS with stdout into a new file PATH; with BG, start them and put
 * the pipeline in *BG (the file is closed on our side at once, the commands
 * hold it). */
static int
run_to_file(struct dump_ctx *c, struct st_cmd *cmds, size_t n, const char *path,
	    struct st_pipeline **bg, char **error_r)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	int rc = 0;

	if (fd < 0) {
		st_set_error(error_r, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (bg != NULL) {
		*bg = st_proc_start(cmds, n, fd, c->envp, c->conf->dump.timeout_ms, error_r);
		if (*bg == NULL)
			rc = -1;
	} else {
		rc = st_proc_run(cmds, n, fd, NULL, NULL, c->envp, c->conf->dump.timeout_ms, error_r);
	}
	if (close(fd) < 0 && rc == 0 && bg == NULL) {
		st_set_error(error_r, "%s: %s", path, strerror(errno));
		rc = -1;
	}
	return rc;
}

/* PRODUCER, compressed by zstd when configured, into PATH (".zst" added);
 * in the background with BG (see run_to_file). */
static int
run_compressed(struct dump_ctx *c, char **argv, const char *what, const char *path,
	       struct st_pipeline **bg, char **error_r)
{
	char jobs[24], level[8];
	char *zargv[] = { c->zstd, "-q", "-c", level, jobs, NULL };
	struct st_cmd cmds[2] = { { argv, what }, { zargv, "zstd" } };
	int rc;

	snprintf(jobs, sizeof(jobs), "-T%ld", c->conf->dump.jobs);
	snprintf(level, sizeof(level), "-%ld", c->conf->dump.zstd_level);
	if (use_zstd(c)) {
		char *zpath = xasprintf("%s.zst", path);
		rc = run_to_file(c, cmds, 2, zpath, bg, error_r);
		free(zpath);
		return rc;
	}
	return run_to_file(c, cmds, 1, path, bg, error_r);
}

static int
dump_pg_into(struct dump_ctx *c, const char *tmp, char **error_r)
{
	const struct st_conf *conf = c->conf;
	const char *node = conf->nodes[c->node].name;
	char *pg_dump = st_find_program(conf->dump.pg_bindir, "pg_dump");
	char *pg_dumpall = st_find_program(conf->dump.pg_bindir, "pg_dumpall");
	char **dbs = NULL, jobs[24];
	size_t n_dbs = 0;
	struct st_pipeline *globals = NULL;
	int ret = -1, rc_globals;

	snprintf(jobs, sizeof(jobs), "%ld", conf->dump.jobs);
	if (pg_dump == NULL || pg_dumpall == NULL) {
		st_set_error(error_r, "pg_dump or pg_dumpall not found in %s ([dump] pg_bindir) "
			     "nor /usr/bin: install postgresql-client", conf->dump.pg_bindir);
		goto out;
	}
	if (mkdir(tmp, 0700) < 0) {
		st_set_error(error_r, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	if (pg_databases(c, &dbs, &n_dbs, error_r) < 0)
		goto out;

	/* Roles and tablespaces, while the first database is dumped: a
	 * second connection, but no time of its own. */
	{
		char *cs = dump_pg_connstr(conf, c->node, conf->pg.dbname);
		char *argv[] = { pg_dumpall, "-d", cs, "-l", conf->pg.dbname, "--globals-only", NULL };
		char *what = xasprintf("pg_dumpall --globals-only of node %s", node);
		char *path = xasprintf("%s/globals.sql", tmp);
		int rc = run_compressed(c, argv, what, path, &globals, error_r);
		free(path);
		free(what);
		free(cs);
		if (rc < 0)
			goto out;
	}
	for (size_t i = 0; i < n_dbs; i++) {
		char *cs = dump_pg_connstr(conf, c->node, dbs[i]);
		char *part = db_file_part(dbs[i]);
		char *what = xasprintf("pg_dump of database %s on node %s", dbs[i], node);
		int rc;

		if (conf->dump.jobs > 1) {
			/* Directory format: pg_dump's workers compress (gzip: zstd
			 * is not in pg_dump before PostgreSQL 16). */
			char *path = xasprintf("%s/db-%s.dir", tmp, part);
			char *argv[] = { pg_dump, "-d", cs, "-Fd", "-j", jobs, "-f", path, "--no-sync",
					 use_zstd(c) ? "-Z1" : "-Z0", NULL };
			struct st_cmd cmd = { argv, what };
			rc = st_proc_run(&cmd, 1, -1, NULL, NULL, c->envp, conf->dump.timeout_ms,
					   error_r);
			free(path);
		} else {
			char *path = xasprintf("%s/db-%s.dump", tmp, part);
			char *argv[] = { pg_dump, "-d", cs, "-Fc", use_zstd(c) ? "-Z0" : "-Z6", NULL };
			rc = run_compressed(c, argv, what, path, NULL, error_r);
			free(path);
		}
		free(what);
		free(part);
		free(cs);
		if (rc < 0)
			goto out;
	}
	rc_globals = st_proc_wait(globals, error_r);
	globals = NULL;
	if (rc_globals < 0)
		goto out;
	free(c->m.format);
	c->m.format = xstrdup(conf->dump.jobs > 1 ? "directory" : "custom");
	free(c->m.compress);
	c->m.compress = xstrdup(!use_zstd(c) ? (conf->dump.jobs > 1 ? "none" : "gzip")
					     : (conf->dump.jobs > 1 ? "gzip" : "zstd"));
	ret = 0;
out:
	if (globals != NULL) {
		/* A database dump failed: its message is the one reported. */
		char *ignored = NULL;
		(void)!st_proc_wait(globals, &ignored);
		free(ignored);
	}
	for (size_t i = 0; i < n_dbs; i++)
		free(dbs[i]);
	free(dbs);
	free(pg_dump);
	free(pg_dumpall);
	return ret;
}

/* The standby's replication origins (its position), as one line. */
static int
pg_position(const struct dump_ctx *c, char **pos_r, char **error_r)
{
	PGconn *pc = pg_connect(c->conf, c->node, c->conf->pg.dbname, error_r);
	PGresult *r;
	struct st_buf b;

	if (pc == NULL)
		return -1;
	r = pg_query(pc, c->conf, c->node,
		     "SELECT external_id, remote_lsn, local_lsn, pg_is_in_recovery(), "
		     "pg_current_wal_lsn() FROM pg_replication_origin_status "
		     "RIGHT JOIN (SELECT 1) one ON external_id LIKE 'standin\\_from\\_%' "
		     "ORDER BY 1", error_r);
	PQfinish(pc);
	if (r == NULL)
		return -1;
	st_buf_init(&b);
	for (int i = 0; i < PQntuples(r); i++) {
		if (i == 0)
			st_buf_printf(&b, "wal_lsn %s", PQgetvalue(r, 0, 4));
		if (!PQgetisnull(r, i, 0))
			st_buf_printf(&b, " origin %s remote_lsn %s", PQgetvalue(r, i, 0),
				      PQgetvalue(r, i, 1));
	}
	PQclear(r);
	*pos_r = st_buf_steal(&b);
	st_buf_free(&b);
	return 0;
}

/* The standby's lag from standin-pgrepl's status socket, in whatever state
 * (a stuck or retrying standby's lag keeps growing: standin-pgrepl(8)): ms,
 * or -1 with *why_r saying why it is not known. */
static long long
pg_lag_ms(const struct dump_ctx *c, char **why_r)
{
	const struct st_node *n = &c->conf->nodes[c->node];
	char *path = st_ctl_socket_path(n, ST_PROGRAM_PGREPL), *reply = NULL, *err = NULL;
	long long lag = -1;
	json_error_t jerr;
	json_t *o = NULL;

	if (st_ctl_query(path, "status", PGREPL_STATUS_TIMEOUT_MS, &reply, &err) < 0) {
		*why_r = xasprintf("standin-pgrepl on node %s does not answer on %s (%s)", n->name, path,
				   err);
		goto out;
	}
	o = json_loads(reply, 0, &jerr);
	json_t *state = json_object_get(o, "state"), *secs = json_object_get(o, "lag_seconds");
	if (!json_is_number(secs)) {
		*why_r = xasprintf("standin-pgrepl on node %s (%s) reports no lag yet (no heartbeat "
				   "from the master applied)", n->name,
				   json_is_string(state) ? json_string_value(state) : "in an unknown state");
		goto out;
	}
	lag = (long long)(json_number_value(secs) * 1000.0);
out:
	json_decref(o);
	free(reply);
	free(err);
	free(path);
	return lag;
}

/* ------------------------------------------------------------ LDAP */

static void
csns_line(const struct dump_csns *cs, struct st_buf *b)
{
	st_buf_puts(b, "contextCSN");
	for (size_t i = 0; i < cs->n; i++)
		st_buf_printf(b, " %s", cs->csn[i]);
	if (cs->n == 0)
		st_buf_puts(b, " none");
}

static int
dump_ldap_into(struct dump_ctx *c, const char *tmp, char **error_r)
{
	const struct st_conf *conf = c->conf;
	const struct st_node *n = &conf->nodes[c->node];
	const char *sc = conf->dump.slapcat_config[c->node];
	bool local = c->local != NULL && strcmp(c->local->name, n->name) == 0;
	char *path = use_zstd(c) ? xasprintf("%s.zst", tmp) : xstrdup(tmp);
	int ret = -1;

	if (sc != NULL && local) {
		char *slapcat = st_find_program(NULL, "slapcat");
		struct stat sb;
		if (slapcat == NULL) {
			st_set_error(error_r, "slapcat not found: install slapd");
			goto out;
		}
		bool is_dir = stat(sc, &sb) == 0 && S_ISDIR(sb.st_mode);
		char *argv[] = { slapcat, is_dir ? "-F" : "-f", (char *)sc, "-b", (char *)conf->ldap.suffix,
				 "-o", "ldif_wrap=no", NULL };
		char *what = xasprintf("slapcat of %s on node %s", conf->ldap.suffix, n->name);
		ret = run_compressed(c, argv, what, tmp, NULL, error_r);
		free(what);
		free(slapcat);
	} else {
		/* Over LDAP, into a plain file, then compressed. */
		unsigned long entries = 0;
		int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
		if (f == NULL) {
			st_set_error(error_r, "%s: %s", tmp, strerror(errno));
			if (fd >= 0)
				close(fd);
			goto out;
		}
		int rc = dump_ldap_export(conf, c->node, f, &entries, error_r);
		if (fclose(f) != 0 && rc == 0) {
			st_set_error(error_r, "%s: %s", tmp, strerror(errno));
			rc = -1;
		}
		if (rc < 0)
			goto out;
		if (use_zstd(c)) {
			char jobs[24], level[8];
			snprintf(jobs, sizeof(jobs), "-T%ld", conf->dump.jobs);
			snprintf(level, sizeof(level), "-%ld", conf->dump.zstd_level);
			char *zargv[] = { c->zstd, "-q", "--rm", level, jobs, "-o", path, (char *)tmp,
					  NULL };
			struct st_cmd cmd = { zargv, "zstd of the LDIF export" };
			if (st_proc_run(&cmd, 1, -1, NULL, NULL, c->envp, conf->dump.timeout_ms,
					  error_r) < 0)
				goto out;
		}
		ret = 0;
	}
	free(c->m.format);
	c->m.format = xstrdup(sc != NULL && local ? "ldif" : "ldif-export");
	free(c->m.compress);
	c->m.compress = xstrdup(use_zstd(c) ? "zstd" : "none");
out:
	free(path);
	return ret;
}

/*
 * The LDAP standby's lag: the standby's own contextCSN is made of its own
 * CSNs (entryCSN cannot be replicated over LDAP), so the position is the CSN
 * standin-ldaprepl reports as applied (from the master's cookies), compared
 * with the master's contextCSN.  ms, or -1 with *why_r.
 */
static long long
ldap_lag_ms(const struct dump_ctx *c, int master, struct st_buf *pos, char **why_r)
{
	const struct st_node *n = &c->conf->nodes[c->node];
	char *path = st_ctl_socket_path(n, ST_PROGRAM_LDAPREPL), *reply = NULL, *err = NULL;
	long long lag = -1;
	json_error_t jerr;
	json_t *o = NULL;
	struct dump_csns mc, ac = { .n = 1 };

	if (st_ctl_query(path, "status", PGREPL_STATUS_TIMEOUT_MS, &reply, &err) < 0) {
		*why_r = xasprintf("standin-ldaprepl on node %s does not answer on %s (%s), so its "
				   "position is unknown", n->name, path, err);
		goto out;
	}
	o = json_loads(reply, 0, &jerr);
	json_t *state = json_object_get(o, "state"), *csn = json_object_get(o, "applied_csn");
	const char *sv = json_is_string(state) ? json_string_value(state) : "in an unknown state";
	/* Not the state word: what is applied against what the master has. */
	if (!json_is_string(csn) || strlen(json_string_value(csn)) >= sizeof(ac.csn[0])) {
		*why_r = xasprintf("standin-ldaprepl on node %s (%s) reports no applied CSN", n->name,
				   sv);
		goto out;
	}
	snprintf(ac.csn[0], sizeof(ac.csn[0]), "%s", json_string_value(csn));
	if (dump_ldap_context_csn(c->conf, master, &mc, &err) < 0) {
		*why_r = xasprintf("cannot read the master's contextCSN: %s", err);
		goto out;
	}
	/* The daemon's own lag (its heartbeat: standin-ldaprepl(8)) when it has
	 * one; before its first heartbeat, what is applied against the master. */
	json_t *secs = json_object_get(o, "lag_seconds");
	if (json_is_number(secs)) {
		lag = (long long)(json_number_value(secs) * 1000.0);
	} else {
		lag = dump_csn_lag_ms(&mc, &ac);
		if (lag < 0)
			*why_r = xasprintf("the CSN applied on node %s (%s) is of no serverID of the "
					   "master's contextCSN", n->name, ac.csn[0]);
	}
	st_buf_puts(pos, "master ");
	csns_line(&mc, pos);
	st_buf_printf(pos, " applied %s", ac.csn[0]);
out:
	json_decref(o);
	free(reply);
	free(err);
	free(path);
	return lag;
}

/* ------------------------------------------------------------ the run */

/* Pick the node and check the standby's lag.  Fills c->node and the
 * manifest's node, role, master, epoch, lag and position. */
static int
choose_node(struct dump_ctx *c, const struct dump_opts *o, char **error_r)
{
	const struct st_conf *conf = c->conf;
	char *path = st_cstate_path(c->local), *err = NULL, *why = NULL;
	struct st_cstate st;
	int rc, from = o->from >= 0 ? o->from : conf->dump.from, master, standby = -1;
	long long lag = -1;
	struct st_buf pos;

	st_buf_init(&pos);
	rc = st_cstate_load(path, &st, &err);
	if (rc != 0) {
		st_set_error(error_r, "%s: %s", path,
			     rc == 1 ? "no cluster state (standinctl state init --master NODE)" : err);
		free(err);
		free(path);
		return -1;
	}
	free(path);
	master = st_conf_node_index(conf, st.master);
	if (master < 0) {
		st_set_error(error_r, "the cluster state names master %s, which is not in %s",
			     st.master, conf->path);
		return -1;
	}
	for (size_t i = 0; i < conf->n_nodes; i++) {
		if ((int)i != master) {
			standby = (int)i;
			break;
		}
	}
	c->m.master = xstrdup(st.master);
	c->m.epoch = st.epoch;
	c->node = master;
	if (from == ST_DUMP_FROM_STANDBY && standby >= 0) {
		c->node = standby;
		if (c->svc == ST_SVC_PG) {
			lag = pg_lag_ms(c, &why);
		} else {
			lag = ldap_lag_ms(c, master, &pos, &why);
		}
		if (lag >= 0 && lag > conf->dump.max_lag_ms) {
			free(why);
			why = xasprintf("it lags %.1f s behind the master, more than max_lag %.1f s",
					lag / 1000.0, conf->dump.max_lag_ms / 1000.0);
		}
		if (why != NULL) {
			if (!conf->dump.fallback_to_master) {
				st_set_error(error_r, "refusing to dump %s from standby %s: %s (dump the "
					     "master with --from master, or set [dump] "
					     "fallback_to_master = yes)", st_service_name(c->svc),
					     conf->nodes[standby].name, why);
				free(why);
				st_buf_free(&pos);
				return -1;
			}
			st_warn("dumping %s from master %s instead of standby %s: %s",
				st_service_name(c->svc), st.master, conf->nodes[standby].name, why);
			free(why);
			c->node = master;
			lag = -1;
			st_buf_reset(&pos);
		}
	}
	c->m.node = xstrdup(conf->nodes[c->node].name);
	c->m.role = xstrdup(c->node == master ? "master" : "standby");
	c->m.lag_ms = lag;
	if (c->svc == ST_SVC_PG) {
		char *p = NULL;
		if (pg_position(c, &p, &err) < 0) {
			st_set_error(error_r, "%s", err);
			free(err);
			st_buf_free(&pos);
			return -1;
		}
		c->m.position = p;
		st_buf_free(&pos);
	} else {
		if (pos.len == 0) {
			struct dump_csns cs;
			if (dump_ldap_context_csn(conf, c->node, &cs, &err) == 0)
				csns_line(&cs, &pos);
			free(err);
			err = NULL;
		}
		c->m.position = pos.len ? st_buf_steal(&pos) : NULL;
		st_buf_free(&pos);
	}
	return 0;
}

int
dump_service(const struct st_conf *conf, const struct st_node *local, enum st_service svc,
	     const struct dump_opts *o, char **error_r)
{
	const char *sname = st_service_name(svc);
	char *dir = xasprintf("%s/%s", conf->dump.dir, sname), *err = NULL;
	char *name = NULL, *tmp = NULL, *final = NULL, *mpath = NULL, ts[17];
	struct dump_ctx c;
	struct st_buf mb;
	int ret = -1, rc;
	bool written = false;

	ctx_init(&c, conf, local, svc);
	st_buf_init(&mb);
	if (svc != ST_SVC_PG && svc != ST_SVC_LDAP) {
		st_set_error(error_r, "no dump for %s (only pg and ldap)", sname);
		goto out;
	}
	if (!conf->service_enabled[svc]) {
		st_set_error(error_r, "%s has no [%s] section", conf->path, sname);
		goto out;
	}
	if (st_mkdir_p(dir, 0700, &err) < 0) {
		st_set_error(error_r, "%s", err);
		goto out;
	}
	remove_leftovers(dir, sname);
	if (choose_node(&c, o, error_r) < 0)
		goto out;
	c.m.service = xstrdup(sname);
	c.m.created = time(NULL);
	dump_format_time(c.m.created, ts);
	name = xasprintf("%s-%s-%s.%s", c.m.node, sname, ts,
			 svc == ST_SVC_PG ? "pgdump" : use_zstd(&c) ? "ldif.zst" : "ldif");
	tmp = xasprintf("%s/%s%s", dir, TMP_PREFIX, name);
	final = xasprintf("%s/%s", dir, name);
	mpath = xasprintf("%s%s", final, DUMP_MANIFEST_SUFFIX);
	if (access(final, F_OK) == 0 || access(mpath, F_OK) == 0) {
		st_set_error(error_r, "%s already exists (two dumps in the same second?)", final);
		goto out;
	}
	written = true;
	if (svc == ST_SVC_PG) {
		rc = dump_pg_into(&c, tmp, &err);
	} else {
		/* The producer writes TMP without .zst; the final name has it. */
		char *plain = use_zstd(&c) ? xstrndup(tmp, strlen(tmp) - 4) : xstrdup(tmp);
		rc = dump_ldap_into(&c, plain, &err);
		free(plain);
	}
	if (rc < 0) {
		char *note = disk_note(dir, err);
		st_set_error(error_r, "dump of %s from node %s failed: %s%s; the partial dump was "
			     "removed", sname, c.m.node, err, note);
		free(note);
		goto out;
	}
	if (fsync_tree(tmp, &err) < 0 || manifest_files(&c.m, tmp, name, &err) < 0) {
		char *note = disk_note(dir, err);
		st_set_error(error_r, "dump of %s: %s%s; the partial dump was removed", sname, err, note);
		free(note);
		goto out;
	}
	if (rename(tmp, final) < 0) {
		st_set_error(error_r, "rename %s to %s: %s", tmp, final, strerror(errno));
		goto out;
	}
	dump_manifest_format(&c.m, &mb);
	if (st_fsync_parent_dir(final, &err) < 0 ||
	    st_durable_write(mpath, mb.data, mb.len, 0600, &err) < 0) {
		char *note = disk_note(dir, err);
		st_set_error(error_r, "dump of %s: %s%s; the dump was removed", sname, err, note);
		free(note);
		unlink(mpath);
		remove_tree(final);
		goto out;
	}
	written = false;
	if (o->verbose) {
		uint64_t total = 0;
		for (size_t i = 0; i < c.m.n_files; i++)
			total += c.m.files[i].size;
		printf("%s: %zu files, %llu bytes, from %s %s\n", final, c.m.n_files,
		       (unsigned long long)total, c.m.role, c.m.node);
	}
	if (prune(conf, dir, sname, &err) < 0) {
		st_set_error(error_r, "dump of %s written (%s), but pruning old dumps failed: %s", sname,
			     final, err);
		goto out;
	}
	ret = 0;
out:
	if (written && tmp != NULL)
		remove_tree(tmp);
	if (written && tmp != NULL && svc == ST_SVC_LDAP && use_zstd(&c)) {
		char *plain = xstrndup(tmp, strlen(tmp) - 4);
		remove_tree(plain);
		free(plain);
	}
	st_buf_free(&mb);
	ctx_free(&c);
	free(err);
	free(dir);
	free(name);
	free(tmp);
	free(final);
	free(mpath);
	return ret;
}

/* ------------------------------------------------------------ status */

int
dump_newest(const struct st_conf *conf, enum st_service svc, struct dump_info *info_r,
	    char **error_r)
{
	const char *sname = st_service_name(svc);
	char *dir = xasprintf("%s/%s", conf->dump.dir, sname), *data = NULL, *err = NULL;
	struct found *f;
	size_t n, len;
	int ret = 1;

	memset(info_r, 0, sizeof(*info_r));
	if (list_good(dir, sname, &f, &n, error_r) < 0) {
		free(dir);
		return -1;
	}
	if (n > 0) {
		char *mpath = xasprintf("%s/%s%s", dir, f[0].name, DUMP_MANIFEST_SUFFIX);
		struct dump_manifest m;

		info_r->name = xstrdup(f[0].name);
		info_r->node = xstrdup(f[0].node);
		info_r->created = f[0].created;
		if (st_read_file(mpath, DUMP_MANIFEST_MAX, &data, &len, &err) == 0 &&
		    dump_manifest_parse(mpath, data, len, &m, &err) == 0) {
			for (size_t i = 0; i < m.n_files; i++)
				info_r->size += m.files[i].size;
			dump_manifest_free(&m);
		}
		free(mpath);
		ret = 0;
	}
	free(data);
	free(err);
	free_found(f, n);
	free(dir);
	return ret;
}

void
dump_info_free(struct dump_info *info)
{
	free(info->name);
	free(info->node);
	memset(info, 0, sizeof(*info));
}
