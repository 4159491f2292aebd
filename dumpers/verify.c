/*
 * verify.c: standinctl dump-verify: the manifest (every file's size and
 * SHA-256, nothing missing, nothing extra), then the content: pg_restore
 * --list of every archive (or a restore into a scratch database with
 * --restore), zstd -t of the globals, and a parse of every LDIF entry.
 */
#include "config.h"

#include "dumpers/dump.h"

#include "dumpers/ldif.h"
#include "dumpers/manifest.h"
#include "lib/durable.h"
#include "lib/pgconn.h"
#include "lib/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool
has_suffix(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Every regular file under ROOT must be in M. */
static const struct dump_manifest *extra_m;
static char *extra_found;
static size_t extra_rootlen;

static int
extra_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)ftw;
	if (type == FTW_D || type == FTW_DP)
		return 0;
	const char *rel = path + extra_rootlen + 1;
	for (size_t i = 0; i < extra_m->n_files; i++) {
		if (strcmp(extra_m->files[i].name, rel) == 0)
			return 0;
	}
	extra_found = xstrdup(rel);
	return 1;
}

static int
check_files(const struct dump_manifest *m, const char *dump, bool is_dir, struct st_buf *report,
	    char **error_r)
{
	uint64_t total = 0;

	for (size_t i = 0; i < m->n_files; i++) {
		const struct dump_manifest_file *f = &m->files[i];
		char *path = is_dir ? xasprintf("%s/%s", dump, f->name) : xstrdup(dump);
		char hex[DUMP_SHA256_HEX + 1], *err = NULL;
		uint64_t size;

		if (!is_dir && (m->n_files != 1 || strcmp(f->name, strrchr(dump, '/') ?
							   strrchr(dump, '/') + 1 : dump) != 0)) {
			st_set_error(error_r, "%s: the manifest lists %s, not this file", dump, f->name);
			free(path);
			return -1;
		}
		if (dump_sha256_file(path, hex, &size, &err) < 0) {
			st_set_error(error_r, "%s: missing or unreadable: %s", path, err);
			free(err);
			free(path);
			return -1;
		}
		if (size != f->size) {
			st_set_error(error_r, "%s: %llu bytes, the manifest says %llu (truncated or "
				     "altered)", path, (unsigned long long)size,
				     (unsigned long long)f->size);
			free(path);
			return -1;
		}
		if (strcmp(hex, f->sha256) != 0) {
			st_set_error(error_r, "%s: SHA-256 %s, the manifest says %s (altered)", path, hex,
				     f->sha256);
			free(path);
			return -1;
		}
		total += size;
		free(path);
	}
	if (is_dir) {
		extra_m = m;
		extra_found = NULL;
		extra_rootlen = strlen(dump);
		int rc = nftw(dump, extra_one, 16, FTW_PHYS);
		if (rc != 0) {
			st_set_error(error_r, "%s: %s", dump, extra_found ?
				     "holds a file the manifest does not list" : strerror(errno));
			if (extra_found) {
				free(*error_r);
				*error_r = xasprintf("%s/%s: not in the manifest", dump, extra_found);
			}
			free(extra_found);
			extra_found = NULL;
			return -1;
		}
	}
	char created[17];
	dump_format_time(m->created, created);
	st_buf_printf(report, "manifest: %zu files, %llu bytes, sizes and SHA-256 match; %s dump "
		      "from %s %s at %s\n", m->n_files, (unsigned long long)total, m->service, m->role,
		      m->node, created);
	return 0;
}

static char *verify_envp[] = { "PATH=/usr/bin:/bin", "LC_ALL=C", "TZ=UTC", NULL };

struct count_ctx {
	unsigned long lines;
};

static int
count_entries(void *ctx, const char *data, size_t len, char **error_r)
{
	(void)error_r;
	struct count_ctx *c = ctx;

	for (size_t i = 0; i < len; i++) {
		if (data[i] == '\n')
			c->lines++;
	}
	return 0;
}

static int
feed_ldif(void *ctx, const char *data, size_t len, char **error_r)
{
	struct dump_ldif *p = ctx;
	int rc = data == NULL ? dump_ldif_finish(p) : dump_ldif_feed(p, data, len);

	if (rc < 0)
		*error_r = xasprintf("LDIF %s", p->error);
	return rc;
}

static PGconn *
restore_connect(const struct st_conf *conf, int idx, const char *db, char **error_r)
{
	return pgc_connect_db(conf, conf->nodes[idx].name, db, PGC_NORMAL, "standin-dump-verify",
			      error_r);
}

