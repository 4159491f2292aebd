/*
 * dump.h: standinctl dump, dump-verify and the dump lines of status
 * (doc/architecture.md, section 5.5).
 *
 * A dump of SERVICE is DIR/SERVICE/NODE-SERVICE-YYYYmmddTHHMMSSZ.EXT:
 *   pg:   a directory NAME.pgdump holding globals.sql[.zst] (pg_dumpall
 *         --globals-only) and, per database, db-NAME.dump[.zst] (pg_dump -Fc,
 *         jobs = 1) or db-NAME.dir/ (pg_dump -Fd -j jobs);
 *   ldap: a file NAME.ldif[.zst] (slapcat, or an LDIF export over LDAP).
 * It is built under DIR/SERVICE/.tmp-NAME, synced, renamed, and only then
 * NAME.manifest (manifest.h) is written beside it: a dump without its
 * manifest is not a good dump, and is removed by the next run.
 *
 * All messages are complete sentences for an administrator; all memory
 * returned belongs to the caller.
 */
#ifndef STANDIN_DUMP_H
#define STANDIN_DUMP_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "lib/conf.h"
#include "lib/util.h"

struct dump_opts {
	int from;		/* -1: [dump] from; else enum st_dump_from */
	bool verbose;		/* print what was written (silent otherwise) */
};

/*
 * Take the lock of the dump directory (DIR/.lock): a file descriptor to
 * close when done, or -1 with a message (another run holds it, naming its
 * pid).
 */
int dump_lock(const struct st_conf *conf, char **error_r) ST_WARN_UNUSED;

/* Dump SVC, then prune its old dumps.  LOCAL is this machine's node (slapcat
 * runs only there).  Returns 0, or -1 with a message. */
int dump_service(const struct st_conf *conf, const struct st_node *local, enum st_service svc,
		 const struct dump_opts *o, char **error_r) ST_WARN_UNUSED;

struct dump_verify_opts {
	bool restore;		/* pg: restore into a scratch database */
	const char *node;	/* where to restore; default the dump's node */
};

/* Check the dump at PATH (the dump or its manifest).  Appends what was
 * checked to REPORT.  Returns 0, or -1 with a message. */
int dump_verify(const struct st_conf *conf, const char *path, const struct dump_verify_opts *o,
		struct st_buf *report, char **error_r) ST_WARN_UNUSED;

struct dump_info {
	char *name;		/* NAME (no directory) */
	char *node;
	time_t created;
	uint64_t size;		/* bytes, every file of the dump */
};

/* The newest good dump of SVC: 0 (fill INFO), 1 when there is none, -1 with
 * a message when the directory cannot be read. */
int dump_newest(const struct st_conf *conf, enum st_service svc, struct dump_info *info_r,
		char **error_r) ST_WARN_UNUSED;
void dump_info_free(struct dump_info *info);

/* libpq's connection string for node IDX's database DBNAME, as pg_dump and
 * pg_restore take it (-d): every value quoted, no password (the passfile). */
char *dump_pg_connstr(const struct st_conf *conf, int idx, const char *dbname);

/* Split "NODE-SERVICE-YYYYmmddTHHMMSSZ.EXT" for SERVICE: 0 or -1. */
int dump_parse_name(const char *name, const char *service, char **node_r, time_t *created_r)
	ST_WARN_UNUSED;

#endif
