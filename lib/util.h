/*
 * util.h: allocation that never returns NULL, small string helpers, and
 * reading secret files.  All memory returned belongs to the caller.
 */
#ifndef STANDIN_UTIL_H
#define STANDIN_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define ST_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define ST_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define ST_WARN_UNUSED __attribute__((warn_unused_result))

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) ST_PRINTF(1, 2);
char *xvasprintf(const char *fmt, va_list ap) ST_PRINTF(1, 0);

/* Replace *error_r (when error_r is not NULL) with a formatted message. */
void st_set_error(char **error_r, const char *fmt, ...) ST_PRINTF(2, 3);

/* Growable byte buffer; data is always NUL-terminated. */
struct st_buf {
	char *data;
	size_t len;
	size_t cap;
};
void st_buf_init(struct st_buf *b);
void st_buf_free(struct st_buf *b);
void st_buf_reset(struct st_buf *b);
void st_buf_append(struct st_buf *b, const void *p, size_t n);
void st_buf_puts(struct st_buf *b, const char *s);
void st_buf_printf(struct st_buf *b, const char *fmt, ...) ST_PRINTF(2, 3);
/* Hand the contents to the caller and leave the buffer empty. */
char *st_buf_steal(struct st_buf *b);

bool st_str_empty(const char *s);
bool st_str_has_prefix(const char *s, const char *prefix);
/*
 * HOST (as written in a config: a name, an address, [v6], or a unix
 * socket directory for libpq) is this host: localhost, 127.0.0.0/8, ::1,
 * ::ffff:127.x.y.z or a path.  Names are not resolved.
 */
bool st_host_is_loopback(const char *host);

/*
 * Check that PATH is a regular file that only its owner can read or write
 * (no group or other bits), owned by the effective user or root.
 * Returns 0, or -1 with a message naming the path and the fix.
 */
int st_secret_check(const char *path, char **error_r) ST_WARN_UNUSED;

/*
 * Read a secret file (checked as above, through the open descriptor), with
 * one trailing newline removed.  The caller wipes and frees it with
 * st_secret_free().  NUL bytes or an empty secret are refused.
 */
int st_secret_read(const char *path, char **secret_r, char **error_r) ST_WARN_UNUSED;
void st_secret_free(char **secret);

/* Monotonic and wall clock helpers. */
long long st_now_ms(void);
long long st_monotonic_ms(void);

#endif
