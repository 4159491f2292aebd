/*
 * durable.c: crash-safe file replacement.
 */
#include "config.h"

#include "lib/durable.h"
#include "lib/log.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int
st_fsync_parent_dir(const char *path, char **error_r)
{
	char *copy = xstrdup(path);
	const char *dir = dirname(copy);
	int fd, ret = 0;

	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0) {
		st_set_error(error_r, "fsync of directory %s: %s", dir, strerror(errno));
		ret = -1;
	}
	if (fd >= 0)
		close(fd);
	free(copy);
	return ret;
}

int
st_durable_write(const char *path, const void *data, size_t len, mode_t mode, char **error_r)
{
	char *tmp = xasprintf("%s.tmp.XXXXXX", path);
	const char *p = data;
	size_t done = 0;
	int fd;

	fd = mkstemp(tmp);
	if (fd < 0) {
		st_set_error(error_r, "cannot create temporary file for %s: %s", path,
			     strerror(errno));
		free(tmp);
		return -1;
	}
	if (fchmod(fd, mode) < 0) {
		st_set_error(error_r, "chmod %s: %s", tmp, strerror(errno));
		goto fail;
	}
	while (done < len) {
		ssize_t n = write(fd, p + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			st_set_error(error_r, "write %s: %s", tmp, strerror(errno));
			goto fail;
		}
		done += (size_t)n;
	}
	if (fsync(fd) < 0) {
		st_set_error(error_r, "fsync %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (close(fd) < 0) {
		fd = -1;
		st_set_error(error_r, "close %s: %s", tmp, strerror(errno));
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		st_set_error(error_r, "rename %s to %s: %s", tmp, path, strerror(errno));
		goto fail;
	}
	free(tmp);
	return st_fsync_parent_dir(path, error_r);

fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	free(tmp);
	return -1;
}

int
st_durable_create(struct st_durable_file *f, const char *path, mode_t mode, char **error_r)
{
	f->path = xstrdup(path);
	f->tmp = xasprintf("%s.tmp.XXXXXX", path);
	f->fd = mkostemp(f->tmp, O_CLOEXEC);
	if (f->fd < 0) {
		st_set_error(error_r, "cannot create temporary file for %s: %s", path,
			     strerror(errno));
		free(f->path);
		free(f->tmp);
		f->path = f->tmp = NULL;
		return -1;
	}
	if (fchmod(f->fd, mode) < 0) {
		st_set_error(error_r, "chmod %s: %s", f->tmp, strerror(errno));
		st_durable_abort(f);
		return -1;
	}
	return 0;
}

int
st_durable_commit(struct st_durable_file *f, char **error_r)
{
	int fd = f->fd;

	f->fd = -1;
	if (fsync(fd) < 0) {
		st_set_error(error_r, "fsync %s: %s", f->tmp, strerror(errno));
		close(fd);
		goto fail;
	}
	if (close(fd) < 0) {
		st_set_error(error_r, "close %s: %s", f->tmp, strerror(errno));
		goto fail;
	}
	if (rename(f->tmp, f->path) < 0) {
		st_set_error(error_r, "rename %s to %s: %s", f->tmp, f->path, strerror(errno));
		goto fail;
	}
	int rc = st_fsync_parent_dir(f->path, error_r);
	free(f->path);
	free(f->tmp);
	f->path = f->tmp = NULL;
	return rc;
fail:
	st_durable_abort(f);
	return -1;
}

void
st_durable_abort(struct st_durable_file *f)
{
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	if (f->tmp != NULL)
		unlink(f->tmp);
	free(f->path);
	free(f->tmp);
	f->path = f->tmp = NULL;
}

int
st_read_file(const char *path, size_t max, char **data_r, size_t *len_r, char **error_r)
{
	struct stat sb;
	char *buf;
	size_t len = 0;
	int fd;

	*data_r = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		st_set_error(error_r, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &sb) < 0) {
		st_set_error(error_r, "%s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	if ((size_t)sb.st_size > max) {
		st_set_error(error_r, "%s: larger than %zu bytes", path, max);
		close(fd);
		return -1;
	}
	buf = xmalloc(max + 1);
	for (;;) {
		ssize_t n = read(fd, buf + len, max + 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			st_set_error(error_r, "%s: %s", path, strerror(errno));
			free(buf);
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > max) {
			st_set_error(error_r, "%s: larger than %zu bytes", path, max);
			free(buf);
			close(fd);
			return -1;
		}
	}
	close(fd);
	buf[len] = '\0';
	*data_r = buf;
	if (len_r != NULL)
		*len_r = len;
	return 0;
}

int
st_mkdir_p(const char *path, mode_t mode, char **error_r)
{
	char *copy = xstrdup(path);

	for (char *p = copy + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(copy, mode) == 0) {
			/* Exactly MODE, whatever the umask (the daemons run with 077). */
			if (chmod(copy, mode) < 0) {
				st_set_error(error_r, "chmod %s: %s", copy, strerror(errno));
				free(copy);
				return -1;
			}
		} else if (errno != EEXIST) {
			st_set_error(error_r, "mkdir %s: %s", copy, strerror(errno));
			free(copy);
			return -1;
		}
		*p = c;
		if (c == '\0')
			break;
	}
	free(copy);
	return 0;
}

int64_t
st_ms_file_load(const char *path)
{
	char *data = NULL, *err = NULL, *end;
	size_t len = 0;
	int64_t ms = 0;

	if (access(path, F_OK) < 0 && errno == ENOENT)
		return 0;
	if (st_read_file(path, 64, &data, &len, &err) < 0) {
		st_warn("%s: taken as unknown", err);
		free(err);
		return 0;
	}
	long long v = strtoll(data, &end, 10);
	if (end != data && (*end == '\n' || *end == '\0') && v > 0)
		ms = v;
	else
		st_warn("%s: unreadable (%s): taken as unknown", path, st_q(data));
	free(data);
	return ms;
}

void
st_ms_file_save(const char *path, int64_t ms)
{
	char text[32], *err = NULL;
	int n = snprintf(text, sizeof(text), "%lld\n", (long long)ms);

	if (st_durable_write(path, text, (size_t)n, 0644, &err) < 0) {
		st_warn("cannot keep %s: %s", path, err);
		free(err);
	}
}
