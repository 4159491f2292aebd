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

/*
 * The same guarantee for a file written in pieces, too big to hold in
 * memory: st_durable_create() opens a temporary file beside PATH (mode
 * MODE); the caller writes it through f->fd (write, pwrite, ftruncate);
 * st_durable_commit() fsyncs it, renames it to PATH and fsyncs the
 * directory, st_durable_abort() removes it.  Either one closes the file
 * and frees the names; after a failed commit the temporary file is gone.
 */
struct st_durable_file {
	int fd;				/* -1 when none is open */
	char *path;
	char *tmp;
};
int st_durable_create(struct st_durable_file *f, const char *path, mode_t mode,
		      char **error_r) ST_WARN_UNUSED;
int st_durable_commit(struct st_durable_file *f, char **error_r) ST_WARN_UNUSED;
void st_durable_abort(struct st_durable_file *f);

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
