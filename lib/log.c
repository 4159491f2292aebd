/*
 * log.c: stderr or syslog, levels, escaping.
 */
#include "config.h"

#include "lib/log.h"

#include <openssl/evp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "standin";
static enum st_log_target log_target = ST_LOG_STDERR;
static enum st_log_level log_min = ST_LOG_INFO;

static const char *const level_names[] = {
	[ST_LOG_DEBUG] = "debug",
	[ST_LOG_INFO] = "info",
	[ST_LOG_NOTICE] = "notice",
	[ST_LOG_WARNING] = "warning",
	[ST_LOG_ERROR] = "error",
};

static const int level_syslog[] = {
	[ST_LOG_DEBUG] = LOG_DEBUG,
	[ST_LOG_INFO] = LOG_INFO,
	[ST_LOG_NOTICE] = LOG_NOTICE,
	[ST_LOG_WARNING] = LOG_WARNING,
	[ST_LOG_ERROR] = LOG_ERR,
};

void
st_log_open(const char *ident, enum st_log_target target)
{
	log_ident = ident;
	log_target = target;
	if (target == ST_LOG_SYSLOG)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void
st_log_close(void)
{
	if (log_target == ST_LOG_SYSLOG)
		closelog();
	log_target = ST_LOG_STDERR;
}

static atomic_bool log_show_data;

void
st_log_set_data(bool show)
{
	atomic_store(&log_show_data, show);
}

bool
st_log_data(void)
{
	return atomic_load(&log_show_data) || log_min == ST_LOG_DEBUG;
}

void
st_log_datum(struct st_buf *b, const char *value, size_t len, size_t max)
{
	if (st_log_data()) {
		st_buf_append(b, value, len > max ? max : len);
		if (len > max)
			st_buf_puts(b, "...");
		return;
	}
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	if (EVP_Digest(value, len, md, &n, EVP_sha256(), NULL) != 1 || n < 4) {
		st_buf_puts(b, "#hidden");
		return;
	}
	st_buf_printf(b, "#%02x%02x%02x%02x", md[0], md[1], md[2], md[3]);
}

void
st_log_set_level(enum st_log_level level)
{
	log_min = level;
}

enum st_log_level
st_log_get_level(void)
{
	return log_min;
}

int
st_log_parse_level(const char *s, enum st_log_level *level_r)
{
	for (size_t i = 0; i < ST_ARRAY_SIZE(level_names); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*level_r = (enum st_log_level)i;
			return 0;
		}
	}
	return -1;
}

const char *
st_log_level_name(enum st_log_level level)
{
	return level_names[level];
}

/* Copy SRC into DST, escaping control bytes so the line stays one line. */
static void
escape_line(char *dst, size_t dstsize, const char *src)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (const unsigned char *p = (const unsigned char *)src; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			if (o + 4 >= dstsize)
				break;
			dst[o++] = '\\';
			if (*p == '\n') {
				dst[o++] = 'n';
			} else if (*p == '\t') {
				dst[o++] = 't';
			} else {
				dst[o++] = 'x';
				dst[o++] = hex[*p >> 4];
				dst[o++] = hex[*p & 15];
			}
		} else {
			if (o + 1 >= dstsize)
				break;
			dst[o++] = (char)*p;
		}
	}
	dst[o] = '\0';
}

static void
log_emit(enum st_log_level level, const char *msg)
{
	char line[4096];

	escape_line(line, sizeof(line), msg);
	if (log_target == ST_LOG_SYSLOG) {
		syslog(level_syslog[level], "%s: %s", level_names[level], line);
		return;
	}

	struct timeval tv;
	struct tm tm;
	char stamp[32];
	char out[4096 + 128];
	int n;

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	n = snprintf(out, sizeof(out), "%s.%03dZ %s[%d] %s: %s\n", stamp,
		     (int)(tv.tv_usec / 1000), log_ident, (int)getpid(),
		     level_names[level], line);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(out))
		n = (int)sizeof(out) - 1;
	/* One write per line, so concurrent writers never interleave a line. */
	if (write(STDERR_FILENO, out, (size_t)n) < 0) {
		/* nowhere left to report it */
	}
}

void
st_log(enum st_log_level level, const char *fmt, ...)
{
	char msg[4096];
	va_list ap;

	if (level < log_min)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_emit(level, msg);
}

void
st_fatal_at(const char *file, int line, const char *fmt, ...)
{
	char msg[4096];
	char full[4200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(full, sizeof(full), "%s at=%s:%d", msg, file, line);
	log_emit(ST_LOG_ERROR, full);
	abort();
}

#define Q_RING 8
#define Q_SIZE 512

const char *
st_q(const char *s)
{
	static const char hex[] = "0123456789abcdef";
	static _Thread_local char ring[Q_RING][Q_SIZE];
	static _Thread_local unsigned next;
	char *out;
	bool plain;
	size_t o = 0;

	if (s == NULL)
		return "(null)";
	out = ring[next++ % Q_RING];
	plain = *s != '\0';
	for (const char *p = s; *p != '\0' && plain; p++) {
		unsigned char c = (unsigned char)*p;

		if (c <= ' ' || c == '"' || c == '\\' || c == '=' || c >= 0x7f)
			plain = false;
	}
	if (plain && strlen(s) < Q_SIZE)
		return s;

	out[o++] = '"';
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (o + 6 >= Q_SIZE) {
			out[o++] = '.';
			out[o++] = '.';
			out[o++] = '.';
			break;
		}
		if (*p == '"' || *p == '\\') {
			out[o++] = '\\';
			out[o++] = (char)*p;
		} else if (*p < 0x20 || *p == 0x7f) {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[*p >> 4];
			out[o++] = hex[*p & 15];
		} else {
			out[o++] = (char)*p;
		}
	}
	out[o++] = '"';
	out[o] = '\0';
	return out;
}