static int
exec_sql(PGconn *c, const char *sql, char **error_r)
{
	PGresult *r = PQexec(c, sql);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;

	if (!ok) {
		char *msg = xstrdup(PQresultErrorMessage(r));
		msg[strcspn(msg, "\n")] = '\0';
		st_set_error(error_r, "%s: %s", sql, msg);
		free(msg);
	}
	PQclear(r);
	return ok ? 0 : -1;
}

/* Restore one archive into a scratch database on node IDX, count its
 * tables, drop it. */
static int
restore_scratch(const struct st_conf *conf, int idx, const char *archive, bool zst, bool is_dir,
		char *zstd, char *pg_restore, struct st_buf *report, char **error_r)
{
	char *scratch = xasprintf("standin_verify_%ld", (long)getpid());
	char *sql = NULL, *dbarg = NULL;
	PGconn *admin = restore_connect(conf, idx, conf->pg.dbname, error_r), *sc = NULL;
	int ret = -1;

	if (admin == NULL)
		goto out;
	sql = xasprintf("CREATE DATABASE %s", scratch);
	if (exec_sql(admin, sql, error_r) < 0)
		goto out;
	dbarg = dump_pg_connstr(conf, idx, scratch);
	{
		char *rargv[] = { pg_restore, "-d", dbarg, "--no-owner", "--exit-on-error",
				  is_dir ? (char *)archive : NULL, NULL };
		char *zargv[] = { zstd, "-q", "-dc", (char *)archive, NULL };
		struct st_cmd cmds[2] = { { zargv, "zstd -d" }, { rargv, "pg_restore" } };
		if (!zst && !is_dir)
			rargv[5] = (char *)archive;
		int rc = zst ? st_proc_run(cmds, 2, -1, NULL, NULL, verify_envp, 6L * 3600 * 1000, error_r)
			     : st_proc_run(&cmds[1], 1, -1, NULL, NULL, verify_envp, 6L * 3600 * 1000,
					     error_r);
		if (rc < 0)
			goto drop;
	}
	sc = restore_connect(conf, idx, scratch, error_r);
	if (sc == NULL)
		goto drop;
	PGresult *r = PQexec(sc, "SELECT count(*), coalesce(sum(n_live_tup), 0) FROM "
			     "pg_stat_user_tables");
	if (PQresultStatus(r) == PGRES_TUPLES_OK)
		st_buf_printf(report, "%s: restored into scratch database %s on node %s: %s tables\n",
			      strrchr(archive, '/') ? strrchr(archive, '/') + 1 : archive, scratch,
			      conf->nodes[idx].name, PQgetvalue(r, 0, 0));
	PQclear(r);
	PQfinish(sc);
	sc = NULL;
	ret = 0;
drop:
	free(sql);
	sql = xasprintf("DROP DATABASE IF EXISTS %s", scratch);
	if (exec_sql(admin, sql, ret == 0 ? error_r : NULL) < 0)
		ret = -1;
out:
	PQfinish(admin);
	free(sql);
	free(dbarg);
	free(scratch);
	return ret;
}

int
dump_verify(const struct st_conf *conf, const char *path, const struct dump_verify_opts *o,
	    struct st_buf *report, char **error_r)
{
	char *dump, *mpath, *data = NULL, *err = NULL;
	char *zstd = st_find_program(NULL, "zstd");
	char *pg_restore = st_find_program(conf ? conf->dump.pg_bindir : NULL, "pg_restore");
	struct dump_manifest m;
	struct stat sb;
	size_t len;
	int ret = -1;
	bool have_m = false;

	if (has_suffix(path, DUMP_MANIFEST_SUFFIX)) {
		mpath = xstrdup(path);
		dump = xstrndup(path, strlen(path) - strlen(DUMP_MANIFEST_SUFFIX));
	} else {
		dump = xstrdup(path);
		while (strlen(dump) > 1 && dump[strlen(dump) - 1] == '/')
			dump[strlen(dump) - 1] = '\0';
		mpath = xasprintf("%s%s", dump, DUMP_MANIFEST_SUFFIX);
	}
	if (st_read_file(mpath, DUMP_MANIFEST_MAX, &data, &len, &err) < 0) {
		st_set_error(error_r, "%s: no manifest: this is not a complete dump (%s)", dump, err);
		goto out;
	}
	if (dump_manifest_parse(mpath, data, len, &m, &err) < 0) {
		st_set_error(error_r, "%s", err);
		goto out;
	}
	have_m = true;
	if (lstat(dump, &sb) < 0) {
		st_set_error(error_r, "%s: %s", dump, strerror(errno));
		goto out;
	}
	if (check_files(&m, dump, S_ISDIR(sb.st_mode), report, error_r) < 0)
		goto out;
	if (zstd == NULL) {
		st_set_error(error_r, "zstd not found: install zstd");
		goto out;
	}

