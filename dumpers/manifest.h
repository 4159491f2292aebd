/*
 * manifest.h: the SHA-256 manifest written beside every dump.
 *
 * A dump NAME (a file, or a directory for PostgreSQL) is good only when
 * NAME.manifest exists beside it and every file it lists has the size and
 * SHA-256 it records.  The manifest is text, one "key value" per line:
 *
 *     standin-dump-manifest 1
 *     service pg
 *     node b
 *     role standby
 *     master a
 *     epoch 3
 *     created 20250101T031500Z
 *     format custom
 *     compress zstd
 *     lag_ms 120
 *     position origin standin_from_a remote_lsn 0/3000148
 *     file 1234 <64 hex digits> groupware.dump.zst
 *     end 1
 *
 * "file" lines give the size, the SHA-256 and the path relative to the dump
 * (for a single-file dump, its own name); "end N" closes the manifest with
 * the number of files, so a truncated manifest is refused.  lag_ms is -1
 * when unknown (dumps of the master).
 *
 * Memory: a struct dump_manifest and its strings belong to the caller,
 * freed with dump_manifest_free().
 */
#ifndef STANDIN_DUMP_MANIFEST_H
#define STANDIN_DUMP_MANIFEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "lib/util.h"

#define DUMP_MANIFEST_VERSION 1
#define DUMP_MANIFEST_SUFFIX ".manifest"
#define DUMP_SHA256_HEX 64
#define DUMP_MANIFEST_MAX (16 * 1024 * 1024)

struct dump_manifest_file {
	char *name;
	uint64_t size;
	char sha256[DUMP_SHA256_HEX + 1];
};

struct dump_manifest {
	char *service;		/* pg or ldap */
	char *node;		/* node the dump was taken from */
	char *role;		/* its role then: master or standby */
	char *master;		/* the master then */
	uint64_t epoch;
	time_t created;		/* UTC */
	char *format;		/* custom, directory, ldif */
	char *compress;		/* zstd, gzip, none */
	long long lag_ms;	/* -1: unknown or not applicable */
	char *position;		/* free text, one line */
	size_t n_files;
	struct dump_manifest_file *files;
};

void dump_manifest_init(struct dump_manifest *m);
void dump_manifest_free(struct dump_manifest *m);
void dump_manifest_add_file(struct dump_manifest *m, const char *name, uint64_t size,
			    const char *sha256);

/* Render M as the text above. */
void dump_manifest_format(const struct dump_manifest *m, struct st_buf *out);

/*
 * Parse the text of a manifest (NAME is used in messages).  Returns 0, or -1
 * with every problem "NAME:LINE: ..." in *error_r (M is then freed).
 */
int dump_manifest_parse(const char *name, const char *data, size_t len, struct dump_manifest *m,
			char **error_r) ST_WARN_UNUSED;

/* "20250101T031500Z" <-> time_t (UTC).  Parse returns 0 or -1. */
void dump_format_time(time_t t, char out[17]);
int dump_parse_time(const char *s, time_t *t_r) ST_WARN_UNUSED;

/* A relative path that is safe to open under a dump: no "..", no "/" at
 * either end, no empty component, no control character. */
bool dump_safe_relpath(const char *s);

/* SHA-256 (hex) and size of a file.  Returns 0, or -1 with a message. */
int dump_sha256_file(const char *path, char hex_r[DUMP_SHA256_HEX + 1], uint64_t *size_r,
		     char **error_r) ST_WARN_UNUSED;

#endif
