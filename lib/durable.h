/*
 * durable.h: files that are either the old version or the new one, never a
 * mix, across crashes and power loss: write a temporary file in the same
 * directory, fsync it, rename it over the target, fsync the directory.
 */
#ifndef STANDIN_DURABLE_H
#define STANDIN_DURABLE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/util.h"

/* Returns 0, or -1 with a message naming the path and the failed step. */
int st_durable_write(const char *path, const void *data, size_t len, mode_t mode,
		     char **error_r) ST_WARN_UNUSED;

/* fsync the directory that holds PATH. */
int st_fsync_parent_dir(const char *path, char **error_r) ST_WARN_UNUSED;

/* Read a whole file of at most MAX bytes (NUL-terminated for convenience). */
int st_read_file(const char *path, size_t max, char **data_r, size_t *len_r,
		 char **error_r) ST_WARN_UNUSED;

/*
 * A time in unix milliseconds kept in PATH, one line (the replicators'
 * heartbeat: doc/architecture.md, section 6.5).  Load: the value, or 0 when
 * there is no file or it cannot be read (said at warning level).  Save:
 * written durably; a failure is said at warning level, nothing more (the
 * lag shown after a restart is then the older one: on the high side).
 */
int64_t st_ms_file_load(const char *path);
void st_ms_file_save(const char *path, int64_t ms);

/* mkdir -p with MODE for the directories it creates. */
int st_mkdir_p(const char *path, mode_t mode, char **error_r) ST_WARN_UNUSED;

#endif