	if (strcmp(m.service, "pg") == 0) {
		int restore_node = -1;
		if (pg_restore == NULL) {
			st_set_error(error_r, "pg_restore not found: install postgresql-client");
			goto out;
		}
		if (o->restore) {
			const char *nn = o->node ? o->node : m.node;
			restore_node = conf ? st_conf_node_index(conf, nn) : -1;
			if (restore_node < 0 || !conf->service_enabled[ST_SVC_PG]) {
				st_set_error(error_r, "--restore: node %s has no PostgreSQL in the "
					     "configuration", nn);
				goto out;
			}
		}
		for (size_t i = 0; i < m.n_files; i++) {
			const char *fn = m.files[i].name;
			char *full = xasprintf("%s/%s", dump, fn);
			bool zst = has_suffix(fn, ".zst");
			bool is_dir = has_suffix(fn, ".dir/toc.dat");
			bool archive = has_suffix(fn, ".dump") || has_suffix(fn, ".dump.zst") || is_dir;
			int rc = 0;

			if (is_dir)
				full[strlen(full) - strlen("/toc.dat")] = '\0';
			if (archive && restore_node >= 0) {
				rc = restore_scratch(conf, restore_node, full, zst, is_dir, zstd, pg_restore,
						     report, error_r);
			} else if (archive) {
				struct count_ctx cc = { 0 };
				char *rargv[] = { pg_restore, "--list", zst ? NULL : full, NULL };
				char *zargv[] = { zstd, "-q", "-dc", full, NULL };
				struct st_cmd cmds[2] = { { zargv, "zstd -d" }, { rargv, "pg_restore --list" } };
				rc = zst ? st_proc_run(cmds, 2, -1, count_entries, &cc, verify_envp,
							 3600L * 1000, error_r)
					 : st_proc_run(&cmds[1], 1, -1, count_entries, &cc, verify_envp,
							 3600L * 1000, error_r);
				if (rc == 0)
					st_buf_printf(report, "%s: pg_restore --list read the archive "
						      "(%lu lines)\n", fn, cc.lines);
				if (rc == 0 && zst) {
					/* --list reads only the table of contents: check
					 * the whole compressed stream too. */
					char *targv[] = { zstd, "-q", "-t", full, NULL };
					struct st_cmd cmd = { targv, "zstd -t" };
					rc = st_proc_run(&cmd, 1, -1, NULL, NULL, verify_envp, 3600L * 1000,
							   error_r);
				}
			} else if (zst) {
				char *zargv[] = { zstd, "-q", "-t", full, NULL };
				struct st_cmd cmd = { zargv, "zstd -t" };
				rc = st_proc_run(&cmd, 1, -1, NULL, NULL, verify_envp, 3600L * 1000, error_r);
				if (rc == 0)
					st_buf_printf(report, "%s: zstd -t ok\n", fn);
			}
			if (rc < 0) {
				char *e = *error_r;
				*error_r = xasprintf("%s: %s", full, e);
				free(e);
				free(full);
				goto out;
			}
			free(full);
		}
	} else if (strcmp(m.service, "ldap") == 0) {
		struct dump_ldif p;
		int rc;

		if (o->restore) {
			st_set_error(error_r, "--restore is for PostgreSQL dumps; an LDIF dump is "
				     "checked by parsing every entry (without --restore)");
			goto out;
		}
		dump_ldif_init(&p);
		char *zargv[] = { zstd, "-q", "-dc", has_suffix(dump, ".zst") ? NULL : "--format=zstd",
				  NULL, NULL };
		if (has_suffix(dump, ".zst")) {
			zargv[3] = dump;
		} else {
			/* Plain LDIF: read it through cat-like zstd passthrough. */
			zargv[2] = "-dcf";
			zargv[3] = dump;
		}
		struct st_cmd cmd = { zargv, "reading the LDIF" };
		rc = st_proc_run(&cmd, 1, -1, feed_ldif, &p, verify_envp, 3600L * 1000, error_r);
		if (rc == 0)
			st_buf_printf(report, "%s: LDIF parsed, %lu entries\n", strrchr(dump, '/') ?
				      strrchr(dump, '/') + 1 : dump, p.entries);
		dump_ldif_free(&p);
		if (rc < 0)
			goto out;
	} else {
		st_set_error(error_r, "%s: unknown service %s", mpath, m.service);
		goto out;
	}
	ret = 0;
out:
	if (have_m)
		dump_manifest_free(&m);
	free(zstd);
	free(pg_restore);
	free(data);
	free(err);
	free(dump);
	free(mpath);
	return ret;
}
