/*
 * util.c: allocation, strings, secret files, clocks.
 */
#include "config.h"

#include "lib/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void
oom(size_t n)
{
	/* Allocation failure is fatal; stderr is all that is left. */
	fprintf(stderr, "standin: out of memory allocating %zu bytes\n", n);
	abort();
}

void *
xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		oom(n);
	return p;
}

void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		oom(n * size);
	return p;
}

void *
xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (q == NULL)
		oom(n);
	return q;
}

char *
xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *
xvasprintf(const char *fmt, va_list ap)
{
	char *p;

	if (vasprintf(&p, fmt, ap) < 0)
		oom(strlen(fmt));
	return p;
}

char *
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;

	va_start(ap, fmt);
	p = xvasprintf(fmt, ap);
	va_end(ap);
	return p;
}

void
st_set_error(char **error_r, const char *fmt, ...)
{
	va_list ap;

	if (error_r == NULL)
		return;
	free(*error_r);
	va_start(ap, fmt);
	*error_r = xvasprintf(fmt, ap);
	va_end(ap);
}

void
st_buf_init(struct st_buf *b)
{
	b->cap = 256;
	b->len = 0;
	b->data = xmalloc(b->cap);
	b->data[0] = '\0';
}

void
st_buf_free(struct st_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void
st_buf_reset(struct st_buf *b)
{
	b->len = 0;
	b->data[0] = '\0';
}

static void
buf_reserve(struct st_buf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return;
	while (b->len + extra + 1 > b->cap)
		b->cap *= 2;
	b->data = xrealloc(b->data, b->cap);
}

void
st_buf_append(struct st_buf *b, const void *p, size_t n)
{
	buf_reserve(b, n);
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void
st_buf_puts(struct st_buf *b, const char *s)
{
	st_buf_append(b, s, strlen(s));
}

void
st_buf_printf(struct st_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= b->cap - b->len) {
		buf_reserve(b, (size_t)n);
		va_start(ap, fmt);
		vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
	}
	b->len += (size_t)n;
}

char *
st_buf_steal(struct st_buf *b)
{
	char *p = b->data;

	st_buf_init(b);
	return p;
}

bool
st_str_empty(const char *s)
{
	return s == NULL || *s == '\0';
}

bool
st_str_has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool
st_host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;
	char buf[64];

	if (host == NULL || host[0] == '\0')
		return false;
	if (host[0] == '/')
		return true;
	if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0)
		return true;
	size_t n = strlen(host);
	if (host[0] == '[' && n >= 2 && host[n - 1] == ']' && n - 2 < sizeof(buf)) {
		memcpy(buf, host + 1, n - 2);
		buf[n - 2] = '\0';
		host = buf;
	}
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1) {
		if (IN6_IS_ADDR_LOOPBACK(&a6))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
	}
	return false;
}

static int
secret_check_stat(const char *path, const struct stat *sb, char **error_r)
{
	if (!S_ISREG(sb->st_mode)) {
		st_set_error(error_r, "secret file %s is not a regular file", path);
		return -1;
	}
	if ((sb->st_mode & 077) != 0) {
		st_set_error(error_r,
			     "secret file %s is readable or writable by group or others "
			     "(mode %04o); run: chmod 600 %s",
			     path, (unsigned)(sb->st_mode & 07777), path);
		return -1;
	}
	if (sb->st_uid != geteuid() && sb->st_uid != 0) {
		st_set_error(error_r,
			     "secret file %s is owned by uid %u, not by this user (uid %u) or root",
			     path, (unsigned)sb->st_uid, (unsigned)geteuid());
		return -1;
	}
	return 0;
}

int
st_secret_check(const char *path, char **error_r)
{
	struct stat sb;

	/* As st_secret_read opens it: a symbolic link is not followed. */
	if (lstat(path, &sb) < 0) {
		st_set_error(error_r, "secret file %s: %s", path, strerror(errno));
		return -1;
	}
	if (S_ISLNK(sb.st_mode)) {
		st_set_error(error_r, "secret file %s is a symbolic link (not followed: name the file itself)",
			     path);
		return -1;
	}
	return secret_check_stat(path, &sb, error_r);
}

#define ST_SECRET_MAX 4096

int
st_secret_read(const char *path, char **secret_r, char **error_r)
{
	struct stat sb;
	char *buf = NULL;
	ssize_t n;
	size_t len = 0;
	int fd, ret = -1;

	*secret_r = NULL;
	/* O_NONBLOCK: a FIFO put in its place must not hang the reader (fstat refuses it). */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		if (errno == ELOOP)
			st_set_error(error_r, "secret file %s is a symbolic link (not followed: name the file "
				     "itself)", path);
		else
			st_set_error(error_r, "secret file %s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &sb) < 0) {
		st_set_error(error_r, "secret file %s: %s", path, strerror(errno));
		goto out;
	}
	if (secret_check_stat(path, &sb, error_r) < 0)
		goto out;
	buf = xmalloc(ST_SECRET_MAX + 1);
	for (;;) {
		n = read(fd, buf + len, ST_SECRET_MAX + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			st_set_error(error_r, "secret file %s: %s", path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > ST_SECRET_MAX) {
			st_set_error(error_r, "secret file %s is larger than %d bytes",
				     path, ST_SECRET_MAX);
			goto out;
		}
	}
	if (len > 0 && buf[len - 1] == '\n')
		len--;
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	if (memchr(buf, '\0', len) != NULL) {
		st_set_error(error_r, "secret file %s contains a NUL byte", path);
		goto out;
	}
	if (len == 0) {
		st_set_error(error_r, "secret file %s is empty", path);
		goto out;
	}
	*secret_r = buf;
	buf = NULL;
	ret = 0;
out:
	if (buf != NULL) {
		explicit_bzero(buf, ST_SECRET_MAX + 1);
		free(buf);
	}
	close(fd);
	return ret;
}

void
st_secret_free(char **secret)
{
	if (*secret == NULL)
		return;
	explicit_bzero(*secret, strlen(*secret));
	free(*secret);
	*secret = NULL;
}

long long
st_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long
st_monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
